"""The prepared accelerator check: step speed, MFU, compile time cold and warm, and a learning
curve, in one run that keeps within its budget and writes its JSON after every row.

    python -m benchmarks.gpu_check --budget-s=480            # on a GPU or TPU host
    python -m benchmarks.gpu_check --tiny --budget-s=120     # the same code on a CPU (tests)

What each row measures, the peaks, and how to carry the data to the device machine:
docs/experiments.md, "On a GPU".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time

import jax
import numpy as np

from benchmarks.bench_steps import compile_timed, time_compiled
from benchmarks.jaxpr_stats import count_collectives, count_flops
from benchmarks.provenance import REPO, provenance, write_json

# Dense peaks in TFLOP/s per device: (bfloat16, TF32, FP32), by a substring of
# ``device_kind`` (the first match wins, so longer names come first).
PEAKS = (
    ("H100 PCIe", (756.0, 378.0, 51.0)),
    ("H200", (989.4, 494.7, 67.0)),
    ("GH200", (989.4, 494.7, 67.0)),
    ("H100", (989.4, 494.7, 67.0)),
    ("A100", (312.0, 156.0, 19.5)),
    ("TPU v6", (918.0, None, None)),
    ("TPU v5p", (459.0, None, None)),
    ("TPU v5", (197.0, None, None)),   # v5e ("TPU v5 lite")
    ("TPU v4", (275.0, None, None)),
)
PEAK_SOURCE = ("NVIDIA H100/H200 data sheets (dense: bf16 989.4, TF32 494.7, FP32 67 "
               "TFLOP/s for H100 SXM and H200), Google Cloud TPU pages")

# (workload, compute dtype, per-device batch), most wanted first: a short budget keeps these.
ROWS = (("cifar", "float32", 64), ("cifar", "bfloat16", 64), ("mnist", "float32", 64),
        ("cifar", "bfloat16", 512), ("cifar", "float32", 512), ("mnist", "bfloat16", 64),
        ("cifar_glow", "float32", 64), ("cifar_glow", "bfloat16", 64))
TINY_ROWS = (("cifar", "float32", 8), ("mnist", "bfloat16", 8))
CONFIGS = {"cifar": ("configs.cifar10", None), "cifar_glow": ("configs.cifar10", "glow"),
           "mnist": ("configs.mnist", None)}
SHAPES = {"cifar": (32, 32, 3), "cifar_glow": (32, 32, 3), "mnist": (28, 28, 1)}
# --tiny: 8x8 images, one-scale models with one block (step) of 4 channels, plain FlowGMM
# (no second view): the same code paths, the least XLA has to compile.
TINY_MODEL = dict(num_scales=1, num_blocks=1, steps_per_scale=1, mid_channels=4)
TINY_SIZE = 8
FIRST_ROW_GUESS_S = {"tiny": 5.0, "full": 90.0}
TRAIN_RESERVE_S = {"tiny": 0.0, "full": 150.0}
# The first evaluation's time before one is measured (it compiles the evaluation programs).
EVAL_GUESS_S = {"tiny": 5.0, "full": 45.0}
# Training starts only with this much left: less would not reach its first evaluation.
MIN_TRAIN_S = {"tiny": 10.0, "full": 60.0}
REFERENCE = "benchmarks/results/mnist_cpu_seeds.json"


def peak_tflops(device_kind: str, dtype: str, override: float = 0.0):
  """``(peak, tf32_peak)`` in TFLOP/s for ``dtype`` steps on ``device_kind`` (None: unknown)."""
  if override:
    return float(override), float(override)
  for name, (bf16, tf32, fp32) in PEAKS:
    if name.lower() in device_kind.lower():
      return (bf16, None) if dtype == "bfloat16" else (fp32, tf32)
  return None, None


def workload_config(workload: str, dtype: str, tiny: bool):
  """The workload's config (``CONFIGS``) at ``dtype``; --tiny shrinks the model."""
  import importlib
  module, arg = CONFIGS[workload]
  c = importlib.import_module(module).get_config(arg)
  c.compute_dtype = dtype
  return shrink(c) if tiny else c


def shrink(c):
  """``c`` with ``TINY_MODEL``'s fields (those its model has) and no consistency term."""
  c.model.update({k: v for k, v in TINY_MODEL.items() if k in c.model})
  c.loss.consistency_weight = 0.0
  return c


_cache_hits = []  # one entry per persistent-cache hit (JAX's monitoring event)
jax.monitoring.register_event_listener(
    lambda event, **kwargs: _cache_hits.append(1)
    if event == "/jax/compilation_cache/cache_hits" else None)


@contextlib.contextmanager
def _fresh_cache():
  """A new, empty persistent compilation cache for the block (JAX's settings restored)."""
  from jax.experimental.compilation_cache import compilation_cache as jax_cache
  saved = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir",
                                                "jax_persistent_cache_min_compile_time_secs")}
  with tempfile.TemporaryDirectory(prefix="gpu-check-xla-") as folder:
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax_cache.reset_cache()
    try:
      yield
    finally:
      for k, v in saved.items():
        jax.config.update(k, v)
      jax_cache.reset_cache()


def _failure(e: Exception) -> str:
  """One line for a failed row or run (say out of memory): it is a result, not a crash."""
  return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:500]}"


def prepare_row(workload: str, dtype: str, per_device_batch: int, tiny: bool) -> tuple:
  """``(train_step, state, batch, rng, row)``: the library's step of the workload's config
  (``training.programs``), its state and a batch of random images on all devices."""
  from flowgmm_jax import data as data_lib
  from flowgmm_jax import mesh as mesh_lib
  from flowgmm_jax.data.rows import split_rows
  from flowgmm_jax.models import count_params
  from flowgmm_jax.training import batching, programs
  c = workload_config(workload, dtype, tiny)
  mesh = mesh_lib.make_mesh()
  devices = mesh_lib.num_devices(mesh)
  half = per_device_batch // 2
  c.data.labeled_batch_size = c.data.unlabeled_batch_size = half * devices
  rows = 2 * half * devices
  shape = (TINY_SIZE, TINY_SIZE, SHAPES[workload][-1]) if tiny else SHAPES[workload]
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (rows,) + shape, dtype=np.uint8)
  y = rng.integers(0, 10, rows).astype(np.int32)
  dataset = data_lib.Dataset(name=c.data.name, kind="image", x_train=x, y_train=y,
                             x_test=x[:0], y_test=y[:0], num_classes=10)
  split = split_rows(c, dataset, pools=(np.arange(rows // 2), np.arange(rows // 2, rows)))
  progs = programs.programs(programs.program_key(c, dataset), mesh)
  batch = batching.Batches(c, dataset, split, mesh).on_devices(0)
  variables = progs.init(jax.random.PRNGKey(0), np.asarray(x[:min(rows, 64)], np.float32))
  state = mesh_lib.replicate(mesh, progs.new_state(variables))
  step_rng = mesh_lib.replicate(mesh, np.asarray(jax.random.PRNGKey(2), np.uint32))
  row = {"config": CONFIGS[workload][0].replace(".", "/") + ".py"
         + (f":{CONFIGS[workload][1]}" if CONFIGS[workload][1] else ""),
         "model": c.model.name, "params": count_params(variables),
         "consistency": c.loss.consistency_weight > 0, "global_batch": rows,
         "image_shape": list(shape)}
  return progs.train_step, state, batch, step_rng, row


def time_row(workload: str, dtype: str, per_device_batch: int, tiny: bool, repeats: int,
             device_kind: str, peak_override: float) -> dict:
  """One timed row: FLOPs and collectives, compile cold and warm, step time, MFU."""
  train_step, state, batch, step_rng, row = prepare_row(workload, dtype, per_device_batch,
                                                        tiny)
  with _fresh_cache():
    compiled, traced, cold = compile_timed(train_step, state, batch, step_rng)
    row["flops_per_device"] = count_flops(traced.jaxpr)
    row["collectives_per_step"] = count_collectives(traced.jaxpr)
    row["flops_counted_on"] = "the traced jaxpr (scans times their length), per device"
    jax.clear_caches()
    hits = len(_cache_hits)
    compiled, _, warm = compile_timed(train_step, state, batch, step_rng)
    warm["cache_hits"] = len(_cache_hits) - hits
  row["cold"], row["warm"] = cold, warm
  row["compile_cold_s"] = cold["trace_s"] + cold["lower_s"] + cold["compile_s"]
  row["compile_warm_s"] = warm["trace_s"] + warm["lower_s"] + warm["compile_s"]
  t0 = time.perf_counter()
  state, metrics = compiled(state, batch, step_rng)
  jax.block_until_ready(metrics)
  row["first_step_s"] = time.perf_counter() - t0
  timed, metrics = time_compiled(compiled, state, batch, step_rng, repeats)
  median = timed["median_s"]
  peak, tf32 = peak_tflops(device_kind, dtype, peak_override)
  achieved = row["flops_per_device"] / median / 1e12
  row.update(timed, repeats=repeats, images_per_s=row["global_batch"] / median,
             images_per_s_pipelined=row["global_batch"] / timed["pipelined_s"],
             tflops_per_s_per_device=achieved, peak_tflops=peak,
             mfu=achieved / peak if peak else None,
             mfu_tf32=achieved / tf32 if tf32 else None,
             loss_finite=bool(np.isfinite(np.asarray(jax.device_get(metrics["train/loss"])))))
  return row


class _OutOfTime(Exception):
  pass


def reference_curve(path: str = REFERENCE) -> dict:
  """``{step: {"accuracy": [per seed], "bpd": [...]}}`` of the CPU reference runs."""
  try:
    runs = json.loads((REPO / path).read_text())["runs"]
  except (OSError, ValueError, KeyError):
    return {}
  curve = {}
  for run in runs:
    for e in run["evals"]:
      point = curve.setdefault(int(e["step"]), {"accuracy": [], "bpd": [], "seeds": []})
      point["accuracy"].append(e["eval/accuracy"])
      point["bpd"].append(e["eval/bpd"])
      point["seeds"].append(run.get("seed"))
  return curve


def train_mnist(deadline: float, tiny: bool) -> dict:
  """configs/mnist.py:cpu until ``deadline`` (``time.perf_counter()``) or its end."""
  from configs import mnist
  from flowgmm_jax import data as data_lib
  from flowgmm_jax.data.rows import split_rows
  from flowgmm_jax.training.loop import fit
  size = "tiny" if tiny else "full"
  c = mnist.get_config("cpu")
  c.compilation_cache_dir = "off"  # the check's compile times are its own
  if tiny:
    shrink(c)
    c.data.max_train_examples, c.data.max_test_examples = 400, 100
    c.data.num_labeled_per_class = 5
    c.num_train_steps, c.eval_every_steps, c.log_every_steps = 4, 2, 1
    c.eval_batch_size = 50
    c.optim.warmup_steps = 1
  config_name = "configs/mnist.py:cpu" + (" (--tiny: shrunk)" if tiny else "")
  t0 = time.perf_counter()
  try:
    dataset = data_lib.load_dataset(c)
  except data_lib.DataNotFoundError as e:
    return {"config": config_name, "skipped": f"MNIST not found ({str(e).splitlines()[0]}); "
            "set FLOWGMM_DATA_DIR to a folder holding mnist/ (docs/experiments.md)"}
  split = split_rows(c, dataset)
  reference = reference_curve()
  curve, train, marks = [], [], {"first_log": None, "eval_s": []}

  def log_fn(step, metrics):
    # Called at each log step, then with the test metrics when the step is also an
    # evaluation step. Training goes on while the next evaluation still fits in the budget.
    now = time.perf_counter()
    if "eval/accuracy" in metrics:
      marks["eval_s"].append(now - marks.pop("eval_start", now))
      ref = reference.get(step)
      curve.append({"step": step, "wall_s": now - t0,
                    "accuracy": float(metrics["eval/accuracy"]),
                    "bpd": float(metrics["eval/bpd"]),
                    "cpu_reference_accuracy": ref["accuracy"] if ref else None,
                    "cpu_reference_bpd": ref["bpd"] if ref else None})
      if marks.pop("stop_after_eval", False):
        raise _OutOfTime(step)
      return
    train.append({"step": step, "wall_s": now - t0,
                  **{k: float(v) for k, v in metrics.items()}})
    if marks["first_log"] is None:  # the first log comes after the compiles
      marks["first_log"] = (step, now)
      return
    if step >= c.num_train_steps:
      return
    first_step, first_time = marks["first_log"]
    per_step = (now - first_time) / max(step - first_step, 1)
    eval_s = max(marks["eval_s"], default=EVAL_GUESS_S[size])
    to_next = (c.eval_every_steps - step % c.eval_every_steps) * per_step + eval_s
    if step % c.eval_every_steps == 0:  # this step's evaluation comes next
      marks["eval_start"] = now
      if now + eval_s > deadline:
        raise _OutOfTime(step)
      if now + eval_s + to_next > deadline:
        marks["stop_after_eval"] = True
    elif now + to_next > deadline:
      raise _OutOfTime(step)

  stopped = None
  try:
    fit(c, dataset, split, log_fn=log_fn)
  except _OutOfTime as e:
    stopped = (f"stopped at step {e.args[0]} of {c.num_train_steps}: the next evaluation "
               "would not have finished within the budget")
  wall = time.perf_counter() - t0
  steps = train[-1]["step"] if train else 0
  return {"config": config_name, "num_train_steps": int(c.num_train_steps),
          "steps_done": steps, "stopped": stopped, "num_labeled": int(len(split.labeled)),
          "num_test": int(len(dataset.x_test)), "wall_s": wall, "eval": curve,
          "train": train, "reference": REFERENCE + " (seeds 0-2, one CPU device)"}


def write_report(report: dict, outs: list) -> None:
  for out in outs:
    write_json(out, report)


def parse_rows(text: str) -> tuple:
  """``workload:dtype:batch,...`` -> rows; a bad entry is one argparse-style message."""
  rows = []
  for item in text.split(","):
    parts = item.strip().split(":")
    if (len(parts) != 3 or parts[0] not in CONFIGS or parts[1] not in ("float32", "bfloat16")
        or not parts[2].isdigit() or int(parts[2]) < 2 or int(parts[2]) % 2):
      raise argparse.ArgumentTypeError(
          f"bad row {item!r}: give WORKLOAD:DTYPE:BATCH with WORKLOAD in {sorted(CONFIGS)}, "
          "DTYPE float32 or bfloat16 and an even per-device BATCH")
    rows.append((parts[0], parts[1], int(parts[2])))
  return tuple(rows)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--tiny", action="store_true",
                 help="tiny models on 8x8 images, a few training steps: the CPU tests' run")
  p.add_argument("--budget-s", type=float, default=480.0,
                 help="wall-clock seconds for the whole check, imports excluded")
  p.add_argument("--rows", type=parse_rows, default=None,
                 help="WORKLOAD:DTYPE:PER_DEVICE_BATCH,... (default: ROWS, --tiny TINY_ROWS)")
  p.add_argument("--repeats", type=int, default=0,
                 help="timed steps per row (default 20, --tiny 2)")
  p.add_argument("--peak-tflops", type=float, default=0.0,
                 help="the device's peak TFLOP/s for MFU (default: the PEAKS table)")
  p.add_argument("--out", default=None,
                 help="the JSON (default benchmarks/results/gpu_check.json; --tiny: "
                      "gpu_check_tiny.json in the temporary directory, not a result)")
  args = p.parse_args(argv)
  start = time.perf_counter()
  deadline = start + args.budget_s
  size = "tiny" if args.tiny else "full"
  rows = args.rows or (TINY_ROWS if args.tiny else ROWS)
  repeats = args.repeats or (2 if args.tiny else 20)
  reserve = TRAIN_RESERVE_S[size]
  device = jax.devices()[0]
  out = args.out or (os.path.join(tempfile.gettempdir(), "gpu_check_tiny.json") if args.tiny
                     else "benchmarks/results/gpu_check.json")
  outs = [out] + ([os.path.join(os.environ["OUT"], "gpu_check.json")]
                  if os.environ.get("OUT") else [])
  report = {"provenance": provenance(argv), "backend": jax.default_backend(),
            "device_kind": device.device_kind, "num_devices": jax.device_count(),
            "tiny": args.tiny, "budget_s": args.budget_s, "train_reserve_s": reserve,
            "peak_source": "--peak-tflops" if args.peak_tflops else PEAK_SOURCE,
            "rows": [], "training": None, "complete": False}
  print(f"[gpu_check] {report['backend']}: {jax.device_count()} x {device.device_kind}, "
        f"jax {jax.__version__}, budget {args.budget_s:.0f} s", flush=True)
  write_report(report, outs)
  longest = None
  for workload, dtype, batch in rows:
    left = deadline - time.perf_counter()
    estimate = longest if longest is not None else FIRST_ROW_GUESS_S[size]
    row = {"workload": workload, "compute_dtype": dtype, "per_device_batch": batch}
    if left - reserve < estimate:
      row["skipped"] = (f"{left:.0f} s left, {reserve:.0f} s of it kept for training; the row "
                        f"is estimated at {estimate:.0f} s ("
                        + ("the longest row so far)" if longest is not None
                           else "a guess before any row)"))
    else:
      t0 = time.perf_counter()
      try:
        row.update(time_row(workload, dtype, batch, args.tiny, repeats, device.device_kind,
                            args.peak_tflops))
      except Exception as e:  # noqa: BLE001
        row["failed"] = _failure(e)
      row["wall_s"] = time.perf_counter() - t0
      longest = max(longest or 0.0, row["wall_s"])
    report["rows"].append(row)
    write_report(report, outs)
    if "median_s" in row:
      mfu = row["mfu"]
      print(f"[gpu_check] {workload} {dtype} x{batch}: {row['median_s'] * 1e3:.2f} ms/step, "
            f"{row['images_per_s']:.0f} images/s, "
            f"{row['tflops_per_s_per_device']:.2f} TFLOP/s per device"
            + (f", MFU {100 * mfu:.1f}%" if mfu is not None else "")
            + f"; compile cold {row['compile_cold_s']:.1f} s, warm "
            f"{row['compile_warm_s']:.1f} s", flush=True)
    else:
      print(f"[gpu_check] {workload} {dtype} x{batch}: "
            f"{row.get('skipped') or row.get('failed')}", flush=True)
  left = deadline - time.perf_counter()
  if left < MIN_TRAIN_S[size]:
    report["training"] = {"skipped": f"{max(left, 0):.0f} s left; training needs at least "
                                     f"{MIN_TRAIN_S[size]:.0f} s to reach an evaluation"}
  else:
    try:
      report["training"] = train_mnist(deadline, args.tiny)
    except Exception as e:  # noqa: BLE001
      report["training"] = {"failed": _failure(e)}
  training = report["training"]
  if training.get("eval"):
    last = training["eval"][-1]
    print(f"[gpu_check] {training['config']}: {training['steps_done']} steps in "
          f"{training['wall_s']:.0f} s, test accuracy {100 * last['accuracy']:.1f}% at step "
          f"{last['step']}", flush=True)
  else:
    why = training.get("skipped") or training.get("failed") or training.get("stopped")
    print(f"[gpu_check] training: {why}", flush=True)
  report["total_s"] = time.perf_counter() - start
  report["complete"] = True
  write_report(report, outs)
  print(f"[gpu_check] {report['total_s']:.0f} s in all; wrote {', '.join(outs)}", flush=True)
  return report


if __name__ == "__main__":
  main()
