"""Affine coupling layers (RealNVP, Dinh et al. 2017) and their masks.

Direction: ``forward`` is data -> latent, ``inverse`` is latent -> data (see base.py).

A coupling layer splits the input into a *kept* part ``x_id`` (passed through unchanged
and fed to the conditioner) and a *changed* part ``x_ch``:

    s_raw, t = conditioner(x_id)
    s = scale * tanh(s_raw)                      (bounded log-scale, as in the original)
    forward:  y_ch = (x_ch + t) * exp(s),        y_id = x_id
    inverse:  x_ch = y_ch * exp(-s) - t,         x_id = y_id
    log|det dy/dx| = sum of s over the changed positions only.

The Jacobian is triangular (the kept part does not depend on the changed part) with
diagonal exp(s) on the changed positions and 1 on the kept ones, so anything the
conditioner returns at kept positions must not enter the log-det. ``AffineCoupling``
zeroes s and t on the kept positions before using them.

Masks follow the original FlowGMM code (flow_ssl/realnvp/coupling_layer.py and
flow_ssl/realnvp/utils.py): mask value 1 = kept (identity), 0 = changed.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from flowgmm_jax.bijectors.base import Array, Bijector, sum_except_batch

Conditioner = Callable[[Array], tuple[Array, Array]]


def checkerboard_mask(height: int, width: int, parity: int,
                      dtype=jnp.float32) -> Array:
  """Checkerboard mask for images, shape ``[height, width, 1]`` (broadcasts over NHWC).

  ``mask[i, j] = (i + j + parity) % 2``; 1 = kept, 0 = changed.

  parity 0 matches the original ``checkerboard_mask(h, w, reverse=False)``: the top-left
  pixel (i + j even) is changed and pixels with i + j odd are kept. parity 1 is the
  complement (the original's ``reverse_mask=True``): top-left kept.
  """
  if parity not in (0, 1):
    raise ValueError(f"checkerboard_mask: parity must be 0 or 1, got {parity!r}.")
  if int(height) < 1 or int(width) < 1:
    raise ValueError(
        f"checkerboard_mask: height and width must be >= 1, got {height}x{width}.")
  i = np.arange(int(height))[:, None]
  j = np.arange(int(width))[None, :]
  mask = (i + j + parity) % 2
  return jnp.asarray(mask[:, :, None], dtype=dtype)


def halves_mask(dim: int, parity: int, dtype=jnp.float32) -> Array:
  """Tabular "alternating halves" mask, shape ``[dim]``; 1 = kept, 0 = changed.

  With ``split = dim // 2`` (as in the original ``MaskTabular``):
    parity 0 keeps the first half, positions ``[0, split)``, and changes the rest;
    parity 1 keeps the second half, positions ``[split, dim)``, and changes the first.
  For odd ``dim`` the parity-1 mask keeps one more position than the parity-0 mask.
  """
  if parity not in (0, 1):
    raise ValueError(f"halves_mask: parity must be 0 or 1, got {parity!r}.")
  dim = int(dim)
  if dim < 2:
    raise ValueError(f"halves_mask: dim must be >= 2 so both halves are non-empty, "
                     f"got {dim}.")
  split = dim // 2
  positions = np.arange(dim)
  mask = positions < split if parity == 0 else positions >= split
  return jnp.asarray(mask, dtype=dtype)


def _check_like(name: str, value: Array, shape: tuple[int, ...], what: str) -> None:
  if tuple(value.shape) != tuple(shape):
    raise ValueError(
        f"{name}: the conditioner's {what} has shape {tuple(value.shape)} but must have "
        f"the shape {tuple(shape)} of the part it transforms; make the conditioner "
        f"return (s_raw, t) each shaped like that part.")


class AffineCoupling(Bijector):
  """Masked affine coupling for any event shape (images with a checkerboard mask,
  tabular data with a halves mask). Forward = data -> latent.

  Args:
    mask: 1 = kept, 0 = changed; broadcastable to one example ``x[0]`` (e.g. ``[H, W, 1]``
      for ``x: [B, H, W, C]`` or ``[D]`` for ``x: [B, D]``).
    conditioner: callable ``h -> (s_raw, t)`` with ``h = x * mask: [B, *event]`` and
      ``s_raw, t: [B, *event]``. It must treat examples independently.
    scale: scalar or per-channel array ``[C]`` broadcast on the last axis;
      ``s = scale * tanh(s_raw)``.

  Shapes: ``x: [B, *event] -> y: [B, *event]``, ``log_det: [B]``.
    forward:  y = mask * x + (1 - mask) * (x + t) * exp(s)
    log_det = sum over event axes of (1 - mask) * s.
  """

  def __init__(self, mask: Array, conditioner: Conditioner, scale=1.0):
    self.mask = mask
    self.conditioner = conditioner
    self.scale = scale

  def _shift_and_log_scale(self, x_kept: Array, mask: Array) -> tuple[Array, Array]:
    s_raw, t = self.conditioner(x_kept)
    _check_like("AffineCoupling", s_raw, x_kept.shape, "s_raw")
    _check_like("AffineCoupling", t, x_kept.shape, "t")
    changed = 1 - mask
    # Zero s and t on the kept positions: they are not transformed, so their s must not
    # be counted in the log-det (the over-count bug this guards against).
    s = jnp.asarray(self.scale, x_kept.dtype) * jnp.tanh(s_raw) * changed
    return s, t * changed

  def _checked_mask(self, x: Array) -> Array:
    mask = jnp.asarray(self.mask, x.dtype)
    try:
      ok = jnp.broadcast_shapes(mask.shape, x.shape[1:]) == tuple(x.shape[1:])
    except ValueError:
      ok = False
    if not ok:
      raise ValueError(
          f"AffineCoupling: mask of shape {tuple(mask.shape)} does not broadcast to one "
          f"example of shape {tuple(x.shape[1:])}; the input must be [B, *event] and the "
          f"mask broadcastable to the event shape (e.g. [H, W, 1] or [D]).")
    return mask

  def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
    """Data -> latent: ``x: [B, *event] -> (y: [B, *event], log_det: [B])``."""
    mask = self._checked_mask(x)
    x_kept = x * mask
    s, t = self._shift_and_log_scale(x_kept, mask)
    y = x_kept + (1 - mask) * (x + t) * jnp.exp(s)
    return y, sum_except_batch(s)

  def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
    """Latent -> data: ``y: [B, *event] -> (x: [B, *event], log_det: [B])``."""
    mask = self._checked_mask(y)
    y_kept = y * mask  # equals x * mask: the kept part is unchanged by forward
    s, t = self._shift_and_log_scale(y_kept, mask)
    x = y_kept + (1 - mask) * (y * jnp.exp(-s) - t)
    return x, -sum_except_batch(s)


class ChannelCoupling(Bijector):
  """Channel-wise affine coupling for images ``[B, H, W, C]`` with C even.
  Forward = data -> latent.

  The last axis is split into halves ``x_a = x[..., :C/2]``, ``x_b = x[..., C/2:]``.
  ``swap=False``: x_a is changed and x_b is kept (the original ``MaskChannelwise(
  reverse_mask=False)``); ``swap=True``: x_b is changed and x_a is kept.

  Args:
    conditioner: callable ``x_kept: [B, H, W, C/2] -> (s_raw, t)``, each ``[B, H, W, C/2]``.
    scale: scalar or ``[C/2]`` array on the last axis; ``s = scale * tanh(s_raw)``.
    swap: which half is changed (see above).

  Shapes: ``x: [B, H, W, C] -> y: [B, H, W, C]``, ``log_det: [B]`` = sum of s over the
  changed half (every entry of s belongs to the changed half).
  """

  def __init__(self, conditioner: Conditioner, scale=1.0, swap: bool = False):
    self.conditioner = conditioner
    self.scale = scale
    self.swap = bool(swap)

  def _split(self, x: Array) -> tuple[Array, Array]:
    """Returns (changed, kept) halves."""
    channels = x.shape[-1]
    if x.ndim < 2 or channels % 2 != 0:
      raise ValueError(
          f"ChannelCoupling: the last (channel) axis must have an even size, got input "
          f"shape {tuple(x.shape)}; squeeze or pad the channels first.")
    half = channels // 2
    x_a, x_b = x[..., :half], x[..., half:]
    return (x_b, x_a) if self.swap else (x_a, x_b)

  def _join(self, changed: Array, kept: Array) -> Array:
    parts = (kept, changed) if self.swap else (changed, kept)
    return jnp.concatenate(parts, axis=-1)

  def _shift_and_log_scale(self, kept: Array) -> tuple[Array, Array]:
    s_raw, t = self.conditioner(kept)
    _check_like("ChannelCoupling", s_raw, kept.shape, "s_raw")
    _check_like("ChannelCoupling", t, kept.shape, "t")
    return jnp.asarray(self.scale, kept.dtype) * jnp.tanh(s_raw), t

  def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
    """Data -> latent: ``x: [B, H, W, C] -> (y: [B, H, W, C], log_det: [B])``."""
    changed, kept = self._split(x)
    s, t = self._shift_and_log_scale(kept)
    return self._join((changed + t) * jnp.exp(s), kept), sum_except_batch(s)

  def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
    """Latent -> data: ``y: [B, H, W, C] -> (x: [B, H, W, C], log_det: [B])``."""
    changed, kept = self._split(y)
    s, t = self._shift_and_log_scale(kept)
    return self._join(changed * jnp.exp(-s) - t, kept), -sum_except_batch(s)
