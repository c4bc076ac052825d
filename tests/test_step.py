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
  import types

  from configs import cifar10
  from flowgmm_jax.training import build

  c = cifar10.get_config("smoke")
  c.model.sync_batch_norm = sync_batch_norm
  dataset = types.SimpleNamespace(x_train=np.zeros((1, 32, 32, 3), np.uint8), num_classes=10,
                                  kind="image")
  programs = build.programs(build.Settings.from_config(c, dataset),
                            jax.sharding.AbstractMesh((num_devices,), ("data",)))
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  x = jax.ShapeDtypeStruct((64, 32, 32, 3), jnp.uint8)
  rows = jax.ShapeDtypeStruct((64,), jnp.int32)
  state = jax.eval_shape(programs.new_state, jax.eval_shape(programs.init, key, x))
  batch = {"x": x, "y": rows, "position": rows,
           "mask": jax.ShapeDtypeStruct((64,), jnp.bool_)}
  return jax.make_jaxpr(programs.train_step)(state, batch, key)


def test_per_device_batch_norm_step_executes_few_collectives():
  """sync_batch_norm=False: the 8-device CIFAR step's collectives are the global counts, the
  reported scalars, the gradients and the BatchNorm running statistics, one psum each,
  whatever the depth of the flow. Synced BatchNorm adds one per norm per pass."""
  per_device = count_collectives(_traced_cifar_step(False))
  synced = count_collectives(_traced_cifar_step(True))
  print(f"collectives per step, 8 devices, cifar10:smoke: per-device BN {per_device}, "
        f"synced BN {synced}")
  assert per_device == {"psum": 4}
  assert set(synced) == {"psum"} and synced["psum"] > 4 * per_device["psum"]
