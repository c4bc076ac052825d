"""Model-specific tests for flowgmm_jax.models (Linen flows) and flowgmm_jax.nets
(conditioners).

Forward is data -> latent everywhere. The generic flow checks (round trip in float32 and
float64, log-det vs log|det jax.jacfwd| in float64, batch independence in eval mode, jit
vs eager) run in tests/test_bijectors.py over every ``flow_*`` entry of
tests/bijector_registry.py, which also holds the tiny model configurations
(``TINY_FLOWS``: 1 residual block, 4 channels, 4x4x2 images; tabular D = 5) and their
randomised variables; this file imports them from there. The parameter-count tests only
trace the full-size RealNVP with jax.eval_shape (no compute).
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowgmm_jax import models
from flowgmm_jax.bijectors.conv1x1 import Conv1x1LU
from flowgmm_jax.bijectors.coupling import checkerboard_mask
from flowgmm_jax.bijectors.reshape import Squeeze
from flowgmm_jax.models import Glow, RealNVP, TabularFlow, count_params, weight_norm_gain_mask
from flowgmm_jax.models import glow as glow_lib
from flowgmm_jax.nets import MLP, ResNetConditioner, WNConv

try:  # tests/ on sys.path (pytest's default rootdir-relative import)
  import bijector_registry as registry
except ImportError:  # tests/ imported as a package
  from tests import bijector_registry as registry

# The original FlowGMM RealNVP (2 scales, 8 blocks, 64 mid channels), counted analytically
# from flow_ssl/realnvp + flow_ssl/resnet_realnvp (weight norm: v and g; affine BatchNorm).
ORIGINAL_PARAM_COUNTS = {(32, 32, 3): 19_631_640, (28, 28, 1): 19_552_008}


def make_inputs(name, batch=2, seed=0):
  """Inputs ``[batch, *input_shape]`` of ``registry.TINY_FLOWS[name]`` (numpy float64;
  cast by the caller). The default batch of 2 is the registry's: the eager model calls
  here then reuse the per-op compilations of its generic eager test."""
  return registry.tiny_flow_inputs(name, np.random.default_rng(seed), batch)


def randomize(variables, seed=1, noise=0.2):
  """Adds numpy noise to every leaf of initialised variables (running variances are
  scaled instead, so they stay positive)."""
  rng = np.random.default_rng(seed)

  def perturb(path, leaf):
    leaf = np.asarray(leaf)
    eps = noise * rng.standard_normal(leaf.shape)
    if jax.tree_util.keystr(path).endswith("['var']"):  # running variances stay > 0
      return (leaf * np.exp(eps)).astype(leaf.dtype)
    return (leaf + eps).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(perturb, dict(variables))


def model_and_variables(name, dtype=jnp.float32, seed=1):
  """(tiny model, randomised variables of dtype): ``registry.tiny_flow_variables``."""
  return registry.tiny_flow_variables(name, np.random.default_rng(seed), dtype)


# ---------------------------------------------------------------- architecture / counts


@functools.cache
def full_size_realnvp_shapes(shape):
  """Shapes/dtypes of the default RealNVP's variables: traced, never computed."""
  return jax.eval_shape(RealNVP().init, jax.random.PRNGKey(0),
                        jax.ShapeDtypeStruct((2,) + shape, jnp.float32))


@pytest.mark.parametrize("shape", sorted(ORIGINAL_PARAM_COUNTS))
def test_realnvp_param_count_matches_original(shape):
  variables = full_size_realnvp_shapes(shape)
  expected = ORIGINAL_PARAM_COUNTS[shape]
  got = count_params(variables)
  assert abs(got - expected) <= 0.01 * expected, (got, expected)
  # count_params counts params only (BatchNorm running statistics are not parameters).
  assert "batch_stats" in variables
  assert count_params(variables["params"]) == got


def test_realnvp_default_architecture_shapes():
  """Layout of the paper's flow: 3 checkerboard, squeeze, 3 channel-wise, factor out; then
  4 checkerboard at the last scale; conditioner width doubles per scale and for the
  channel-wise couplings; 8 residual blocks. Scanned: each stack's arrays lead with the
  coupling axis, the blocks' with (coupling, block)."""
  params = full_size_realnvp_shapes((32, 32, 3))["params"]
  assert set(params) == {"checkerboards_0", "channels_0", "checkerboards_1"}
  # in_conv sees concat[x, -x]: (3, 3, 2 * C_in, mid), one per coupling of the stack.
  expected_in = {"checkerboards_0": (3, 3, 3, 6, 64), "channels_0": (3, 3, 3, 12, 128),
                 "checkerboards_1": (4, 3, 3, 12, 128)}
  for name, shape in expected_in.items():
    assert params[name]["conditioner"]["in_conv"]["v"].shape == shape, name
  assert params["checkerboards_0"]["conditioner"]["out_conv"]["v"].shape == (3, 1, 1, 64, 6)
  assert params["channels_0"]["conditioner"]["out_conv"]["v"].shape == (3, 1, 1, 128, 12)
  assert params["channels_0"]["rescale"]["g"].shape == (3, 6)
  blocks = params["checkerboards_0"]["conditioner"]["blocks"]
  assert set(blocks) == {"in_norm", "in_conv", "out_norm", "out_conv", "skip"}
  assert blocks["in_conv"]["v"].shape == (3, 8, 3, 3, 64, 64)
  assert blocks["skip"]["v"].shape == (3, 8, 1, 1, 64, 64)
  assert "bias" not in blocks["in_conv"]


def test_weight_norm_gain_mask_selects_g_leaves():
  variables = jax.eval_shape(RealNVP(num_blocks=1, mid_channels=4).init,
                             jax.random.PRNGKey(0),
                             jax.ShapeDtypeStruct((1, 8, 8, 2), jnp.float32))
  mask = weight_norm_gain_mask(variables["params"])
  flat = jax.tree_util.tree_flatten_with_path(mask)[0]
  selected = [jax.tree_util.keystr(p) for p, m in flat if m]
  # Per stack of couplings: in_conv, in_skip, 2 block convs, 1 skip, out_conv, Rescale ->
  # 7 stacked gains; 3 stacks of 3, 3 and 4 couplings.
  assert len(selected) == 3 * 7
  assert all(s.endswith("['g']") for s in selected)
  gains = [leaf for leaf, m in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(mask), strict=False)
           if m]
  assert sorted({g.shape[0] for g in gains}) == [3, 4]


@pytest.mark.parametrize("k", [1, 3])
def test_wnconv_matches_explicit_weight_norm_conv(k):
  """Both kernel sizes of the flows (the 1x1 one runs as a matrix product), against an
  explicit float64 zero-padded convolution."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 5, 3)), jnp.float32)
  conv = WNConv(4, kernel_size=k)
  init = conv.init(jax.random.PRNGKey(1), x)
  # Initial gain g = ||v|| (PyTorch weight_norm init): the initial kernel equals v.
  np.testing.assert_allclose(
      init["params"]["g"], np.sqrt((np.asarray(init["params"]["v"]) ** 2).sum((0, 1, 2))),
      rtol=1e-6)
  variables = randomize(init)
  v, g, b = (np.asarray(variables["params"][n], np.float64) for n in ("v", "g", "bias"))
  kernel = v * (g / np.sqrt((v ** 2).sum((0, 1, 2))))
  pad = k // 2
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  expected = np.zeros((2, 5, 5, 4))
  for i in range(5):
    for j in range(5):
      expected[:, i, j] = np.einsum("bhwc,hwco->bo", xp[:, i:i + k, j:j + k], kernel)
  expected += b
  np.testing.assert_allclose(conv.apply(variables, x), expected, rtol=1e-4, atol=1e-4)
  # And its gradients, against the same convolution by lax (XLA's own transpose rules).
  def ref(v, x):
    return jax.lax.conv_general_dilated(
        x, v, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()
  def mine(v, x):
    return conv.apply({"params": {**variables["params"], "v": v}}, x).sum()
  vv = variables["params"]["v"]
  gv, gx = jax.grad(mine, (0, 1))(vv, x)
  kern = jnp.asarray(kernel, jnp.float32)
  # d/dx of sum(conv(x, kernel)) is the same for both; compare the input gradients.
  np.testing.assert_allclose(gx, jax.grad(ref, 1)(kern, x), rtol=1e-4, atol=1e-4)
  assert np.all(np.isfinite(np.asarray(gv)))


def test_resnet_conditioner_starts_at_zero_output():
  """zero_init_last: the last conv's gain and bias are 0, so s_raw = t = 0 at init."""
  x = jnp.asarray(make_inputs("realnvp"), jnp.float32)
  net = ResNetConditioner(mid_channels=4, num_blocks=1, double_after_norm=True)
  variables = net.init(jax.random.PRNGKey(0), x)
  out_conv = variables["params"]["out_conv"]
  assert float(jnp.abs(out_conv["g"]).max()) == 0.0
  assert float(jnp.abs(out_conv["bias"]).max()) == 0.0
  assert float(jnp.abs(out_conv["v"]).min()) > 0.0  # direction stays random (normalised)
  s_raw, t = net.apply(variables, x)
  assert s_raw.shape == t.shape == x.shape
  assert float(jnp.abs(s_raw).max()) == 0.0
  assert float(jnp.abs(t).max()) == 0.0


def test_resnet_conditioner_batch_norm_averages_over_bn_axis_name():
  """bn_axis_name: batch statistics are averaged over the named (device) axis, inside the
  scanned residual blocks too: every "device" ends with the statistics of the whole batch."""
  image_shape = registry.TINY_FLOWS["realnvp"][1]
  x = jnp.asarray(make_inputs("realnvp", batch=6), jnp.float32)
  shards = x.reshape((2, 3) + image_shape)  # 2 "devices" with 3 examples each
  net = ResNetConditioner(mid_channels=4, num_blocks=2, bn_axis_name="data")
  one_device = ResNetConditioner(mid_channels=4, num_blocks=2)
  variables = one_device.init(jax.random.PRNGKey(0), x)

  def updated_stats(shard):
    _, updates = net.apply(variables, shard, train=True, mutable=["batch_stats"])
    return updates["batch_stats"]

  per_device = jax.jit(jax.vmap(updated_stats, axis_name="data"))(shards)  # row per "device"
  whole = jax.jit(lambda x: one_device.apply(variables, x, train=True, mutable=["batch_stats"])
                  )(x)[1]["batch_stats"]
  expected = 0.1 * x.mean((0, 1, 2))
  np.testing.assert_allclose(per_device["in_norm"]["mean"], np.stack([expected, expected]),
                             rtol=1e-5, atol=1e-7)
  assert per_device["blocks"]["in_norm"]["mean"].shape == (2, 2, 4)  # device, block, C
  for got, want in zip(jax.tree.leaves(per_device), jax.tree.leaves(whole), strict=False):
    np.testing.assert_allclose(got, np.stack([want, want]), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- invertibility, log-dets


def test_public_contract_init_apply_inverse_realnvp_starts_as_identity():
  """model.init -> apply -> inverse. With zero_init_last every coupling starts as the
  identity: z holds exactly x's values (the factored piece of the squeezed image, then the
  rest) and log_det = 0."""
  model = registry.TINY_FLOWS["realnvp"][0]()
  x = jnp.asarray(make_inputs("realnvp"), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), x)
  assert set(variables) == {"params", "batch_stats"}
  assert count_params(variables) == count_params(registry.tiny_flow_shapes("realnvp")[1])
  z, log_det = model.apply(variables, x)
  assert float(jnp.abs(log_det).max()) == 0.0
  squeezed = Squeeze().forward(x)  # [B, H/2, W/2, 8]
  batch = x.shape[0]
  expected = jnp.concatenate([squeezed[..., 4:].reshape(batch, -1),
                              squeezed[..., :4].reshape(batch, -1)], axis=1)
  np.testing.assert_array_equal(z, expected)
  np.testing.assert_array_equal(model.apply(variables, z, method=model.inverse), x)


def test_first_coupling_matches_hand_computation():
  """Parity 0 (the original's reverse_mask=False) changes pixels with i + j even;
  y = mask x + (1 - mask)(x + t) exp(scale * tanh(s_raw)), scale = g * sign(v). The first
  coupling is slice 0 of the first checkerboard stack."""
  from flowgmm_jax.models.realnvp import RealNVPCoupling
  from flowgmm_jax.nets import ResNetConditioner
  model, variables = model_and_variables("realnvp")
  x = jnp.asarray(make_inputs("realnvp"), jnp.float32)
  mask = checkerboard_mask(x.shape[1], x.shape[2], 0)
  assert float(mask[0, 0, 0]) == 0.0
  assert float(mask[0, 1, 0]) == 1.0
  first = {name: jax.tree.map(lambda a: a[0], tree["checkerboards_0"])
           for name, tree in variables.items()}
  net = ResNetConditioner(mid_channels=model.mid_channels, num_blocks=model.num_blocks,
                          double_after_norm=True, zero_init_last=model.zero_init_last)
  s_raw, t = net.apply({name: tree["conditioner"] for name, tree in first.items()},
                       x * mask, False)
  rescale = first["params"]["rescale"]
  s = rescale["g"] * jnp.sign(rescale["v"]) * jnp.tanh(s_raw)
  expected = mask * x + (1 - mask) * (x + t) * jnp.exp(s)
  coupling = RealNVPCoupling("checkerboard", model.mid_channels, model.num_blocks,
                             zero_init_last=model.zero_init_last)
  y, log_det = coupling.apply(first, (x, jnp.zeros(x.shape[:1])), mask, inverse=False,
                              train=False)
  assert float(jnp.max(jnp.abs(y - x))) > 1e-2  # the coupling changed something
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(log_det, ((1 - mask) * s).sum((1, 2, 3)), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- BatchNorm, dropout


def test_train_mode_updates_batch_stats():
  model, variables = model_and_variables("realnvp")
  x = jnp.asarray(make_inputs("realnvp"), jnp.float32)
  (z_train, _), updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  z_eval, _ = model.apply(variables, x)
  assert not np.allclose(z_train, z_eval)  # batch statistics, not running ones
  # The first coupling's input BN (index 0 of the first stack) sees the kept half x * mask:
  # running = 0.9 running + 0.1 batch (PyTorch).
  old = jax.tree.map(lambda a: a[0], variables["batch_stats"]["checkerboards_0"]["conditioner"])
  new = jax.tree.map(lambda a: a[0], updates["batch_stats"]["checkerboards_0"]["conditioner"])
  kept = x * checkerboard_mask(x.shape[1], x.shape[2], 0)
  np.testing.assert_allclose(new["in_norm"]["mean"],
                             0.9 * old["in_norm"]["mean"] + 0.1 * kept.mean((0, 1, 2)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new["in_norm"]["var"],
                             0.9 * old["in_norm"]["var"] + 0.1 * kept.var((0, 1, 2)),
                             rtol=1e-5, atol=1e-6)
  # Every BatchNorm of every conditioner moved.
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         variables["batch_stats"], updates["batch_stats"])
  assert all(jax.tree.leaves(changed))
  with pytest.raises(Exception, match="batch_stats"):  # train=True needs it mutable
    model.apply(variables, x, train=True)


def test_dropout_only_in_train_mode():
  model, variables = model_and_variables("realnvp_tabular")
  x = jnp.asarray(make_inputs("realnvp_tabular"), jnp.float32)
  z_eval, _ = model.apply(variables, x)
  z_a, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
  z_b, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
  z_c, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  np.testing.assert_array_equal(z_a, z_b)
  assert not np.allclose(z_a, z_eval)
  assert not np.allclose(z_a, z_c)


# ---------------------------------------------------------------- inverse-only use, errors


@pytest.mark.parametrize("name", ["realnvp", "glow"])
def test_inverse_needs_no_forward_call(name):
  """Sampling direction on its own: a fresh apply of ``inverse`` on random z (the image
  shape is inferred from the parameters), mapped back to z. Eager, batch of 2: the ops
  were compiled by the generic eager test of the same flow (the jitted inverse is
  checked there too)."""
  model, variables = model_and_variables(name)
  image_shape = registry.TINY_FLOWS[name][1]
  z = jnp.asarray(np.random.default_rng(7).standard_normal((2, np.prod(image_shape))),
                  jnp.float32)
  samples = model.apply(variables, z, method=model.inverse)  # its own, fresh apply
  assert samples.shape == (2,) + image_shape
  z_back, _ = model.apply(variables, samples)
  np.testing.assert_allclose(z_back, z, rtol=1e-4, atol=1e-4)


def test_non_square_images_with_image_shape():
  """Non-square images need image_shape for the inverse (shape logic only: traced with
  jax.eval_shape, the maths is the same as for square images)."""
  model = RealNVP(num_scales=2, num_blocks=1, mid_channels=4, image_shape=(8, 4, 2))
  # Same parameter shapes as the square model (C = 2): reuse its variables.
  _, variables = model_and_variables("realnvp")
  x = jax.ShapeDtypeStruct((2, 8, 4, 2), jnp.float32)
  z, log_det = jax.eval_shape(model.apply, variables, x)
  assert z.shape == (2, 64)
  assert log_det.shape == (2,)
  x_back = jax.eval_shape(functools.partial(model.apply, method=model.inverse), variables, z)
  assert x_back.shape == (2, 8, 4, 2)
  # Without image_shape, D = 64 = 32 * C is no square image: a clear error.
  square = registry.TINY_FLOWS["realnvp"][0]()
  with pytest.raises(ValueError, match="image_shape"):
    square.apply(variables, jnp.zeros((2, 64)), method=square.inverse)
  # With image_shape known, even initialising through the inverse works.
  shapes = jax.eval_shape(functools.partial(model.init, method=model.inverse),
                          jax.random.PRNGKey(1), z)
  assert count_params(shapes) == count_params(variables)
  with pytest.raises(ValueError, match="image_shape"):
    model.apply(variables, jnp.zeros((2, 8, 8, 2)))


@pytest.mark.parametrize(("ctor", "bad", "match"), [
    (lambda: RealNVP(num_blocks=1, mid_channels=4), (2, 8, 8), r"\[B, H, W, C\]"),
    (lambda: RealNVP(num_blocks=1, mid_channels=4), (2, 7, 8, 2), "divisible by 2"),
    (lambda: RealNVP(num_scales=3, num_blocks=1, mid_channels=4), (2, 6, 6, 2),
     "divisible by 4"),
    (lambda: Glow(num_scales=2, steps_per_scale=1, mid_channels=4, num_blocks=1),
     (2, 6, 6, 2), "divisible by 4"),
    (lambda: TabularFlow(num_coupling_layers=2, hidden_dim=4), (2, 1), "D >= 2"),
    (lambda: TabularFlow(num_coupling_layers=2, coupling="spline", hidden_dim=4), (2, 3, 2),
     r"\[B, D\]"),
])
def test_bad_input_shapes_raise_clear_errors(ctor, bad, match):
  model = ctor()
  with pytest.raises(ValueError, match=match):
    model.init(jax.random.PRNGKey(0), jnp.zeros(bad))


def test_mlp_hidden_layers_counts_every_hidden_layer():
  """hidden_layers means what config.model.hidden_layers means: that many Dense(k) + ReLU
  layers, the first included, then the output layer."""
  for hidden_layers in (1, 3):
    mlp = MLP(hidden_dim=4, hidden_layers=hidden_layers, out_dim=6)
    params = jax.eval_shape(mlp.init, jax.random.PRNGKey(0), jnp.zeros((2, 3)))["params"]
    assert sorted(params) == sorted(["in_dense", "out_dense"]
                                    + [f"hidden{i}" for i in range(hidden_layers - 1)])
    assert count_params(params) == 3 * 4 + 4 + (hidden_layers - 1) * (4 * 4 + 4) + 4 * 6 + 6
  with pytest.raises(ValueError, match="hidden_layers must be >= 1"):
    MLP(hidden_dim=4, hidden_layers=0, out_dim=6).init(jax.random.PRNGKey(0), jnp.zeros((2, 3)))


def test_bad_latent_shapes_raise_clear_errors():
  model, variables = model_and_variables("realnvp")
  with pytest.raises(ValueError, match="square"):
    model.apply(variables, jnp.zeros((2, 2 * 50)), method=model.inverse)  # 50 not square
  with pytest.raises(ValueError, match="multiple"):
    model.apply(variables, jnp.zeros((2, 127)), method=model.inverse)
  with pytest.raises(ValueError, match=r"z: \[B, D\]"):
    model.apply(variables, jnp.zeros((2, 8, 8, 2)), method=model.inverse)
  fresh = RealNVP(num_blocks=1, mid_channels=4)
  with pytest.raises(ValueError, match="no parameters"):
    fresh.init(jax.random.PRNGKey(0), jnp.zeros((2, 128)), method=fresh.inverse)


# ---------------------------------------------------------------- Glow specifics


def test_glow_init_is_data_dependent_actnorm():
  """model.init(rng, x) IS ActNorm's data-dependent init, inside the scan over a scale's
  steps too: each step's ActNorm maps the activations reaching it (the first after the
  first squeeze, the second after the first step) to zero mean, unit variance per channel;
  each 1x1 conv starts from the LU factors of its own seed. At init the 1x1 convs are
  orthogonal and the couplings the identity, so the log-det is the ActNorms'."""
  model = Glow(num_scales=1, steps_per_scale=2, mid_channels=4, num_blocks=0)
  x = jnp.asarray(3.0 + 2.0 * make_inputs("glow", batch=4)[:, :4, :4], jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), x)
  params = variables["params"]["scales_0"]
  h = Squeeze().forward(x)  # [4, 2, 2, 8]: what reaches step 0
  log_det = 0.0
  for step in range(2):
    loc, log_scale = params["actnorm"]["loc"][step], params["actnorm"]["log_scale"][step]
    normalised = (h - loc) * jnp.exp(-log_scale)
    np.testing.assert_allclose(normalised.mean((0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(normalised.var((0, 1, 2)), 1.0, atol=1e-4)
    assert float(jnp.abs(log_scale).max()) > 0.1
    lu_init = glow_lib._fixed_conv1x1_lu_init(model._conv1x1_seed(step), 8)
    for name in ("lower", "upper", "log_s"):
      np.testing.assert_array_equal(params["conv1x1"][name][step], lu_init[name])
    h = normalised @ Conv1x1LU(**lu_init).weight()  # the coupling is the identity at init
    log_det = log_det - 4 * jnp.sum(log_scale)
  _, got = model.apply(variables, x)
  np.testing.assert_allclose(got, jnp.broadcast_to(log_det, got.shape), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dim", [6, 7])
def test_compact_tabular_conditioner_equals_original_full_width_layout(dim):
  """The default affine TabularFlow drops the original's dead MLP weights (inputs that are always
  masked to zero, outputs that are discarded); embedding its weights into the full-width
  layout must give exactly the same flow."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(5, dim)), jnp.float32)
  compact = TabularFlow(num_coupling_layers=3, hidden_dim=8, hidden_layers=2)
  full = TabularFlow(num_coupling_layers=3, hidden_dim=8, hidden_layers=2,
                     full_width_conditioner=True)
  vc = jax.tree.map(np.array, randomize(compact.init(jax.random.PRNGKey(0), x)))
  vf = jax.tree.map(np.array, full.init(jax.random.PRNGKey(1), x))

  def coupling(params, i):
    """Coupling i of 3 (views: writing into them writes into ``params``): pair 0's even
    and odd couplings, then the unpaired last one."""
    if i == 2:
      return params["last"]
    return jax.tree.map(lambda a: a[0], params["pairs"]["even" if i == 0 else "odd"])

  def copy_into(dst, src):
    jax.tree.map(lambda d, s: d.__setitem__(Ellipsis, s), dst, src)

  split = dim // 2
  for i in range(3):
    keep_first = i % 2 == 0
    kept = np.arange(split) if keep_first else np.arange(split, dim)
    changed = np.setdiff1d(np.arange(dim), kept)
    c = len(changed)
    cc, cf = coupling(vc["params"], i), coupling(vf["params"], i)
    pc, pf = cc["conditioner"]["mlp"], cf["conditioner"]["mlp"]
    pf["in_dense"]["kernel"][:] = 0.0
    pf["in_dense"]["kernel"][kept] = pc["in_dense"]["kernel"]
    pf["in_dense"]["bias"][:] = pc["in_dense"]["bias"]
    copy_into(pf["hidden0"], pc["hidden0"])
    for fo, co in [(0, 0), (dim, c)]:  # s_raw columns, then t columns
      pf["out_dense"]["kernel"][:, fo + changed] = pc["out_dense"]["kernel"][:, co:co + c]
      pf["out_dense"]["bias"][fo + changed] = pc["out_dense"]["bias"][co:co + c]
    copy_into(cf["rescale"], cc["rescale"])
  zc, ldc = compact.apply(vc, x)
  zf, ldf = full.apply(vf, x)
  assert float(jnp.max(jnp.abs(ldc))) > 0.1  # a non-trivial flow
  np.testing.assert_allclose(np.asarray(zc), np.asarray(zf), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ldc), np.asarray(ldf), rtol=1e-5, atol=1e-5)
  assert count_params(vc) < count_params(vf)


# ---------------------------------------------------------------- compute dtype

# bfloat16 has an 8-bit mantissa (relative error ~4e-3 per rounding); the conditioners'
# outputs feed float32 couplings, so the log-det moves by a small fraction of a nat per
# dimension. Stated bound, per dimension, on these tiny random-weight flows (measured
# largest: 0.079, the spline, whose bin edges move with every rounding; the others < 0.03):
BF16_LOG_DET_TOL_PER_DIM = 0.1


@pytest.mark.parametrize("name", ["realnvp", "glow", "realnvp_tabular", "spline_tabular"])
def test_bfloat16_compute_keeps_float32_params_and_a_close_log_det(name):
  model, variables = model_and_variables(name)
  bf16 = model.clone(compute_dtype=jnp.bfloat16)
  x = jnp.asarray(make_inputs(name, batch=4), jnp.float32)
  z32, ld32 = model.apply(variables, x)
  z16, ld16 = bf16.apply(variables, x)
  assert z16.dtype == jnp.float32
  assert ld16.dtype == jnp.float32
  dim = int(np.prod(x.shape[1:]))
  gap = np.abs(np.asarray(ld16) - np.asarray(ld32)) / dim
  assert np.all(gap <= BF16_LOG_DET_TOL_PER_DIM), gap
  assert np.any(gap > 0)  # bfloat16 really ran (not float32 again)
  np.testing.assert_allclose(np.asarray(z16), np.asarray(z32), atol=0.1, rtol=0.05)
  # Parameters are created in float32 whatever the compute dtype.
  shapes = jax.eval_shape(bf16.init, jax.random.PRNGKey(0), x)
  assert {leaf.dtype for leaf in jax.tree.leaves(shapes["params"])} == {jnp.dtype("float32")}


def test_compute_dtype_reaches_the_flow_from_the_config_and_bad_values_are_refused():
  from flowgmm_jax.flowgmm import FlowGMM
  from flowgmm_jax.training.config import base_config, validate_config
  c = base_config()
  c.compute_dtype = "bfloat16"
  validate_config(c)
  model = FlowGMM.from_config(c, (2,), 2, image=False)
  assert model.flow.compute_dtype == jnp.bfloat16
  c.compute_dtype = "float16"
  with pytest.raises(ValueError, match="compute_dtype='float16'; choose one of"):
    validate_config(c)


# ---------------------------------------------------------------- stacks, odd shapes

# Tiny flows with stacks longer than 1 (2 residual blocks, 2 Glow steps per scale), odd D
# and odd coupling counts (one unpaired tabular coupling).
ODD_SHAPED_FLOWS = {
    "realnvp": (lambda: RealNVP(num_scales=2, num_blocks=2, mid_channels=4), (4, 4, 2)),
    "glow": (lambda: Glow(num_scales=2, steps_per_scale=2, mid_channels=4, num_blocks=0),
             (4, 4, 2)),
    "realnvp_tabular_odd_d_even_count": (
        lambda: TabularFlow(num_coupling_layers=4, hidden_dim=8, hidden_layers=2), (5,)),
    "realnvp_tabular_odd_d_odd_count": (
        lambda: TabularFlow(num_coupling_layers=5, hidden_dim=8, hidden_layers=2), (7,)),
    "realnvp_tabular_full_width": (
        lambda: TabularFlow(num_coupling_layers=3, hidden_dim=8, hidden_layers=2,
                            full_width_conditioner=True), (6,)),
    "spline_tabular_odd_count": (
        lambda: TabularFlow(num_coupling_layers=3, coupling="spline", hidden_dim=8,
                            hidden_layers=2, num_bins=4),
        (5,)),
}


def _random_like(shapes, rng):
  """Random float64 values for variables of ``shapes``: weights ~ N(0, 1/fan_in), gains,
  BatchNorm scales and running variances ~ 1 (times exp(0.2 N(0, 1))), the rest 0.2 N(0, 1)."""
  def sample(path, leaf):
    key = getattr(path[-1], "key", None)
    if key in ("v", "kernel") and len(leaf.shape) >= 2:
      fan_in = np.prod(leaf.shape[-4:-1] if key == "v" else leaf.shape[-2:-1])
      return rng.standard_normal(leaf.shape) / np.sqrt(fan_in)
    if key in ("g", "v", "scale", "var"):
      return np.exp(0.2 * rng.standard_normal(leaf.shape))
    return 0.2 * rng.standard_normal(leaf.shape)
  return jax.tree_util.tree_map_with_path(sample, shapes)


@pytest.mark.parametrize("name", sorted(ODD_SHAPED_FLOWS))
def test_odd_shaped_flows_invert_float64(name, x64):
  """Random (far from the identity) variables: the inverse undoes the forward pass in
  float64, eval mode, and train mode runs and moves BatchNorm's statistics."""
  ctor, shape = ODD_SHAPED_FLOWS[name]
  model = ctor()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3,) + shape) * (3.0 if "spline" in name else 1.0))
  variables = _random_like(jax.eval_shape(model.init, jax.random.PRNGKey(0), x), rng)
  z, log_det = model.apply(variables, x)
  assert float(jnp.abs(log_det).max()) > 0.5  # far from the identity
  back = model.apply(variables, z, method=model.inverse)
  np.testing.assert_allclose(np.asarray(back), np.asarray(x), rtol=1e-9, atol=1e-9)
  if "batch_stats" in variables:
    (z_train, _), updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(z_train, z)
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), updates["batch_stats"],
                         variables["batch_stats"])
    assert min(jax.tree.leaves(moved)) > 0


def test_one_parameter_layout_and_any_other_refused_in_one_line():
  models.check_layout_version(models.PARAM_LAYOUT_VERSION)
  messages = {}
  for version in (1, 3, 0, "2", None):
    with pytest.raises(models.LayoutVersionError) as e:
      models.check_layout_version(version, where="checkpoint /tmp/run")
    messages[version] = str(e.value)
    assert "\n" not in messages[version]
    assert "checkpoint /tmp/run" in messages[version]
  assert "retrain" in messages[1]
  assert "newer" in messages[3]
  assert "unknown" in messages[0]
  assert "unknown" in messages["2"]


def test_conv2d_same_gradients_are_lax_s_and_canonical_inside_a_scan(x64):
  """nets.conv2d_same: the same values, JVP and VJP as lax's convolution (float64), and
  its backward pass inside a loop holds only convolutions in the NHWC x HWIO layout
  (b01f_01io->b01f) that XLA:CPU runs fast; lax's own transpose rules leave permuted ones
  there (jax-ml/jax#12868), which ran the scanned blocks' backward 30x slower."""
  from flowgmm_jax.nets import conv2d_same, conv2d_same_cpu, conv2d_same_plain
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 5, 4, 3)))
  k = jnp.asarray(rng.standard_normal((3, 3, 3, 2)))
  dx, dk = jnp.asarray(rng.standard_normal(x.shape)), jnp.asarray(rng.standard_normal(k.shape))
  def ref(x, k):
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  g = jnp.asarray(rng.standard_normal((2, 5, 4, 2)))
  # The CPU implementation (custom JVP), the one other backends get, and the dispatcher.
  for conv in (conv2d_same_cpu, conv2d_same_plain, conv2d_same):
    for got, want in zip(jax.jvp(conv, (x, k), (dx, dk)), jax.jvp(ref, (x, k), (dx, dk)), strict=False):
      np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    for got, want in zip(jax.vjp(conv, x, k)[1](g), jax.vjp(ref, x, k)[1](g), strict=False):
      np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)

  # The dispatcher's choice is made at lowering: the custom JVP's explicit transposes on
  # CPU, none for GPU or TPU.
  grad = jax.jit(jax.grad(lambda x, k: jnp.sum(conv2d_same(x, k) ** 2), (0, 1)))
  def transposes(platform):
    lowered = grad.trace(x, k).lower(lowering_platforms=(platform,))
    return lowered.as_text().count("stablehlo.transpose")
  assert transposes("cpu") > 0
  assert transposes("cuda") == transposes("tpu") == 0

  def scanned(conv):
    def loss(kernels, x):
      h, _ = jax.lax.scan(lambda h, kk: (jnp.tanh(conv(h, kk)), None), x, kernels)
      return jnp.sum(h ** 2)
    return jax.jit(jax.grad(loss, (0, 1))).lower(jnp.zeros((2, 3, 3, 3, 3)), x)

  def labels(conv):
    return set(re.findall(r"dim_labels=(\S+?),", scanned(conv).compile().as_text()))
  assert labels(conv2d_same) == {"b01f_01io->b01f"}
  assert labels(ref) != {"b01f_01io->b01f"}  # what the custom JVP is there for


def test_masked_batch_norm_is_exact_across_devices_float64(x64):
  """nets.BatchNorm with ``mask`` and ``axis_name``: two devices (vmap over a named axis)
  holding 3 and 1 real rows among their 4 give the outputs and running statistics of one
  BatchNorm over the 4 real rows alone; the padding rows count for nothing."""
  from flowgmm_jax.nets import BatchNorm

  rng = np.random.default_rng(0)
  real = rng.normal(size=(4, 3, 3, 2)) * np.array([1.0, 5.0]) + np.array([2.0, -1.0])
  # Device 0: real rows 0, 1, 2 and a copy of row 0; device 1: real row 3 and three copies.
  rows = np.array([[0, 1, 2, 0], [3, 3, 3, 3]])
  mask = np.array([[True, True, True, False], [True, False, False, False]])
  bn = BatchNorm(use_running_average=False, axis_name="data")
  variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64),
                           bn.init(jax.random.PRNGKey(0), jnp.asarray(real)))

  def per_device(x, m):
    return bn.apply(variables, x, m, mutable=["batch_stats"])

  y, updates = jax.vmap(per_device, axis_name="data")(jnp.asarray(real[rows]), mask)
  single = BatchNorm(use_running_average=False)
  y_ref, updates_ref = single.apply(variables, jnp.asarray(real), mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(y)[mask], np.asarray(y_ref)[[0, 1, 2, 3]],
                             rtol=1e-12, atol=1e-12)
  for name in ("mean", "var"):
    for device in range(2):  # identical on both devices
      np.testing.assert_allclose(updates["batch_stats"][name][device],
                                 updates_ref["batch_stats"][name], rtol=1e-12)
  expected_var = 0.9 + 0.1 * real.reshape(-1, 2).var(0)
  np.testing.assert_allclose(updates_ref["batch_stats"]["var"], expected_var, rtol=1e-12)
