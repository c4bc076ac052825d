"""Invertible 1x1 convolution with an LU-parametrised weight (Glow, Kingma & Dhariwal 2018).

Direction: ``forward`` is data -> latent, ``inverse`` is latent -> data (see base.py).

    W = P @ L @ U,   L = strictly_lower(lower) + I,
                     U = strictly_upper(upper) + diag(sign_s * exp(log_s))
    log|det W| = sum(log_s)        (P is a permutation, det L = 1)

so the log-det costs O(C) instead of an O(C^3) determinant. That log-det is of the exact W,
so every product here runs at ``precision=HIGHEST``: at the default precision a TPU
multiplies in one bfloat16 pass and a GPU in TF32, applying a W whose log-det is not the
one counted.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.linalg import lu, solve_triangular

from flowgmm_jax.bijectors.base import Array, Bijector

_EXACT = jax.lax.Precision.HIGHEST


def _matmul(a: Array, b: Array) -> Array:
  return jnp.matmul(a, b, precision=_EXACT)


class Conv1x1LU(Bijector):
  """Invertible 1x1 convolution on the last axis. Forward = data -> latent.

  forward: ``y = x @ W`` on the last (channel) axis, ``x, y: [B, ..., C]`` (images
           ``[B, H, W, C]`` or tabular ``[B, D]`` with D playing the role of C);
           ``log_det = (number of non-channel event positions) * sum(log_s)``, i.e.
           ``H * W * sum(log_s)`` for images and ``sum(log_s)`` for tabular.
  inverse: ``x = y @ W^{-1}`` computed with two triangular solves.

  Args:
    perm: the permutation P, either a ``[C, C]`` permutation matrix or a ``[C]`` integer
      index vector meaning ``P = eye(C)[perm]`` (row i of P is the unit vector perm[i]).
    lower: ``[C, C]``; only the strictly lower triangle is used (unit diagonal implied).
    upper: ``[C, C]``; only the strictly upper triangle is used.
    log_s: ``[C]`` log-magnitudes of U's diagonal.
    sign_s: ``[C]`` signs (+-1) of U's diagonal (fixed, not trained).
  """

  def __init__(self, perm: Array, lower: Array, upper: Array, log_s: Array,
               sign_s: Array):
    self.perm = perm
    self.lower = lower
    self.upper = upper
    self.log_s = log_s
    self.sign_s = sign_s

  def _factors(self, dtype) -> tuple[Array, Array, Array]:
    """Returns (P, L, U) as ``[C, C]`` arrays of ``dtype``."""
    log_s = jnp.asarray(self.log_s, dtype)
    channels = log_s.shape[0]
    perm = jnp.asarray(self.perm)
    if perm.ndim == 1:
      perm_matrix = jnp.eye(channels, dtype=dtype)[perm]
    else:
      perm_matrix = perm.astype(dtype)
    lower = jnp.asarray(self.lower, dtype)
    upper = jnp.asarray(self.upper, dtype)
    for name, value in (("perm", perm_matrix), ("lower", lower), ("upper", upper)):
      if value.shape != (channels, channels):
        raise ValueError(
            f"Conv1x1LU: {name} has shape {tuple(value.shape)}, expected "
            f"[C, C] = [{channels}, {channels}] to match log_s.")
    eye = jnp.eye(channels, dtype=dtype)
    l_matrix = jnp.tril(lower, -1) + eye
    diag = jnp.asarray(self.sign_s, dtype) * jnp.exp(log_s)
    u_matrix = jnp.triu(upper, 1) + jnp.diag(diag)
    return perm_matrix, l_matrix, u_matrix

  def weight(self, dtype=None) -> Array:
    """The assembled ``W = P @ L @ U``, ``[C, C]`` (forward is ``x @ W``); ``dtype``
    defaults to that of ``log_s``."""
    p, lower, upper = self._factors(jnp.asarray(self.log_s).dtype if dtype is None else dtype)
    return _matmul(_matmul(p, lower), upper)

  def _check_channels(self, x: Array) -> None:
    channels = jnp.shape(self.log_s)[0]
    if x.ndim < 2 or x.shape[-1] != channels:
      raise ValueError(
          f"Conv1x1LU: input shape {tuple(x.shape)} must be [B, ..., C] with C = "
          f"{channels} channels on the last axis.")

  def _log_det(self, x: Array, sign: float) -> Array:
    positions = math.prod(x.shape[1:-1])
    log_det = sign * positions * jnp.sum(jnp.asarray(self.log_s, x.dtype))
    return jnp.broadcast_to(log_det, x.shape[:1])

  def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
    """Data -> latent: ``x: [B, ..., C]`` -> ``(y: [B, ..., C], log_det: [B])``."""
    self._check_channels(x)
    return _matmul(x, self.weight(x.dtype)), self._log_det(x, 1.0)

  def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
    """Latent -> data: ``y: [B, ..., C]`` -> ``(x: [B, ..., C], log_det: [B])``."""
    self._check_channels(y)
    p, lower, upper = self._factors(y.dtype)
    # W^{-1} = U^{-1} L^{-1} P^T, built from triangular solves (no general inverse).
    l_inv_pt = solve_triangular(lower, p.T, lower=True, unit_diagonal=True)
    w_inv = solve_triangular(upper, l_inv_pt, lower=False)
    return _matmul(y, w_inv), self._log_det(y, -1.0)


def conv1x1_lu_init(rng: Array, channels: int, dtype=jnp.float32) -> dict[str, Array]:
  """LU parameters of a random orthogonal ``[C, C]`` matrix (so the initial log-det is 0).

  Returns a dict with keys ``perm`` ([C, C] permutation matrix), ``lower``, ``upper``
  ([C, C]), ``log_s`` and ``sign_s`` ([C]); ``Conv1x1LU(**conv1x1_lu_init(rng, C))``.
  ``perm`` and ``sign_s`` are meant to stay fixed; the other three are trained.
  """
  channels = int(channels)
  if channels < 1:
    raise ValueError(f"conv1x1_lu_init: channels must be >= 1, got {channels}.")
  gaussian = jax.random.normal(rng, (channels, channels), dtype)
  q, r = jnp.linalg.qr(gaussian)
  # Fix the signs so that Q is Haar-distributed (and the QR convention does not matter).
  q = q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(dtype)[None, :]
  p, lower, upper = lu(q)  # q = p @ lower @ upper
  diag = jnp.diagonal(upper)
  return {
      "perm": p.astype(dtype),
      "lower": jnp.tril(lower, -1),
      "upper": jnp.triu(upper, 1),
      "log_s": jnp.log(jnp.abs(diag)),
      "sign_s": jnp.sign(diag),
  }
