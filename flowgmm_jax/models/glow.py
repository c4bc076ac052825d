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

Layout: the steps of one scale are identical in shape,
so each scale's ``steps_per_scale`` steps run as one ``nn.scan`` (``flowgmm_jax.models.scan``)
with the fixed 1x1-conv permutations, signs and initial factors stacked as the scanned
input; the conditioners' residual blocks are scanned too. Module ``scales_{s}`` holds
``actnorm``, ``conv1x1``, ``conditioner`` and ``rescale``, every array with the step as a
leading axis, e.g. ``scales_0/conv1x1/lower: [8, 12, 12]``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flowgmm_jax.bijectors.actnorm import ActNorm, actnorm_init_params
from flowgmm_jax.bijectors.conv1x1 import Conv1x1LU, conv1x1_lu_init
from flowgmm_jax.bijectors.coupling import ChannelCoupling
from flowgmm_jax.models.multiscale import MultiScaleFlow
from flowgmm_jax.models.scan import ScannedStack
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


@functools.cache
def _fixed_conv1x1_lu_init(seed: int, channels: int) -> dict[str, np.ndarray]:
  """``conv1x1_lu_init(PRNGKey(seed), channels)`` as numpy constants, evaluated eagerly
  (also when called while tracing) and cached: deterministic, so computed once."""
  with jax.ensure_compile_time_eval():
    lu_init = conv1x1_lu_init(jax.random.PRNGKey(seed), channels)
    return {k: np.asarray(v) for k, v in lu_init.items()}


def _conv1x1_layer(module: nn.Module, lu_init) -> Conv1x1LU:
  """``Conv1x1LU`` with ``module``'s trained factors ``lower``, ``upper``, ``log_s``
  (initialised from ``lu_init``) and the fixed ``lu_init['perm']`` and ``lu_init['sign_s']``."""
  def param(name):
    return module.param(name, lambda _key: jnp.asarray(lu_init[name], module.param_dtype))
  return Conv1x1LU(lu_init["perm"], param("lower"), param("upper"), param("log_s"),
                   lu_init["sign_s"])


class StackedConv1x1Layer(nn.Module):
  """One invertible 1x1 convolution's trained LU factors inside a scan; returns
  ``Conv1x1LU``. The fixed permutation and signs, and the initial factors (from
  ``conv1x1_lu_init(PRNGKey(seed), C)``), come in as this layer's slice of the scanned input (``lu_init``: perm ``[C, C]``, sign_s ``[C]``, the
  initial lower, upper ``[C, C]`` and log_s ``[C]``)."""
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, lu_init: dict[str, Array]) -> Conv1x1LU:
    return _conv1x1_layer(self, lu_init)


class GlowStep(nn.Module):
  """One Glow step (ActNorm -> 1x1 conv -> channel coupling) as the body of a scanned
  scale: carry ``(x: [B, H, W, C], log_det: [B])``, scanned input ``lu_init`` (see
  ``StackedConv1x1Layer``). Modules: ``actnorm``, ``conv1x1``, ``conditioner``,
  ``rescale``. Going forward during ``init`` ActNorm initialises from the activations
  reaching this step. ``mask: [B]``: the rows BatchNorm's batch statistics count."""
  mid_channels: int
  num_blocks: int
  zero_init_last: bool = True
  bn_axis_name: str | None = None
  param_dtype: jnp.dtype = jnp.float32
  compute_dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, carry: tuple[Array, Array], lu_init: dict[str, Array], *,
               inverse: bool, train: bool, mask: Array | None = None
               ) -> tuple[Array, Array]:
    x, log_det = carry
    channels = x.shape[-1]
    net = ResNetConditioner(mid_channels=self.mid_channels, num_blocks=self.num_blocks,
                            double_after_norm=False, zero_init_last=self.zero_init_last,
                            bn_axis_name=self.bn_axis_name, param_dtype=self.param_dtype,
                            dtype=self.compute_dtype, name="conditioner")
    layers = [ActNormLayer(param_dtype=self.param_dtype, name="actnorm")(
                  x, data_init=not inverse),
              StackedConv1x1Layer(param_dtype=self.param_dtype, name="conv1x1")(lu_init),
              ChannelCoupling(lambda h: net(h, train, mask),
                              Rescale(param_dtype=self.param_dtype, name="rescale")(
                                  channels // 2), swap=False)]
    for layer in (reversed(layers) if inverse else layers):
      x, step_log_det = layer.inverse_and_log_det(x) if inverse else layer.forward_and_log_det(x)
      log_det = log_det + step_log_det
    return x, log_det


class _GlowStep(NamedTuple):
  kind: str            # "squeeze" | "flow" | "factor_out"
  index: int = -1      # flow-step index (ActNorm / 1x1 conv / coupling lists)
  scale: int = 0
  count: int = 1       # flow steps it stands for: steps_per_scale in the scanned plan


def glow_plan(num_scales: int, steps_per_scale: int) -> list[_GlowStep]:
  """The static list of steps of the multi-scale Glow (see the module docstring); each
  scale's flow steps are one step (``count = steps_per_scale``, ``index`` the first
  one's)."""
  steps, index = [], 0
  for scale in range(num_scales):
    steps.append(_GlowStep("squeeze", scale=scale))
    steps.append(_GlowStep("flow", index, scale, steps_per_scale))
    index += steps_per_scale
    if scale < num_scales - 1:
      steps.append(_GlowStep("factor_out", scale=scale))
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

  def _conv1x1_seed(self, index: int) -> int:
    """The seed of flow step ``index``'s fixed 1x1-conv factors and initial values."""
    return self.conv1x1_seed * 1_000_003 + index

  def setup(self):
    if self.num_scales < 1 or self.steps_per_scale < 1:
      raise ValueError(f"Glow: num_scales and steps_per_scale must be >= 1, got "
                       f"{self.num_scales} and {self.steps_per_scale}.")
    self.plan = glow_plan(self.num_scales, self.steps_per_scale)
    self.scales = [
        GlowStep(self.mid_channels, self.num_blocks, zero_init_last=self.zero_init_last,
                 bn_axis_name=self.bn_axis_name, param_dtype=self.param_dtype,
                 compute_dtype=self.compute_dtype)
        for _ in range(self.num_scales)]

  def _scale(self, step: _GlowStep, channels: int, train: bool,
             mask: Array | None = None) -> ScannedStack:
    """Scale ``step.scale``'s flow steps as one scanned stack; the scanned input is each
    step's fixed 1x1-conv factors and initial values, stacked: ``[count, ...]``."""
    inits = [_fixed_conv1x1_lu_init(self._conv1x1_seed(step.index + k), channels)
             for k in range(step.count)]
    lu_init = {name: np.stack([init[name] for init in inits]) for name in inits[0]}
    return ScannedStack(self.scales[step.scale], lu_init, step.count, train, mask=mask)

  def _flow_step(self, train: bool, mask: Array | None = None):
    """The scaffold's ``flow_step``: ActNorm -> 1x1 conv -> coupling (scanned: a scale's
    steps at once). Going forward, ActNorm is built from the activations reaching it (its
    data-dependent init)."""
    return lambda step, x, inverse: [self._scale(step, x.shape[-1], train, mask)]

  def _input_channels(self, params) -> int:
    # The first ActNorm acts after the first squeeze: 4C channels.
    return params["scales_0"]["actnorm"]["loc"].shape[-1] // 4
