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
"""

from __future__ import annotations

from typing import List, NamedTuple, Tuple

from flowgmm_jax.bijectors.coupling import AffineCoupling, ChannelCoupling, checkerboard_mask
from flowgmm_jax.models.multiscale import MultiScaleFlow
from flowgmm_jax.nets import Rescale, ResNetConditioner


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


def realnvp_plan(num_scales: int) -> List[_Step]:
  """The static list of steps of the multi-scale RealNVP (see the module docstring)."""
  steps: List[_Step] = []
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

  def setup(self):
    if self.num_scales < 1:
      raise ValueError(f"RealNVP: num_scales must be >= 1, got {self.num_scales}.")
    self.plan = realnvp_plan(self.num_scales)
    couplings = [s for s in self.plan if s.coupling_index >= 0]
    # Channel-wise couplings run after the squeeze at twice the width (as the original).
    self.conditioners = [
        ResNetConditioner(
            mid_channels=self.mid_channels * 2 ** s.scale * (2 if s.kind == "channel" else 1),
            num_blocks=self.num_blocks,
            double_after_norm=s.kind == "checkerboard",
            zero_init_last=self.zero_init_last,
            bn_axis_name=self.bn_axis_name,
            param_dtype=self.param_dtype,
            dtype=self.compute_dtype)
        for s in couplings]
    self.rescales = [Rescale(param_dtype=self.param_dtype) for _ in couplings]

  def _coupling(self, step: _Step, shape: Tuple[int, ...], dtype, train: bool):
    """The coupling bijector of ``step`` for activations of ``shape`` [B, H, W, C]."""
    net = self.conditioners[step.coupling_index]
    conditioner = lambda h: net(h, train)
    _, h, w, c = shape
    if step.kind == "checkerboard":
      scale = self.rescales[step.coupling_index](c)
      return AffineCoupling(checkerboard_mask(h, w, step.parity, dtype), conditioner, scale)
    scale = self.rescales[step.coupling_index](c // 2)
    return ChannelCoupling(conditioner, scale, swap=bool(step.parity))

  def _flow_step(self, train: bool):
    """The scaffold's ``flow_step``: one coupling per step of the plan."""
    return lambda step, x, inverse: [self._coupling(step, x.shape, x.dtype, train)]

  def _input_channels(self, params) -> int:
    # The first conditioner's input conv sees concat[x, -x]: 2C input channels.
    return params["conditioners_0"]["in_conv"]["v"].shape[2] // 2
