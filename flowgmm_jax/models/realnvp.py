"""Multi-scale RealNVP for images (Dinh et al. 2017), as used by FlowGMM.

Forward (``__call__``) is data -> latent: ``x: [B, H, W, C] -> (z: [B, H*W*C], log_det: [B])``.
``inverse`` is latent -> data and needs no prior forward call.

Architecture (the original's ``flow_ssl/realnvp/realnvp.py: RealNVP``; the original also
starts with a dequantise+logit layer, which here is the separate preprocessing bijector
``flowgmm_jax.bijectors.dequantize_logit`` applied before the flow):

    for scale in 0 .. num_scales - 1 (C, mid = input channels, mid_channels at scale 0):
      3 checkerboard affine couplings, mask parities 0, 1, 0, on [H, W, C]
      if last scale:
        1 more checkerboard coupling, parity 1              (4 in total)
      else:
        squeeze 2x2                                          -> [H/2, W/2, 4C]
        3 channel-wise couplings, swap False, True, False, conditioner width 2*mid
        factor out the last 2C channels into the latent      -> continue on [H/2, W/2, 2C]
      C, mid = 2C, 2 mid
    z = concat(flatten(factored pieces in order), flatten(final activations))

Every coupling uses ``ResNetConditioner`` (weight-normalised ResNet with BatchNorm,
``num_blocks`` blocks) and a learnable per-channel ``Rescale``: ``s = scale * tanh(s_raw)``.
Checkerboard conditioners see all C channels (the changed ones masked to zero) and double
their normalised input; channel-wise ones see the kept half of the channels.

With the defaults (2 scales, 8 blocks, 64 mid channels) the flow has 19,631,640 parameters
on 32x32x3 and 19,552,008 on 28x28x1, exactly the original's counts.

Spatial size: there are ``num_scales - 1`` squeezes, so H and W must be divisible by
``2 ** (num_scales - 1)``.

Layout: the couplings of one kind within one scale have
conditioners of equal shapes, so each such stack runs as one ``nn.scan``
(``flowgmm_jax.models.scan``), and so do the residual blocks inside every conditioner:

    checkerboards_{s}   the checkerboard couplings of scale s, the mask per coupling as the
                        scanned input (parities 0, 1, 0 or 0, 1, 0, 1)
    channels_{s}        the channel-wise couplings of scale s (not the last), each run as a
                        swap=False coupling followed by a swap of the channel halves
                        (swap = 0, 1, 0 alternates, so this is the same map; a stack of odd
                        length ends with one more swap of the halves)

each holding ``conditioner`` (a ``ResNetConditioner``, its blocks under ``blocks``) and
``rescale``, every array with the coupling as a leading axis, e.g.
``checkerboards_0/conditioner/blocks/in_conv/v: [3, 8, 3, 3, 64, 64]`` (coupling, block,
kernel). Coupling k of ``realnvp_plan`` is index ``k - first_index`` of its stack
(``realnvp_scanned_plan``).
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from flowgmm_jax.bijectors.coupling import AffineCoupling, ChannelCoupling, checkerboard_mask
from flowgmm_jax.models.multiscale import MultiScaleFlow
from flowgmm_jax.models.scan import ScannedStack
from flowgmm_jax.nets import Rescale, ResNetConditioner

Array = jax.Array


class _Step(NamedTuple):
  """One static step of the multi-scale plan.

  kind: "checkerboard" | "channel" (couplings), "squeeze" or "factor_out".
  parity: checkerboard parity, or channel-coupling swap (0/1).
  coupling_index: index into the conditioner/rescale lists (couplings only).
  scale: the scale the step belongs to.
  """
  kind: str
  parity: int = 0
  coupling_index: int = -1
  scale: int = 0


def realnvp_plan(num_scales: int) -> list[_Step]:
  """The static list of steps of the multi-scale RealNVP (see the module docstring)."""
  steps: list[_Step] = []
  index = 0
  for scale in range(num_scales):
    last = scale == num_scales - 1
    parities = (0, 1, 0, 1) if last else (0, 1, 0)
    for parity in parities:
      steps.append(_Step("checkerboard", parity, index, scale))
      index += 1
    if not last:
      steps.append(_Step("squeeze", scale=scale))
      for swap in (0, 1, 0):
        steps.append(_Step("channel", swap, index, scale))
        index += 1
      steps.append(_Step("factor_out", scale=scale))
  return steps


class _Stack(NamedTuple):
  """Consecutive couplings of one kind within one scale: one scanned stack.

  kind: "checkerboard" | "channel"; parities: each coupling's parity / swap, in order;
  first_index: ``realnvp_plan``'s coupling index of its first coupling; scale: its scale.
  """
  kind: str
  parities: tuple[int, ...]
  first_index: int
  scale: int

  @property
  def module_name(self) -> str:
    """The stack's module in the scanned layout: checkerboards_{scale} or channels_{scale}."""
    return f"{'checkerboards' if self.kind == 'checkerboard' else 'channels'}_{self.scale}"


def realnvp_scanned_plan(num_scales: int) -> list[_Step | _Stack]:
  """``realnvp_plan`` with each run of couplings of one kind and scale as one ``_Stack``."""
  plan: list[_Step | _Stack] = []
  for step in realnvp_plan(num_scales):
    last = plan[-1] if plan else None
    if step.coupling_index < 0:
      plan.append(step)
    elif isinstance(last, _Stack) and (last.kind, last.scale) == (step.kind, step.scale):
      plan[-1] = last._replace(parities=last.parities + (step.parity,))
    else:
      plan.append(_Stack(step.kind, (step.parity,), step.coupling_index, step.scale))
  return plan


def swap_channel_halves(x: Array) -> Array:
  """``[x_a | x_b] -> [x_b | x_a]`` on the last axis (C even): a permutation, its own
  inverse."""
  half = x.shape[-1] // 2
  return jnp.concatenate([x[..., half:], x[..., :half]], axis=-1)


class RealNVPCoupling(nn.Module):
  """One coupling of a scanned stack of RealNVP couplings (the body of ``scan_layers``).

  ``kind="checkerboard"``: ``AffineCoupling`` with the mask given as the scanned input
  ``[H, W, 1]``; ``kind="channel"``: ``ChannelCoupling(swap=False)`` then
  ``swap_channel_halves`` (so alternating swaps need no per-layer code). Its modules:
  ``conditioner`` (``ResNetConditioner``) and ``rescale``.
  """
  kind: str
  mid_channels: int
  num_blocks: int
  zero_init_last: bool = True
  bn_axis_name: str | None = None
  param_dtype: jnp.dtype = jnp.float32
  compute_dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, carry: tuple[Array, Array], checkerboard: Array | None, *,
               inverse: bool, train: bool, mask: Array | None = None
               ) -> tuple[Array, Array]:
    """``carry = (x: [B, H, W, C], log_det: [B])`` -> the same after this coupling;
    ``checkerboard: [H, W, 1]`` this coupling's mask (checkerboard kind), ``mask: [B]`` the
    rows BatchNorm's batch statistics count (None: all)."""
    x, log_det = carry
    net = ResNetConditioner(
        mid_channels=self.mid_channels, num_blocks=self.num_blocks,
        double_after_norm=self.kind == "checkerboard", zero_init_last=self.zero_init_last,
        bn_axis_name=self.bn_axis_name, param_dtype=self.param_dtype,
        dtype=self.compute_dtype, name="conditioner")
    def conditioner(h):
      return net(h, train, mask)
    channels = x.shape[-1]
    if self.kind == "checkerboard":
      scale = Rescale(param_dtype=self.param_dtype, name="rescale")(channels)
      coupling = AffineCoupling(checkerboard, conditioner, scale)
      y, step_log_det = (coupling.inverse_and_log_det(x) if inverse
                         else coupling.forward_and_log_det(x))
    else:
      scale = Rescale(param_dtype=self.param_dtype, name="rescale")(channels // 2)
      coupling = ChannelCoupling(conditioner, scale, swap=False)
      if inverse:
        y, step_log_det = coupling.inverse_and_log_det(swap_channel_halves(x))
      else:
        y, step_log_det = coupling.forward_and_log_det(x)
        y = swap_channel_halves(y)
    return y, log_det + step_log_det


class RealNVP(MultiScaleFlow):
  """Multi-scale image RealNVP (the FlowGMM paper's flow). Forward = data -> latent.

  Attributes (and MultiScaleFlow's: image_shape, bn_axis_name, zero_init_last, param_dtype):
    num_scales: number of scales (2 in the paper); num_scales - 1 squeezes.
    num_blocks: residual blocks per conditioner (8).
    mid_channels: conditioner width at scale 0, doubled at each scale (64).

  Usage::

    model = RealNVP()
    variables = model.init(rng, x)                   # x: [B, 32, 32, 3]
    z, log_det = model.apply(variables, x)            # eval: BN running statistics
    (z, log_det), updates = model.apply(variables, x, train=True,
                                        mutable=["batch_stats"])
    x = model.apply(variables, z, method=model.inverse)
  """
  num_scales: int = 2
  num_blocks: int = 8
  mid_channels: int = 64

  def _conditioner_width(self, kind: str, scale: int) -> int:
    # Channel-wise couplings run after the squeeze at twice the width (as the original).
    return self.mid_channels * 2 ** scale * (2 if kind == "channel" else 1)

  def setup(self):
    if self.num_scales < 1:
      raise ValueError(f"RealNVP: num_scales must be >= 1, got {self.num_scales}.")
    self.plan = realnvp_scanned_plan(self.num_scales)
    def make_stack(kind, scale):
      return RealNVPCoupling(
          kind, self._conditioner_width(kind, scale), self.num_blocks,
          zero_init_last=self.zero_init_last, bn_axis_name=self.bn_axis_name,
          param_dtype=self.param_dtype, compute_dtype=self.compute_dtype)

    self.checkerboards = [make_stack("checkerboard", s) for s in range(self.num_scales)]
    self.channels = [make_stack("channel", s) for s in range(self.num_scales - 1)]

  def _stack(self, group: _Stack, shape: tuple[int, ...], dtype, train: bool,
             mask: Array | None = None) -> ScannedStack:
    """The scanned stack of couplings ``group`` for activations of ``shape`` [B, H, W, C]."""
    n = len(group.parities)
    if group.kind == "checkerboard":
      _, h, w, _ = shape
      masks = jnp.stack([checkerboard_mask(h, w, p, dtype) for p in group.parities])
      return ScannedStack(self.checkerboards[group.scale], masks, n, train, mask=mask)
    # Alternating swaps 0, 1, 0, ... (realnvp_plan) are what swap_channel_halves reproduces.
    assert group.parities == tuple(i % 2 for i in range(n)), group.parities
    return ScannedStack(self.channels[group.scale], None, n, train,
                        after=swap_channel_halves if n % 2 else None, mask=mask)

  def _flow_step(self, train: bool, mask: Array | None = None):
    """The scaffold's ``flow_step``: one scanned stack per step of the plan."""
    return lambda group, x, inverse: [self._stack(group, x.shape, x.dtype, train, mask)]

  def _input_channels(self, params) -> int:
    # The first conditioner's input conv sees concat[x, -x]: 2C input channels.
    return params["checkerboards_0"]["conditioner"]["in_conv"]["v"].shape[-2] // 2
