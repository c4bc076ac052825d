"""Volume-preserving reshapes: the 2x2 squeeze and the multi-scale flatten/split helpers.

Direction: ``forward`` is data -> latent, ``inverse`` is latent -> data (see base.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp

from flowgmm_jax.bijectors.base import Array, Bijector


class Squeeze(Bijector):
  """2x2 space-to-depth. Forward = data -> latent: ``[B, H, W, C] -> [B, H/2, W/2, 4C]``.

  Channel ordering (matches the original FlowGMM ``SqueezeLayer`` in
  flow_ssl/invertible/downsample.py, translated from NCHW to NHWC):

      y[b, i, j, 4 * c + 2 * di + dj] = x[b, 2 * i + di, 2 * j + dj, c]

  i.e. the four pixels of each 2x2 block of input channel c become four consecutive
  output channels (row-major within the block). Note this differs from
  ``tf.nn.space_to_depth``, which puts the channel index innermost. A following
  ``ChannelCoupling`` therefore splits whole input channels (for even C) into halves.

  A permutation: ``log_det`` is 0. The inverse (depth-to-space) undoes it exactly.
  H and W must be even; the inverse needs the channel count divisible by 4.
  """

  def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
    """Data -> latent: ``x: [B, H, W, C] -> (y: [B, H/2, W/2, 4C], zeros [B])``."""
    if x.ndim != 4:
      raise ValueError(f"Squeeze expects images [B, H, W, C], got shape {tuple(x.shape)}.")
    b, h, w, c = x.shape
    if h % 2 != 0 or w % 2 != 0:
      raise ValueError(
          f"Squeeze needs even height and width, got H x W = {h} x {w} (input shape "
          f"{tuple(x.shape)}); crop or pad the images to even sizes.")
    y = x.reshape(b, h // 2, 2, w // 2, 2, c)
    y = y.transpose(0, 1, 3, 5, 2, 4)  # [B, H/2, W/2, C, di, dj]
    return y.reshape(b, h // 2, w // 2, 4 * c), jnp.zeros((b,), x.dtype)

  def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
    """Latent -> data: ``y: [B, H', W', 4C] -> (x: [B, 2H', 2W', C], zeros [B])``."""
    if y.ndim != 4:
      raise ValueError(
          f"Squeeze.inverse expects [B, H, W, C], got shape {tuple(y.shape)}.")
    b, h, w, c4 = y.shape
    if c4 % 4 != 0:
      raise ValueError(
          f"Squeeze.inverse needs a channel count divisible by 4, got {c4} (input shape "
          f"{tuple(y.shape)}).")
    c = c4 // 4
    x = y.reshape(b, h, w, c, 2, 2)
    x = x.transpose(0, 1, 4, 2, 5, 3)  # [B, H', di, W', dj, C]
    return x.reshape(b, 2 * h, 2 * w, c), jnp.zeros((b,), y.dtype)


def flatten_and_join(pieces: Sequence[Array]) -> Array:
  """Flattens each piece ``[B, ...]`` to ``[B, D_k]`` and concatenates: returns ``[B, D]``.

  Used to assemble the multi-scale latent (pieces factored out at each scale, in order).
  Inverse: ``split_and_unflatten(z, [p.shape[1:] for p in pieces])``.
  """
  if not pieces:
    raise ValueError("flatten_and_join: got no pieces; pass a non-empty list of arrays.")
  batch = pieces[0].shape[0]
  for p in pieces:
    if p.shape[0] != batch:
      raise ValueError(
          f"flatten_and_join: all pieces must share the batch size; got shapes "
          f"{[tuple(q.shape) for q in pieces]}.")
  return jnp.concatenate([p.reshape(batch, -1) for p in pieces], axis=1)


def split_and_unflatten(z: Array, shapes: Sequence[Sequence[int]]) -> list[Array]:
  """Inverse of ``flatten_and_join``: ``z: [B, D]`` -> list of ``[B, *shape]``.

  ``shapes`` are the per-example shapes (without the batch axis), in the order they were
  joined; their sizes must add up to D.
  """
  if z.ndim != 2:
    raise ValueError(f"split_and_unflatten expects z: [B, D], got shape {tuple(z.shape)}.")
  sizes = [math.prod(int(d) for d in s) for s in shapes]
  if sum(sizes) != z.shape[1]:
    raise ValueError(
        f"split_and_unflatten: the shapes {[tuple(s) for s in shapes]} hold {sum(sizes)} "
        f"values per example but z has D = {z.shape[1]}.")
  pieces, start = [], 0
  for shape, size in zip(shapes, sizes, strict=False):
    pieces.append(z[:, start:start + size].reshape((z.shape[0],) + tuple(shape)))
    start += size
  return pieces
