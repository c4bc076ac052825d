"""Rational-quadratic spline coupling (Durkan et al. 2019, "Neural Spline Flows").

Direction: ``forward`` is data -> latent, ``inverse`` is latent -> data (see base.py).

On [-bound, bound] each changed coordinate goes through a monotone rational-quadratic
spline with K bins; outside it the map is the identity (linear tails). The boundary
derivatives are fixed to 1, so the spline joins the tails with matching value and slope.

Within bin k, with knots (x_k, y_k), widths w_k, heights h_k, slope s_k = h_k / w_k,
knot derivatives d_k, d_{k+1} and xi = (x - x_k) / w_k in [0, 1]:

    y = y_k + h_k (s_k xi^2 + d_k xi (1 - xi)) / (s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi))
    dy/dx = s_k^2 (d_{k+1} xi^2 + 2 s_k xi (1 - xi) + d_k (1 - xi)^2)
            / (s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi))^2

The inverse solves a xi^2 + b xi + c = 0 with
    a = h_k (s_k - d_k) + (y - y_k)(d_{k+1} + d_k - 2 s_k)
    b = h_k d_k - (y - y_k)(d_{k+1} + d_k - 2 s_k)
    c = -s_k (y - y_k)
in the cancellation-free form xi = 2c / (-b - sqrt(b^2 - 4ac)) (b^2 - 4ac >= 0 and the
denominator is <= 0 with c <= 0, so no catastrophic subtraction).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from flowgmm_jax.bijectors.base import Array, Bijector, sum_except_batch


def _knots(raw: Array, bound: float, min_size: float) -> tuple[Array, Array]:
  """Unnormalised sizes ``[..., K]`` -> (knot positions ``[..., K+1]``, sizes ``[..., K]``)."""
  num_bins = raw.shape[-1]
  sizes = min_size + (1 - min_size * num_bins) * jax.nn.softmax(raw, axis=-1)
  cumulative = jnp.cumsum(sizes, axis=-1)
  knots = 2 * bound * cumulative - bound
  # Pin both ends exactly so the spline meets the identity tails at +-bound.
  lead = jnp.full(raw.shape[:-1] + (1,), -bound, raw.dtype)
  knots = jnp.concatenate([lead, knots[..., :-1], -lead], axis=-1)
  return knots, knots[..., 1:] - knots[..., :-1]


def _log_derivative(xi: Array, slope: Array, d_k: Array, d_k1: Array) -> Array:
  """log dy/dx of the rational-quadratic segment at relative position ``xi``."""
  xi_1m = xi * (1 - xi)
  numer = d_k1 * xi ** 2 + 2 * slope * xi_1m + d_k * (1 - xi) ** 2
  denom = slope + (d_k1 + d_k - 2 * slope) * xi_1m
  return 2 * jnp.log(slope) + jnp.log(numer) - 2 * jnp.log(denom)


def _gather(values: Array, index: Array) -> Array:
  """``values[..., index]`` per position: ``values: [..., N]``, ``index: [...]``.

  A one-hot sum rather than a gather: N is a handful of bins, and this compiles faster
  and vectorises well on accelerators."""
  one_hot = index[..., None] == jnp.arange(values.shape[-1])
  return jnp.sum(jnp.where(one_hot, values, 0), axis=-1)


class RationalQuadraticSplineCoupling(Bijector):
  """Masked rational-quadratic spline coupling for tabular ``x: [B, D]``.
  Forward = data -> latent.

  Args:
    mask: ``[D]``, 1 = kept (identity, fed to the conditioner), 0 = changed.
    conditioner: callable ``x * mask: [B, D] -> params: [B, D, 3 * num_bins - 1]``, the
      unnormalised bin widths (K), bin heights (K) and interior knot derivatives (K - 1),
      in that order. Entries at kept positions are ignored.
    num_bins: K.
    bound: the spline acts on [-bound, bound]; identity outside.
    min_bin_width, min_bin_height, min_derivative: lower limits that keep bins and
      slopes away from 0 (numerical stability of the inverse).

  Shapes: ``x: [B, D] -> y: [B, D]``, ``log_det: [B]`` = sum over the changed positions
  inside [-bound, bound] of log dy/dx (0 for kept positions and the tails).
  """

  def __init__(self, mask: Array, conditioner: Callable[[Array], Array],
               num_bins: int = 8, bound: float = 3.0, min_bin_width: float = 1e-3,
               min_bin_height: float = 1e-3, min_derivative: float = 1e-3):
    if int(num_bins) < 1:
      raise ValueError(f"RationalQuadraticSplineCoupling: num_bins must be >= 1, got "
                       f"{num_bins}.")
    if not float(bound) > 0:
      raise ValueError(f"RationalQuadraticSplineCoupling: bound must be > 0, got {bound}.")
    if not (0 <= min_bin_width * num_bins < 1 and 0 <= min_bin_height * num_bins < 1):
      raise ValueError(
          "RationalQuadraticSplineCoupling: min_bin_width * num_bins and "
          "min_bin_height * num_bins must be in [0, 1); lower the minimum sizes.")
    self.mask = mask
    self.conditioner = conditioner
    self.num_bins = int(num_bins)
    self.bound = float(bound)
    self.min_bin_width = float(min_bin_width)
    self.min_bin_height = float(min_bin_height)
    self.min_derivative = float(min_derivative)

  def _spline_params(self, x_kept: Array):
    """Returns knots_x, widths, knots_y, heights (``[B, D, K(+1)]``) and derivatives
    ``[B, D, K+1]``."""
    params = self.conditioner(x_kept)
    k = self.num_bins
    expected = tuple(x_kept.shape) + (3 * k - 1,)
    if tuple(params.shape) != expected:
      raise ValueError(
          f"RationalQuadraticSplineCoupling: the conditioner returned shape "
          f"{tuple(params.shape)}, expected [B, D, 3 * num_bins - 1] = {expected}.")
    params = params.astype(x_kept.dtype)
    raw_widths, raw_heights, raw_derivs = (
        params[..., :k], params[..., k:2 * k], params[..., 2 * k:])
    knots_x, widths = _knots(raw_widths, self.bound, self.min_bin_width)
    knots_y, heights = _knots(raw_heights, self.bound, self.min_bin_height)
    ones = jnp.ones(raw_derivs.shape[:-1] + (1,), x_kept.dtype)
    interior = self.min_derivative + jax.nn.softplus(raw_derivs)
    derivs = jnp.concatenate([ones, interior, ones], axis=-1)  # slope 1 at +-bound
    return knots_x, widths, knots_y, heights, derivs

  def _bin_values(self, knots: Array, value: Array, spline_params):
    """Index of the bin holding ``value`` (by ``knots``) and that bin's quantities."""
    knots_x, widths, knots_y, heights, derivs = spline_params
    # Number of interior knots <= value: 0 .. K-1, no clipping needed.
    index = jnp.sum(value[..., None] >= knots[..., 1:-1], axis=-1)
    x_k, w_k = _gather(knots_x, index), _gather(widths, index)
    y_k, h_k = _gather(knots_y, index), _gather(heights, index)
    d_k, d_k1 = _gather(derivs, index), _gather(derivs, index + 1)
    return x_k, w_k, y_k, h_k, d_k, d_k1

  def _setup(self, v: Array):
    mask = jnp.asarray(self.mask, v.dtype)
    if v.ndim != 2 or mask.shape != v.shape[1:]:
      raise ValueError(
          f"RationalQuadraticSplineCoupling expects x: [B, D] with a [D] mask, got input "
          f"shape {tuple(v.shape)} and mask shape {tuple(mask.shape)}.")
    inside = (v >= -self.bound) & (v <= self.bound) & (mask == 0)
    # Clamp so the unused branch of jnp.where stays finite (and so do its gradients).
    v_in = jnp.clip(v, -self.bound, self.bound)
    return inside, v_in, self._spline_params(v * mask)

  def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
    """Data -> latent: ``x: [B, D]`` -> ``(y: [B, D], log_det: [B])``."""
    inside, x_in, params = self._setup(x)
    x_k, w_k, y_k, h_k, d_k, d_k1 = self._bin_values(params[0], x_in, params)
    slope = h_k / w_k
    xi = jnp.clip((x_in - x_k) / w_k, 0.0, 1.0)
    xi_1m = xi * (1 - xi)
    denom = slope + (d_k1 + d_k - 2 * slope) * xi_1m
    y_spline = y_k + h_k * (slope * xi ** 2 + d_k * xi_1m) / denom
    log_deriv = _log_derivative(xi, slope, d_k, d_k1)
    y = jnp.where(inside, y_spline, x)
    return y, sum_except_batch(jnp.where(inside, log_deriv, 0.0))

  def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
    """Latent -> data: ``y: [B, D]`` -> ``(x: [B, D], log_det: [B])``."""
    inside, y_in, params = self._setup(y)
    x_k, w_k, y_k, h_k, d_k, d_k1 = self._bin_values(params[2], y_in, params)
    slope = h_k / w_k
    dy = y_in - y_k
    curvature = d_k1 + d_k - 2 * slope
    a = h_k * (slope - d_k) + dy * curvature
    b = h_k * d_k - dy * curvature
    c = -slope * dy
    discriminant = jnp.maximum(b ** 2 - 4 * a * c, 0.0)
    xi = jnp.clip(2 * c / (-b - jnp.sqrt(discriminant)), 0.0, 1.0)
    x_spline = x_k + xi * w_k
    log_deriv = _log_derivative(xi, slope, d_k, d_k1)
    x = jnp.where(inside, x_spline, y)
    return x, -sum_except_batch(jnp.where(inside, log_deriv, 0.0))
