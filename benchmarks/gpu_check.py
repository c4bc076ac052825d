"""The prepared accelerator check (issue 21, part 4): step speed, compile time and a timed
MNIST training run, in under 10 minutes of device time, into one JSON.

On a GPU (the device machine has jax, flax, optax and orbax but not ml-collections, and
does not get ../shared; so carry a wheel and the MNIST files). Once, here, in the repo root:

    echo /.whl/ >> .git/info/exclude; echo /.gpu_data/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: -d .whl ml_collections==1.1.0
    mkdir -p .gpu_data/mnist && cp ../shared/data/mnist/*.gz .gpu_data/mnist/

then one device run carrying [".whl", ".gpu_data"], timeout 600 s:

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \\
        .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && \\
      FLOWGMM_DATA_DIR=.gpu_data python3 -m benchmarks.gpu_check --budget-s=540

and on a CPU, what the test runs: tiny shapes (``shrink``), plain FlowGMM, a few steps, two
of the four timed rows (CIFAR float32, MNIST bfloat16):

    python -m benchmarks.gpu_check --tiny --out=/tmp/gpu_check.json

What it does, in this order, within ``--budget-s`` seconds of its own wall time:
  1. Times four train steps with benchmarks/bench_steps.py's ``time_step`` (the library's
     jitted data-parallel step, compiled ahead of time, median of ``--repeats`` steps each
     ended by ``block_until_ready``): the CIFAR-10 FlowGMM-cons step (bench_steps'
     ``cifar`` workload: RealNVP 2 x 8 x 64 on 32x32x3, 32 + 32 images, crop + flip) and the
     MNIST step (configs/mnist.py: RealNVP 2 x 8 x 64 on 28x28x1, 32 + 32, FlowGMM-cons,
     crop), each with ``config.compute_dtype`` float32 and bfloat16. For each: images/s
     (64 / median step time), XLA's cost-analysis FLOPs of the compiled step, model FLOP
     utilisation (FLOPs / step time / peak), and the first step split into trace + lower,
     XLA compile and the step itself.
  2. Trains configs/mnist.py (the README recipe: 100 labels, lr 1e-5, FlowGMM-cons) with
     the library's loop (``training.loop.fit``) for as many steps as the measured float32
     MNIST step time leaves in the budget (less a compile allowance), evaluating the full
     10,000 test images five times; records the accuracy and bits/dim curve.

Peak FLOP/s: ``--peak-tflops`` if given (used for both dtypes), else the dense peak of the
chip from ``PEAKS`` by ``jax.devices()[0].device_kind``: the bfloat16 tensor-core peak for
bfloat16 steps and the TF32 tensor-core peak for float32 ones (XLA's default precision lets
float32 convolutions and matrix products use TF32 on NVIDIA GPUs); MFU is null where no
peak is known (CPUs). Writes ``--out`` (default gpu_check.json) and, if $OUT is set,
$OUT/gpu_check.json.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import sys
import time

import jax
import numpy as np

# Dense peaks in TFLOP/s: (bfloat16 tensor cores, TF32 tensor cores), by a substring of
# device_kind (the first match wins, so longer names come first). Vendor data sheets.
PEAKS = (
    ("H100 PCIe", (756.0, 378.0)),
    ("H200", (989.4, 494.7)),
    ("H100", (989.4, 494.7)),
    ("GH200", (989.4, 494.7)),
    ("A100", (312.0, 156.0)),
    ("L40S", (362.1, 183.0)),
    ("L4", (121.0, 60.0)),
    ("A10", (125.0, 62.5)),
    ("TPU v6", (918.0, None)),
    ("TPU v5p", (459.0, None)),
    ("TPU v5", (197.0, None)),   # v5e ("TPU v5 lite")
    ("TPU v4", (275.0, None)),
)
DTYPES = ("float32", "bfloat16")
BATCH = (32, 32)  # labelled + unlabelled images per step, both workloads


def peak_tflops(device_kind: str, dtype: str, override: float | None) -> float | None:
  """The peak for ``dtype`` steps on ``device_kind`` (see the module docstring)."""
  if override:
    return float(override)
  for name, (bf16, tf32) in PEAKS:
    if name.lower() in device_kind.lower():
      return bf16 if dtype == "bfloat16" else tf32
  return None


def mnist_spec(tiny: bool):
  """bench_steps-style ``(config, x, y, input_shape, num_classes)`` for the MNIST step:
  configs/mnist.py's recipe on a fixed random batch of 32 labelled + 32 unlabelled
  images (labelled first)."""
  from configs import mnist
  c = mnist.get_config()
  rng = np.random.default_rng(0)
  bl, bu = BATCH
  x = rng.integers(0, 256, (bl + bu, 28, 28, 1)).astype(np.uint8)
  y = np.concatenate([rng.integers(0, 10, bl), -np.ones(bu, int)]).astype(np.int32)
  spec = (c, x, y, (28, 28, 1), 10)
  return shrink(spec) if tiny else spec


def cifar_spec(tiny: bool):
  from benchmarks import bench_steps
  spec = bench_steps.workload("cifar")
  return shrink(spec) if tiny else spec


TINY_MODEL = dict(num_scales=1, num_blocks=1, mid_channels=4)
# --tiny times two of the four rows: both workloads and both dtypes, half the compiles.
TINY_ROWS = (("cifar", "float32"), ("mnist", "bfloat16"))


def shrink(spec):
  """--tiny: 8x8 crops, 4 + 4 images, ``TINY_MODEL`` (a RealNVP of 4 checkerboard
  couplings with one-block conditioners) and plain FlowGMM (no second view): the
  same code paths, the least XLA has to compile."""
  c, x, y, shape, k = spec
  c = copy.deepcopy(c)
  for key, value in TINY_MODEL.items():
    c.model[key] = value
  c.loss.consistency_weight = 0.0  # one forward pass: the same code, a smaller compile
  rows = np.r_[0:4, BATCH[0]:BATCH[0] + 4]
  x = np.ascontiguousarray(x[rows, :8, :8])
  return c, x, y[rows], (8, 8, shape[-1]), k


def with_dtype(spec, dtype: str):
  c, *rest = spec
  c = copy.deepcopy(c)
  c.compute_dtype = dtype
  return (c, *rest)


def time_steps(tiny: bool, repeats: int, device_kind: str, peak_override) -> list:
  """Part 1: one row per (workload, dtype), from bench_steps.time_step."""
  from benchmarks import bench_steps
  rows = []
  makers = {"cifar": cifar_spec, "mnist": mnist_spec}
  for name, dtype in (TINY_ROWS if tiny else [(w, d) for w in makers for d in DTYPES]):
    spec = with_dtype(makers[name](tiny), dtype)
    t0 = time.perf_counter()
    # --tiny: the FLOPs of the compiled step, not of a second, unrolled lowering (7 s here);
    # its MFU is a field check, not a measurement.
    row = bench_steps.time_step(name, repeats, spec=spec, unrolled_flops=not tiny)
    row["wall_s"] = time.perf_counter() - t0
    images = len(spec[1])
    peak = peak_tflops(device_kind, dtype, peak_override)
    row.update(workload=name, compute_dtype=dtype, images_per_step=images,
               images_per_s=images / row["median_s"],
               images_per_s_pipelined=images / row["pipelined_s"],
               tflops_per_s=row["flops"] / row["median_s"] / 1e12, peak_tflops=peak,
               mfu=(row["flops"] / row["median_s"] / (peak * 1e12)) if peak else None)
    rows.append(row)
    print(f"[gpu_check] {name} {dtype}: {row['median_s'] * 1e3:.2f} ms/step, "
          f"{row['images_per_s']:.0f} images/s, {row['tflops_per_s']:.2f} TFLOP/s"
          + (f", MFU {100 * row['mfu']:.1f}%" if row["mfu"] is not None else "")
          + f"; first step {row['first_step_s']:.1f} s (trace+lower "
          f"{row['trace_and_lower_s']:.1f}, compile {row['xla_compile_s']:.1f})",
          flush=True)
  return rows


def train_mnist(seconds: float, step_s: float, compile_s: float, tiny: bool) -> dict:
  """Part 2: configs/mnist.py with the library's loop for the steps that fit in
  ``seconds`` (measured ``step_s`` per step, ``compile_s`` for the loop's compiles)."""
  from configs import mnist
  from flowgmm_jax import data as data_lib
  from flowgmm_jax.training.loop import fit
  c = mnist.get_config("smoke" if tiny else None)
  if tiny:
    for key, value in TINY_MODEL.items():
      c.model[key] = value
    c.loss.consistency_weight = 0.0
  try:
    dataset = data_lib.load_dataset(c)
  except data_lib.DataNotFoundError as e:
    return {"skipped": f"MNIST not found ({str(e).splitlines()[0]}); set FLOWGMM_DATA_DIR "
                       "to a folder holding mnist/ (see the module docstring)"}
  # Two compiles (train step, eval step) and five evaluations of the test set.
  usable = seconds - 2.0 * compile_s
  steps = int(usable * 0.8 / step_s) if step_s > 0 else 0
  if tiny:
    steps = min(max(steps, 4), 4)
  if steps < 5 and not tiny:
    return {"skipped": f"no time left to train ({seconds:.0f} s for {step_s:.3f} s/step "
                       f"and {compile_s:.0f} s of compile)"}
  c.num_train_steps = steps
  c.eval_every_steps = max(1, steps // 5)
  c.log_every_steps = max(1, steps // 50)
  c.checkpoint_every_steps = steps
  c.progress_bar = False
  c.plots = False
  labeled, unlabeled = data_lib.make_split(c, dataset)
  curve, train = [], []

  def log_fn(step, metrics):
    if "eval/accuracy" in metrics:
      curve.append({"step": step, "wall_s": time.perf_counter() - t0,
                    **{k: float(metrics[k]) for k in ("eval/accuracy", "eval/bpd",
                                                      "eval/bpd_given_label")}})
    else:
      train.append({"step": step, **{k: float(v) for k, v in metrics.items()}})

  t0 = time.perf_counter()
  fit(c, dataset, labeled, unlabeled, log_fn=log_fn)
  wall = time.perf_counter() - t0
  return {"config": "configs/mnist.py" + (":smoke" if tiny else ""), "steps": steps,
          "num_labeled": int(len(labeled)), "num_test": int(len(dataset.x_test)),
          "wall_s": wall, "steps_per_s": steps / wall, "eval": curve, "train": train}


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--tiny", action="store_true",
                 help="tiny shapes and a few steps: runs on a CPU in about a minute")
  p.add_argument("--budget-s", type=float, default=540.0,
                 help="wall-clock seconds for the whole check (the device allows 600)")
  p.add_argument("--repeats", type=int, default=0, help="timed steps per row (default 20, "
                 "--tiny 2)")
  p.add_argument("--peak-tflops", type=float, default=0.0,
                 help="the chip's peak TFLOP/s, for MFU (default: the PEAKS table)")
  p.add_argument("--out", default="gpu_check.json")
  args = p.parse_args(argv)
  t_start = time.perf_counter()
  repeats = args.repeats or (1 if args.tiny else 20)
  device = jax.devices()[0]
  report = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": "python -m benchmarks.gpu_check " + " ".join(
                argv if argv is not None else sys.argv[1:]),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "device_kind": device.device_kind, "num_devices": jax.device_count(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "tiny": args.tiny, "budget_s": args.budget_s}
  print(f"[gpu_check] {report['backend']}: {jax.device_count()} x {device.device_kind}, "
        f"jax {jax.__version__}", flush=True)
  report["steps"] = time_steps(args.tiny, repeats, device.device_kind, args.peak_tflops)
  mnist_f32 = next(r for r in report["steps"] if r["workload"] == "mnist"
                   and (args.tiny or r["compute_dtype"] == "float32"))
  left = args.budget_s - (time.perf_counter() - t_start)
  report["mnist_training"] = train_mnist(left, mnist_f32["pipelined_s"],
                                         mnist_f32["first_step_s"], args.tiny)
  report["total_s"] = time.perf_counter() - t_start
  training = report["mnist_training"]
  if "eval" in training and training["eval"]:
    last = training["eval"][-1]
    print(f"[gpu_check] configs/mnist.py: {training['steps']} steps in "
          f"{training['wall_s']:.0f} s, test accuracy {100 * last['eval/accuracy']:.1f}%, "
          f"{last['eval/bpd']:.3f} bits/dim", flush=True)
  else:
    print(f"[gpu_check] training: {training.get('skipped')}", flush=True)
  outs = [args.out] + ([os.path.join(os.environ["OUT"], "gpu_check.json")]
                       if os.environ.get("OUT") else [])
  for out in outs:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
      json.dump(report, f, indent=1)
  print(f"[gpu_check] {report['total_s']:.0f} s in all; wrote {', '.join(outs)}", flush=True)
  return report


if __name__ == "__main__":
  main()
