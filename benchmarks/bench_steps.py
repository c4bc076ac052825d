"""Train-step speed of the three reference workloads, side by side with the original PyTorch
code (``--original=PATH``, a clone of github.com/izmailovpavel/flowgmm; the ``bench`` extra).
Commands, workloads and how to read the columns: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
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

# Speed-up targets over the original (its step time / ours), as shipped and with its prior
# built once (benchmarks/README.md, "Speed targets").
SPEEDUP_TARGETS = {"shipped": {"toy": 5.0, "text": 2.0}, "once": {"cifar": 1.0}}
# The 2-core CPU's float32 peak, for the fraction-of-peak column.
PEAK_GFLOPS = 550.0
WORKLOADS = ("toy", "text", "cifar")


def workload(name: str):
  """``(config, x, y, input_shape, num_classes)``: the workload's config and fixed batch
  (x: [B, *input_shape], uint8 for cifar, float32 otherwise; y: int32 [B], -1 = unlabelled,
  the labelled rows first)."""
  c = base_config()
  rng = np.random.default_rng(0)
  if name == "cifar":
    c.data.kind, c.data.name = "image", "cifar10"
    c.model = model_config("realnvp")
    bl, bu, shape, k = 32, 32, (32, 32, 3), 10
    x = rng.integers(0, 256, (bl + bu,) + shape).astype(np.uint8)
    c.loss.objective, c.loss.label_weight = "marginal_and_cross_entropy", 3.0
    c.loss.consistency_weight = 1.0
    c.augment.crop_padding, c.augment.flip = 4, True
    c.optim.weight_decay = 5e-5
  elif name == "text":
    c.data.kind, c.data.name = "text", "agnews"
    # The original's num_layers=1 (k -> k layers after the first) is hidden_layers=2.
    c.model = model_config("realnvp_tabular", num_coupling_layers=7, hidden_dim=1024,
                           hidden_layers=2, dropout_rate=0.5)
    c.loss.unlabeled_weight = 0.6
    bl, bu, shape, k = 200, 5000, (768,), 4
    x = rng.normal(size=(bl + bu,) + shape).astype(np.float32)
  elif name == "toy":
    c.data.kind, c.data.name = "toy", "moons"
    c.model = model_config("realnvp_tabular", num_coupling_layers=5, hidden_dim=512,
                           hidden_layers=2)
    bl, bu, shape, k = 10, 10, (2,), 2
    x = rng.normal(size=(bl + bu,) + shape).astype(np.float32)
  else:
    raise ValueError(f"unknown workload {name!r}; choose from {WORKLOADS}")
  y = np.concatenate([rng.integers(0, k, bl), -np.ones(bu, int)]).astype(np.int32)
  return c, x, y, shape, k


def _ours(name: str, original_layout: bool = False):
  """``(train_step, state, batch, rng, num_params)`` of workload ``name``, with the original's
  full-width tabular conditioners when ``original_layout``."""
  c, x, y, shape, k = workload(name)
  image = c.data.kind == "image"
  mesh = mesh_lib.make_mesh()
  model = FlowGMM.from_config(c, shape, k, image=image, bn_axis_name=mesh_lib.DATA_AXIS)
  eval_model = FlowGMM.from_config(c, shape, k, image=image)
  if original_layout:
    model, eval_model = (m.clone(flow=m.flow.clone(full_width_conditioner=True))
                         for m in (model, eval_model))
  # Jitted: one compile instead of one per operation (seconds for an image model).
  variables = jax.jit(eval_model.init)(jax.random.PRNGKey(0), x[:8].astype(np.float32))
  tx = optim.make_optimizer(c.optim.optimizer, c.optim.learning_rate, 1000,
                            weight_decay=c.optim.weight_decay,
                            grad_clip_norm=c.optim.grad_clip_norm)
  state = mesh_lib.replicate(mesh, create_train_state(variables, tx))
  augment = None
  if image:
    def augment(kk, xx):
      return augment_images(kk, xx, crop_padding=c.augment.crop_padding,
                            flip=c.augment.flip)
  loss = losses.FlowGMMLoss(
      objective=c.loss.objective, label_weight=c.loss.label_weight,
      unlabeled_weight=c.loss.unlabeled_weight, consistency_weight=c.loss.consistency_weight,
      consistency_rampup_steps=100)
  train_step = step_lib.make_train_step(model, tx, mesh, loss=loss, augment=augment,
                                        dequantize=image, num_dims=int(np.prod(shape)))
  batch = mesh_lib.shard_batch(mesh, {"x": x, "y": y,
                                      "position": np.arange(len(x), dtype=np.int32)})
  rng = mesh_lib.replicate(mesh, np.asarray(jax.random.PRNGKey(2)))
  return train_step, state, batch, rng, count_params(variables)


def compile_timed(fn, *args) -> tuple:
  """``(compiled, traced, times)``: jitted ``fn`` traced, lowered and compiled for ``args``;
  ``times``: each stage's wall seconds (``trace_s``, ``lower_s``, ``compile_s``) and process
  CPU seconds (``*_cpu_s``), which another load on the machine changes far less."""
  times, clocks = {}, (time.perf_counter(), time.process_time())
  def lap(stage):
    nonlocal clocks
    now = (time.perf_counter(), time.process_time())
    times[f"{stage}_s"], times[f"{stage}_cpu_s"] = now[0] - clocks[0], now[1] - clocks[1]
    clocks = now
  traced = fn.trace(*args)
  lap("trace")
  lowered = traced.lower()
  lap("lower")
  compiled = lowered.compile()
  lap("compile")
  return compiled, traced, times


def time_step(name: str, repeats: int) -> dict:
  """Ours: compile (timed with the first step), HLO counts, then ``repeats`` timed steps."""
  train_step, state, batch, rng, num_params = _ours(name)
  t0, c0 = time.perf_counter(), time.process_time()
  compiled, traced, times = compile_timed(train_step, state, batch, rng)
  flops = count_flops(traced.jaxpr) * jax.device_count()
  state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(metrics)
  first_s = time.perf_counter() - t0
  # What XLA compiles: its time grows faster than the number of fused kernels. And what
  # surrounds the products: transposes or float copies of arrays would be layout changes.
  hlo = compiled.as_text()
  num_fusions = hlo.count(" fusion(")
  hlo_counts = {"dots": hlo.count(" dot("), "convolutions": hlo.count(" convolution("),
                "transposes": hlo.count(" transpose("),
                "float_array_copies": len(re.findall(r"= [fb]f?\d+\[\d[^\]]*\]\S* copy\(", hlo))}
  row = {"workload": name, "repeats": repeats, "first_step_s": first_s,
         "first_step_cpu_s": time.process_time() - c0,
         "trace_and_lower_s": times["trace_s"] + times["lower_s"],
         "xla_compile_s": times["compile_s"],
         "trace_and_lower_cpu_s": times["trace_cpu_s"] + times["lower_cpu_s"],
         "xla_compile_cpu_s": times["compile_cpu_s"],
         "hlo_fusions": num_fusions,
         **{f"hlo_{k}": v for k, v in hlo_counts.items()},
         "params": num_params, "flops": flops,
         "flops_counted_on": "the jaxpr (benchmarks/jaxpr_stats.py), all devices"}
  timed, _ = time_compiled(compiled, state, batch, rng, repeats)
  row.update(timed, gflops_per_s=flops / timed["median_s"] / 1e9)
  return row


def _timed(step, repeats: int, prefix: str = "") -> dict:
  """Median, min and max seconds of ``repeats`` calls of ``step()``."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  return {f"{prefix}median_s": statistics.median(times), f"{prefix}min_s": min(times),
          f"{prefix}max_s": max(times)}


def time_compiled(compiled, state, batch, rng, repeats: int) -> tuple[dict, dict]:
  """``({median_s, min_s, max_s, pipelined_s}, the last step's metrics)`` of ``repeats``
  steps each way: blocking after every step, and back to back without blocking (what the
  loop sees: dispatch overlaps compute)."""
  def step():
    nonlocal state, metrics
    state, metrics = compiled(state, batch, rng)
    jax.block_until_ready(metrics)

  metrics = None
  times = _timed(step, repeats)
  t0 = time.perf_counter()
  for _ in range(repeats):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(state)
  return {**times, "pipelined_s": (time.perf_counter() - t0) / repeats}, metrics


def add_ratios(row: dict) -> dict:
  """``row`` (ours and the original's times) with ``ratio_vs_{shipped,once}`` = ours /
  original (below 1: ours is faster) and ``speedup_vs_{shipped,once}`` = original / ours,
  judged against the speed-up targets where one is set (``SPEEDUP_TARGETS``)."""
  for prior in ("shipped", "once"):
    original = row[f"original_{prior}_median_s"]
    row[f"ratio_vs_{prior}"] = row["median_s"] / original
    row[f"speedup_vs_{prior}"] = original / row["median_s"]
    target = SPEEDUP_TARGETS[prior].get(row["workload"])
    if target is not None:
      row[f"speedup_vs_{prior}_target"] = target
      row[f"speedup_vs_{prior}_meets_target"] = row[f"speedup_vs_{prior}"] >= target
  return row


def original_layout_counts(name: str) -> dict:
  """Toy/text: parameters and FLOPs (all devices) of our step with the original's full-width
  conditioners, to set against the original's counts."""
  train_step, state, batch, rng, num_params = _ours(name, original_layout=True)
  jaxpr = jax.make_jaxpr(train_step)(state, batch, rng)
  return {"params": num_params, "flops": count_flops(jaxpr) * jax.device_count()}


def time_original(orig, name: str, repeats: int) -> dict:
  """The original's step, as shipped and with the prior built once: one warm-up step (for
  the shipped one also counted by FlopCounterMode), then ``repeats`` timed steps each."""
  from benchmarks.parity import original_step
  c, x, y, shape, k = workload(name)
  row = {}
  for prior in ("shipped", "once"):
    s = original_step.build_step(orig, name, x, y, k, prior=prior)
    if prior == "shipped":
      row["original_params"] = s.num_params
      t0 = time.perf_counter()
      row["original_flops"] = original_step.count_flops(s.step)
      row["original_counted_step_s"] = time.perf_counter() - t0  # warm-up, counter on
    else:
      s.step()
    row.update(_timed(s.step, repeats, prefix=f"original_{prior}_"))
  return row


def _g(x: float) -> str:
  return f"{x:.4g}"


def table(rows, peak_gflops: float, side_by_side: bool) -> str:
  """The rows as a markdown table. Side by side, each workload carries the ratio ours /
  original (below 1: ours is faster) and the speed-up original / ours, against the original
  as shipped and with its prior built once."""
  head = ["workload", "ours (s)"]
  if side_by_side:
    head += ["original as shipped (s)", "original, prior built once (s)",
             "ours / shipped", "ours / prior once", "speed-up vs shipped",
             "speed-up vs prior once"]
  head += ["params ours" + (" / original" if side_by_side else ""),
           "GFLOP/step ours" + (" / original" if side_by_side else ""),
           "ours GFLOP/s", f"% of {peak_gflops:g} GFLOP/s",
           "ours first step (s): wall / process CPU", "fused kernels"]
  cells_of_rows = []
  for r in rows:
    cells = [r["workload"], _g(r["median_s"])]
    params, gflop = f"{r['params']:,}", _g(r["flops"] / 1e9)
    if side_by_side:
      shipped, once = r["original_shipped_median_s"], r["original_once_median_s"]
      cells += [_g(shipped), _g(once), f"{r['median_s'] / shipped:.3f}",
                f"{r['median_s'] / once:.3f}", f"{shipped / r['median_s']:.2f}x",
                f"{once / r['median_s']:.2f}x"]
      params += f" / {r['original_params']:,}"
      gflop += f" / {_g(r['original_flops'] / 1e9)}"
    cells += [params, gflop, _g(r["gflops_per_s"]),
              f"{100 * r['gflops_per_s'] / peak_gflops:.1f}%",
              f"{_g(r['first_step_s'])} / {_g(r.get('first_step_cpu_s', math.nan))}",
              f"{r['hlo_fusions']:,}"]
    cells_of_rows.append(cells)
  return md_table(head, cells_of_rows)


def markdown(results) -> str:
  """The table of a results file written by ``main`` (``benchmarks.report``): the rows side
  by side, then the load and XLA flags of the run."""
  rows, header = results["rows"], results["header"]
  side_by_side = all("original_shipped_median_s" in r for r in rows)
  text = table(rows, header.get("peak_gflops", PEAK_GFLOPS), side_by_side)
  load = [header.get(f"load_average_1min_{when}") for when in ("before", "after")]
  notes = ["flows scanned"]
  if None not in load:
    notes.append(f"load average (1 min) {load[0]} before, {load[1]} after")
  notes.append(f"XLA_FLAGS={header.get('xla_flags') or '(none)'}")
  if side_by_side:
    notes.append(f"torch {header.get('torch')}, {header.get('torch_threads')} threads; CIFAR "
                 f"original's autograd anomaly detection {header.get('original_cifar_anomaly')}")
  return text + "\n\n_" + "; ".join(notes) + "._"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", type=name_list(WORKLOADS), default=",".join(WORKLOADS))
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--cifar-repeats", type=int, default=None,
                      help="timed CIFAR steps per side (default: max(3, repeats // 3))")
  parser.add_argument("--original", default="",
                      help="root of a clone of github.com/izmailovpavel/flowgmm: also time "
                           "the original PyTorch step (needs the 'bench' extra)")
  parser.add_argument("--json", default="", help="also write the header and rows to this file")
  args = parser.parse_args(argv)
  if args.repeats < 1 or (args.cifar_repeats is not None and args.cifar_repeats < 1):
    parser.error("--repeats and --cifar-repeats must be >= 1")
  cores = usable_cores()
  header = {"cores": cores, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "peak_gflops": PEAK_GFLOPS, "load_average_1min_before": round(os.getloadavg()[0], 2)}
  results = {"provenance": provenance(argv), "header": header, "rows": []}
  orig = None
  if args.original:
    import torch  # only for the side-by-side: PyTorch is not a dependency of the library

    from benchmarks.parity import original_step
    torch.set_num_threads(cores)
    orig = original_step.load_original(args.original)
    header.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                  original=orig.path, original_commit=orig.commit,
                  original_cifar_anomaly="on")
  for n in args.only:
    repeats = args.repeats
    if n == "cifar":
      repeats = max(3, args.repeats // 3) if args.cifar_repeats is None else args.cifar_repeats
    row = time_step(n, repeats)
    if orig is not None:
      row.update(time_original(orig, n, repeats))
      add_ratios(row)
      if n != "cifar":
        row.update({f"ours_original_layout_{k}": v for k, v in original_layout_counts(n).items()})
    results["rows"].append(row)
    header["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    if args.json:  # after each workload, so that a stopped run keeps what it measured
      write_json(args.json, results, indent=2)

  print(f"jax {jax.__version__}, {cpu_model()}, {cores} cores"
        + (f"; original {orig.path} @ {orig.commit}" if orig is not None else ""))
  print(markdown(results))
  for r in results["rows"]:
    print(f"{r['workload']}: trace + lower {_g(r['trace_and_lower_s'])} s, XLA compile "
          f"{_g(r['xla_compile_s'])} s (CPU {_g(r['trace_and_lower_cpu_s'])} + "
          f"{_g(r['xla_compile_cpu_s'])} s); {r['hlo_dots']} dots, {r['hlo_convolutions']} "
          f"convolutions, {r['hlo_transposes']} transposes, {r['hlo_float_array_copies']} "
          "copies of float arrays")
    if "ours_original_layout_params" in r:
      print(f"{r['workload']} in the original's layout (full_width_conditioner=True): "
            f"{r['ours_original_layout_params']:,} params, "
            f"{_g(r['ours_original_layout_flops'] / 1e9)} GFLOP/step")


if __name__ == "__main__":
  main()
