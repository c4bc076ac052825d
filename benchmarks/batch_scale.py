"""``config.data.batch_scale`` k against 1 on ``configs/mnist.py:cpu``, the same epochs.

At an eighth of the recipe's budget on two CPU devices (each run about 5 minutes on an idle
2-core machine), on 5,000 held-out training images, seeds S = 0, 1, 2:

    for K in 1 4; do XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
      python -m experiments.main --config=configs/mnist.py:cpu --workdir=/tmp/bs/k${K}_s${S} \\
        --config.seed=S --config.data.batch_scale=$K --config.num_train_steps=$((752 / K)) \\
        --config.optim.warmup_steps=$((24 / K)) \\
        --config.loss.consistency_rampup_steps=$((124 / K)) \\
        --config.eval_every_steps=$((376 / K)) --config.checkpoint_every_steps=$((376 / K)) \\
        --config.data.validation_examples=5000 --config.plots=False; done
    python -m benchmarks.batch_scale /tmp/bs/k*_s* --json=benchmarks/results/batch_scale.json

Every step count is divided by k (752 steps of 32 + 32 images is 0.4 epochs of the 59,000
training images), the learning rate is k times the recipe's, and the warm-up is at least 5%
of the run (``training/config.py: scaled_for_batch``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from benchmarks.provenance import provenance


def collect(workdirs: list[str]) -> dict:
  """``{"runs": [{batch_scale, seed, steps, accuracy, bpd}], "by_scale": {k: mean, std}}``
  from finished run directories (their config.json and final evaluation)."""
  runs = []
  for workdir in workdirs:
    config = json.loads((Path(workdir) / "config.json").read_text())
    results = json.loads((Path(workdir) / "results.json").read_text())
    runs.append({"workdir": os.path.basename(workdir), "seed": config["seed"],
                 "batch_scale": config["data"]["batch_scale"], "steps": results["step"],
                 "evaluated_on": results["evaluated_on"],
                 "accuracy": results["eval/accuracy"], "bpd": results["eval/bpd"]})
  by_scale = {}
  for k in sorted({r["batch_scale"] for r in runs}):
    acc = [r["accuracy"] for r in runs if r["batch_scale"] == k]
    by_scale[str(k)] = {"seeds": sorted(r["seed"] for r in runs if r["batch_scale"] == k),
                        "accuracy_mean": float(np.mean(acc)), "accuracy_std": float(np.std(acc)),
                        "bpd_mean": float(np.mean([r["bpd"] for r in runs
                                                   if r["batch_scale"] == k]))}
  return {"runs": sorted(runs, key=lambda r: (r["batch_scale"], r["seed"])),
          "by_scale": by_scale}


def markdown(results: dict) -> str:
  lines = ["| batch_scale | steps | seeds | validation accuracy, mean ± std | bits/dim |",
           "|---|---|---|---|---|"]
  for k, s in results["by_scale"].items():
    steps = {r["steps"] for r in results["runs"] if str(r["batch_scale"]) == k}
    lines.append(f"| {k} | {', '.join(map(str, sorted(steps)))} | "
                 f"{', '.join(map(str, s['seeds']))} | {100 * s['accuracy_mean']:.1f} ± "
                 f"{100 * s['accuracy_std']:.1f}% | {s['bpd_mean']:.2f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  results = {**collect(args.workdirs), "provenance": provenance(argv)}
  if args.json:
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
  print(markdown(results))


if __name__ == "__main__":
  main()
