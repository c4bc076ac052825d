"""Train-step speed of the three reference workloads, side by side with the original PyTorch
code (``--original=PATH``, a clone of github.com/izmailovpavel/flowgmm; the ``bench`` extra).
Commands, workloads and how to read the columns: benchmarks/README.md."""

from __future__ import annotations

import argparse
import functools
import os
import re
import time

import jax
import numpy as np

from benchmarks.jaxpr_stats import count_flops
from benchmarks.provenance import cpu_model, name_list, provenance, usable_cores, write_json
from benchmarks.report import md_table
from flowgmm_jax import losses
from flowgmm_jax import mesh as mesh_lib
from flowgmm_jax.data import augment_images
from flowgmm_jax.flowgmm import FlowGMM
from flowgmm_jax.models import count_params
from flowgmm_jax.training import optim
from flowgmm_jax.training import step as step_lib
from flowgmm_jax.training.config import base_config, model_config
from flowgmm_jax.training.state import create_train_state

# Speed-ups over the original (its step time / ours): benchmarks/README.md, "Speed targets".
SPEEDUP_TARGETS = {"shipped": {"toy": 5.0, "text": 2.0}, "once": {"cifar": 1.0}}
PEAK_GFLOPS = 550.0  # the 2-core CPU's float32 peak, for the fraction-of-peak column
_g = "{:.4g}".format
# name: (labelled rows, unlabelled rows, input shape, classes, model, its fields, the other
# config fields); random data of the paper's shapes (benchmarks/README.md).
WORKLOADS = {
    "toy": (10, 10, (2,), 2, "realnvp_tabular",
            dict(num_coupling_layers=5, hidden_dim=512, hidden_layers=2),
            {"data.kind": "toy", "data.name": "moons"}),
    # The original's num_layers=1 (k -> k layers after the first) is hidden_layers=2.
    "text": (200, 5000, (768,), 4, "realnvp_tabular",
             dict(num_coupling_layers=7, hidden_dim=1024, hidden_layers=2, dropout_rate=0.5),
             {"data.kind": "text", "data.name": "agnews", "loss.unlabeled_weight": 0.6}),
    "cifar": (32, 32, (32, 32, 3), 10, "realnvp", {},
              {"data.kind": "image", "data.name": "cifar10", "loss.label_weight": 3.0,
               "loss.objective": "marginal_and_cross_entropy", "loss.consistency_weight": 1.0,
               "augment.crop_padding": 4, "augment.flip": True, "optim.weight_decay": 5e-5}),
}


def workload(name: str):
  """``(config, x, y, input_shape, num_classes)``: x [B, *input_shape] (uint8 images, else
  float32), y int32 [B] (-1: unlabelled; the labelled rows first)."""
  bl, bu, shape, k, model, fields, updates = WORKLOADS[name]
  c = base_config()
  c.model = model_config(model, **fields)
  c.update_from_flattened_dict(updates)
  rng = np.random.default_rng(0)
  x = (rng.integers(0, 256, (bl + bu,) + shape).astype(np.uint8) if c.data.kind == "image"
       else rng.normal(size=(bl + bu,) + shape).astype(np.float32))
  y = np.concatenate([rng.integers(0, k, bl), -np.ones(bu, int)]).astype(np.int32)
  return c, x, y, shape, k


def _ours(name: str, original_layout: bool = False):
  """``(train_step, state, batch, rng, num_params)``; ``original_layout``: the original's
  full-width tabular conditioners."""
  c, x, y, shape, k = workload(name)
  image, mesh = c.data.kind == "image", mesh_lib.make_mesh()
  model, eval_model = (FlowGMM.from_config(c, shape, k, image=image, bn_axis_name=axis)
                       for axis in (mesh_lib.DATA_AXIS, None))
  if original_layout:
    model, eval_model = (m.clone(flow=m.flow.clone(full_width_conditioner=True))
                         for m in (model, eval_model))
  # Jitted: one compile instead of one per operation (seconds for an image model).
  variables = jax.jit(eval_model.init)(jax.random.PRNGKey(0), x[:8].astype(np.float32))
  tx = optim.make_optimizer(c.optim.optimizer, c.optim.learning_rate, 1000, **{
      f: c.optim[f] for f in ("weight_decay", "grad_clip_norm")})
  augment = functools.partial(augment_images, crop_padding=c.augment.crop_padding,
                              flip=c.augment.flip) if image else None
  loss = losses.FlowGMMLoss(consistency_rampup_steps=100, **{f: c.loss[f] for f in (
      "objective", "label_weight", "unlabeled_weight", "consistency_weight")})
  train_step = step_lib.make_train_step(model, tx, mesh, loss=loss, augment=augment,
                                        dequantize=image, num_dims=int(np.prod(shape)))
  batch = mesh_lib.shard_batch(mesh, dict(x=x, y=y, position=np.arange(len(x), dtype=np.int32)))
  return (train_step, mesh_lib.replicate(mesh, create_train_state(variables, tx)), batch,
          mesh_lib.replicate(mesh, np.asarray(jax.random.PRNGKey(2))), count_params(variables))


def compile_timed(fn, *args) -> tuple:
  """``(compiled, traced, times)``: jitted ``fn`` traced, lowered and compiled for ``args``,
  each stage's wall and process CPU seconds (``trace_s``, ``trace_cpu_s``, ``lower_s``...)."""
  times, stages = {}, [fn]
  for stage in ("trace", "lower", "compile"):
    wall, cpu = time.perf_counter(), time.process_time()
    stages.append(fn.trace(*args) if stage == "trace" else getattr(stages[-1], stage)())
    times[f"{stage}_s"] = time.perf_counter() - wall
    times[f"{stage}_cpu_s"] = time.process_time() - cpu
  return stages[3], stages[1], times


def time_step(name: str, repeats: int) -> dict:
  """Ours: compile (timed with the first step), HLO counts, then ``repeats`` timed steps."""
  train_step, state, batch, rng, num_params = _ours(name)
  t0, c0 = time.perf_counter(), time.process_time()
  compiled, traced, times = compile_timed(train_step, state, batch, rng)
  flops = count_flops(traced.jaxpr) * jax.device_count()
  state, _ = jax.block_until_ready(compiled(state, batch, rng))
  row = {"workload": name, "repeats": repeats, "first_step_s": time.perf_counter() - t0,
         "first_step_cpu_s": time.process_time() - c0}
  for clock in ("", "_cpu"):  # process CPU seconds: another load changes them far less
    row[f"trace_and_lower{clock}_s"] = times[f"trace{clock}_s"] + times[f"lower{clock}_s"]
    row[f"xla_compile{clock}_s"] = times[f"compile{clock}_s"]
  # Compile time grows faster than the fused kernels; transposes and copies are layout changes.
  hlo = compiled.as_text()
  row.update({f"hlo_{op}s": hlo.count(f" {op}(")
              for op in ("fusion", "dot", "convolution", "transpose")},
             hlo_float_array_copies=len(re.findall(r"= [fb]f?\d+\[\d[^\]]*\]\S* copy\(", hlo)),
             params=num_params, flops=flops,
             flops_counted_on="the jaxpr (benchmarks/jaxpr_stats.py), all devices")
  timed, _ = time_compiled(compiled, state, batch, rng, repeats)
  return {**row, **timed, "gflops_per_s": flops / timed["median_s"] / 1e9}


def _timed(step, repeats: int, prefix: str = "") -> dict:
  """Median, min and max seconds of ``repeats`` calls of ``step()``."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  return {f"{prefix}median_s": float(np.median(times)), f"{prefix}min_s": min(times),
          f"{prefix}max_s": max(times)}


def time_compiled(compiled, state, batch, rng, repeats: int) -> tuple[dict, dict]:
  """``({median_s, min_s, max_s, pipelined_s}, the last metrics)`` of ``repeats`` steps
  blocking after each, then back to back (what the loop sees: dispatch overlaps compute)."""
  out = [state, None]  # the latest (state, metrics)
  def step():
    out[:] = compiled(out[0], batch, rng)
    jax.block_until_ready(out[1])
  times, t0 = _timed(step, repeats), time.perf_counter()
  for _ in range(repeats):
    out[:] = compiled(out[0], batch, rng)
  jax.block_until_ready(out[0])
  return {**times, "pipelined_s": (time.perf_counter() - t0) / repeats}, out[1]


def add_ratios(row: dict) -> dict:
  """``row`` with ``ratio_vs_{shipped,once}`` = ours / original and ``speedup_vs_*`` =
  original / ours, judged against ``SPEEDUP_TARGETS`` where one is set."""
  for prior in ("shipped", "once"):
    original = row[f"original_{prior}_median_s"]
    row[f"ratio_vs_{prior}"] = row["median_s"] / original
    row[f"speedup_vs_{prior}"] = original / row["median_s"]
    if (target := SPEEDUP_TARGETS[prior].get(row["workload"])) is not None:
      row[f"speedup_vs_{prior}_target"] = target
      row[f"speedup_vs_{prior}_meets_target"] = row[f"speedup_vs_{prior}"] >= target
  return row


def original_layout_counts(name: str) -> dict:
  """Toy/text: params and FLOPs (all devices) of our step in the original's layout (_ours)."""
  train_step, *args, num_params = _ours(name, original_layout=True)
  return {"params": num_params,
          "flops": count_flops(jax.make_jaxpr(train_step)(*args)) * jax.device_count()}


def time_original(orig, name: str, repeats: int) -> dict:
  """The original's step, as shipped and with its prior built once: a warm-up, then timed."""
  from benchmarks.parity import original_step
  _, x, y, _, k = workload(name)
  shipped = original_step.build_step(orig, name, x, y, k, prior="shipped")
  t0 = time.perf_counter()
  row = {"original_params": shipped.num_params,
         "original_flops": original_step.count_flops(shipped.step),  # the warm-up step
         "original_counted_step_s": time.perf_counter() - t0,
         **_timed(shipped.step, repeats, prefix="original_shipped_")}
  once = original_step.build_step(orig, name, x, y, k, prior="once")
  once.step()  # the warm-up step
  return {**row, **_timed(once.step, repeats, prefix="original_once_")}


def markdown(results) -> str:
  """The table of a results file written by ``main`` (``benchmarks.report``), then the load
  and XLA flags of the run; side by side when every row has the original's times."""
  rows, header = results["rows"], results["header"]
  side = all("original_shipped_median_s" in r for r in rows)
  peak, orig = header.get("peak_gflops", PEAK_GFLOPS), " / original" if side else ""
  head = ["workload", "ours (s)"] + (
      ["original as shipped (s)", "original, prior built once (s)", "ours / shipped",
       "ours / prior once", "speed-up vs shipped", "speed-up vs prior once"] if side else [])
  head += [f"params ours{orig}", f"GFLOP/step ours{orig}", "ours GFLOP/s",
           f"% of {peak:g} GFLOP/s", "ours first step (s): wall / process CPU", "fused kernels"]
  table = []
  for r in rows:
    ours, theirs = r["median_s"], [r.get(f"original_{p}_median_s") for p in ("shipped", "once")]
    table.append([r["workload"], _g(ours), *(
        [*map(_g, theirs), *(f"{ours / t:.3f}" for t in theirs),
         *(f"{t / ours:.2f}x" for t in theirs)] if side else []),
        f"{r['params']:,}" + (f" / {r['original_params']:,}" if side else ""),
        _g(r["flops"] / 1e9) + (f" / {_g(r['original_flops'] / 1e9)}" if side else ""),
        _g(r["gflops_per_s"]), f"{100 * r['gflops_per_s'] / peak:.1f}%",
        f"{_g(r['first_step_s'])} / {_g(r.get('first_step_cpu_s', np.nan))}",
        f"{r['hlo_fusions']:,}"])
  load = [header.get(f"load_average_1min_{when}") for when in ("before", "after")]
  notes = ["flows scanned", *([f"load average (1 min) {load[0]} before, {load[1]} after"]
                              if None not in load else []),
           f"XLA_FLAGS={header.get('xla_flags') or '(none)'}"]
  if side:
    notes.append(f"torch {header.get('torch')}, {header.get('torch_threads')} threads; CIFAR "
                 f"original's autograd anomaly detection {header.get('original_cifar_anomaly')}")
  return md_table(head, table) + "\n\n_" + "; ".join(notes) + "._"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", type=name_list(WORKLOADS), default=",".join(WORKLOADS))
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--cifar-repeats", type=int, default=None,
                      help="timed CIFAR steps per side (default: max(3, repeats // 3))")
  parser.add_argument("--original", default="", help="also time the original PyTorch step "
                      "of this clone of github.com/izmailovpavel/flowgmm (the 'bench' extra)")
  parser.add_argument("--json", default="", help="also write the header and rows to this file")
  args = parser.parse_args(argv)
  if args.repeats < 1 or (args.cifar_repeats is not None and args.cifar_repeats < 1):
    parser.error("--repeats and --cifar-repeats must be >= 1")
  cores = usable_cores()
  header = {"cores": cores, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "peak_gflops": PEAK_GFLOPS, "load_average_1min_before": round(os.getloadavg()[0], 2)}
  results, orig = {"provenance": provenance(argv), "header": header, "rows": []}, None
  if args.original:
    import torch  # only for the side-by-side: PyTorch is not a dependency of the library

    from benchmarks.parity import original_step
    torch.set_num_threads(cores)
    orig = original_step.load_original(args.original)
    header.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                  original=orig.path, original_commit=orig.commit, original_cifar_anomaly="on")
  for n in args.only:
    repeats = (args.cifar_repeats or max(3, args.repeats // 3)) if n == "cifar" else args.repeats
    row = time_step(n, repeats)
    if orig is not None:
      row = add_ratios(row | time_original(orig, n, repeats))
      if n != "cifar":
        row.update({f"ours_original_layout_{k}": v for k, v in original_layout_counts(n).items()})
    results["rows"].append(row)
    header["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    if args.json:  # after each workload, so that a stopped run keeps what it measured
      write_json(args.json, results, indent=2)
  print(f"jax {jax.__version__}, {cpu_model()}, {cores} cores"
        + (f"; original {orig.path} @ {orig.commit}" if orig is not None else ""))
  print(markdown(results))
  for r in results["rows"]:  # what the table leaves out
    print(f"{r['workload']}: " + ", ".join(f"{k} {_g(v) if isinstance(v, float) else f'{v:,}'}"
          for k, v in r.items() if k.startswith(("trace_and", "xla_", "hlo_", "ours_original"))))


if __name__ == "__main__":
  main()
