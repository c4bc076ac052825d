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


def add_feature_noise(rng: jax.Array, x: jax.Array, std: float,
                      dequantize_widths: tuple = ()) -> jax.Array:
  """Input noise for tables and embeddings: ``x + std * N(0, I)``, and with
  ``dequantize_widths`` (``w [D]``) uniform dequantisation ``x_d + w_d * (U(0, 1) - 1/2)``
  on the columns whose ``w_d > 0`` in place of the Gaussian noise there.

  Meant for standardised features, so ``std`` and ``w`` are in units of each feature's
  standard deviation. The Gaussian noise smooths the density the flow can fit around the
  few labelled rows (and is the augmentation of FlowGMM-cons on tables); the uniform noise
  spreads each value of a discrete column (0/1, integer codes; ``w_d`` its resolution,
  ``flowgmm_jax.features``) over its own cell ``[v - w/2, v + w/2)``, so the flow fits a
  density whose cell masses are the discrete probabilities instead of spikes (see
  ``flowgmm_jax/features.py``).

  Args:
    rng: PRNG key.
    x: ``[B, D]`` float batch.
    std: static float >= 0.
    dequantize_widths: static tuple of D floats >= 0 (0: Gaussian noise on that column), or
      () for Gaussian noise everywhere.

  Returns:
    ``[B, D]``, same dtype as x.
  """
  if not dequantize_widths:
    return x + std * jax.random.normal(rng, x.shape, x.dtype)
  widths = jnp.asarray(dequantize_widths, x.dtype)
  gauss_key, uniform_key = jax.random.split(rng)
  gaussian = std * jax.random.normal(gauss_key, x.shape, x.dtype)
  uniform = (jax.random.uniform(uniform_key, x.shape, x.dtype) - 0.5) * widths
  return x + jnp.where(widths > 0, uniform, gaussian)


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
