"""The prepared accelerator check (``--tiny``: the same code on a CPU): step time, FLOPs,
collectives, MFU and compile time per workload and dtype, then a short MNIST training set
against the CPU reference curve, all within ``--budget-s``: docs/experiments.md, "On a GPU"."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import tempfile
import time

import jax
import numpy as np

from benchmarks.bench_steps import compile_timed, time_compiled
from benchmarks.jaxpr_stats import IMAGE_SHAPES, count_collectives, count_flops
from benchmarks.provenance import REPO, provenance, write_json
from flowgmm_jax import data as data_lib
from flowgmm_jax import mesh as mesh_lib
from flowgmm_jax.data.rows import split_rows
from flowgmm_jax.models import count_params
from flowgmm_jax.training import batching, programs
from flowgmm_jax.training.loop import fit

# Dense (bfloat16, TF32, FP32) TFLOP/s per device by the first substring of ``device_kind``.
PEAKS = (("H100 PCIe", (756.0, 378.0, 51.0)), ("H200", (989.4, 494.7, 67.0)),  # also GH200
         ("H100", (989.4, 494.7, 67.0)), ("A100", (312.0, 156.0, 19.5)),
         ("TPU v6", (918.0, None, None)), ("TPU v5p", (459.0, None, None)),
         ("TPU v5", (197.0, None, None)), ("TPU v4", (275.0, None, None)))  # TPU v5: v5e
PEAK_SOURCE = "NVIDIA's H100/H200 data sheets (dense; H100 SXM and H200 alike), Cloud TPU pages"
# (workload, compute dtype, per-device batch), most wanted first: a short budget keeps these.
ROWS = (("cifar", "float32", 64), ("cifar", "bfloat16", 64), ("mnist", "float32", 64),
        ("cifar", "bfloat16", 512), ("cifar", "float32", 512), ("mnist", "bfloat16", 64),
        ("cifar_glow", "float32", 64), ("cifar_glow", "bfloat16", 64))
TINY_ROWS = (("cifar", "float32", 8), ("mnist", "bfloat16", 8))
CONFIGS = {"cifar": "configs/cifar10.py", "cifar_glow": "configs/cifar10.py:glow",
           "mnist": "configs/mnist.py"}
# --tiny: one-scale models of one block (step) of 4 channels on 8x8 images, no second view.
TINY_MODEL = dict(num_scales=1, num_blocks=1, steps_per_scale=1, mid_channels=4)
# Seconds: a first row's and a first evaluation's guess (before one is measured), the time kept
# for training, and the least it starts with (less would not reach its first evaluation).
BUDGET = {"tiny": dict(first_row=5.0, train_reserve=0.0, eval=5.0, min_train=10.0),
          "full": dict(first_row=90.0, train_reserve=150.0, eval=45.0, min_train=60.0)}
REFERENCE = "benchmarks/results/mnist_cpu_seeds.json"


def peak_tflops(device_kind: str, dtype: str):
  """``(peak, tf32_peak)`` in TFLOP/s for ``dtype`` steps on ``device_kind`` (None: unknown)."""
  bf16, tf32, fp32 = next((peaks for name, peaks in PEAKS if name.lower() in device_kind.lower()),
                          (None, None, None))
  return (bf16, None) if dtype == "bfloat16" else (fp32, tf32)


def load_config(spec: str, tiny: bool, **fields):
  """``configs/NAME.py[:ARG]``'s config with ``fields``; ``tiny``: ``TINY_MODEL``, one view."""
  path, _, arg = spec.partition(":")
  c = importlib.import_module(path.removesuffix(".py").replace("/", ".")).get_config(arg or None)
  c.update(fields)
  if tiny:
    c.model.update({k: v for k, v in TINY_MODEL.items() if k in c.model})
    c.loss.consistency_weight = 0.0
  return c


_cache_hits = []  # one entry per persistent-cache hit (JAX's monitoring event)
jax.monitoring.register_event_listener(
    lambda event, **_: _cache_hits.append(1) if event == "/jax/compilation_cache/cache_hits"
    else None)


def compile_cold_and_warm(fn, *args) -> tuple:
  """``(compiled, traced, cold, warm)``: ``compile_timed`` with a new, empty persistent cache,
  then again from that cache with the in-memory caches cleared (JAX's settings restored)."""
  from jax.experimental.compilation_cache import compilation_cache as jax_cache
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  saved = [getattr(jax.config, k) for k in names]
  with tempfile.TemporaryDirectory(prefix="gpu-check-xla-") as folder:
    try:
      for k, v in zip(names, (folder, 0.0), strict=True):
        jax.config.update(k, v)
      jax_cache.reset_cache()
      _, traced, cold = compile_timed(fn, *args)
      jax.clear_caches()
      hits = len(_cache_hits)
      compiled, _, warm = compile_timed(fn, *args)
      warm["cache_hits"] = len(_cache_hits) - hits
    finally:
      for k, v in zip(names, saved, strict=True):
        jax.config.update(k, v)
      jax_cache.reset_cache()
  return compiled, traced, cold, warm


def time_row(workload: str, dtype: str, per_device_batch: int, args) -> dict:
  """One row (``args``: main's): the workload config's ``training.programs`` step, measured."""
  tiny, repeats = args.tiny, args.repeats or (2 if args.tiny else 20)
  c = load_config(CONFIGS[workload], tiny, compute_dtype=dtype)
  mesh = mesh_lib.make_mesh()
  half = per_device_batch // 2 * mesh_lib.num_devices(mesh)
  c.data.labeled_batch_size = c.data.unlabeled_batch_size = half
  shape = (8, 8) + IMAGE_SHAPES[c.data.name][-1:] if tiny else IMAGE_SHAPES[c.data.name]
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (2 * half,) + shape, dtype=np.uint8)
  y = rng.integers(0, 10, 2 * half).astype(np.int32)
  dataset = data_lib.Dataset(name=c.data.name, kind="image", x_train=x, y_train=y,
                             x_test=x[:0], y_test=y[:0], num_classes=10)
  split = split_rows(c, dataset, pools=(np.arange(half), np.arange(half, 2 * half)))
  progs = programs.programs(programs.program_key(c, dataset), mesh)
  batch = batching.Batches(c, dataset, split, mesh).on_devices(0)
  variables = progs.init(jax.random.PRNGKey(0), np.asarray(x[:min(2 * half, 64)], np.float32))
  step_args = (mesh_lib.replicate(mesh, progs.new_state(variables)), batch,
               mesh_lib.replicate(mesh, np.asarray(jax.random.PRNGKey(2), np.uint32)))
  compiled, traced, cold, warm = compile_cold_and_warm(progs.train_step, *step_args)
  row = {"config": CONFIGS[workload], "model": c.model.name, "params": count_params(variables),
         "consistency": c.loss.consistency_weight > 0, "global_batch": 2 * half,
         "image_shape": list(shape), "cold": cold, "warm": warm,
         "flops_per_device": count_flops(traced.jaxpr),
         "collectives_per_step": count_collectives(traced.jaxpr),
         "flops_counted_on": "the traced jaxpr (scans times their length), per device",
         **{f"compile_{name}_s": times["trace_s"] + times["lower_s"] + times["compile_s"]
            for name, times in (("cold", cold), ("warm", warm))}}
  t0 = time.perf_counter()
  state, metrics = jax.block_until_ready(compiled(*step_args))
  row["first_step_s"] = time.perf_counter() - t0
  timed, metrics = time_compiled(compiled, state, *step_args[1:], repeats)
  peak, tf32 = ((args.peak_tflops,) * 2 if args.peak_tflops
                else peak_tflops(jax.devices()[0].device_kind, dtype))
  achieved = row["flops_per_device"] / timed["median_s"] / 1e12
  row.update(timed, repeats=repeats, images_per_s=2 * half / timed["median_s"],
             images_per_s_pipelined=2 * half / timed["pipelined_s"],
             tflops_per_s_per_device=achieved, peak_tflops=peak,
             mfu=achieved / peak if peak else None, mfu_tf32=achieved / tf32 if tf32 else None,
             loss_finite=bool(np.isfinite(np.asarray(jax.device_get(metrics["train/loss"])))))
  return row


def reference_curve(path: str = REFERENCE) -> dict:
  """``{step: {"accuracy": [per seed], "bpd": [per seed]}}`` of the CPU reference runs."""
  try:
    runs = json.loads((REPO / path).read_text())["runs"]
  except (OSError, ValueError, KeyError):
    return {}
  curve = {}
  for run in runs:
    for e in run["evals"]:
      point = curve.setdefault(int(e["step"]), {"accuracy": [], "bpd": []})
      for k, values in point.items():
        values.append(e[f"eval/{k}"])
  return curve


def train_mnist(deadline: float, tiny: bool) -> dict:
  """configs/mnist.py:cpu until ``deadline`` (``time.perf_counter()``) or its last step."""
  budget, left = BUDGET["tiny" if tiny else "full"], deadline - time.perf_counter()
  if left < budget["min_train"]:
    return {"skipped": f"{max(left, 0):.0f} s left; training needs at least "
                       f"{budget['min_train']:.0f} s to reach an evaluation"}
  c = load_config("configs/mnist.py:cpu", tiny, compilation_cache_dir="off")  # no cache
  if tiny:
    c.update_from_flattened_dict({
        "data.max_train_examples": 400, "data.max_test_examples": 100, "eval_batch_size": 50,
        "data.num_labeled_per_class": 5, "num_train_steps": 4, "eval_every_steps": 2,
        "log_every_steps": 1, "optim.warmup_steps": 1})
  config_name = "configs/mnist.py:cpu" + (" (--tiny: shrunk)" if tiny else "")
  t0 = time.perf_counter()
  try:
    dataset = data_lib.load_dataset(c)
  except data_lib.DataNotFoundError as e:
    return {"config": config_name, "skipped": f"MNIST not found ({str(e).splitlines()[0]}); "
            "set FLOWGMM_DATA_DIR to a folder holding mnist/ (docs/experiments.md)"}
  split, reference = split_rows(c, dataset), reference_curve()
  curve, train, marks = [], [], {"eval_s": []}
  class OutOfTime(Exception):
    pass
  def log_fn(step, metrics):
    # Each log step, then an evaluation's metrics: go on while the next evaluation fits.
    now = time.perf_counter()
    if "eval/accuracy" in metrics:
      marks["eval_s"].append(now - marks.pop("eval_start", now))
      ref = reference.get(step) or {}
      curve.append({"step": step, "wall_s": now - t0, "accuracy": float(metrics["eval/accuracy"]),
                    "bpd": float(metrics["eval/bpd"]),
                    **{f"cpu_reference_{k}": ref.get(k) for k in ("accuracy", "bpd")}})
      if marks.pop("stop_after_eval", False):
        raise OutOfTime(step)
      return
    train.append({"step": step, "wall_s": now - t0, **{k: float(v) for k, v in metrics.items()}})
    first_step, first_time = marks.setdefault("first_log", (step, now))  # after the compiles
    if step == first_step or step >= c.num_train_steps:
      return
    per_step = (now - first_time) / (step - first_step)
    eval_s = max(marks["eval_s"], default=budget["eval"])
    steps_to_eval = -step % c.eval_every_steps  # 0: this step's evaluation comes next
    if now + steps_to_eval * per_step + eval_s > deadline:
      raise OutOfTime(step)
    if steps_to_eval == 0:  # stop after it when the one after would not fit
      marks.update(eval_start=now, stop_after_eval=(
          now + 2 * eval_s + c.eval_every_steps * per_step > deadline))

  stopped = None
  try:
    fit(c, dataset, split, log_fn=log_fn)
  except OutOfTime as e:
    stopped = (f"stopped at step {e.args[0]} of {c.num_train_steps}: the next evaluation "
               "would not have finished within the budget")
  return {"config": config_name, "num_train_steps": int(c.num_train_steps),
          "steps_done": train[-1]["step"] if train else 0, "stopped": stopped,
          "num_labeled": int(len(split.labeled)), "num_test": int(len(dataset.x_test)),
          "wall_s": time.perf_counter() - t0, "eval": curve, "train": train,
          "reference": REFERENCE + " (seeds 0-2, one CPU device)"}


def parse_rows(text: str) -> tuple:
  """``workload:dtype:batch,...`` -> rows; a bad entry is one argparse-style message."""
  rows = tuple(item.strip().split(":") for item in text.split(","))
  for row in rows:
    if (len(row) != 3 or row[0] not in CONFIGS or row[1] not in ("float32", "bfloat16")
        or not row[2].isdigit() or int(row[2]) < 2 or int(row[2]) % 2):
      raise argparse.ArgumentTypeError(
          f"bad row {':'.join(row)!r}: give WORKLOAD:DTYPE:BATCH with WORKLOAD in "
          f"{sorted(CONFIGS)}, DTYPE float32 or bfloat16 and an even per-device BATCH")
  return tuple((w, d, int(b)) for w, d, b in rows)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--tiny", action="store_true", help="tiny models on 8x8 images: CPU tests")
  p.add_argument("--budget-s", type=float, default=480.0, help="seconds, imports excluded")
  p.add_argument("--rows", type=parse_rows, help="WORKLOAD:DTYPE:PER_DEVICE_BATCH,...")
  p.add_argument("--repeats", type=int, default=0, help="timed steps (default 20, --tiny 2)")
  p.add_argument("--peak-tflops", type=float, default=0.0, help="for MFU (default: PEAKS)")
  p.add_argument("--out", help="default: benchmarks/results/gpu_check.json, --tiny: a temp file")
  args = p.parse_args(argv)
  deadline = (start := time.perf_counter()) + args.budget_s
  budget, device = BUDGET["tiny" if args.tiny else "full"], jax.devices()[0]
  outs = [args.out or (os.path.join(tempfile.gettempdir(), "gpu_check_tiny.json") if args.tiny
                       else "benchmarks/results/gpu_check.json")]
  outs += [os.path.join(os.environ["OUT"], "gpu_check.json")] if os.environ.get("OUT") else []
  report = {"provenance": provenance(argv), "backend": jax.default_backend(),
            "device_kind": device.device_kind, "num_devices": jax.device_count(), "tiny": args.tiny,
            "budget_s": args.budget_s, "train_reserve_s": budget["train_reserve"],
            "peak_source": "--peak-tflops" if args.peak_tflops else PEAK_SOURCE,
            "rows": [], "training": None, "complete": False}
  def save():  # after every row: a run stopped from outside keeps what it finished
    for out in outs:
      write_json(out, report)
  def say(text):
    print(f"[gpu_check] {text}", flush=True)
  def attempt(fn, *fn_args) -> dict:  # a failure (say out of memory) is a result, not a crash
    try:
      return fn(*fn_args)
    except Exception as e:  # noqa: BLE001
      return {"failed": f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:500]}"}
  say(f"{report['backend']}: {jax.device_count()} x {device.device_kind}, "
      f"jax {jax.__version__}, budget {args.budget_s:.0f} s")
  save()
  longest = None  # the longest row so far: the next row's estimate
  for workload, dtype, batch in args.rows or (TINY_ROWS if args.tiny else ROWS):
    left, reserve = deadline - time.perf_counter(), budget["train_reserve"]
    estimate, why = ((budget["first_row"], "a guess before any row") if longest is None
                     else (longest, "the longest row so far"))
    row = {"workload": workload, "compute_dtype": dtype, "per_device_batch": batch}
    if left - reserve < estimate:
      row["skipped"] = (f"{left:.0f} s left, {reserve:.0f} s of it kept for training; the row "
                        f"is estimated at {estimate:.0f} s ({why})")
    else:
      t0 = time.perf_counter()
      row.update(attempt(time_row, workload, dtype, batch, args))
      row["wall_s"] = time.perf_counter() - t0
      longest = max(longest or 0.0, row["wall_s"])
    report["rows"].append(row)
    save()
    say(f"{workload} {dtype} x{batch}: " + (row.get("skipped") or row.get("failed") or (
        f"{row['median_s'] * 1e3:.2f} ms/step, {row['images_per_s']:.0f} images/s, "
        f"{row['tflops_per_s_per_device']:.2f} TFLOP/s per device"
        + (f", MFU {100 * row['mfu']:.1f}%" if row["mfu"] is not None else "")
        + f"; compile cold {row['compile_cold_s']:.1f} s, warm {row['compile_warm_s']:.1f} s")))
  report["training"] = t = attempt(train_mnist, deadline, args.tiny)
  say(f"{t['config']}: {t['steps_done']} steps in {t['wall_s']:.0f} s, test accuracy "
      f"{100 * t['eval'][-1]['accuracy']:.1f}% at step {t['eval'][-1]['step']}" if t.get("eval")
      else f"training: {t.get('skipped') or t.get('failed') or t.get('stopped')}")
  report.update(total_s=time.perf_counter() - start, complete=True)
  save()
  say(f"{report['total_s']:.0f} s in all; wrote {', '.join(outs)}")
  return report


if __name__ == "__main__":
  main()
