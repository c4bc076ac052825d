"""Multi-scale Glow (Kingma & Dhariwal 2018) for images.

Forward (``__call__``) is data -> latent: ``x: [B, H, W, C] -> (z: [B, H*W*C], log_det: [B])``.
``inverse`` is latent -> data and needs no prior forward call.

    for scale in 0 .. num_scales - 1:
      squeeze 2x2                                              [H, W, C] -> [H/2, W/2, 4C]
      steps_per_scale times:
        ActNorm -> invertible 1x1 conv (LU) -> channel-wise affine coupling
      if not the last scale: factor out the last half of the channels into the latent
    z = concat(flatten(factored pieces in order), flatten(final activations))

The coupling is the same as RealNVP's channel-wise coupling (ResNet conditioner with
BatchNorm, ``s = scale * tanh(s_raw)``), always changing the first half of the channels:
the 1x1 convolutions mix the channels between couplings, so no alternation is needed (as
the original's ``flow_ssl/glow.py``, whose own image Glow cannot run on 3-channel inputs
because it couples before the first squeeze; this version squeezes first, as Glow does).
H and W must be divisible by ``2 ** num_scales``.

Data-dependent initialisation: ``model.init(rng, x)`` with a representative batch ``x``
IS ActNorm's data-dependent initialisation. Each ActNorm's ``loc``/``log_scale``
initialisers look at the activations flowing into it during that init call
(``actnorm_init_params``), so its outputs start zero-mean, unit-variance per channel on
that batch. Initialising through ``method=model.inverse`` gives identity ActNorms instead.

The 1x1 convolutions start from the LU factors of a random orthogonal matrix
(``conv1x1_lu_init``). Its permutation and diagonal signs must stay fixed, so rather
than storing them in an extra variable collection they are numpy constants derived from
a fixed per-layer seed (``conv1x1_seed`` and the layer index; computed once, cached), so
the variables hold only ``params`` and ``batch_stats``. The trained factors (``lower``,
``upper``, ``log_s``) are parameters initialised from the same seed, so the 1x1 convs'
initial values do not depend on the ``rng`` passed to ``init``.
"""

from __future__ import annotations

import functools
from typing import Dict, List, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flowgmm_jax.bijectors.actnorm import ActNorm, actnorm_init_params
from flowgmm_jax.bijectors.conv1x1 import Conv1x1LU, conv1x1_lu_init
from flowgmm_jax.bijectors.coupling import ChannelCoupling
from flowgmm_jax.models.multiscale import MultiScaleFlow
from flowgmm_jax.nets import Rescale, ResNetConditioner

Array = jax.Array


class ActNormLayer(nn.Module):
  """Holds one ActNorm's parameters ``loc, log_scale: [C]`` and returns the bijector.

  On ``init`` with ``data_init=True`` the parameters are initialised from the incoming
  activations ``x`` (``actnorm_init_params``): the data-dependent initialisation.
  """
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, data_init: bool = True) -> ActNorm:
    channels = x.shape[-1]

    def init(_key, which: int):
      if not data_init:
        return jnp.zeros((channels,), self.param_dtype)
      return actnorm_init_params(jax.lax.stop_gradient(x))[which].astype(self.param_dtype)

    return ActNorm(self.param("loc", init, 0), self.param("log_scale", init, 1))


@functools.lru_cache(maxsize=None)
def _fixed_conv1x1_lu_init(seed: int, channels: int) -> Dict[str, np.ndarray]:
  """``conv1x1_lu_init(PRNGKey(seed), channels)`` as numpy constants, evaluated eagerly
  (also when called while tracing) and cached: deterministic, so computed once."""
  with jax.ensure_compile_time_eval():
    lu_init = conv1x1_lu_init(jax.random.PRNGKey(seed), channels)
    return {k: np.asarray(v) for k, v in lu_init.items()}


class Conv1x1Layer(nn.Module):
  """Holds one invertible 1x1 convolution's trained LU factors; returns ``Conv1x1LU``.

  The fixed permutation and signs come from ``conv1x1_lu_init(PRNGKey(seed), C)`` (numpy
  constants), as do the initial values of ``lower``, ``upper``, ``log_s``.
  """
  seed: int = 0
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, num_channels: int) -> Conv1x1LU:
    lu_init = _fixed_conv1x1_lu_init(self.seed, num_channels)
    param = lambda name: self.param(
        name, lambda _key: jnp.asarray(lu_init[name], self.param_dtype))
    return Conv1x1LU(lu_init["perm"], param("lower"), param("upper"), param("log_s"),
                     lu_init["sign_s"])


class _GlowStep(NamedTuple):
  kind: str            # "squeeze" | "flow" | "factor_out"
  index: int = -1      # flow-step index (ActNorm / 1x1 conv / coupling lists)


def glow_plan(num_scales: int, steps_per_scale: int) -> List[_GlowStep]:
  """The static list of steps of the multi-scale Glow (see the module docstring)."""
  steps, index = [], 0
  for scale in range(num_scales):
    steps.append(_GlowStep("squeeze"))
    for _ in range(steps_per_scale):
      steps.append(_GlowStep("flow", index))
      index += 1
    if scale < num_scales - 1:
      steps.append(_GlowStep("factor_out"))
  return steps


class Glow(MultiScaleFlow):
  """Multi-scale Glow for images. Forward = data -> latent.

  Attributes (and MultiScaleFlow's: image_shape, bn_axis_name, zero_init_last, param_dtype):
    num_scales: number of scales (one squeeze each; all but the last factor out half).
    steps_per_scale: flow steps (ActNorm, 1x1 conv, coupling) per scale.
    mid_channels: ResNet conditioner width (the same at every scale).
    num_blocks: residual blocks per conditioner.
    conv1x1_seed: seed of the fixed 1x1-convolution permutations/signs and their init.
  """
  num_scales: int = 3
  steps_per_scale: int = 8
  mid_channels: int = 128
  num_blocks: int = 2
  conv1x1_seed: int = 0

  def setup(self):
    if self.num_scales < 1 or self.steps_per_scale < 1:
      raise ValueError(f"Glow: num_scales and steps_per_scale must be >= 1, got "
                       f"{self.num_scales} and {self.steps_per_scale}.")
    self.plan = glow_plan(self.num_scales, self.steps_per_scale)
    num_steps = self.num_scales * self.steps_per_scale
    self.actnorms = [ActNormLayer(param_dtype=self.param_dtype) for _ in range(num_steps)]
    self.conv1x1s = [Conv1x1Layer(seed=self.conv1x1_seed * 1_000_003 + i,
                                  param_dtype=self.param_dtype) for i in range(num_steps)]
    self.conditioners = [
        ResNetConditioner(mid_channels=self.mid_channels, num_blocks=self.num_blocks,
                          double_after_norm=False, zero_init_last=self.zero_init_last,
                          bn_axis_name=self.bn_axis_name, param_dtype=self.param_dtype,
                          dtype=self.compute_dtype)
        for _ in range(num_steps)]
    self.rescales = [Rescale(param_dtype=self.param_dtype) for _ in range(num_steps)]

  def _coupling(self, index: int, channels: int, train: bool) -> ChannelCoupling:
    net = self.conditioners[index]
    return ChannelCoupling(lambda h: net(h, train), self.rescales[index](channels // 2),
                           swap=False)

  def _flow_step(self, train: bool):
    """The scaffold's ``flow_step``: ActNorm -> 1x1 conv -> coupling. Going forward, ActNorm
    is built from the activations reaching it (its data-dependent init)."""
    def flow_step(step: _GlowStep, x: Array, inverse: bool):
      i, c = step.index, x.shape[-1]
      return [self.actnorms[i](x, data_init=not inverse), self.conv1x1s[i](c),
              self._coupling(i, c, train)]
    return flow_step

  def _input_channels(self, params) -> int:
    # The first ActNorm acts after the first squeeze: 4C channels.
    return params["actnorms_0"]["loc"].shape[0] // 4
