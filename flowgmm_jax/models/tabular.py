"""Coupling flows for flat (tabular / toy / text-embedding) data ``x: [B, D]``.

Forward (``__call__``) is data -> latent: ``x: [B, D] -> (z: [B, D], log_det: [B])``;
``inverse`` is latent -> data.

* ``RealNVPTabular``: the original's ``RealNVPTabular`` (flow_ssl/realnvp/realnvp.py):
  ``num_coupling_layers`` affine couplings with alternating "halves" masks (coupling i
  keeps the first half of the coordinates when i is even, the second half when i is odd),
  each with an MLP conditioner (``MLPConditioner``: Dense(k), ReLU, [Dropout],
  num_layers x (Dense(k), ReLU), Dense(2D)) and a learnable weight-normalised per-dimension
  ``Rescale``: ``s = scale * tanh(s_raw)``. No BatchNorm. Defaults are the original
  class's (6 couplings, k = 256, num_layers = 2, no dropout, PyTorch default init); the
  paper's experiments used num_layers = 1 and dropout 0.5 with k = 256 and 10 couplings
  (UCI MINIBOONE / HEPMASS) or k = 1024 and 7 couplings (AG-News, Yahoo Answers).
* ``SplineTabular``: the same layout with rational-quadratic spline couplings
  (Durkan et al. 2019) instead of affine ones (not part of the original code).

Scanned layout (``scan=True``, the default): couplings 2p and 2p + 1 (masks keeping the
first half, then the second) form pair p, and the ``num_coupling_layers // 2`` pairs run as
one ``nn.scan`` (``flowgmm_jax.models.scan``): pairs, because for odd D the two halves differ
in width and so do their conditioners. An odd coupling count leaves the last coupling
(parity 0) unpaired. Modules: ``pairs/even`` and ``pairs/odd`` (every array with the pair
as a leading axis) and ``last``, each holding ``conditioner`` (and, for the affine flow,
``rescale``), e.g. ``pairs/even/conditioner/mlp/in_dense/kernel: [3, D // 2, k]`` for 6 or 7
couplings. ``scan=False`` is the unrolled layout, ``conditioners_{i}``, ``rescales_{i}`` per
coupling i. Both compute the same function of the same numbers (dropout masks are drawn
from differently derived keys); ``flowgmm_jax.models.layout`` converts the variables.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from flowgmm_jax.bijectors.base import Chain
from flowgmm_jax.bijectors.coupling import AffineCoupling, halves_mask
from flowgmm_jax.bijectors.spline import RationalQuadraticSplineCoupling
from flowgmm_jax.models.layout import LayoutMap, nest, stack
from flowgmm_jax.models.scan import scan_layers
from flowgmm_jax.nets import MLPConditioner, MLPSplineConditioner, Rescale

Array = jax.Array


def check_tabular_input(x: Array, owner: str, what: str = "x") -> None:
  """ValueError unless ``x`` is ``[B, D]`` with ``D >= 2`` (both halves non-empty)."""
  if x.ndim != 2:
    raise ValueError(f"{owner} expects flat inputs {what}: [B, D], got shape "
                     f"{tuple(x.shape)}; flatten the features first.")
  if x.shape[1] < 2:
    raise ValueError(f"{owner} needs D >= 2 features so that both coupling halves are "
                     f"non-empty, got D = {x.shape[1]}.")


def _chain_of_couplings(model, x: Array, train: bool) -> Chain:
  """The model's couplings as one bijector (coupling 0 nearest the data)."""
  return Chain([model._coupling(i, x.shape[1], x.dtype, train)
                for i in range(model.num_coupling_layers)])


class AffineHalvesCoupling(nn.Module):
  """One coupling of ``RealNVPTabular`` in the scanned layout: ``conditioner``
  (``MLPConditioner``) and ``rescale``, the mask keeping the first half (``parity`` 0) or
  the second (1). ``__call__((x, log_det), inverse, train)``, ``x: [B, D]``, ``log_det:
  [B]``: the carry after this coupling in the direction asked."""
  parity: int
  hidden_dim: int
  num_layers: int
  dropout_rate: float = 0.0
  zero_init_last: bool = False
  full_width_conditioner: bool = False
  param_dtype: jnp.dtype = jnp.float32
  compute_dtype: Optional[jnp.dtype] = None

  @nn.compact
  def __call__(self, carry, inverse: bool, train: bool):
    x, log_det = carry
    dim = x.shape[1]
    net = MLPConditioner(hidden_dim=self.hidden_dim, num_layers=self.num_layers,
                         dropout_rate=self.dropout_rate, zero_init_last=self.zero_init_last,
                         param_dtype=self.param_dtype, dtype=self.compute_dtype,
                         name="conditioner")
    if self.full_width_conditioner:
      def conditioner(h):
        return net(h, train)
    else:
      conditioner = _compact_conditioner(net, dim, keep_first=self.parity == 0, train=train)
    scale = Rescale(param_dtype=self.param_dtype, name="rescale")(dim)
    coupling = AffineCoupling(halves_mask(dim, self.parity, x.dtype), conditioner, scale)
    return _apply(coupling, x, log_det, inverse)


class SplineHalvesCoupling(nn.Module):
  """One coupling of ``SplineTabular`` in the scanned layout: ``conditioner``
  (``MLPSplineConditioner``); otherwise as ``AffineHalvesCoupling``."""
  parity: int
  hidden_dim: int
  num_layers: int
  num_bins: int
  bound: float
  dropout_rate: float = 0.0
  zero_init_last: bool = False
  param_dtype: jnp.dtype = jnp.float32
  compute_dtype: Optional[jnp.dtype] = None

  @nn.compact
  def __call__(self, carry, inverse: bool, train: bool):
    x, log_det = carry
    net = MLPSplineConditioner(params_per_dim=3 * self.num_bins - 1,
                               hidden_dim=self.hidden_dim, num_layers=self.num_layers,
                               dropout_rate=self.dropout_rate,
                               zero_init_last=self.zero_init_last,
                               param_dtype=self.param_dtype, dtype=self.compute_dtype,
                               name="conditioner")
    coupling = RationalQuadraticSplineCoupling(
        halves_mask(x.shape[1], self.parity, x.dtype), lambda h: net(h, train),
        num_bins=self.num_bins, bound=self.bound)
    return _apply(coupling, x, log_det, inverse)


def _apply(coupling, x: Array, log_det: Array, inverse: bool):
  y, step_log_det = coupling.inverse_and_log_det(x) if inverse else coupling.forward_and_log_det(x)
  return y, log_det + step_log_det


class CouplingPair(nn.Module):
  """Couplings 2p (``even``, parity 0) and 2p + 1 (``odd``, parity 1) as the body of the
  pairs' scan; ``make_coupling(parity=..., name=...)`` builds one coupling module. Carry
  ``(x: [B, D], log_det: [B])``; going back, ``odd`` runs first."""
  make_coupling: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, carry, _, *, inverse: bool, train: bool):
    even = self.make_coupling(parity=0, name="even")
    odd = self.make_coupling(parity=1, name="odd")
    for coupling in ((odd, even) if inverse else (even, odd)):
      carry = coupling(carry, inverse, train)
    return carry


def _run_scanned(model, x: Array, inverse: bool, train: bool) -> Tuple[Array, Array]:
  """``x`` through the scanned couplings of ``model`` (its ``pairs`` and, for an odd
  count, ``last``): forward pairs then last, inverse last then the pairs in reverse."""
  carry = (x, jnp.zeros(x.shape[:1], x.dtype))
  num_pairs = model.num_coupling_layers // 2
  def run_pairs(c):
    return scan_layers(model.pairs, c, None, length=num_pairs, inverse=inverse, train=train)

  def run_last(c):
    return model.last(c, inverse, train)
  stages = []
  if num_pairs:
    stages.append(run_pairs)
  if model.num_coupling_layers % 2:
    stages.append(run_last)
  for stage in (reversed(stages) if inverse else stages):
    carry = stage(carry)
  return carry


def _tabular_layout_map(num_coupling_layers: int, rescale: bool) -> LayoutMap:
  """Where coupling i's ``conditioners_{i}`` (and ``rescales_{i}``) go in the scanned layout:
  ``pairs/even`` (i = 2p) and ``pairs/odd`` (i = 2p + 1) at index p, or ``last``."""
  def coupling(i):
    entries = [(("conditioner",), (f"conditioners_{i}",))]
    return entries + ([(("rescale",), (f"rescales_{i}",))] if rescale else [])
  num_pairs = num_coupling_layers // 2
  entries = []
  if num_pairs:
    entries += stack(("pairs",), [nest(("even",), (), coupling(2 * p))
                                  + nest(("odd",), (), coupling(2 * p + 1))
                                  for p in range(num_pairs)])
  if num_coupling_layers % 2:
    entries += nest(("last",), (), coupling(num_coupling_layers - 1))
  return entries


def _setup_scanned(model, make_coupling) -> None:
  """The scanned layout's modules on ``model`` (in its ``setup``): ``pairs`` and ``last``."""
  if model.num_coupling_layers // 2:
    model.pairs = CouplingPair(make_coupling)
  if model.num_coupling_layers % 2:
    model.last = make_coupling(parity=0)


class RealNVPTabular(nn.Module):
  """Affine-coupling RealNVP for ``[B, D]`` data. Forward = data -> latent.

  Attributes:
    num_coupling_layers: number of couplings (masks alternate between the halves).
    hidden_dim: MLP width k.
    num_layers: hidden k -> k layers after the first layer of each MLP.
    dropout_rate: dropout after each MLP's first layer (0.5 in the paper's runs), active
      only with ``train=True`` and ``rngs={'dropout': key}``.
    zero_init_last: zero each MLP's last layer so the flow starts as the identity (the
      original's ``init_zeros``, False by default).
    full_width_conditioner: True reproduces the original's layout, where each MLP reads
      all D inputs (the changed half zeroed by the mask) and predicts s and t for all D
      positions (the kept half discarded). Those extra weights only ever multiply zeros or
      feed discarded outputs, so the default (False) drops them: the MLP reads the kept
      half and predicts the changed half. Same family of functions, about a third fewer
      FLOPs at the paper's text sizes (D = 768, k = 1024).
    param_dtype: parameter dtype.
    scan: the scanned layout (default) or, False, the unrolled one (module docstring).
  """
  num_coupling_layers: int = 6
  hidden_dim: int = 256
  num_layers: int = 2
  dropout_rate: float = 0.0
  zero_init_last: bool = False
  full_width_conditioner: bool = False
  param_dtype: jnp.dtype = jnp.float32
  compute_dtype: Optional[jnp.dtype] = None  # the conditioner MLPs' dtype; None: float32
  scan: bool = True

  def setup(self):
    if self.num_coupling_layers < 1:
      raise ValueError(f"RealNVPTabular: num_coupling_layers must be >= 1, got "
                       f"{self.num_coupling_layers}.")
    if self.scan:
      _setup_scanned(self, functools.partial(
          AffineHalvesCoupling, hidden_dim=self.hidden_dim, num_layers=self.num_layers,
          dropout_rate=self.dropout_rate, zero_init_last=self.zero_init_last,
          full_width_conditioner=self.full_width_conditioner, param_dtype=self.param_dtype,
          compute_dtype=self.compute_dtype))
      return
    self.conditioners = [
        MLPConditioner(hidden_dim=self.hidden_dim, num_layers=self.num_layers,
                       dropout_rate=self.dropout_rate, zero_init_last=self.zero_init_last,
                       param_dtype=self.param_dtype, dtype=self.compute_dtype)
        for _ in range(self.num_coupling_layers)]
    self.rescales = [Rescale(param_dtype=self.param_dtype)
                     for _ in range(self.num_coupling_layers)]

  def layout_map(self) -> LayoutMap:
    """Where each coupling sits in the scanned and the unrolled layout
    (``flowgmm_jax.models.layout``)."""
    return _tabular_layout_map(self.num_coupling_layers, rescale=True)

  def _coupling(self, index: int, dim: int, dtype, train: bool) -> AffineCoupling:
    net = self.conditioners[index]
    mask = halves_mask(dim, index % 2, dtype)
    if self.full_width_conditioner:
      def conditioner(h):
        return net(h, train)
    else:
      conditioner = _compact_conditioner(net, dim, keep_first=index % 2 == 0, train=train)
    return AffineCoupling(mask, conditioner, self.rescales[index](dim))

  def __call__(self, x: Array, train: bool = False, mask: Optional[Array] = None
               ) -> Tuple[Array, Array]:
    """Data -> latent. ``x: [B, D]`` -> ``(z: [B, D], log_det: [B])``. ``mask`` is accepted
    like the image flows' and unused: no layer here mixes rows (no BatchNorm)."""
    del mask
    check_tabular_input(x, "RealNVPTabular")
    if self.scan:
      return _run_scanned(self, x, inverse=False, train=train)
    return _chain_of_couplings(self, x, train).forward_and_log_det(x)

  def inverse(self, z: Array, train: bool = False) -> Array:
    """Latent -> data. ``z: [B, D]`` -> ``x: [B, D]``."""
    check_tabular_input(z, "RealNVPTabular.inverse", "z")
    if self.scan:
      return _run_scanned(self, z, inverse=True, train=train)[0]
    return _chain_of_couplings(self, z, train).inverse(z)


def _compact_conditioner(net, dim: int, keep_first: bool, train: bool):
  """Conditioner for a halves mask that runs ``net`` on the kept half only and returns
  ``(s_raw, t)`` of full width ``[B, D]``, zero on the kept half (which the coupling
  ignores anyway)."""
  split = dim // 2

  def conditioner(h: Array) -> Tuple[Array, Array]:
    kept = h[:, :split] if keep_first else h[:, split:]
    changed = dim - kept.shape[1]
    s_raw, t = net(kept, train, out_dim=2 * changed)
    zeros = jnp.zeros((h.shape[0], dim - changed), h.dtype)
    full = ((lambda a: jnp.concatenate([zeros, a], axis=1)) if keep_first
            else (lambda a: jnp.concatenate([a, zeros], axis=1)))
    return full(s_raw), full(t)

  return conditioner


class SplineTabular(nn.Module):
  """Rational-quadratic spline coupling flow for ``[B, D]`` data. Forward = data -> latent.

  Coupling i transforms one half of the coordinates (alternating, as ``RealNVPTabular``)
  with a monotone spline of ``num_bins`` bins on ``[-bound, bound]`` (identity outside),
  its parameters given by an MLP of the other half.

  Attributes:
    num_coupling_layers, hidden_dim, num_layers, dropout_rate, zero_init_last: as
      ``RealNVPTabular``.
    num_bins: spline bins K (the MLP outputs 3K - 1 numbers per coordinate).
    bound: half-width of the spline's interval.
    param_dtype: parameter dtype.
    scan: the scanned layout (default) or, False, the unrolled one (module docstring).
  """
  num_coupling_layers: int = 6
  hidden_dim: int = 256
  num_layers: int = 2
  num_bins: int = 8
  bound: float = 3.0
  dropout_rate: float = 0.0
  zero_init_last: bool = False
  param_dtype: jnp.dtype = jnp.float32
  compute_dtype: Optional[jnp.dtype] = None  # the conditioner MLPs' dtype; None: float32
  scan: bool = True

  def setup(self):
    if self.num_coupling_layers < 1:
      raise ValueError(f"SplineTabular: num_coupling_layers must be >= 1, got "
                       f"{self.num_coupling_layers}.")
    if self.scan:
      _setup_scanned(self, functools.partial(
          SplineHalvesCoupling, hidden_dim=self.hidden_dim, num_layers=self.num_layers,
          num_bins=self.num_bins, bound=self.bound, dropout_rate=self.dropout_rate,
          zero_init_last=self.zero_init_last, param_dtype=self.param_dtype,
          compute_dtype=self.compute_dtype))
      return
    self.conditioners = [
        MLPSplineConditioner(params_per_dim=3 * self.num_bins - 1,
                             hidden_dim=self.hidden_dim, num_layers=self.num_layers,
                             dropout_rate=self.dropout_rate,
                             zero_init_last=self.zero_init_last,
                             param_dtype=self.param_dtype, dtype=self.compute_dtype)
        for _ in range(self.num_coupling_layers)]

  def layout_map(self) -> LayoutMap:
    """Where each coupling sits in the scanned and the unrolled layout
    (``flowgmm_jax.models.layout``)."""
    return _tabular_layout_map(self.num_coupling_layers, rescale=False)

  def _coupling(self, index: int, dim: int, dtype, train: bool):
    net = self.conditioners[index]
    return RationalQuadraticSplineCoupling(
        halves_mask(dim, index % 2, dtype), lambda h: net(h, train),
        num_bins=self.num_bins, bound=self.bound)

  def __call__(self, x: Array, train: bool = False, mask: Optional[Array] = None
               ) -> Tuple[Array, Array]:
    """Data -> latent. ``x: [B, D]`` -> ``(z: [B, D], log_det: [B])``. ``mask`` is accepted
    like the image flows' and unused: no layer here mixes rows (no BatchNorm)."""
    del mask
    check_tabular_input(x, "SplineTabular")
    if self.scan:
      return _run_scanned(self, x, inverse=False, train=train)
    return _chain_of_couplings(self, x, train).forward_and_log_det(x)

  def inverse(self, z: Array, train: bool = False) -> Array:
    """Latent -> data. ``z: [B, D]`` -> ``x: [B, D]``."""
    check_tabular_input(z, "SplineTabular.inverse", "z")
    if self.scan:
      return _run_scanned(self, z, inverse=True, train=train)[0]
    return _chain_of_couplings(self, z, train).inverse(z)
