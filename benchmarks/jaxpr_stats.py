"""Per-step counts read from a traced program: collectives executed and FLOPs.

``count_collectives(jax.make_jaxpr(step)(*args))`` and ``count_flops(...)`` walk a
``ClosedJaxpr`` recursively into every sub-jaxpr (``pjit``, ``shard_map``, ``custom_jvp_call``,
``custom_vjp_call``, ``remat``, ``cond`` branches, ``while`` and ``scan`` bodies). A ``scan``
body counts ``length`` times, so a flow whose identical layers are scanned gets the count of
the unrolled program without building it. Counting rules:

- A ``while`` body counts once (its trip count is not in the jaxpr); a ``cond`` counts its
  most expensive branch (one branch executes, and an upper bound is the useful number).
- A collective is one equation of a collective primitive (``psum``, ``pmax``, ``pmin``,
  ``all_gather``, ``ppermute``, ``all_to_all``, ``psum_scatter``...): ``lax.pmean`` is traced as
  a ``psum`` (and a division), and a ``psum`` of a pytree is one equation whatever its number
  of leaves (XLA lowers it to one all-reduce over a tuple).
- FLOPs: ``dot_general`` and ``conv_general_dilated`` count 2 per multiply-accumulate;
  elementwise arithmetic (including transcendentals) counts 1 per output element, reductions 1
  per input element, and data movement (reshape, transpose, slice, broadcast, convert, gather)
  counts 0.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

from jax.extend import core as jcore

COLLECTIVES = frozenset({
    "psum", "psum_invariant", "pmax", "pmin", "ppermute", "pshuffle", "all_gather",
    "all_gather_invariant", "all_to_all", "ragged_all_to_all", "psum_scatter",
    "reduce_scatter", "pgather", "pbroadcast",
})

ELEMENTWISE = frozenset({
    "add", "add_any", "sub", "mul", "div", "rem", "neg", "abs", "sign", "max", "min", "pow",
    "integer_pow", "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "sqrt", "rsqrt",
    "cbrt", "sin", "cos", "tan", "atan2", "erf", "erfc", "erf_inv", "lgamma", "digamma",
    "square", "reciprocal", "floor", "ceil", "round", "select_n", "clamp", "eq", "ne", "lt",
    "le", "gt", "ge", "and", "or", "not", "xor", "is_finite", "nextafter",
})

REDUCTIONS = frozenset({
    "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
    "argmax", "argmin", "cumsum", "cumlogsumexp", "cummax", "cummin", "cumprod",
})


def _as_jaxpr(value) -> jcore.Jaxpr | None:
  if isinstance(value, jcore.ClosedJaxpr):
    return value.jaxpr
  if isinstance(value, jcore.Jaxpr):
    return value
  return None


def _sub_jaxprs(eqn) -> Iterator[tuple[str, jcore.Jaxpr]]:
  """(param name, jaxpr) for every jaxpr held in ``eqn.params`` (also inside tuples)."""
  for name, value in eqn.params.items():
    jaxpr = _as_jaxpr(value)
    if jaxpr is not None:
      yield name, jaxpr
    elif isinstance(value, (tuple, list)):
      for item in value:
        jaxpr = _as_jaxpr(item)
        if jaxpr is not None:
          yield name, jaxpr


def _walk(jaxpr: jcore.Jaxpr, leaf) -> Counter:
  """Sums ``leaf(eqn) -> Counter`` over the program, each sub-program weighted by how many
  times it executes per call (scan: ``length``; cond: the branch with the largest total)."""
  total: Counter = Counter()
  for eqn in jaxpr.eqns:
    total.update(leaf(eqn))
    name = eqn.primitive.name
    if name == "cond":
      branches = [_walk(_as_jaxpr(b), leaf) for b in eqn.params["branches"]]
      total.update(max(branches, key=lambda c: (sum(c.values()), len(c))))
      continue
    times = int(eqn.params["length"]) if name == "scan" else 1
    for param, sub in _sub_jaxprs(eqn):
      if name == "while" and param == "cond_jaxpr":
        times_here = 1
      else:
        times_here = times
      for key, value in _walk(sub, leaf).items():
        total[key] += value * times_here
  return total


def _collective(eqn) -> Counter:
  return Counter({eqn.primitive.name: 1}) if eqn.primitive.name in COLLECTIVES else Counter()


def count_collectives(closed_jaxpr: Any) -> dict[str, int]:
  """Collectives executed per call of the traced program, by primitive name.

  Args:
    closed_jaxpr: ``jax.make_jaxpr(fn)(*args)`` (a ``ClosedJaxpr``) or a ``Jaxpr``.

  Returns:
    ``{primitive name: count}``, e.g. ``{"psum": 4}``; empty when none execute. Sum the values
    for the total.
  """
  return dict(_walk(_as_jaxpr(closed_jaxpr), _collective))


def _size(aval) -> int:
  return int(math.prod(getattr(aval, "shape", ())))


def _flops(eqn) -> Counter:
  name = eqn.primitive.name
  if name == "dot_general":
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs_shape = eqn.invars[0].aval.shape
    macs = _size(eqn.outvars[0].aval) * math.prod(lhs_shape[d] for d in lhs_contract)
    return Counter({"flops": 2 * macs})
  if name == "conv_general_dilated":
    rhs_shape = eqn.invars[1].aval.shape
    out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
    macs_per_output = math.prod(rhs_shape) // rhs_shape[out_feature_dim]
    return Counter({"flops": 2 * _size(eqn.outvars[0].aval) * macs_per_output})
  if name in ELEMENTWISE:
    return Counter({"flops": sum(_size(v.aval) for v in eqn.outvars)})
  if name in REDUCTIONS:
    return Counter({"flops": sum(_size(v.aval) for v in eqn.invars)})
  return Counter()


def count_flops(closed_jaxpr: Any) -> float:
  """FLOPs executed per call of the traced program (rules in the module docstring).

  Args:
    closed_jaxpr: ``jax.make_jaxpr(fn)(*args)`` (a ``ClosedJaxpr``) or a ``Jaxpr``.

  Returns:
    the count as a float. Under ``shard_map`` the shapes are per device, so the count is one
    device's; under plain ``jit`` it is the whole program's.
  """
  return float(_walk(_as_jaxpr(closed_jaxpr), _flops).get("flops", 0))


# One image's shape in each image config's dataset.
IMAGE_SHAPES = {"mnist": (28, 28, 1), "svhn": (32, 32, 3), "cifar10": (32, 32, 3)}


def traced_train_step(config, num_devices: int, per_device_batch: int = 8):
  """The jaxpr of ``config``'s train step (image configs) on an abstract ``num_devices``
  mesh, at ``per_device_batch`` rows per device: traced, never compiled or run."""
  import types

  import jax
  import jax.numpy as jnp
  import numpy as np

  from flowgmm_jax.training import programs as programs_lib
  shape = IMAGE_SHAPES[config.data.name]
  dataset = types.SimpleNamespace(x_train=np.zeros((1, *shape), np.uint8), num_classes=10,
                                  kind="image")
  progs = programs_lib.programs(programs_lib.program_key(config, dataset),
                                jax.sharding.AbstractMesh((num_devices,), ("data",)))
  rows = per_device_batch * num_devices
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  x = jax.ShapeDtypeStruct((rows, *shape), jnp.uint8)
  index = jax.ShapeDtypeStruct((rows,), jnp.int32)
  state = jax.eval_shape(progs.new_state, jax.eval_shape(progs.init, key, x))
  batch = {"x": x, "y": index, "position": index,
           "mask": jax.ShapeDtypeStruct((rows,), jnp.bool_)}
  return jax.make_jaxpr(progs.train_step)(state, batch, key)


def main(argv=None) -> None:
  """``python -m benchmarks.jaxpr_stats --config=configs/cifar10.py --devices=8``: the
  collectives and FLOPs per step of an image config's train step, with BatchNorm synced and
  per device (docs/experiments.md quotes these)."""
  import argparse
  import importlib
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
          f"per step {dict(count_collectives(jaxpr))}, FLOPs per device per step "
          f"{count_flops(jaxpr):.3e}")


if __name__ == "__main__":
  main()
