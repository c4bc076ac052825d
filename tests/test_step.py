"""The train step (``flowgmm_jax.training.step``) and the jaxpr counters it is measured with
(``benchmarks.jaxpr_stats``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks.jaxpr_stats import count_collectives, count_flops


def test_scan_body_counts_length_times():
  """A scan of length L counts L times its body: a [4,5]@[5,6] matmul (2*4*5*6 = 240 FLOPs)
  and a [4,6] add (24) per iteration, a psum inside and one outside, under shard_map."""
  length = 7
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))

  def per_device(x, w, b):
    def body(carry, _):
      y = carry @ w + b  # [4, 6]
      return carry, lax.psum(y, "data")
    _, ys = lax.scan(body, x, None, length=length)
    return lax.psum(ys.sum(), "data")

  fn = jax.shard_map(per_device, mesh=mesh, in_specs=(jax.P(), jax.P(), jax.P()),
                     out_specs=jax.P(), check_vma=False)
  args = (jnp.ones((4, 5)), jnp.ones((5, 6)), jnp.ones((4, 6)))
  closed = jax.make_jaxpr(jax.jit(fn))(*args)
  assert count_collectives(closed) == {"psum": length + 1}
  # Per iteration 240 + 24; then one reduce_sum over the [L, 4, 6] stack.
  assert count_flops(closed) == length * (240 + 24) + length * 4 * 6


def test_conv_flops_and_cond_takes_the_larger_branch():
  x = jnp.ones((2, 8, 8, 3))
  k = jnp.ones((3, 3, 3, 4))

  def fn(x, k, p):
    y = lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return lax.cond(p, lambda y: y * 2.0, lambda y: y, y)

  closed = jax.make_jaxpr(fn)(x, k, True)
  # 2 * outputs [2,8,8,4] * (3*3*3 MACs each), then the multiply branch's 2*8*8*4.
  assert count_flops(closed) == 2 * 512 * 27 + 512
  assert count_collectives(closed) == {}


def _traced_cifar_step(sync_batch_norm: bool, num_devices: int = 8):
  """The jaxpr of the CIFAR-10 FlowGMM-cons train step (``configs/cifar10.py:smoke``) on an
  abstract ``num_devices``-device mesh: traced, never compiled or run."""
  from benchmarks.jaxpr_stats import traced_train_step
  from configs import cifar10
  c = cifar10.get_config("smoke")
  c.model.sync_batch_norm = sync_batch_norm
  return traced_train_step(c, num_devices)


def test_per_device_batch_norm_step_executes_few_collectives():
  """sync_batch_norm=False: the 8-device CIFAR step's collectives are the global counts, the
  reported scalars, the gradients and the BatchNorm running statistics, one psum each,
  whatever the depth of the flow. Synced BatchNorm adds one per norm per pass."""
  per_device = count_collectives(_traced_cifar_step(False))
  synced = count_collectives(_traced_cifar_step(True))
  print(f"collectives per step, 8 devices, cifar10:smoke: per-device BN {per_device}, "
        f"synced BN {synced}")
  assert per_device == {"psum": 4}
  assert set(synced) == {"psum"}
  assert synced["psum"] > 4 * per_device["psum"]


def _tiny_image_step(num_devices: int = 1, sync_batch_norm: bool = True):
  """A float64 FlowGMM-cons step of a tiny one-scale RealNVP on 4x4x1 images (every
  parameter cast to float64; SGD, so the update is the gradient's image), its initial
  state, and ``batch(x, y, position, mask)`` to shard a batch for it."""
  from flowgmm_jax import mesh as mesh_lib
  from flowgmm_jax.flowgmm import FlowGMM
  from flowgmm_jax.losses import FlowGMMLoss
  from flowgmm_jax.training import optim
  from flowgmm_jax.training.config import base_config, model_config
  from flowgmm_jax.training.state import create_train_state
  from flowgmm_jax.training.step import make_train_step

  c = base_config()
  c.model = model_config("realnvp", num_scales=1, num_blocks=1, mid_channels=4,
                         sync_batch_norm=sync_batch_norm)
  c.loss.consistency_weight = 1.0
  shape, k = (4, 4, 1), 2
  model = FlowGMM.from_config(c, shape, k, image=True, bn_axis_name="data")
  eval_model = FlowGMM.from_config(c, shape, k, image=True)
  x0 = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4,) + shape), jnp.float64)
  variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64),
                           eval_model.init(jax.random.PRNGKey(0), x0))
  tx = optim.make_optimizer("sgd", 1e-2, 10)
  mesh = mesh_lib.make_mesh(jax.devices()[:num_devices])
  step = make_train_step(model, tx, mesh, loss=FlowGMMLoss.from_config(c.loss, 16),
                         dequantize=True, num_dims=16)

  def batch(x, y, position, mask):
    return mesh_lib.shard_batch(mesh, {"x": x, "y": y, "position": position, "mask": mask})

  state = mesh_lib.replicate(mesh, create_train_state(variables, tx))
  return step, state, batch


def test_padding_rows_change_nothing_float64(x64):
  """A batch padded with repeated rows (mask False) gives the BatchNorm statistics, loss and
  parameter update of the unpadded batch, to float64 round-off, through both forward passes
  of FlowGMM-cons."""
  rng = np.random.default_rng(1)
  x = rng.integers(0, 256, (6, 4, 4, 1)).astype(np.float64)
  y = np.array([0, 1, 0, -1, -1, -1], np.int32)
  position = np.arange(6, dtype=np.int32)
  pad = np.array([0, 1, 2, 0, 3, 4, 5, 4])  # rows 3 and 7 repeat real rows
  mask = np.array([True, True, True, False, True, True, True, False])
  # Real rows keep their positions (which seed their noise); padding takes the next ones.
  padded_position = np.array([0, 1, 2, 6, 3, 4, 5, 7], np.int32)

  step, state, batch = _tiny_image_step()
  initial_stats = jax.tree.map(np.asarray, state.batch_stats)
  key = jnp.asarray(jax.random.PRNGKey(3))
  plain, plain_metrics = step(jax.tree.map(jnp.copy, state),
                              batch(x, y, position, np.ones(6, bool)), key)
  padded, padded_metrics = step(state, batch(x[pad], y[pad], padded_position, mask), key)

  assert float(plain_metrics["train/skipped_steps"]) == 0.0
  np.testing.assert_allclose(padded_metrics["train/loss"], plain_metrics["train/loss"],
                             rtol=1e-12)
  # The running statistics moved (so the comparison below can fail), by the same amounts.
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))),
                       plain.batch_stats, initial_stats)
  assert max(jax.tree.leaves(moved)) > 1e-3
  for name in ("batch_stats", "params"):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-12),
                 getattr(plain, name), getattr(padded, name))
