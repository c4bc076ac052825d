"""The multi-scale scaffold shared by the image flows (RealNVP, Glow).

A multi-scale flow is a static plan: a list of steps whose ``kind`` is "squeeze",
"factor_out" or anything else (a flow step of the model's own). The scaffold runs the plan:

    forward (data -> latent), x: [B, H, W, C]
      squeeze      2x2 space-to-depth                         [h, w, c] -> [h/2, w/2, 4c]
      factor_out   the last c - c//2 channels go to the latent; the rest continue
      flow step    the bijectors ``flow_step(step, x, inverse=False)`` returns, in order
    z = concat(flatten(factored pieces in order), flatten(final activations))   [B, D]

and the inverse (latent -> data) splits z back into those pieces and walks the plan
backwards. A flow step may stand for many layers: the scanned flows make each stack of
identical layers one step whose one bijector runs them all (``models.scan.ScannedStack``).

``MultiScaleFlow`` is the Linen base of RealNVP and Glow: it holds their shared attributes,
``__call__`` and ``inverse``; each model owns its layers and says only what its plan and a
flow step are.

Also here: the input checks and the image shape an inverse needs when it is given only z.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from flowgmm_jax.bijectors.base import Bijector
from flowgmm_jax.bijectors.reshape import Squeeze, flatten_and_join, split_and_unflatten

Array = jax.Array
# flow_step(step, x, inverse) -> the bijectors of that step, in forward order, for the
# activations x reaching it (in the direction being run: Glow's ActNorm initialises from
# the data only when it is reached going forward).
FlowStep = Callable[[object, Array, bool], Sequence[Bijector]]


class MultiScaleFlow(nn.Module):
  """An image flow on the multi-scale scaffold. Forward (``__call__``) is data -> latent.

  A subclass sets ``self.plan`` in ``setup`` and defines ``_flow_step(train, mask)`` (a
  ``FlowStep``) and ``_input_channels(params)``, the input channel count read from its
  parameters. H and W must be divisible by 2 ** (the number of squeezes in the plan).

  Attributes shared by the image flows:
    image_shape: optional (H, W, C). Needed by ``inverse`` only for non-square images;
      otherwise C comes from ``_input_channels`` and H = W = sqrt(D/C).
    bn_axis_name: BatchNorm ``axis_name`` ("data" to average batch statistics across
      devices under shard_map/pmap), None on one device.
    zero_init_last: zero each conditioner's last conv so every coupling starts as the
      identity (the original used PyTorch's default random init there).
    param_dtype: parameter dtype.
    compute_dtype: dtype of the conditioner networks' convolutions (e.g. bfloat16 on a
      GPU/TPU); None: float32. Parameters, the coupling maps and the log-dets stay float32.
  """
  image_shape: tuple[int, int, int] | None = None
  bn_axis_name: str | None = None
  zero_init_last: bool = True
  param_dtype: jnp.dtype = jnp.float32
  compute_dtype: jnp.dtype | None = None

  def _flow_step(self, train: bool, mask: Array | None = None) -> FlowStep:
    raise NotImplementedError(f"{type(self).__name__} must define _flow_step.")

  def _input_channels(self, params) -> int:
    raise NotImplementedError(f"{type(self).__name__} must define _input_channels.")

  def _divisor(self) -> int:
    """What H and W must be divisible by: a factor 2 per squeeze."""
    return 2 ** sum(step.kind == "squeeze" for step in self.plan)

  def __call__(self, x: Array, train: bool = False, mask: Array | None = None
               ) -> tuple[Array, Array]:
    """Data -> latent. ``x: [B, H, W, C]`` -> ``(z: [B, H*W*C], log_det: [B])``.

    ``log_det = log|det dz/dx|``. ``train=True`` uses batch statistics in BatchNorm and
    needs ``mutable=["batch_stats"]``; ``mask: [B]`` bool marks the rows those statistics
    count (False: padding, which then changes neither them nor the running averages).
    """
    check_image_input(x.shape, type(self).__name__, self._divisor(), self.image_shape)
    return multiscale_forward(self.plan, x, self._flow_step(train, mask))

  def inverse(self, z: Array, train: bool = False) -> Array:
    """Latent -> data. ``z: [B, D]`` -> ``x: [B, H, W, C]`` (no forward call needed)."""
    owner = type(self).__name__
    if z.ndim != 2:
      raise ValueError(f"{owner}.inverse expects a flat latent z: [B, D], got shape "
                       f"{tuple(z.shape)}.")
    image_shape = resolve_image_shape(self, z, owner, self._input_channels)
    check_image_input((z.shape[0],) + tuple(image_shape), owner, self._divisor(), None)
    return multiscale_inverse(self.plan, z, image_shape, self._flow_step(train))


def multiscale_forward(plan: Sequence, x: Array, flow_step: FlowStep) -> tuple[Array, Array]:
  """Data -> latent through ``plan``: ``x: [B, H, W, C]`` -> ``(z: [B, H*W*C], log_det: [B])``."""
  log_det = jnp.zeros(x.shape[:1], x.dtype)
  factored = []
  for step in plan:
    if step.kind == "squeeze":
      x, _ = Squeeze().forward_and_log_det(x)
    elif step.kind == "factor_out":
      keep = x.shape[-1] // 2
      factored.append(x[..., keep:])
      x = x[..., :keep]
    else:
      for bijector in flow_step(step, x, False):
        x, step_log_det = bijector.forward_and_log_det(x)
        log_det = log_det + step_log_det
  return flatten_and_join(factored + [x]), log_det


def multiscale_inverse(plan: Sequence, z: Array, image_shape: tuple[int, int, int],
                       flow_step: FlowStep) -> Array:
  """Latent -> data through ``plan``: ``z: [B, D]`` -> ``x: [B, *image_shape]``."""
  pieces = split_and_unflatten(z, multiscale_latent_shapes(plan, image_shape))
  x, factored = pieces[-1], pieces[:-1]
  for step in reversed(plan):
    if step.kind == "squeeze":
      x, _ = Squeeze().inverse_and_log_det(x)
    elif step.kind == "factor_out":
      x = jnp.concatenate([x, factored.pop()], axis=-1)
    else:
      for bijector in reversed(flow_step(step, x, True)):
        x = bijector.inverse(x)
  return x


def multiscale_latent_shapes(plan: Sequence, image_shape: tuple[int, int, int]
                             ) -> list[tuple[int, int, int]]:
  """Per-example shapes of the latent pieces, in the order they are joined into z:
  each factored-out piece, then the final activations. Reads only the squeeze and
  factor_out steps."""
  h, w, c = image_shape
  shapes = []
  for step in plan:
    if step.kind == "squeeze":
      h, w, c = h // 2, w // 2, 4 * c
    elif step.kind == "factor_out":
      shapes.append((h, w, c - c // 2))
      c = c // 2
  shapes.append((h, w, c))
  return shapes


def image_shape_from_latent_dim(latent_dim: int, channels: int, owner: str
                                ) -> tuple[int, int, int]:
  """(H, W, C) of a square image with ``H * W * C = latent_dim``; ValueError otherwise."""
  if channels < 1 or latent_dim % channels:
    raise ValueError(
        f"{owner}.inverse: z has D = {latent_dim} dimensions, not a multiple of the "
        f"{channels} input channels, so it cannot be reshaped to an image; pass "
        f"image_shape=(H, W, C) to {owner}.")
  side = math.isqrt(latent_dim // channels)
  if side * side * channels != latent_dim:
    raise ValueError(
        f"{owner}.inverse: D = {latent_dim} is not H * W * C for a square image with "
        f"C = {channels}; pass image_shape=(H, W, C) to {owner} for non-square images.")
  return side, side, channels


def resolve_image_shape(model, z: Array, owner: str,
                        channels_from_params) -> tuple[int, int, int]:
  """(H, W, C) of the images behind flat latents ``z: [B, D]``, for a flow's inverse.

  Uses ``model.image_shape`` when set (checking H W C = D); otherwise reads C from the
  initialised parameters with ``channels_from_params(params)`` and assumes square images.
  """
  if model.image_shape is not None:
    h, w, c = model.image_shape
    if h * w * c != z.shape[-1]:
      raise ValueError(
          f"{owner}.inverse: z has D = {z.shape[-1]} but image_shape={model.image_shape} "
          f"needs D = {h * w * c}.")
    return tuple(model.image_shape)
  try:
    channels = channels_from_params(model.variables["params"])
  except KeyError:
    raise ValueError(
        f"{owner}.inverse: cannot infer the image shape: the model has no parameters yet. "
        "Initialise with model.init(rng, x) on images, or pass image_shape=(H, W, C)."
    ) from None
  return image_shape_from_latent_dim(z.shape[-1], channels, owner)


def check_image_input(shape: Sequence[int], owner: str, divisor: int,
                      image_shape: Sequence[int] | None) -> None:
  """ValueError unless ``shape`` is ``[B, H, W, C]`` with H, W divisible by ``divisor``
  (and equal to ``image_shape`` when that is given)."""
  if len(shape) != 4:
    raise ValueError(
        f"{owner} expects images x: [B, H, W, C] (NHWC), got shape {tuple(shape)}; "
        f"add a channel axis for grey-scale images (x[..., None]).")
  _, h, w, c = shape
  if h % divisor or w % divisor:
    raise ValueError(
        f"{owner}: height and width must be divisible by {divisor} (one factor 2 per "
        f"squeeze), got H x W = {h} x {w}; pad/crop the images or use fewer scales.")
  if image_shape is not None and tuple(image_shape) != (h, w, c):
    raise ValueError(
        f"{owner} was built with image_shape={tuple(image_shape)} but got images of shape "
        f"{(h, w, c)}; pass matching images or fix image_shape.")
