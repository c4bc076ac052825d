"""Tests for flowgmm_jax.bijectors, and the generic tests of the flows in
flowgmm_jax.models: generic properties over one registry, then bijector specifics.

Generic (every entry of ``bijector_registry.REGISTRY``, bijectors and ``flow_*`` entries
alike): round trip in float32 and float64, log-det == log|det jacfwd| in float64 (and
clearly non-zero where it should be), inverse log-det == -forward log-det, batch
independence, jit == eager. Entries may change the event shape (Squeeze; flows map
images [B, H, W, C] to z: [B, D]): the Jacobian is taken over the flattened event axes
on both sides. For flows (``bijector_registry.FlowAsBijector``) the inverse log-det is
-forward log-det at the inverse's output by construction, so that test is only a
consistency check there; the others test the model itself. Model-specific tests are in
tests/test_models.py.
"""

from __future__ import annotations

import functools
import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowgmm_jax import bijectors as bij

try:  # tests/ on sys.path (pytest's default rootdir-relative import)
  import bijector_registry as registry
except ImportError:  # tests/ imported as a package
  from tests import bijector_registry as registry

NAMES = sorted(registry.REGISTRY)


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
  if request.param == "float64":
    with jax.enable_x64(True):
      yield jnp.float64
  else:
    yield jnp.float32


def make(name, dtype):
  """Builds a registry entry with a seed derived from its name (stable across runs)."""
  rng = np.random.default_rng(zlib.crc32(name.encode()))
  return registry.REGISTRY[name](rng, dtype)


def forward_with_jacobian(bijector):
  """A jitted ``x -> ((y, log_det), jacobian)`` with the Jacobian of the forward map as
  ``[B, Dout, B, Din]``; one compile, and the primal is computed only once."""

  def flat_output(v):
    y, log_det = bijector.forward_and_log_det(v)
    return y.reshape(-1), (y, log_det)

  @jax.jit
  def run(x):
    jacobian, y_and_log_det = jax.jacfwd(flat_output, has_aux=True)(x)
    batch = x.shape[0]
    return y_and_log_det, jacobian.reshape(batch, -1, batch, math.prod(x.shape[1:]))

  return run


# XLA compiles are the bulk of this file's run time. The generic programs run on tiny
# inputs, so they skip LLVM's optimisation passes (about a third of the compile time on
# CPU). This only changes code generation after XLA's own HLO passes, not the maths.
FAST_COMPILE = {"xla_backend_optimization_level": 0,
                "xla_llvm_disable_expensive_passes": True}


def round_trip_program(bijector, with_jacobian):
  """ONE jitted program ``x -> dict`` with forward and inverse together (one XLA
  compile per entry and dtype instead of one per direction): y, log_det = forward(x);
  x_back, inverse_log_det = inverse(y); and, if ``with_jacobian``, jacobian =
  d forward(x) / dx as ``[B, Dout, B, Din]``."""
  run_forward = forward_with_jacobian(bijector) if with_jacobian else None

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def run(x):
    out = {}
    if with_jacobian:
      (out["y"], out["log_det"]), out["jacobian"] = run_forward(x)
    else:
      out["y"], out["log_det"] = bijector.forward_and_log_det(x)
    out["x_back"], out["inverse_log_det"] = bijector.inverse_and_log_det(out["y"])
    return out

  return run


_RESULTS = {}


def results(name, dtype):
  """Everything the generic tests need for one entry and dtype, cached. One jitted
  program (``round_trip_program``) runs on x and again on a perturbed x (same shapes, no
  recompile); running the ops eagerly would be slower still (each eager op compiles on
  first use). Call under the matching x64 setting. Returns ``(bijector, x, dict of numpy
  arrays)``:
    y, log_det = forward(x);  x_back, inverse_log_det = inverse(y);
    jacobian (float64 only) = d forward(x) / dx as [B, Dout, B, Din];
    y_perturbed, log_det_perturbed = forward(x_p), x_p = x with example B-1 replaced by
      example 0 (which keeps it in the domain, e.g. integer pixels);
    x_perturbed, inverse_log_det_perturbed = inverse(y_perturbed). Where the forward map
      is batch independent (its own check), y_perturbed is y with example B-1 replaced by
      y[0], so this checks the inverse's batch independence.
  """
  key = (name, jnp.dtype(dtype).name)
  if key not in _RESULTS:
    bijector, x = make(name, dtype)
    run = round_trip_program(bijector, with_jacobian=dtype == jnp.float64)
    out = run(x)
    x_p = np.array(x)  # built in numpy: an eager .at[].set would compile per shape
    x_p[-1] = x_p[0]
    perturbed = run(jnp.asarray(x_p, dtype))
    out.update({"y_perturbed": perturbed["y"],
                "log_det_perturbed": perturbed["log_det"],
                "x_perturbed": perturbed["x_back"],
                "inverse_log_det_perturbed": perturbed["inverse_log_det"]})
    assert all(v.dtype == dtype for v in out.values())
    _RESULTS[key] = (bijector, x, {k: np.asarray(v) for k, v in out.items()})
  return _RESULTS[key]


# The spline flow's float32 inverse solves a quadratic per bin whose cancellation loses
# about three digits on the registry's steep random bins (largest measured error 2.8e-4);
# its float64 round trip and log-det are held to 1e-9 like every entry.
FLOAT32_LOOSER = {"flow_spline_tabular": 10.0}


def tolerances(dtype, name=None):
  if dtype == jnp.float32:
    scale = FLOAT32_LOOSER.get(name, 1.0)
    return dict(rtol=1e-4 * scale, atol=1e-4 * scale)
  return dict(rtol=1e-9, atol=1e-9)


def diagonal_blocks(jacobian):
  """``[B, Dout, B, Din]`` -> per-example blocks ``[B, Dout, Din]`` and the largest
  cross-example entry (which must be 0)."""
  batch = jacobian.shape[0]
  blocks = np.stack([jacobian[i, :, i, :] for i in range(batch)])
  off = np.array(jacobian)
  for i in range(batch):
    off[i, :, i, :] = 0
  return blocks, np.max(np.abs(off))


# ----------------------------------------------------------------------------------------
# Generic properties over the registry.


@pytest.mark.parametrize("name", NAMES)
def test_round_trip(name, dtype):
  _, x, r = results(name, dtype)
  assert r["y"].shape[0] == x.shape[0]
  assert r["log_det"].shape == x.shape[:1]
  assert np.all(np.isfinite(r["y"]))
  assert np.all(np.isfinite(r["log_det"]))
  assert r["x_back"].shape == x.shape
  np.testing.assert_allclose(r["x_back"], x, **tolerances(dtype, name))


@pytest.mark.parametrize("name", NAMES)
def test_log_det_matches_jacobian_float64(name, x64):
  _, _, r = results(name, jnp.float64)
  blocks, cross = diagonal_blocks(r["jacobian"])
  assert blocks.shape[1] == blocks.shape[2], "a bijector must keep the event size"
  signs, expected = np.linalg.slogdet(blocks)
  assert np.all(signs != 0)
  np.testing.assert_allclose(r["log_det"], expected, rtol=1e-9, atol=1e-8)
  assert cross == 0.0, "example i's output depends on example j"
  if name in registry.ZERO_LOG_DET:
    np.testing.assert_array_equal(r["log_det"], 0.0)
  else:
    # Registry parameters are far from the identity, so a wrong log-det cannot hide.
    assert np.mean(np.abs(r["log_det"])) > 0.5, r["log_det"]


@pytest.mark.parametrize("name", NAMES)
def test_inverse_log_det_is_minus_forward(name, dtype):
  _, _, r = results(name, dtype)
  scale = FLOAT32_LOOSER.get(name, 1.0)
  tol = (dict(rtol=1e-5 * scale, atol=1e-4 * scale) if dtype == jnp.float32
         else dict(rtol=1e-10, atol=1e-9))
  np.testing.assert_allclose(r["inverse_log_det"], -r["log_det"], **tol)


@pytest.mark.parametrize("name", NAMES)
def test_batch_independence(name, dtype):
  """Changing example B-1 leaves every other example's output and log-det unchanged."""
  _, x, r = results(name, dtype)
  last = x.shape[0] - 1
  tol = dict(rtol=1e-6, atol=1e-6) if dtype == jnp.float32 else dict(rtol=1e-12,
                                                                     atol=1e-12)
  for out, ld, direction in (("y", "log_det", "forward"),
                             ("x_back", "inverse_log_det", "inverse")):
    # x_back is inverse(y): compare the perturbed inverse against it.
    out_p = r["y_perturbed" if direction == "forward" else "x_perturbed"]
    ld_p = r[ld + "_perturbed"]
    np.testing.assert_allclose(out_p[:last], r[out][:last], **tol)
    np.testing.assert_allclose(ld_p[:last], r[ld][:last], **tol)
    assert not np.allclose(out_p[last], r[out][last]), f"{direction}: example unchanged"


@pytest.mark.parametrize("name", NAMES)
def test_jit_matches_eager(name):
  bijector, x, r = results(name, jnp.float32)
  y, log_det = bijector.forward_and_log_det(x)
  x_back, inverse_log_det = bijector.inverse_and_log_det(r["y"])
  for eager, key in ((y, "y"), (log_det, "log_det"), (x_back, "x_back"),
                     (inverse_log_det, "inverse_log_det")):
    # float32 rounding scales with the array's magnitude (pixels up to 255, summed
    # log-dets in the hundreds), so atol does too.
    scale = max(1.0, float(np.max(np.abs(r[key]))))
    np.testing.assert_allclose(eager, r[key], rtol=2e-5, atol=2e-5 * scale, err_msg=key)


# ----------------------------------------------------------------------------------------
# Masks and coupling layers.


def test_checkerboard_mask_matches_original_convention():
  # Original flow_ssl checkerboard_mask(reverse=False): entry (i, j) = (i + j) % 2, so the
  # top-left pixel is changed (0); reverse=True is the complement. We call these 0 and 1.
  mask0 = np.asarray(bij.checkerboard_mask(3, 4, 0))
  mask1 = np.asarray(bij.checkerboard_mask(3, 4, 1))
  assert mask0.shape == (3, 4, 1)
  assert mask0.dtype == np.float32
  i, j = np.meshgrid(np.arange(3), np.arange(4), indexing="ij")
  np.testing.assert_array_equal(mask0[..., 0], (i + j) % 2)
  np.testing.assert_array_equal(mask1, 1 - mask0)
  assert mask0[0, 0, 0] == 0
  assert mask1[0, 0, 0] == 1
  with pytest.raises(ValueError, match="parity"):
    bij.checkerboard_mask(4, 4, 2)


def test_halves_mask_matches_original_tabular_mask():
  # Original MaskTabular: split = dim // 2; reverse_mask False keeps [:split].
  np.testing.assert_array_equal(bij.halves_mask(6, 0), [1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(bij.halves_mask(6, 1), [0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(bij.halves_mask(7, 0), [1, 1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(bij.halves_mask(7, 1), [0, 0, 0, 1, 1, 1, 1])
  with pytest.raises(ValueError, match="parity"):
    bij.halves_mask(6, -1)
  with pytest.raises(ValueError, match="dim"):
    bij.halves_mask(1, 0)


def _overcount_cases(dtype):
  """(mask, x) pairs: both checkerboard parities on images and both tabular halves."""
  rng = np.random.default_rng(7)
  image = jnp.asarray(rng.standard_normal((2, 4, 4, 3)), dtype)
  table = jnp.asarray(rng.standard_normal((3, 5)), dtype)
  return [(bij.checkerboard_mask(4, 4, p, dtype), image) for p in (0, 1)] + [
      (bij.halves_mask(5, p, dtype), table) for p in (0, 1)]


@pytest.mark.parametrize("case", range(4))
def test_affine_coupling_log_det_counts_changed_positions_only(case, x64):
  """The original FlowGMM code once summed s over the kept positions too. Here the
  conditioner returns a clearly non-zero s_raw on EVERY position, kept ones included;
  the correct log-det sums s over the changed positions only and equals the Jacobian's,
  while the over-counted sum differs from it by a wide margin."""
  mask, x = _overcount_cases(jnp.float64)[case]
  scale = 0.7

  def conditioner(h):
    # Depends on the kept inputs and is non-zero everywhere (h is 0 off the mask).
    s_raw = 0.9 + 0.3 * jnp.tanh(h + jnp.sum(h, axis=tuple(range(1, h.ndim)),
                                             keepdims=True))
    return s_raw, 0.5 * h - 0.2

  layer = bij.AffineCoupling(mask, conditioner, scale)
  (y, log_det), jacobian = forward_with_jacobian(layer)(x)
  exact = np.linalg.slogdet(diagonal_blocks(np.asarray(jacobian))[0])[1]
  np.testing.assert_allclose(log_det, exact, rtol=1e-10, atol=1e-10)

  full_mask = np.broadcast_to(np.asarray(mask), x.shape[1:])
  s_raw, _ = conditioner(x * jnp.asarray(mask))
  s_everywhere = scale * np.tanh(np.asarray(s_raw))
  changed_only = (s_everywhere * (1 - full_mask)).reshape(x.shape[0], -1).sum(-1)
  over_counted = s_everywhere.reshape(x.shape[0], -1).sum(-1)
  np.testing.assert_allclose(log_det, changed_only, rtol=1e-10)
  assert np.all(np.abs(over_counted - exact) > 0.5)
  # The kept positions pass through unchanged.
  np.testing.assert_array_equal(np.asarray(y) * full_mask, np.asarray(x) * full_mask)


@pytest.mark.parametrize("swap", [False, True])
def test_channel_coupling_changes_the_named_half(swap):
  # swap=False follows the original MaskChannelwise(reverse_mask=False): the first half
  # of the channels is changed, the second half is kept.
  bijector, x = registry.channel_coupling(swap)(np.random.default_rng(0), jnp.float32)
  y = np.asarray(bijector.forward(x))
  half = x.shape[-1] // 2
  kept, changed = (slice(0, half), slice(half, None)) if swap else (slice(half, None),
                                                                    slice(0, half))
  np.testing.assert_array_equal(y[..., kept], np.asarray(x)[..., kept])
  assert np.min(np.abs(y[..., changed] - np.asarray(x)[..., changed])) > 0


def test_coupling_errors():
  def good(h):
    return jnp.zeros_like(h), jnp.zeros_like(h)

  def bad(h):
    return jnp.zeros(h.shape[:-1] + (1,)), jnp.zeros_like(h)

  x = jnp.ones((2, 4, 4, 3))
  with pytest.raises(ValueError, match="even"):
    bij.ChannelCoupling(good, 1.0).forward(x)
  with pytest.raises(ValueError, match="s_raw"):
    bij.AffineCoupling(bij.checkerboard_mask(4, 4, 0), bad, 1.0).forward(x)
  with pytest.raises(ValueError, match="mask"):
    bij.AffineCoupling(bij.checkerboard_mask(4, 5, 0), good, 1.0).forward(x)
  with pytest.raises(ValueError, match="s_raw"):
    bij.ChannelCoupling(bad, 1.0).forward(jnp.ones((2, 4, 4, 4)))


# ----------------------------------------------------------------------------------------
# Spline.


def _spline(dtype, raw_scale=1.5, bound=2.5, num_bins=5, parity=0, dim=6):
  rng = np.random.default_rng(3)
  mask = bij.halves_mask(dim, parity, dtype)
  cond = registry.random_mlp(rng, (dim,), (dim, 3 * num_bins - 1), dtype,
                             out_scale=raw_scale)
  return bij.RationalQuadraticSplineCoupling(mask, cond, num_bins=num_bins, bound=bound)


def test_spline_is_identity_outside_the_bound():
  layer = _spline(jnp.float32, bound=2.5)
  rng = np.random.default_rng(4)
  magnitude = rng.uniform(2.51, 6.0, (4, 6))
  x = jnp.asarray(magnitude * rng.choice([-1.0, 1.0], (4, 6)), jnp.float32)
  y, log_det = jax.jit(layer.forward_and_log_det)(x)
  np.testing.assert_array_equal(y, x)
  np.testing.assert_array_equal(log_det, 0.0)
  x_back, inverse_log_det = jax.jit(layer.inverse_and_log_det)(x)
  np.testing.assert_array_equal(x_back, x)
  np.testing.assert_array_equal(inverse_log_det, 0.0)


def test_spline_changes_only_masked_positions_and_meets_tails(x64):
  layer = _spline(jnp.float64, bound=2.5, parity=1)
  rng = np.random.default_rng(5)
  forward = jax.jit(layer.forward)
  x = jnp.asarray(rng.uniform(-2.4, 2.4, (2, 6)))
  y = np.asarray(forward(x))
  np.testing.assert_array_equal(y[:, 3:], np.asarray(x)[:, 3:])  # parity 1 keeps 3:
  assert np.min(np.abs(y[:, :3] - np.asarray(x)[:, :3])) > 1e-6
  # Continuity with the identity tails: at +-bound the spline gives +-bound.
  edge = jnp.asarray(np.tile([2.5, -2.5, 2.5 - 1e-12, -2.5 + 1e-12, 0.0, 0.0], (2, 1)))
  np.testing.assert_allclose(forward(edge)[:, :4], np.asarray(edge)[:, :4],
                             atol=1e-9)


def test_spline_inverse_is_stable_with_steep_bins():
  """Large raw parameters give very uneven bins (slopes from ~1e-4 to ~1e3). The
  inverse must stay finite and be as accurate as float32 allows: mapping it forward
  again returns the grid up to rounding amplified by the local slope dy/dx."""
  layer = _spline(jnp.float32, raw_scale=6.0, bound=3.0, num_bins=8)
  grid = jnp.asarray(np.linspace(-3.0, 3.0, 6 * 101).reshape(101, 6), jnp.float32)
  changed = 1 - jnp.broadcast_to(layer.mask, grid.shape)

  @jax.jit
  def check(y):
    x, inverse_log_det = layer.inverse_and_log_det(y)
    # The spline acts elementwise on the changed coordinates, so this JVP is dy_i/dx_i.
    (y_again, log_det), (slope, _) = jax.jvp(layer.forward_and_log_det, (x,), (changed,))
    return x, inverse_log_det, y_again, log_det, slope

  x, inverse_log_det, y_again, log_det, slope = map(np.asarray, check(grid))
  assert np.all(np.isfinite(x))
  assert np.all(np.isfinite(inverse_log_det))
  assert np.max(slope) > 100
  assert np.min(slope[:, :3]) < 1e-2
  error = np.abs(y_again - np.asarray(grid))
  assert np.all(error <= 1e-6 + 2e-6 * np.maximum(slope, 1.0)), np.max(error)
  np.testing.assert_allclose(log_det, -inverse_log_det, atol=1e-3, rtol=1e-4)


def test_spline_bad_conditioner_shape():
  layer = bij.RationalQuadraticSplineCoupling(
      bij.halves_mask(4, 0), lambda h: jnp.zeros(h.shape + (5,)), num_bins=8)
  with pytest.raises(ValueError, match="3 \\* num_bins - 1"):
    layer.forward(jnp.zeros((2, 4)))


# ----------------------------------------------------------------------------------------
# ActNorm and the 1x1 convolution.


@pytest.mark.parametrize("shape", [(64, 3, 3, 4), (200, 5)])
def test_actnorm_init_gives_zero_mean_unit_variance(shape):
  rng = np.random.default_rng(6)
  x = rng.standard_normal(shape) * rng.uniform(0.2, 5.0, shape[-1:]) + rng.uniform(
      -3.0, 3.0, shape[-1:])
  x = jnp.asarray(x, jnp.float32)
  loc, log_scale = bij.actnorm_init_params(x)
  assert loc.shape == log_scale.shape == shape[-1:]
  y, log_det = bij.ActNorm(loc, log_scale).forward_and_log_det(x)
  axes = tuple(range(len(shape) - 1))
  np.testing.assert_allclose(np.mean(y, axis=axes), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.var(y, axis=axes), 1.0, atol=1e-4)
  positions = math.prod(shape[1:-1])
  np.testing.assert_allclose(log_det, -positions * np.sum(log_scale), rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (3, 6)])
def test_conv1x1_log_det_is_slogdet_of_weight_times_positions(shape, x64):
  rng = np.random.default_rng(8)
  params = registry.conv1x1_params(rng, shape[-1], jnp.float64)
  layer = bij.Conv1x1LU(**params)
  p = np.asarray(params["perm"])
  lower = np.tril(np.asarray(params["lower"]), -1) + np.eye(shape[-1])
  upper = np.triu(np.asarray(params["upper"]), 1) + np.diag(
      np.asarray(params["sign_s"]) * np.exp(np.asarray(params["log_s"])))
  weight = p @ lower @ upper  # assembled independently of the bijector
  np.testing.assert_allclose(layer.weight(jnp.float64), weight, rtol=1e-12)
  x = jnp.asarray(rng.standard_normal(shape))
  y, log_det = layer.forward_and_log_det(x)
  np.testing.assert_allclose(y, np.asarray(x) @ weight, rtol=1e-12, atol=1e-12)
  positions = math.prod(shape[1:-1])
  sign, logabs = np.linalg.slogdet(weight)
  np.testing.assert_allclose(log_det, positions * logabs, rtol=1e-12)
  assert abs(logabs) > 0.1
  # perm as an index vector means the same P = eye(C)[perm].
  index = np.argmax(p, axis=1)
  layer_idx = bij.Conv1x1LU(**{**params, "perm": jnp.asarray(index)})
  np.testing.assert_allclose(layer_idx.forward(x), y, rtol=1e-12)


def test_conv1x1_init_is_orthogonal_lu():
  params = bij.conv1x1_lu_init(jax.random.key(0), 5)
  assert set(params) == {"perm", "lower", "upper", "log_s", "sign_s"}
  p = np.asarray(params["perm"])
  np.testing.assert_array_equal(np.sort(p, axis=None)[-5:], 1.0)
  np.testing.assert_array_equal(p.sum(0), 1.0)
  np.testing.assert_array_equal(p.sum(1), 1.0)
  assert set(np.unique(np.asarray(params["sign_s"]))) <= {-1.0, 1.0}
  weight = np.asarray(bij.Conv1x1LU(**params).weight())
  np.testing.assert_allclose(weight @ weight.T, np.eye(5), atol=1e-5)
  np.testing.assert_allclose(np.sum(params["log_s"]), 0.0, atol=1e-5)


def test_conv1x1_and_actnorm_shape_errors():
  params = bij.conv1x1_lu_init(jax.random.key(0), 3)
  with pytest.raises(ValueError, match="channels"):
    bij.Conv1x1LU(**params).forward(jnp.ones((2, 4, 4, 5)))
  with pytest.raises(ValueError, match="loc"):
    bij.ActNorm(jnp.zeros(3), jnp.zeros(3)).forward(jnp.ones((2, 4)))


# ----------------------------------------------------------------------------------------
# Squeeze and the multi-scale helpers.


def _original_squeeze_nhwc(x):
  """The original FlowGMM squeeze (flow_ssl/invertible/downsample.py, NCHW), in numpy,
  wrapped in NHWC <-> NCHW transposes."""
  nchw = np.transpose(x, (0, 3, 1, 2))
  b, c, h, w = nchw.shape
  out = nchw.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 1, 3, 5, 2, 4)
  return np.transpose(out.reshape(b, 4 * c, h // 2, w // 2), (0, 2, 3, 1))


def test_squeeze_shapes_and_channel_order():
  x = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
  y, log_det = bij.Squeeze().forward_and_log_det(jnp.asarray(x))
  assert y.shape == (2, 2, 3, 12)
  np.testing.assert_array_equal(log_det, 0.0)
  np.testing.assert_array_equal(y, _original_squeeze_nhwc(x))
  # Documented ordering: y[b, i, j, 4c + 2di + dj] = x[b, 2i + di, 2j + dj, c].
  assert y[1, 1, 2, 4 * 2 + 2 * 1 + 0] == x[1, 3, 4, 2]
  np.testing.assert_array_equal(bij.Squeeze().inverse(y), x)


@pytest.mark.parametrize("shape", [(2, 3, 4, 1), (2, 4, 5, 1), (2, 4, 4)])
def test_squeeze_rejects_bad_shapes(shape):
  with pytest.raises(ValueError, match="even|images"):
    bij.Squeeze().forward(jnp.ones(shape))


def test_squeeze_inverse_rejects_channels_not_divisible_by_4():
  with pytest.raises(ValueError, match="divisible by 4"):
    bij.Squeeze().inverse(jnp.ones((2, 2, 2, 6)))


def test_flatten_and_join_round_trip():
  rng = np.random.default_rng(9)
  pieces = [jnp.asarray(rng.standard_normal(s), jnp.float32)
            for s in [(3, 4, 4, 2), (3, 2, 2, 8), (3, 5)]]
  z = bij.flatten_and_join(pieces)
  assert z.shape == (3, 32 + 32 + 5)
  np.testing.assert_array_equal(z[1, 32:64], np.asarray(pieces[1][1]).reshape(-1))
  back = bij.split_and_unflatten(z, [p.shape[1:] for p in pieces])
  for a, b in zip(back, pieces, strict=False):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="hold"):
    bij.split_and_unflatten(z, [(4, 4, 2)])


# ----------------------------------------------------------------------------------------
# Preprocessing.


def test_dequantize_log_det_is_minus_d_log_256():
  rng = np.random.default_rng(10)
  x = jnp.asarray(rng.integers(0, 256, (4, 3, 2, 3)), jnp.float32)
  noise = jnp.asarray(rng.uniform(0, 1, x.shape), jnp.float32)
  y, log_det = bij.Dequantize(noise).forward_and_log_det(x)
  np.testing.assert_allclose(log_det, -18 * math.log(256.0), rtol=1e-7)
  assert np.all((np.asarray(y) >= 0) & (np.asarray(y) < 1))
  np.testing.assert_allclose(y, (np.asarray(x) + np.asarray(noise)) / 256, rtol=1e-7)
  with pytest.raises(ValueError, match="noise"):
    bij.Dequantize(noise[:, :2]).forward(x)


def test_logit_matches_closed_form(x64):
  from scipy.special import logit as scipy_logit
  alpha = 0.05
  p = np.random.default_rng(11).uniform(0, 1, (3, 7))
  y, log_det = bij.Logit(alpha).forward_and_log_det(jnp.asarray(p))
  q = alpha + (1 - 2 * alpha) * p
  np.testing.assert_allclose(y, scipy_logit(q), rtol=1e-12)
  np.testing.assert_allclose(
      log_det, np.sum(np.log(1 - 2 * alpha) - np.log(q) - np.log1p(-q), axis=1),
      rtol=1e-12)
  # The end points stay finite thanks to alpha.
  assert np.all(np.isfinite(bij.Logit(alpha).forward(jnp.asarray([[0.0, 1.0]]))))
  with pytest.raises(ValueError, match="alpha"):
    bij.Logit(0.5)


def test_dequantize_logit_is_the_chain():
  rng = np.random.default_rng(12)
  x = jnp.asarray(rng.integers(0, 256, (2, 4, 4, 1)), jnp.float32)
  noise = jnp.asarray(rng.uniform(0, 1, x.shape), jnp.float32)
  chained = bij.Chain([bij.Dequantize(noise), bij.Logit(0.05)]).forward_and_log_det(x)
  helper = bij.dequantize_logit(noise).forward_and_log_det(x)
  for a, b in zip(chained, helper, strict=False):
    np.testing.assert_array_equal(a, b)


def test_docstrings_state_the_direction():
  classes = [bij.AffineCoupling, bij.ChannelCoupling, bij.Squeeze, bij.Dequantize,
             bij.Logit, bij.ActNorm, bij.Conv1x1LU, bij.RationalQuadraticSplineCoupling]
  for cls in classes:
    assert "data -> latent" in cls.__doc__.lower(), cls
    assert "data -> latent" in cls.forward_and_log_det.__doc__.lower(), cls
    assert "latent -> data" in cls.inverse_and_log_det.__doc__.lower(), cls


def test_glow_conv1x1_applies_the_w_its_log_det_counts_with_bfloat16_conditioners():
  """Glow with bfloat16 conditioners (config compute_dtype): its 1x1 convolutions stay in
  float32 and multiply at precision HIGHEST (default precision is one bfloat16 pass on TPU,
  TF32 on GPU), and the log-det a 1x1 convolution reports is slogdet (float64) of the W it
  actually applies, read back by applying it to the identity."""
  from benchmarks.jaxpr_stats import _sub_jaxprs
  from flowgmm_jax.models.glow import Glow, _fixed_conv1x1_lu_init

  flow = Glow(num_scales=1, steps_per_scale=2, mid_channels=4, num_blocks=1,
              compute_dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  variables = flow.init(jax.random.key(1), x)
  z, log_det = flow.apply(variables, x)
  assert z.dtype == log_det.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(log_det)))

  channels = 12  # after the squeeze
  def channel_products(jaxpr):
    for eqn in jaxpr.eqns:
      if (eqn.primitive.name == "dot_general"
          and eqn.invars[1].aval.shape[-2:] == (channels, channels)):
        yield eqn
      for _, sub in _sub_jaxprs(eqn):
        yield from channel_products(sub)
  products = list(channel_products(jax.make_jaxpr(flow.apply)(variables, x).jaxpr))
  assert products  # the W assembly and x @ W, inside the scanned scale
  for eqn in products:
    assert eqn.params["precision"] in (jax.lax.Precision.HIGHEST,
                                       (jax.lax.Precision.HIGHEST,) * 2), eqn
    assert all(v.aval.dtype == jnp.float32 for v in eqn.invars), eqn

  factors = variables["params"]["scales_0"]["conv1x1"]
  rng = np.random.default_rng(0)
  for step in range(2):
    fixed = _fixed_conv1x1_lu_init(flow._conv1x1_seed(step), channels)
    # Trained-like factors: the initial W is orthogonal (log-det 0, too easy to match).
    log_s = factors["log_s"][step] + 0.1 + 0.3 * rng.standard_normal(channels)
    lower = factors["lower"][step] + 0.3 * rng.standard_normal((channels,) * 2)
    layer = bij.Conv1x1LU(fixed["perm"], lower.astype(np.float32), factors["upper"][step],
                          log_s.astype(np.float32), fixed["sign_s"])
    eye = jnp.eye(channels, dtype=jnp.float32)[:, None, None, :]  # [C, 1, 1, C]
    applied, layer_log_det = layer.forward_and_log_det(eye)
    _, logabs = np.linalg.slogdet(np.asarray(applied[:, 0, 0, :], np.float64))
    assert abs(logabs) > 0.1
    np.testing.assert_allclose(layer_log_det, logabs, rtol=1e-5, atol=1e-5)
