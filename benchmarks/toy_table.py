"""Test accuracy of FlowGMM on the paper's four toy datasets, over seeds, via the CLI's path.

    python -m benchmarks.toy_table --seeds=0,1,2 [--json=benchmarks/results/toy_table.json]

Each row is ``python -m experiments.main --config=configs/toy.py:NAME --workdir=DIR
--config.seed=S`` (run in-process through ``train_and_evaluate``), so the numbers are the
shipped config's. Prints a markdown table of mean +- std over the seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from configs.toy import get_config
from flowgmm_jax.training import train_and_evaluate

DATASETS = ("moons", "circles", "8gaussians", "pinwheel")


def markdown(results) -> str:
  """The table of a results file written by ``main`` (``benchmarks.report`` renders it)."""
  rows = results["rows"] if isinstance(results, dict) else results
  lines = ["| dataset | labels | test accuracy, mean ± std | per seed | seconds per run |",
           "|---|---|---|---|---|"]
  for r in rows:
    a = np.asarray(r["accuracy"]) * 100
    seeds = ("seeds " if len(a) > 1 else "seed ") + ", ".join(map(str, r["seeds"]))
    value = f"{a.mean():.1f} ± {a.std():.1f} %" if len(a) > 1 else f"{a[0]:.1f} % (one seed)"
    lines.append(f"| {r['dataset']} | {r['num_labeled']} | {value} "
                 f"| {', '.join(f'{v:.1f}' for v in a)} ({seeds}) | "
                 f"{np.mean(r['seconds']):.0f} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--datasets", default=",".join(DATASETS))
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  from benchmarks.provenance import provenance
  made = provenance(argv)  # before the runs, so its load average is the load they started in
  rows = []
  for name in args.datasets.split(","):
    accs, secs = [], []
    for seed in seeds:
      c = get_config(name)
      c.seed = seed
      c.progress_bar = False
      with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        results = train_and_evaluate(c, os.path.join(workdir, "run"))
        secs.append(time.perf_counter() - t0)
      accs.append(results["eval/accuracy"])
      print(f"{name} seed {seed}: accuracy {accs[-1]:.4f} ({secs[-1]:.0f} s)", flush=True)
    rows.append({"dataset": name, "num_labeled": results["num_labeled"], "seeds": seeds,
                 "accuracy": accs, "seconds": secs})
  results = {"provenance": made, "rows": rows}
  print("\n" + markdown(results))
  if args.json:
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
