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
