"""Image augmentations as pure jnp functions, meant to run inside the jitted step.

All functions take a float batch `x: [B, H, W, C]` (NHWC, pixel values 0..255 before
dequantisation, or anything else: they only move and mirror pixels) and a PRNG key,
and return an array of the same shape and dtype. Randomness is per example.

The original FlowGMM code (torchvision) used `RandomCrop(size, padding=4)`, whose
padding is constant zeros, for MNIST, SVHN and CIFAR-10, and `RandomHorizontalFlip()`
for CIFAR-10 (and, in its code, also for SVHN). Here flipping is off for digits
(MNIST, SVHN: mirrored digits are not digits) and on for CIFAR-10, see
`default_augmentation`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_PADDING_MODES = ("constant", "reflect", "edge")

# Whether horizontal flips are label-preserving for each dataset.
FLIP_BY_DATASET = {"mnist": False, "svhn": False, "svhn_cropped": False, "cifar10": True}


def random_crop_with_padding(rng: jax.Array, x: jax.Array, pad: int = 4,
                             padding_mode: str = "constant") -> jax.Array:
  """Pads by `pad` pixels on each side, then crops back at a random offset per example.

  out[b] = padded[b, dy_b : dy_b + H, dx_b : dx_b + W, :] with
  dy_b, dx_b ~ Uniform{0, ..., 2 * pad} independently, i.e. a random translation by
  up to `pad` pixels in each direction, the uncovered border filled by the padding.

  Args:
    rng: PRNG key.
    x: `[B, H, W, C]`.
    pad: static int >= 0 (0 returns x unchanged).
    padding_mode: "constant" (zeros, as torchvision's default), "reflect" (mirror
      without repeating the edge pixel) or "edge".

  Returns:
    `[B, H, W, C]`, same dtype as x.
  """
  if x.ndim != 4:
    raise ValueError(f"expected an NHWC batch [B, H, W, C], got shape {x.shape}.")
  if padding_mode not in _PADDING_MODES:
    raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}.")
  pad = int(pad)
  if pad < 0:
    raise ValueError(f"pad must be >= 0, got {pad}.")
  if pad == 0:
    return x
  batch, height, width, channels = x.shape
  if padding_mode == "reflect" and (pad >= height or pad >= width):
    raise ValueError(f"reflect padding needs pad < image size, got pad={pad} for {height}x{width}.")
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=padding_mode)
  offsets = jax.random.randint(rng, (batch, 2), 0, 2 * pad + 1)

  def crop_one(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

  return jax.vmap(crop_one)(padded, offsets)


def random_horizontal_flip(rng: jax.Array, x: jax.Array, probability: float = 0.5) -> jax.Array:
  """Mirrors each image left-right (width axis) independently with `probability`.

  Args:
    rng: PRNG key.
    x: `[B, H, W, C]`.

  Returns:
    `[B, H, W, C]`: out[b] = x[b, :, ::-1, :] if flipped, else x[b].
  """
  if x.ndim != 4:
    raise ValueError(f"expected an NHWC batch [B, H, W, C], got shape {x.shape}.")
  flip = jax.random.bernoulli(rng, probability, (x.shape[0],))
  return jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


def augment_images(rng: jax.Array, x: jax.Array, crop_padding: int = 4, flip: bool = False,
                   padding_mode: str = "constant") -> jax.Array:
  """Random translation by padded crop, then (optionally) a random horizontal flip.

  `crop_padding`, `flip` and `padding_mode` must be static (Python values), e.g.
  closed over or bound with functools.partial before `jax.jit`.

  Args:
    rng: PRNG key.
    x: `[B, H, W, C]` float batch.
    crop_padding: pad for `random_crop_with_padding`; 0 disables cropping.
    flip: whether to apply `random_horizontal_flip`.
    padding_mode: see `random_crop_with_padding`.

  Returns:
    `[B, H, W, C]`.
  """
  crop_key, flip_key = jax.random.split(rng)
  x = random_crop_with_padding(crop_key, x, crop_padding, padding_mode)
  if flip:
    x = random_horizontal_flip(flip_key, x)
  return x


def add_feature_noise(rng: jax.Array, x: jax.Array, std: float) -> jax.Array:
  """Gaussian input noise for tables and embeddings: ``x + std * N(0, I)``.

  Meant for standardised features, so ``std`` is in units of each feature's standard
  deviation; it smooths the density the flow can fit around the few labelled rows (and is
  the augmentation of FlowGMM-cons on tables).

  Args:
    rng: PRNG key.
    x: ``[B, D]`` float batch.
    std: static float >= 0.

  Returns:
    ``[B, D]``, same dtype as x.
  """
  return x + std * jax.random.normal(rng, x.shape, x.dtype)


def default_augmentation(dataset_name: str) -> dict:
  """The augmentation settings for a dataset: pad-4 crops; flips for CIFAR-10 only.

  Returns:
    kwargs for `augment_images`, e.g. `{"crop_padding": 4, "flip": True}`.
  """
  key = dataset_name.lower()
  if key not in FLIP_BY_DATASET:
    raise ValueError(
        f"no default augmentation for {dataset_name!r}; known: {sorted(FLIP_BY_DATASET)}. "
        "Pass crop_padding and flip to augment_images directly.")
  return {"crop_padding": 4, "flip": FLIP_BY_DATASET[key]}
