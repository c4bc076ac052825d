"""Activation normalisation (Glow, Kingma & Dhariwal 2018).

Direction: ``forward`` is data -> latent, ``inverse`` is latent -> data (see base.py).
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from flowgmm_jax.bijectors.base import Array, Bijector


class ActNorm(Bijector):
  """Per-channel affine normalisation on the last axis. Forward = data -> latent.

  forward: ``y = (x - loc) * exp(-log_scale)``, ``x, y: [B, ..., C]`` (images
           ``[B, H, W, C]`` or tabular ``[B, D]`` with D playing the role of C).
  log_det = -(number of non-channel event positions) * sum(log_scale), e.g.
            ``-H * W * sum(log_scale)`` for images and ``-sum(log_scale)`` for tabular.
  inverse: ``x = y * exp(log_scale) + loc``.

  Args:
    loc, log_scale: ``[C]`` arrays (use ``actnorm_init_params`` for the data-dependent
      initialisation).
  """

  def __init__(self, loc: Array, log_scale: Array):
    self.loc = loc
    self.log_scale = log_scale

  def _params(self, x: Array) -> tuple[Array, Array]:
    loc = jnp.asarray(self.loc, x.dtype)
    log_scale = jnp.asarray(self.log_scale, x.dtype)
    channels = x.shape[-1] if x.ndim >= 2 else None
    if loc.shape != (channels,) or log_scale.shape != (channels,):
      raise ValueError(
          f"ActNorm: loc {tuple(loc.shape)} and log_scale {tuple(log_scale.shape)} must "
          f"both have shape [C] = [{channels}] for input shape {tuple(x.shape)}.")
    return loc, log_scale

  @staticmethod
  def _num_positions(x: Array) -> int:
    return math.prod(x.shape[1:-1])

  def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
    """Data -> latent: ``x: [B, ..., C]`` -> ``(y: [B, ..., C], log_det: [B])``."""
    loc, log_scale = self._params(x)
    y = (x - loc) * jnp.exp(-log_scale)
    log_det = -self._num_positions(x) * jnp.sum(log_scale)
    return y, jnp.broadcast_to(log_det, x.shape[:1])

  def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
    """Latent -> data: ``y: [B, ..., C]`` -> ``(x: [B, ..., C], log_det: [B])``."""
    loc, log_scale = self._params(y)
    x = y * jnp.exp(log_scale) + loc
    log_det = self._num_positions(y) * jnp.sum(log_scale)
    return x, jnp.broadcast_to(log_det, y.shape[:1])


def actnorm_init_params(x: Array, eps: float = 1e-6) -> tuple[Array, Array]:
  """Data-dependent initialisation: ``x: [B, ..., C]`` -> ``(loc [C], log_scale [C])``.

  ``loc`` is the per-channel mean and ``exp(log_scale) = sqrt(var + eps)`` the per-channel
  standard deviation over all axes but the last, so ``ActNorm(loc, log_scale).forward(x)``
  has zero mean and (up to eps) unit variance per channel on this batch. This is an
  explicit step the caller runs once on a first batch; ActNorm itself never updates.
  """
  if x.ndim < 2:
    raise ValueError(
        f"actnorm_init_params expects x: [B, ..., C] with a batch axis, got shape "
        f"{tuple(x.shape)}.")
  axes = tuple(range(x.ndim - 1))
  loc = jnp.mean(x, axis=axes)
  var = jnp.var(x, axis=axes)
  return loc, 0.5 * jnp.log(var + eps)
