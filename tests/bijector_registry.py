"""One registry of tiny, randomised bijectors AND flows for the generic tests (flowjax
style): whatever is registered here is tested by tests/test_bijectors.py the moment it
is registered (round trip in float32/float64, log-det vs log|det jax.jacfwd| in float64,
inverse log-det = -forward, batch independence, jit vs eager).

``REGISTRY[name](rng, dtype) -> (bijector, example_input)`` with ``rng`` a
``numpy.random.Generator`` (numpy draws need no XLA compilation, which keeps the suite
fast). Parameters are random and
far from the identity (log-dets typically |.| > 0.5), conditioners are fixed random
nonlinear functions of the whole example (so kept positions influence every changed
one and the Jacobians are dense below the diagonal), and ``scale`` is not 1.
The constructors build everything in ``dtype`` (call them inside ``jax.enable_x64`` for
float64). ``ZERO_LOG_DET`` names the entries whose log-det is identically 0.

Flows (the Linen models of ``flowgmm_jax.models``) enter through ``FlowAsBijector``; their
tiny configurations live in ``TINY_FLOWS`` (one place; tests/test_models.py imports them
from here for its model-specific tests). Flow entries are named
``flow_<name>`` and use a batch of 2 (the least that batch independence needs).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from flowgmm_jax import bijectors as bij
from flowgmm_jax.models import Glow, RealNVP, TabularFlow

Constructor = Callable[[np.random.Generator, jnp.dtype], tuple[bij.Bijector, jax.Array]]

IMAGE_SHAPE = (3, 4, 4, 2)
IMAGE_SHAPE_4C = (3, 4, 4, 4)
TABULAR_SHAPE = (5, 6)


def normal(rng: np.random.Generator, shape, dtype) -> jax.Array:
  return jnp.asarray(rng.standard_normal(shape), dtype)


def uniform(rng: np.random.Generator, shape, dtype, low, high) -> jax.Array:
  return jnp.asarray(rng.uniform(low, high, shape), dtype)


def random_mlp(rng, in_shape, out_shape, dtype, hidden=16,
               out_scale=1.0) -> Callable[[jax.Array], jax.Array]:
  """A fixed random per-example MLP ``[B, *in_shape] -> [B, *out_shape]``:
  ``tanh(h W1 + b1) W2 * out_scale + b2``."""
  d_in, d_out = math.prod(in_shape), math.prod(out_shape)
  w1 = normal(rng, (d_in, hidden), dtype) * (2.0 / math.sqrt(d_in))
  b1 = normal(rng, (hidden,), dtype) * 0.5
  w2 = normal(rng, (hidden, d_out), dtype) / math.sqrt(hidden)
  b2 = normal(rng, (d_out,), dtype) * 0.5

  def apply(h):
    flat = h.reshape(h.shape[0], -1)
    out = (jnp.tanh(flat @ w1 + b1) @ w2) * out_scale + b2
    return out.reshape((h.shape[0],) + tuple(out_shape))

  return apply


def st_conditioner(rng, in_shape, out_shape, dtype, s_bias=0.6):
  """A random conditioner ``h -> (s_raw, t)`` with s_raw biased away from 0 (so the
  log-det is clearly non-zero) and non-zero on every position, kept ones included."""
  mlp = random_mlp(rng, in_shape, (2,) + tuple(out_shape), dtype, out_scale=1.5)

  def apply(h):
    out = mlp(h)
    return out[:, 0] + s_bias, out[:, 1]

  return apply


def _images(rng, shape, dtype):
  return normal(rng, shape, dtype) * 1.5 + 0.3


def _pixels(rng, shape, dtype):
  x = jnp.asarray(rng.integers(0, 256, shape), dtype)
  noise = uniform(rng, shape, dtype, 0.0, 1.0)
  return x, noise


def _scale(rng, channels, dtype):
  return uniform(rng, (channels,), dtype, 0.5, 1.5)


def affine_checkerboard(parity, shape=IMAGE_SHAPE):
  def make(rng, dtype):
    _, h, w, c = shape
    mask = bij.checkerboard_mask(h, w, parity, dtype)
    cond = st_conditioner(rng, shape[1:], shape[1:], dtype)
    return bij.AffineCoupling(mask, cond, _scale(rng, c, dtype)), _images(rng, shape, dtype)
  return make


def channel_coupling(swap, shape=IMAGE_SHAPE_4C):
  def make(rng, dtype):
    half = shape[1:-1] + (shape[-1] // 2,)
    cond = st_conditioner(rng, half, half, dtype)
    layer = bij.ChannelCoupling(cond, _scale(rng, shape[-1] // 2, dtype), swap=swap)
    return layer, _images(rng, shape, dtype)
  return make


def affine_tabular(parity, shape=TABULAR_SHAPE):
  def make(rng, dtype):
    mask = bij.halves_mask(shape[1], parity, dtype)
    # Few changed positions: a larger bias on s_raw keeps |log_det| well above 0.
    cond = st_conditioner(rng, shape[1:], shape[1:], dtype, s_bias=1.2)
    # Scalar scale here (the per-channel case is covered by the image entries).
    scale = uniform(rng, (), dtype, 0.5, 1.5)
    return bij.AffineCoupling(mask, cond, scale), _images(rng, shape, dtype)
  return make


def spline(parity, shape=TABULAR_SHAPE, num_bins=5, bound=2.5, raw_scale=0.6):
  """Moderate raw parameters: with large ones a bin can be so flat (dy/dx ~ 1e-4) that
  no float32 inverse is accurate to 1e-4; steep bins have their own test."""
  def make(rng, dtype):
    mask = bij.halves_mask(shape[1], parity, dtype)
    cond = random_mlp(rng, shape[1:], shape[1:] + (3 * num_bins - 1,), dtype,
                      out_scale=raw_scale)
    layer = bij.RationalQuadraticSplineCoupling(mask, cond, num_bins=num_bins,
                                                bound=bound)
    # Mostly inside the bound, a few entries in the tails.
    return layer, normal(rng, shape, dtype) * 1.6
  return make


def actnorm(shape):
  def make(rng, dtype):
    c = shape[-1]
    loc = normal(rng, (c,), dtype)
    log_scale = normal(rng, (c,), dtype) * 0.2 + 0.35
    return bij.ActNorm(loc, log_scale), _images(rng, shape, dtype)
  return make


def conv1x1_params(rng, channels, dtype):
  """LU params from the orthogonal init, then perturbed so W is not orthogonal and the
  log-det is non-zero; ``lower``/``upper`` get junk on the diagonal and the other
  triangle, which Conv1x1LU must ignore."""
  # Same recipe as conv1x1_lu_init but in numpy/scipy: QR and LU compiled by XLA would
  # cost seconds per dtype, and conv1x1_lu_init has its own test.
  q, r = np.linalg.qr(rng.standard_normal((channels, channels)))
  perm, lower, upper = scipy.linalg.lu(q * np.sign(np.diag(r)))
  diag = np.diag(upper)
  noise = rng.standard_normal((2, channels, channels)) * 0.3
  log_s = np.log(np.abs(diag)) + 0.2 * rng.standard_normal(channels) + 0.15
  params = {"perm": perm, "lower": np.tril(lower, -1) + noise[0],
            "upper": np.triu(upper, 1) + noise[1], "log_s": log_s, "sign_s": np.sign(diag)}
  return {k: jnp.asarray(v, dtype) for k, v in params.items()}


def conv1x1(shape):
  def make(rng, dtype):
    layer = bij.Conv1x1LU(**conv1x1_params(rng, shape[-1], dtype))
    return layer, _images(rng, shape, dtype)
  return make


def _image_flow_layers(rng, dtype, shape=IMAGE_SHAPE):
  """ActNorm, 1x1 conv, checkerboard couplings, squeeze, channel couplings."""
  _, h, w, c = shape
  squeezed = (h // 2, w // 2, 4 * c)
  half = squeezed[:-1] + (squeezed[-1] // 2,)
  return [
      actnorm(shape)(rng, dtype)[0],
      conv1x1(shape)(rng, dtype)[0],
      affine_checkerboard(0, shape)(rng, dtype)[0],
      affine_checkerboard(1, shape)(rng, dtype)[0],
      bij.Squeeze(),
      bij.ChannelCoupling(st_conditioner(rng, half, half, dtype), 0.8, swap=False),
      bij.ChannelCoupling(st_conditioner(rng, half, half, dtype), 1.2, swap=True),
  ]


def chain_image(rng, dtype):
  return bij.Chain(_image_flow_layers(rng, dtype)), _images(rng, IMAGE_SHAPE, dtype)


def inverse_chain_image(rng, dtype):
  _, h, w, c = IMAGE_SHAPE
  latent = _images(rng, (IMAGE_SHAPE[0], h // 2, w // 2, 4 * c), dtype)
  return bij.Inverse(bij.Chain(_image_flow_layers(rng, dtype))), latent


def chain_preprocess_image(rng, dtype):
  x, noise = _pixels(rng, IMAGE_SHAPE, dtype)
  layers = [bij.dequantize_logit(noise, alpha=0.05)] + _image_flow_layers(rng, dtype)
  return bij.Chain(layers), x


def chain_tabular(rng, dtype):
  layers = [
      actnorm(TABULAR_SHAPE)(rng, dtype)[0],
      conv1x1(TABULAR_SHAPE)(rng, dtype)[0],
      affine_tabular(0)(rng, dtype)[0],
      affine_tabular(1)(rng, dtype)[0],
      spline(0)(rng, dtype)[0],
  ]
  return bij.Chain(layers), _images(rng, TABULAR_SHAPE, dtype)


def inverse_spline(rng, dtype):
  layer, x = spline(1)(rng, dtype)
  return bij.Inverse(layer), x


def inverse_affine_checkerboard(rng, dtype):
  layer, x = affine_checkerboard(1)(rng, dtype)
  return bij.Inverse(layer), x


def squeeze(rng, dtype):
  return bij.Squeeze(), _images(rng, (3, 4, 6, 2), dtype)


def dequantize(rng, dtype):
  x, noise = _pixels(rng, IMAGE_SHAPE, dtype)
  return bij.Dequantize(noise), x


def logit(rng, dtype):
  p = uniform(rng, IMAGE_SHAPE, dtype, 0.01, 0.99)
  return bij.Logit(alpha=0.05), p


def dequantize_logit(rng, dtype):
  x, noise = _pixels(rng, IMAGE_SHAPE, dtype)
  return bij.dequantize_logit(noise, alpha=0.05), x


# ----------------------------------------------------------------------------------------
# Flows (Linen models) as bijectors.


class FlowAsBijector(bij.Bijector):
  """A Linen flow seen through the bijector contract (test code, not library code).

  Forward = data -> latent: ``forward_and_log_det(x) = model.apply(variables, x,
  train=False)`` with ``x: [B, *input_shape]`` (images [B, H, W, C] or tables [B, D]) and
  ``z: [B, D]`` flat, ``log_det: [B]`` = log|det dz/dx| (BatchNorm uses its running
  statistics, dropout is off).

  Inverse = latent -> data: ``x = model.apply(variables, z, method=model.inverse)``. The
  models return no inverse log-det, so ``inverse_and_log_det(z)`` returns ``(x,
  -forward log-det at x)``, which is the right value for a bijection (log|det dx/dz| =
  -log|det dz/dx| at x = f^{-1}(z)). For flows the generic "inverse log-det ==
  -forward log-det" test is therefore only a consistency check (it can only fail through
  an inaccurate round trip); the round trip, the jacfwd log-det, batch independence and
  jit vs eager are real checks of the model.
  """

  def __init__(self, model: nn.Module, variables: Any):
    self.model = model
    self.variables = variables

  def forward_and_log_det(self, x):
    """Data -> latent: ``x: [B, ...] -> (z: [B, D], log_det: [B])``."""
    z, log_det = self.model.apply(self.variables, x, train=False)
    # The model contract: z is flat (checked here so every generic test enforces it).
    if z.ndim != 2 or z.shape[0] != x.shape[0] or log_det.shape != x.shape[:1]:
      raise ValueError(f"{type(self.model).__name__} must return z: [B, D] and "
                       f"log_det: [B], got {z.shape} and {log_det.shape}.")
    return z, log_det

  def inverse_and_log_det(self, z):
    """Latent -> data: ``z: [B, D] -> (x: [B, ...], -forward log-det at x)``."""
    x = self.model.apply(self.variables, z, train=False, method=self.model.inverse)
    return x, -self.forward_and_log_det(x)[1]


# name -> (model constructor, per-example input shape). Tiny: 1 residual block, 4 mid
# channels, 4x4x2 images (D = 32, so a float64 jacfwd is cheap); tabular D = 5. The
# 3-scale RealNVP needs 8x8 images for a non-trivial last scale (2x2; one channel keeps
# D = 64) and has no residual blocks, which halves its compile time (flow_realnvp tests
# the blocks).
TINY_FLOWS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "realnvp": (lambda: RealNVP(num_scales=2, num_blocks=1, mid_channels=4), (4, 4, 2)),
    "realnvp_3scales": (lambda: RealNVP(num_scales=3, num_blocks=0, mid_channels=4),
                        (8, 8, 1)),
    "glow": (lambda: Glow(num_scales=2, steps_per_scale=2, mid_channels=4, num_blocks=0),
             (4, 4, 2)),
    "realnvp_tabular": (lambda: TabularFlow(num_coupling_layers=4, hidden_dim=8,
                                            hidden_layers=2, dropout_rate=0.5), (5,)),
    "spline_tabular": (lambda: TabularFlow(num_coupling_layers=3, coupling="spline",
                                           hidden_dim=8, hidden_layers=2, num_bins=4,
                                           bound=3.0), (5,)),
}


def tiny_flow_inputs(name: str, rng: np.random.Generator, batch: int) -> np.ndarray:
  """Standard-normal inputs ``[batch, *input_shape]`` (numpy float64; cast by the
  caller). Spline inputs are wider so some fall outside [-bound, bound] (identity
  tails)."""
  x = rng.standard_normal((batch,) + TINY_FLOWS[name][1])
  return 4.0 * x if name == "spline_tabular" else x


@functools.cache
def tiny_flow_shapes(name: str):
  """``(model, shapes of model.init's variables)``, traced with jax.eval_shape (no
  compute)."""
  model_ctor, shape = TINY_FLOWS[name]
  model = model_ctor()
  x = jax.ShapeDtypeStruct((2,) + shape, jnp.float32)
  return model, jax.eval_shape(model.init, jax.random.PRNGKey(0), x)


def tiny_flow_variables(name: str, rng: np.random.Generator, dtype=jnp.float32,
                        noise: float = 0.2, s_raw_bias: float = 0.0):
  """``(model, variables)``: the shapes model.init gives, filled with random values
  around a sensible base in numpy (no XLA compilations): conv / dense weights ~
  N(0, 1/fan_in), gains, BatchNorm scales and running variances ~ 1, everything else
  (biases, running means, ActNorm loc / log_scale, 1x1-conv LU factors) ~ 0; plus
  ``noise`` * N(0, 1) everywhere (multiplicative, exp(noise * N(0, 1)), for running
  variances so they stay > 0). So no coupling is the identity (unlike at init, where
  the last layers are zero) and BatchNorm's running statistics are non-trivial.

  ``s_raw_bias`` is added to the s_raw half of every ``out_dense`` bias (for the affine
  tabular flow, whose MLP outputs ``[s_raw | t]``): with few changed coordinates per
  coupling, log-scales of random sign can cancel to a log-det near 0, where a wrong
  log-det could hide."""
  model, shapes = tiny_flow_shapes(name)

  def sample(path, leaf):
    key = getattr(path[-1], "key", None)
    where = jax.tree_util.keystr(path)
    shape = leaf.shape
    # Scanned flows stack layers on leading axes: fan-ins are read from the trailing
    # kernel axes ([..., k, k, C_in, C_out] convs, [..., D_in, D_out] dense kernels).
    if key == "g" and "out_conv" in where:
      # Small last layers (a partly trained flow): s_raw, t = O(0.1-1). Gains ~ 1 there
      # make |z| ~ 1e3 after 10 couplings and float32 round trips lose ~1e-3.
      base = np.zeros(shape)
    elif key == "v" and "rescale" not in where:  # conv weights
      base = rng.standard_normal(shape) / np.sqrt(np.prod(shape[-4:-1]))
    elif key == "kernel":  # dense weights
      base = rng.standard_normal(shape) / np.sqrt(shape[-2])
    elif key in ("g", "v", "scale", "var"):  # gains, Rescale's v, BatchNorm
      base = np.ones(shape)
    else:  # biases, running means, ActNorm loc/log_scale, 1x1-conv LU factors
      base = np.zeros(shape)
    eps = noise * rng.standard_normal(shape)
    value = base * np.exp(eps) if key == "var" else base + eps
    if s_raw_bias and jax.tree_util.keystr(path).endswith("['out_dense']['bias']"):
      value[:shape[0] // 2] += s_raw_bias
    return jnp.asarray(value, dtype)

  return model, jax.tree_util.tree_map_with_path(sample, dict(shapes))


def flow(name: str, batch: int = 2, **variable_options) -> Constructor:
  """Registry constructor for ``TINY_FLOWS[name]`` with random variables
  (``tiny_flow_variables(name, rng, dtype, **variable_options)``)."""
  def make(rng, dtype):
    model, variables = tiny_flow_variables(name, rng, dtype, **variable_options)
    x = jnp.asarray(tiny_flow_inputs(name, rng, batch), dtype)
    return FlowAsBijector(model, variables), x
  return make


def flow_with_preprocessing(name: str, batch: int = 2) -> Constructor:
  """The full FlowGMM image path: ``Chain([dequantize_logit(noise), flow])`` on integer
  pixel values 0..255 (forward: pixels -> [0, 1) -> logit space -> z: [B, D])."""
  def make(rng, dtype):
    model, variables = tiny_flow_variables(name, rng, dtype)
    x, noise = _pixels(rng, (batch,) + TINY_FLOWS[name][1], dtype)
    chain = bij.Chain([bij.dequantize_logit(noise, alpha=0.05),
                       FlowAsBijector(model, variables)])
    return chain, x
  return make


REGISTRY: dict[str, Constructor] = {
    "affine_checkerboard_parity0": affine_checkerboard(0),
    "affine_checkerboard_parity1": affine_checkerboard(1),
    "channel_coupling_first_half_changed": channel_coupling(swap=False),
    "channel_coupling_second_half_changed": channel_coupling(swap=True),
    "affine_tabular_parity0": affine_tabular(0),
    "affine_tabular_parity1": affine_tabular(1),
    "affine_tabular_odd_dim_parity1": affine_tabular(1, shape=(5, 7)),
    "squeeze": squeeze,
    "dequantize": dequantize,
    "logit": logit,
    "dequantize_logit": dequantize_logit,
    "actnorm_image": actnorm((3, 4, 4, 3)),
    "actnorm_tabular": actnorm(TABULAR_SHAPE),
    "conv1x1_image": conv1x1((3, 4, 4, 3)),
    "conv1x1_tabular": conv1x1(TABULAR_SHAPE),
    "spline_parity0": spline(0),
    "spline_parity1": spline(1),
    "chain_image": chain_image,
    "inverse_chain_image": inverse_chain_image,
    "chain_preprocess_image": chain_preprocess_image,
    "chain_tabular": chain_tabular,
    "inverse_spline": inverse_spline,
    "inverse_affine_checkerboard": inverse_affine_checkerboard,
    "flow_realnvp": flow("realnvp"),
    "flow_glow": flow("glow"),
    "flow_realnvp_tabular": flow("realnvp_tabular", s_raw_bias=1.0),
    "flow_spline_tabular": flow("spline_tabular"),
    # The 3-scale RealNVP is tested inside the full image path only: a separate entry
    # would compile the same flow again (the suite's run time is mostly XLA compiles).
    "flow_realnvp_3scales_with_dequantize_logit": flow_with_preprocessing(
        "realnvp_3scales"),
}

# Entries whose log-det is identically zero (pure permutations / reshapes).
ZERO_LOG_DET = frozenset({"squeeze"})
