"""Pixel preprocessing as bijectors: uniform dequantisation and the bounded logit.

Direction: ``forward`` is data -> latent, ``inverse`` is latent -> data (see base.py).

Bits per dimension. With ``dequantize_logit(noise)`` placed first in the flow, the total
forward log-det includes Dequantize's ``-D log 256``, so

    nll(x) = -(log p_z(f(x)) + log|det J_f(x)|)

is the negative log-density of the dequantised pixels ``x + u`` on the integer scale
[0, 256)^D (unit-width bins), i.e. the usual variational bound on the discrete NLL in
nats. Bits/dim is then simply ``nll / (D * log 2)``: no extra ``D log 256`` term may be
added afterwards (it is already inside the log-det).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from flowgmm_jax.bijectors.base import Array, Bijector, Chain, sum_except_batch

_NUM_LEVELS = 256


class Dequantize(Bijector):
  """Uniform dequantisation. Forward = data -> latent.

  forward: ``x: [B, ...]`` (floats holding integer pixel values 0..255) ->
           ``y = (x + noise) / 256`` in [0, 1); ``log_det = -D log 256`` per example,
           D = number of event entries.
  inverse: ``x = y * 256 - noise``; ``log_det = +D log 256``.

  Args:
    noise: array in [0, 1) drawn by the caller (this bijector draws nothing), broadcastable
      to the input's shape ``[B, ...]`` (normally exactly that shape).
  """

  def __init__(self, noise: Array):
    self.noise = noise

  def _checked_noise(self, x: Array) -> Array:
    noise = jnp.asarray(self.noise, x.dtype)
    try:
      shape = jnp.broadcast_shapes(noise.shape, x.shape)
    except ValueError:
      shape = None
    if shape != tuple(x.shape):
      raise ValueError(
          f"Dequantize: noise of shape {tuple(noise.shape)} does not broadcast to the "
          f"input shape {tuple(x.shape)}; draw the noise with the input's shape.")
    return noise

  def _log_det(self, x: Array, sign: float) -> Array:
    num_event = math.prod(x.shape[1:])
    return jnp.full(x.shape[:1], sign * num_event * math.log(_NUM_LEVELS), x.dtype)

  def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
    """Data -> latent: ``x: [B, ...]`` -> ``(y: [B, ...], log_det: [B])``."""
    noise = self._checked_noise(x)
    return (x + noise) / _NUM_LEVELS, self._log_det(x, -1.0)

  def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
    """Latent -> data: ``y: [B, ...]`` -> ``(x: [B, ...], log_det: [B])``."""
    noise = self._checked_noise(y)
    return y * _NUM_LEVELS - noise, self._log_det(y, 1.0)


class Logit(Bijector):
  """Bounded logit (RealNVP's pre-processing). Forward = data -> latent.

  forward: ``p: [B, ...]`` in [0, 1] -> ``y = logit(q)``, ``q = alpha + (1 - 2 alpha) p``;
    ``dy/dp = (1 - 2 alpha) / (q (1 - q))``, so per entry
    ``log dy/dp = log(1 - 2 alpha) + softplus(y) + softplus(-y)``
    (using ``-log q = softplus(-y)`` and ``-log(1 - q) = softplus(y)``).
  inverse: ``p = (sigmoid(y) - alpha) / (1 - 2 alpha)``, log-det the negative.
  ``alpha = 0.05`` matches the original's ``iLogits(cnstr=0.9)`` (cnstr = 1 - 2 alpha).
  """

  def __init__(self, alpha: float = 0.05):
    if not 0.0 <= float(alpha) < 0.5:
      raise ValueError(f"Logit: alpha must be in [0, 0.5), got {alpha!r}.")
    self.alpha = float(alpha)

  def _log_abs_dydp(self, y: Array) -> Array:
    return (math.log1p(-2 * self.alpha) + jax.nn.softplus(y) + jax.nn.softplus(-y))

  def forward_and_log_det(self, p: Array) -> tuple[Array, Array]:
    """Data -> latent: ``p: [B, ...]`` -> ``(y: [B, ...], log_det: [B])``."""
    q = self.alpha + (1 - 2 * self.alpha) * p
    y = jnp.log(q) - jnp.log1p(-q)
    return y, sum_except_batch(self._log_abs_dydp(y))

  def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
    """Latent -> data: ``y: [B, ...]`` -> ``(p: [B, ...], log_det: [B])``."""
    p = (jax.nn.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)
    return p, -sum_except_batch(self._log_abs_dydp(y))


def dequantize_logit(noise: Array, alpha: float = 0.05) -> Chain:
  """``Chain([Dequantize(noise), Logit(alpha)])``: integer pixels -> logit space.

  Forward = data -> latent: ``x: [B, H, W, C]`` (values 0..255) -> ``[B, H, W, C]`` reals;
  its log-det includes ``-D log 256`` (see the module docstring on bits/dim).
  """
  return Chain([Dequantize(noise), Logit(alpha)])
