"""Per-step counts read from a traced program (``jax.make_jaxpr(step)(*args)``): collectives
executed and FLOPs, every sub-jaxpr walked and each ``scan`` body counted ``length`` times.
The counting rules: benchmarks/README.md, "jaxpr_stats"."""

from __future__ import annotations

import argparse
import importlib
import math
import types
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from flowgmm_jax.training import programs as programs_lib

COLLECTIVES = frozenset("""psum psum_invariant pmax pmin ppermute pshuffle all_gather
all_gather_invariant all_to_all ragged_all_to_all psum_scatter reduce_scatter pgather
pbroadcast""".split())
ELEMENTWISE = frozenset("""add add_any sub mul div rem neg abs sign max min pow integer_pow exp exp2
log log1p expm1 tanh logistic sqrt rsqrt cbrt sin cos tan atan2 erf erfc erf_inv lgamma digamma
square reciprocal floor ceil round select_n clamp eq ne lt le gt ge and or not xor is_finite
nextafter""".split())
REDUCTIONS = frozenset("""reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or argmax
argmin cumsum cumlogsumexp cummax cummin cumprod""".split())
# One image's shape in each image config's dataset.
IMAGE_SHAPES = {"mnist": (28, 28, 1), "svhn": (32, 32, 3), "cifar10": (32, 32, 3)}


def _as_jaxpr(value) -> jcore.Jaxpr | None:
  value = value.jaxpr if isinstance(value, jcore.ClosedJaxpr) else value
  return value if isinstance(value, jcore.Jaxpr) else None


def _sub_jaxprs(eqn):
  """Yields (param name, jaxpr) for every jaxpr held in ``eqn.params`` (also inside tuples)."""
  for name, value in eqn.params.items():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if (jaxpr := _as_jaxpr(item)) is not None:
        yield name, jaxpr


def _walk(jaxpr: jcore.Jaxpr, leaf) -> Counter:
  """Sums ``leaf(eqn) -> Counter`` over the program, each sub-program weighted by how many
  times it executes per call (scan: ``length``; cond: the branch with the largest total)."""
  total: Counter = Counter()
  for eqn in jaxpr.eqns:
    total.update(leaf(eqn))
    if eqn.primitive.name == "cond":
      branches = (_walk(_as_jaxpr(b), leaf) for b in eqn.params["branches"])
      total.update(max(branches, key=lambda c: (sum(c.values()), len(c))))
      continue
    times = int(eqn.params["length"]) if eqn.primitive.name == "scan" else 1
    for _, sub in _sub_jaxprs(eqn):
      total.update({k: v * times for k, v in _walk(sub, leaf).items()})
  return total


def count_collectives(closed_jaxpr: jcore.ClosedJaxpr | jcore.Jaxpr) -> dict[str, int]:
  """``{primitive name: count}`` of the collectives one call of the traced program (a
  ``ClosedJaxpr`` or ``Jaxpr``) executes, e.g. ``{"psum": 4}``."""
  return dict(_walk(_as_jaxpr(closed_jaxpr), lambda eqn: Counter(
      [eqn.primitive.name] if eqn.primitive.name in COLLECTIVES else [])))


def _flops(eqn) -> int:
  name, size = eqn.primitive.name, lambda v: math.prod(getattr(v.aval, "shape", ()))
  if name == "dot_general":
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    return 2 * size(eqn.outvars[0]) * math.prod(eqn.invars[0].aval.shape[d] for d in lhs_contract)
  if name == "conv_general_dilated":
    rhs_shape = eqn.invars[1].aval.shape
    macs_per_output = (math.prod(rhs_shape)
                       // rhs_shape[eqn.params["dimension_numbers"].rhs_spec[0]])
    return 2 * size(eqn.outvars[0]) * macs_per_output
  if name in ELEMENTWISE:
    return sum(map(size, eqn.outvars))
  return sum(map(size, eqn.invars)) if name in REDUCTIONS else 0


def count_flops(closed_jaxpr: jcore.ClosedJaxpr | jcore.Jaxpr) -> float:
  """FLOPs one call of the traced program executes: one device's under ``shard_map`` (its
  shapes are per device), the whole program's under plain ``jit``."""
  counts = _walk(_as_jaxpr(closed_jaxpr), lambda eqn: Counter(flops=_flops(eqn)))
  return float(counts.get("flops", 0))


def traced_train_step(config, num_devices: int, per_device_batch: int = 8):
  """The jaxpr of ``config``'s train step (image configs) on an abstract ``num_devices``
  mesh, at ``per_device_batch`` rows per device: traced, never compiled or run."""
  shape = IMAGE_SHAPES[config.data.name]
  dataset = types.SimpleNamespace(x_train=np.zeros((1, *shape), np.uint8), num_classes=10,
                                  kind="image")
  progs = programs_lib.programs(programs_lib.program_key(config, dataset),
                                jax.sharding.AbstractMesh((num_devices,), ("data",)))
  rows = per_device_batch * num_devices
  x = jax.ShapeDtypeStruct((rows, *shape), jnp.uint8)
  index = jax.ShapeDtypeStruct((rows,), jnp.int32)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  state = jax.eval_shape(progs.new_state, jax.eval_shape(progs.init, key, x))
  batch = {"x": x, "y": index, "position": index,
           "mask": jax.ShapeDtypeStruct((rows,), jnp.bool_)}
  return jax.make_jaxpr(progs.train_step)(state, batch, key)


def main(argv=None) -> None:
  """The collectives and FLOPs per step of an image config's train step, with BatchNorm
  synced and per device (docs/experiments.md quotes these)."""
  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument("--config", default="configs/cifar10.py",
                      help="configs/NAME.py[:ARG] of an image config")
  parser.add_argument("--devices", type=int, default=8)
  args = parser.parse_args(argv)
  path, _, arg = args.config.partition(":")
  module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
  for sync in (True, False):
    config = module.get_config(arg or None)
    config.model.sync_batch_norm = sync
    jaxpr = traced_train_step(config, args.devices)
    print(f"{args.config} on {args.devices} devices, sync_batch_norm={sync}: collectives "
          f"per step {count_collectives(jaxpr)}, FLOPs per device per step "
          f"{count_flops(jaxpr):.3e}")


if __name__ == "__main__":
  main()
