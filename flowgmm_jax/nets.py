"""Conditioner networks (Flax Linen) for coupling layers.

A conditioner maps the kept (unchanged) part of a coupling layer's input to ``(s_raw, t)``; the
coupling bijector (``flowgmm_jax.bijectors.coupling``) turns ``s_raw`` into a bounded
log-scale ``s = scale * tanh(s_raw)`` and applies ``y = (x + t) * exp(s)`` to the changed
part. The conditioners never need to be invertible.

* ``ResNetConditioner``: the s/t network of the original FlowGMM / RealNVP image code
  (``flow_ssl/resnet_realnvp/resnet.py``), NHWC:

      h = BN(x); h = 2h if double_after_norm          (checkerboard couplings only)
      h = relu(concat[h, -h])                           (concat-ReLU, input only)
      h = WNConv3x3(h) -> mid;  skip = WNConv1x1(h)
      num_blocks times:
        h = h + WNConv3x3(relu(BN(WNConv3x3_nobias(relu(BN(h))))))
        skip = skip + WNConv1x1(h)                     (skip accumulation)
      out = WNConv1x1(relu(BN(skip))) -> out_channels = [s_raw | t]

  All convolutions are weight-normalised (``WNConv``), every BatchNorm is affine.
  The ``num_blocks`` identical residual blocks run as one ``nn.scan``: XLA compiles one
  block, not ``num_blocks`` copies.
* ``MLP`` / ``MLPConditioner``: the tabular s/t network of the original
  (``CouplingLayerTabular``): ``hidden_layers`` hidden layers, Dense(k), ReLU, [Dropout],
  (hidden_layers - 1) x (Dense(k), ReLU), then Dense(out).
* ``Rescale``: the learnable per-channel factor ``scale`` of ``s = scale * tanh(s_raw)``,
  weight-normalised like the original (``weight_norm(Rescale(C))``).

Initialisation, line by line against the original (``flow_ssl/resnet_realnvp/resnet.py``
and ``resnet_util.py``, ``flow_ssl/realnvp/coupling_layer.py``, under PyTorch's defaults),
with ``zero_init_last=False``:

  original                                    here
  BatchNorm2d: weight 1, bias 0, running      BatchNorm: scale 1, bias 0, mean 0, var 1,
    mean 0, var 1; momentum 0.1, eps 1e-5       momentum 0.9 (Flax names the kept share),
                                                epsilon 1e-5
  weight_norm(Conv2d(C_in, C_out, k)): the    WNConv: v ~ U(-b, b) [k, k, C_in, C_out],
    weight ~ U(-b, b) (kaiming_uniform,         g = ||v|| per output channel, bias ~
    a = sqrt 5), bias ~ U(-b, b), then          U(-b, b); b = 1 / sqrt(k k C_in)
    g = ||weight|| per output channel
    (in_conv, in_skip, the blocks' convs,
    skips, out_conv alike)
  weight_norm(Rescale(C)): weight 1 [C,1,1]   Rescale: g = 1, v = 1
  nn.Linear (tabular): U(-b, b) kernel and    MLP's Dense: the same
    bias, b = 1 / sqrt(fan_in)

so the initial kernel of every convolution equals ``v``. Measured, not only read: every
tensor of ``configs/mnist.py:cpu``'s flow has the original's shape, constants and uniform
bounds, and given the original's tensors our flow computes its latent, log-det, loss terms
and gradient to float32 round-off (tests/test_benchmarks.py, which need a clone of the
original). In use BatchNorm differs in one way: its running variance averages the biased
batch variance here and the unbiased one in torch (a relative 1 / (B H W - 1); evaluation
only).

``zero_init_last=True`` instead sets the last layer's gain ``g`` and bias to 0 (``v``
stays random: the norm needs it non-zero), so ``s_raw = t = 0`` and each coupling starts as
the identity; until ``g`` moves away from 0 no gradient reaches the layers before it. The
original's image ResNet has no such option; its tabular MLP has the same ``init_zeros``
switch, off by default.

Parameter naming: weight-norm direction ``v`` and gain ``g``; a weight-decay mask over the
gains (the original applies weight decay to the ``weight_g`` gains and nothing else) is
``flowgmm_jax.models.weight_norm_gain_mask``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

# PyTorch's BatchNorm defaults (running = 0.9 running + 0.1 batch, eps 1e-5).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def torch_default_kernel_init(key, shape, dtype=jnp.float32):
  """PyTorch's default kernel init for Linear/Conv: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  ``shape`` is ``[..., fan_in_part, out]`` (HWIO for convs, [in, out] for dense); fan_in is
  the product of all but the last axis. Equals kaiming_uniform(a=sqrt(5)).
  """
  return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")(key, shape, dtype)


def _uniform_bias_init(fan_in: int):
  """PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / float(fan_in) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


# NHWC images, HWIO kernels: the layout XLA:CPU's fast convolution kernels take.
_NHWC_HWIO = jax.lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                          out_spec=(0, 3, 1, 2))


def conv2d_same(x: Array, kernel: Array) -> Array:
  """Stride-1 'SAME' (zero-padded) convolution, ``x: [B, H, W, C_in]``, ``kernel: [k, k,
  C_in, C_out]`` (k odd) -> ``[B, H, W, C_out]``.

  On CPU ``conv2d_same_cpu`` (a custom JVP that keeps the gradients fast inside loops, see
  there); on every other backend the plain ``lax.conv_general_dilated``
  (``conv2d_same_plain``), whose gradients GPU and TPU compilers canonicalise themselves.
  The backend is chosen when the program is lowered (``lax.platform_dependent``), so one
  traced step serves every backend. The same numbers either way.
  """
  return jax.lax.platform_dependent(x, kernel, cpu=conv2d_same_cpu,
                                    default=conv2d_same_plain)


def conv2d_same_plain(x: Array, kernel: Array) -> Array:
  """``conv2d_same`` as JAX differentiates it by default (GPU, TPU)."""
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                      dimension_numbers=_NHWC_HWIO)


@jax.custom_jvp
def conv2d_same_cpu(x: Array, kernel: Array) -> Array:
  """``conv2d_same`` for XLA:CPU, whose gradients are convolutions in the same fast layout.

  Why: JAX's transpose rules express the input and filter gradients of a convolution as
  convolutions with permuted dimension numbers and leave it to XLA to make them canonical.
  XLA:CPU does that outside loops but not inside a loop body (jax-ml/jax#12868), where such
  a convolution runs as a naive loop nest, 30x slower: the backward pass of the scanned
  residual blocks. So the JVP below is written with the permutations as explicit
  transposes, chosen so that what JAX transposes it into (the backward pass) are canonical
  NHWC x HWIO convolutions: the input gradient a convolution with the flipped kernel, the
  filter gradient a convolution over the batch axis, as XLA itself builds them outside
  loops. Forward mode (``jax.jvp``, ``jax.jacfwd``) computes the same tangents, in that
  unusual layout. The same numbers as ``lax.conv_general_dilated`` either way.
  """
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                      dimension_numbers=_NHWC_HWIO)


@conv2d_same_cpu.defjvp
def _conv2d_same_jvp(primals, tangents):
  x, kernel = primals
  dx, dkernel = tangents
  # conv(dx, kernel) with the kernel stored [k, k, C_out, C_in]: its transpose (w.r.t. dx)
  # is a conv of the cotangent with the flipped kernel in HWIO, canonical.
  input_part = jax.lax.conv_general_dilated(
      dx, jnp.swapaxes(kernel, 2, 3), (1, 1), "SAME",
      dimension_numbers=jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (2, 3, 0, 1), (0, 3, 1, 2)))
  # conv(x, dkernel) with x stored [C_in, H, W, B], dkernel [C_in, k, k, C_out] and the
  # output [H, W, B, C_out]: its transpose (w.r.t. dkernel) is the canonical conv of x
  # (batch axis as features) with the cotangent (batch axis as input features).
  kernel_part = jax.lax.conv_general_dilated(
      jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dkernel, (2, 0, 1, 3)), (1, 1), "SAME",
      dimension_numbers=jax.lax.ConvDimensionNumbers((3, 0, 1, 2), (3, 0, 1, 2), (2, 3, 0, 1)))
  return conv2d_same_cpu(x, kernel), input_part + jnp.transpose(kernel_part, (2, 0, 1, 3))


def _weight_norm(v: Array, g: Array) -> Array:
  """Weight-normalised kernel ``g * v / ||v||`` with the norm over all axes but the last
  (output-channel) axis. ``v: [..., out]``, ``g: [out]``."""
  axes = tuple(range(v.ndim - 1))
  norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=axes))
  return v * (g / norm)


class WNConv(nn.Module):
  """Weight-normalised 2-D convolution, NHWC, stride 1, 'SAME' (zero) padding.

  ``kernel = g * v / ||v||`` with ``v: [k, k, C_in, features]`` and one gain per output
  channel ``g: [features]`` (the norm runs over ``k, k, C_in``), as
  ``torch.nn.utils.weight_norm(nn.Conv2d(...))`` with its default ``dim=0``.

  Attributes:
    features: output channels.
    kernel_size: side length k (odd; 1 or 3 in the flows).
    use_bias: add a per-channel bias.
    zero_init: initialise ``g`` and ``bias`` to zero so the output is exactly 0 at init
      (``v`` stays random: it must be non-zero for the normalisation).
    param_dtype: dtype of the parameters (the weight norm is computed in it).
    dtype: compute dtype of the convolution (e.g. bfloat16); None: the promoted dtype of
      the input and the parameters.
  """
  features: int
  kernel_size: int = 3
  use_bias: bool = True
  zero_init: bool = False
  param_dtype: jnp.dtype = jnp.float32
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """``x: [B, H, W, C_in] -> [B, H, W, features]``."""
    k = self.kernel_size
    in_channels = x.shape[-1]
    fan_in = k * k * in_channels
    v = self.param("v", torch_default_kernel_init, (k, k, in_channels, self.features),
                   self.param_dtype)
    if self.zero_init:
      g = self.param("g", nn.initializers.zeros, (self.features,), self.param_dtype)
    else:
      # g = ||v|| so that the initial kernel equals v (PyTorch's weight_norm init).
      g = self.param(
          "g", lambda _key, _shape, _dtype: jnp.sqrt(jnp.sum(jnp.square(v), axis=(0, 1, 2))),
          (self.features,), self.param_dtype)
    kernel = _weight_norm(v, g)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    if k == 1:
      # A 1x1 convolution is a matrix product over the channel axis. Written as one, XLA:CPU
      # runs it as a GEMM, faster forward and backward than its convolution kernel
      # (benchmarks/README.md, the kernel timings).
      y = jnp.einsum("bhwc,co->bhwo", x, kernel[0, 0])
    else:
      y = conv2d_same(x, kernel)
    if self.use_bias:
      bias_init = nn.initializers.zeros if self.zero_init else _uniform_bias_init(fan_in)
      bias = self.param("bias", bias_init, (self.features,), self.param_dtype)
      y = y + jnp.asarray(bias, y.dtype)
    return y


class Rescale(nn.Module):
  """Learnable per-channel factor of the coupling log-scale, ``s = scale * tanh(s_raw)``.

  Weight-normalised like the original's ``weight_norm(Rescale(C))`` (weight ``[C, 1, 1]``,
  norm per channel): ``scale_c = g_c * v_c / |v_c|``, both initialised to 1, so
  ``scale = 1`` at init. Two parameters per channel, as in the original (``v`` only carries
  a sign and gets zero gradient; keep it out of weight decay, see the module docstring).
  """
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, num_channels: int) -> Array:
    """Returns ``scale: [num_channels]``."""
    g = self.param("g", nn.initializers.ones, (num_channels,), self.param_dtype)
    v = self.param("v", nn.initializers.ones, (num_channels,), self.param_dtype)
    return g * v / jnp.abs(v)


def _residual_block(h: Array, skip: Array, mid: int, batch_norm, conv,
                    mask: Array | None = None) -> tuple[Array, Array]:
  """One residual block of ``ResNetConditioner`` on ``h, skip: [B, H, W, mid]``:

      h = h + WNConv3x3(relu(BN(WNConv3x3_nobias(relu(BN(h))))));  skip = skip + WNConv1x1(h)

  ``batch_norm(name)`` and ``conv(features, k, name, **kw)`` build the layers (named
  in_norm, in_conv, out_norm, out_conv, skip); ``mask: [B]`` the rows BatchNorm's batch
  moments count (None: all)."""
  r = nn.relu(batch_norm("in_norm")(h, mask))
  r = conv(mid, 3, "in_conv", use_bias=False)(r)
  r = nn.relu(batch_norm("out_norm")(r, mask))
  r = conv(mid, 3, "out_conv")(r)
  h = h + r
  return h, skip + conv(mid, 1, "skip")(h)


class _ResidualBlock(nn.Module):
  """One residual block as the body of ``ResNetConditioner``'s scan: carry ``(h, skip)``."""
  mid_channels: int
  train: bool
  bn_axis_name: str | None
  param_dtype: jnp.dtype
  dtype: jnp.dtype | None

  @nn.compact
  def __call__(self, carry: tuple[Array, Array], _, mask: Array | None
               ) -> tuple[tuple[Array, Array], None]:
    h, skip = carry
    def batch_norm(name):
      return _batch_norm(self.train, self.bn_axis_name, self.dtype, self.param_dtype, name)

    def conv(features, k, name, **kw):
      return WNConv(features, k, param_dtype=self.param_dtype, dtype=self.dtype, name=name,
                    **kw)

    return _residual_block(h, skip, self.mid_channels, batch_norm, conv, mask), None


class BatchNorm(nn.Module):
  """Affine batch normalisation over every axis but the last (channels), whose batch moments
  count only the examples ``mask`` keeps, exactly across devices.

  Variables as ``nn.BatchNorm``'s: params ``scale``, ``bias`` ``[C]``; batch_stats ``mean``,
  ``var`` ``[C]`` (float32; running = momentum * running + (1 - momentum) * batch, with the
  biased batch variance). Why not ``nn.BatchNorm(mask=...)``: across devices it averages each
  device's masked mean, which is the global moment only when every device keeps as many
  rows, and a device whose rows are all padding would give 0 / 0. Here each device sums
  ``[x, x^2, count]`` over its kept rows and one ``psum`` over ``axis_name`` adds them.

  Attributes:
    use_running_average: normalise by the running statistics (evaluation) instead of the
      batch's (then nothing is updated and ``mask`` is not needed).
    axis_name: the device axis the batch moments are summed over (``"data"`` inside the
      train step's shard_map), or None: this device's rows alone.
    momentum, epsilon: as PyTorch's BatchNorm2d defaults (``BN_MOMENTUM``, ``BN_EPSILON``).
    dtype: dtype of the output (e.g. bfloat16); the moments are computed in at least
      float32. None: the promoted dtype of the input and the parameters.
    param_dtype: dtype of ``scale`` and ``bias``.
  """
  use_running_average: bool = False
  axis_name: str | None = None
  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPSILON
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None) -> Array:
    """``x: [B, ..., C] -> [B, ..., C]``; ``mask: [B]`` bool (False: a padding row that
    counts for nothing in the batch moments) or None (every row counts)."""
    features = x.shape[-1]
    running_mean = self.variable("batch_stats", "mean",
                                 lambda: jnp.zeros((features,), jnp.float32))
    running_var = self.variable("batch_stats", "var",
                                lambda: jnp.ones((features,), jnp.float32))
    if self.use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      stats_dtype = jnp.promote_types(x.dtype, jnp.float32)
      xs = x.astype(stats_dtype)
      row_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
      weight = (jnp.ones(row_shape, stats_dtype) if mask is None
                else jnp.reshape(mask, row_shape).astype(stats_dtype))
      axes = tuple(range(x.ndim - 1))
      count = jnp.sum(weight) * math.prod(x.shape[1:-1])
      sums = jnp.stack([jnp.sum(xs * weight, axes), jnp.sum(jnp.square(xs) * weight, axes),
                        jnp.broadcast_to(count, (features,))])
      if self.axis_name is not None and not self.is_initializing():
        sums = jax.lax.psum(sums, self.axis_name)  # one collective per norm
      count = jnp.maximum(sums[2], 1.0)  # a batch of padding only: finite, and unused
      mean = sums[0] / count
      var = jnp.maximum(sums[1] / count - jnp.square(mean), 0.0)
      if not self.is_initializing():
        running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
        running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
    scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
    y = (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return jnp.asarray(y, self.dtype or jnp.result_type(x, scale, bias))


def _batch_norm(train: bool, axis_name: str | None, dtype, param_dtype, name: str
                ) -> BatchNorm:
  return BatchNorm(use_running_average=not train, axis_name=axis_name, dtype=dtype,
                   param_dtype=param_dtype, name=name)


class ResNetConditioner(nn.Module):
  """The original RealNVP/FlowGMM ResNet s/t network (NHWC); see the module docstring.

  Attributes:
    mid_channels: width of the hidden layers.
    num_blocks: number of residual blocks (8 in the paper).
    out_channels: channels of the raw output ``[s_raw | t]``; None means
      ``2 * C_in`` (the kept input has as many channels as the changed part in all
      RealNVP/Glow couplings). Must be even.
    double_after_norm: multiply the normalised input by 2 (the original does this for
      checkerboard couplings, where half the inputs are masked to zero).
    zero_init_last: zero the last conv so ``s_raw = t = 0`` at init (coupling = identity).
    bn_axis_name: passed to BatchNorm's ``axis_name`` so batch statistics are averaged
      over devices (e.g. "data" under shard_map/pmap); None on one device.
    param_dtype: parameter dtype.
    dtype: compute dtype of the convolutions and BatchNorms (e.g. bfloat16; BatchNorm keeps
      its statistics in float32); None: float32. The outputs are cast back to the input's
      dtype, so the coupling's affine map and log-det stay in full precision.

  The ``num_blocks`` residual blocks run as one ``nn.scan``: their parameters and BatchNorm
  statistics are stacked on a leading axis of size ``num_blocks`` under the one module
  ``blocks`` (``blocks/in_conv/v: [num_blocks, 3, 3, mid, mid]``, ``blocks/skip``).
  """
  mid_channels: int = 64
  num_blocks: int = 8
  out_channels: int | None = None
  double_after_norm: bool = False
  zero_init_last: bool = True
  bn_axis_name: str | None = None
  param_dtype: jnp.dtype = jnp.float32
  dtype: jnp.dtype | None = None

  def _batch_norm(self, train: bool, name: str) -> BatchNorm:
    return _batch_norm(train, self.bn_axis_name, self.dtype, self.param_dtype, name)

  @nn.compact
  def __call__(self, x: Array, train: bool = False, mask: Array | None = None
               ) -> tuple[Array, Array]:
    """``x: [B, H, W, C_in] -> (s_raw, t)``, each ``[B, H, W, out_channels / 2]``.

    BatchNorm uses batch statistics (and updates ``batch_stats``, which must then be
    mutable) when ``train`` is True, running statistics otherwise. ``mask: [B]`` bool: the
    rows the batch statistics count (False: padding); None: all.
    """
    if x.ndim != 4:
      raise ValueError(
          f"ResNetConditioner expects NHWC images [B, H, W, C], got shape {tuple(x.shape)}.")
    out_channels = self.out_channels or 2 * x.shape[-1]
    if out_channels % 2:
      raise ValueError(f"ResNetConditioner: out_channels must be even (s_raw and t halves), "
                       f"got {out_channels}.")
    mid = self.mid_channels
    def wn(features, k, name, **kw):
      return WNConv(features, k, param_dtype=self.param_dtype, dtype=self.dtype, name=name,
                    **kw)

    h = self._batch_norm(train, "in_norm")(x, mask)
    if self.double_after_norm:
      h = 2.0 * h
    h = nn.relu(jnp.concatenate([h, -h], axis=-1))  # concat-ReLU keeps sign information
    h = wn(mid, 3, "in_conv")(h)
    skip = wn(mid, 1, "in_skip")(h)
    if self.num_blocks > 0:
      blocks = nn.scan(_ResidualBlock, variable_axes={"params": 0, "batch_stats": 0},
                       split_rngs={"params": True}, in_axes=(0, nn.broadcast),
                       length=self.num_blocks, check_constancy_invariants=False)
      (h, skip), _ = blocks(mid, train, self.bn_axis_name, self.param_dtype, self.dtype,
                            name="blocks")((h, skip), None, mask)
    out = nn.relu(self._batch_norm(train, "out_norm")(skip, mask))
    out = wn(out_channels, 1, "out_conv", zero_init=self.zero_init_last)(out)
    s_raw, t = jnp.split(out.astype(x.dtype), 2, axis=-1)
    return s_raw, t


class MLP(nn.Module):
  """Tabular MLP of the original coupling layer, raw output.

  ``Dense(hidden) -> ReLU -> Dropout(dropout_rate) -> (hidden_layers - 1) x (Dense(hidden)
  -> ReLU) -> Dense(out_dim)``. Dropout (only after the first layer, as in the original;
  p = 0.5 in its experiments) is active only when ``train`` is True and then needs
  ``rngs={'dropout': key}``.

  Attributes:
    hidden_dim: width k.
    hidden_layers: number of hidden layers of width k (>= 1), the first included (as
      ``config.model.hidden_layers``). The original's ``num_layers`` counts only the
      k -> k layers after the first: its ``num_layers=n`` is ``hidden_layers=n + 1``.
    out_dim: output width.
    dropout_rate: 0 disables dropout.
    zero_init_last: zero the last layer's kernel and bias.
    dtype: compute dtype of the dense layers (e.g. bfloat16); None: float32. The output is
      cast back to the input's dtype.
  """
  hidden_dim: int
  hidden_layers: int
  out_dim: int
  dropout_rate: float = 0.0
  zero_init_last: bool = False
  param_dtype: jnp.dtype = jnp.float32
  dtype: jnp.dtype | None = None

  def _dense(self, features: int, fan_in: int, name: str, zero: bool = False) -> nn.Dense:
    if zero:
      return nn.Dense(features, kernel_init=nn.initializers.zeros,
                      bias_init=nn.initializers.zeros, param_dtype=self.param_dtype,
                      dtype=self.dtype, name=name)
    return nn.Dense(features, kernel_init=torch_default_kernel_init,
                    bias_init=_uniform_bias_init(fan_in), param_dtype=self.param_dtype,
                    dtype=self.dtype, name=name)

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    """``x: [B, D_in] -> [B, out_dim]``."""
    if self.hidden_layers < 1:
      raise ValueError(f"MLP: hidden_layers must be >= 1, got {self.hidden_layers}.")
    h = nn.relu(self._dense(self.hidden_dim, x.shape[-1], "in_dense")(x))
    if self.dropout_rate > 0:
      h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    for i in range(self.hidden_layers - 1):
      h = nn.relu(self._dense(self.hidden_dim, self.hidden_dim, f"hidden{i}")(h))
    out = self._dense(self.out_dim, self.hidden_dim, "out_dense", self.zero_init_last)(h)
    return out.astype(x.dtype)


class MLPConditioner(nn.Module):
  """Tabular s/t network: ``MLP`` whose output is split into ``(s_raw, t)``.

  Attributes:
    hidden_dim, hidden_layers, dropout_rate, zero_init_last: as ``MLP``.
    out_dim: width of ``[s_raw | t]``; None means ``2 * D_in`` (s and t for every
      input position; the coupling masks the kept ones). Must be even.
  """
  hidden_dim: int = 256
  hidden_layers: int = 3
  dropout_rate: float = 0.0
  out_dim: int | None = None
  zero_init_last: bool = False
  param_dtype: jnp.dtype = jnp.float32
  dtype: jnp.dtype | None = None  # compute dtype of the MLP (see MLP)

  @nn.compact
  def __call__(self, x: Array, train: bool = False, out_dim: int | None = None
               ) -> tuple[Array, Array]:
    """``x: [B, D_in] -> (s_raw, t)``, each ``[B, out_dim / 2]``.

    ``out_dim`` given here overrides the attribute (the flow knows the changed width only
    when it sees the data); it must be the same on every call.
    """
    out_dim = out_dim or self.out_dim or 2 * x.shape[-1]
    if out_dim % 2:
      raise ValueError(f"MLPConditioner: out_dim must be even (s_raw and t halves), "
                       f"got {out_dim}.")
    out = MLP(self.hidden_dim, self.hidden_layers, out_dim, self.dropout_rate,
              self.zero_init_last, self.param_dtype, self.dtype, name="mlp")(x, train)
    s_raw, t = jnp.split(out, 2, axis=-1)
    return s_raw, t


class MLPSplineConditioner(nn.Module):
  """Tabular conditioner for spline couplings: ``MLP`` whose output is reshaped to
  per-dimension spline parameters.

  Attributes:
    params_per_dim: parameters per input dimension (``3 * num_bins - 1`` for a
      rational-quadratic spline: widths, heights, interior derivatives).
    hidden_dim, hidden_layers, dropout_rate, zero_init_last: as ``MLP``.
  """
  params_per_dim: int
  hidden_dim: int = 256
  hidden_layers: int = 3
  dropout_rate: float = 0.0
  zero_init_last: bool = False
  param_dtype: jnp.dtype = jnp.float32
  dtype: jnp.dtype | None = None  # compute dtype of the MLP (see MLP)

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    """``x: [B, D] -> [B, D, params_per_dim]``."""
    batch, dim = x.shape
    out = MLP(self.hidden_dim, self.hidden_layers, dim * self.params_per_dim,
              self.dropout_rate, self.zero_init_last, self.param_dtype, self.dtype,
              name="mlp")(x, train)
    return out.reshape(batch, dim, self.params_per_dim)
