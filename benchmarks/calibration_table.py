"""Post-hoc temperature calibration before and after, on three runs, from their results.json.

    python -m benchmarks.calibration_table [--runs=toy,letter,agnews] \
        [--json=benchmarks/results/calibration.json]

Each run is ``python -m experiments.main --config=CONFIG --workdir=DIR
--config.calibration.validation_fraction=0.2 OVERRIDES`` (seed 0; ``RUNS`` lists them), run
in-process through ``train_and_evaluate``; a row is the run's test accuracy and its
``calibration/before/*`` and ``calibration/after/*`` entries. ``markdown(results)`` renders
the table (``python -m benchmarks.report``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import tempfile
import time
from typing import Dict, List, NamedTuple


class Run(NamedTuple):
  label: str                # the table's first column
  config: str               # configs/MODULE.py:ARG as "MODULE:ARG"
  overrides: Dict[str, object]


RUNS: Dict[str, Run] = {
    "toy": Run("moons, `configs/toy.py`, 2000 steps", "toy:", {}),
    "letter": Run("letter, `configs/tabular.py:letter`, 500 steps", "tabular:letter",
                  {"num_train_steps": 500, "eval_every_steps": 500}),
    "agnews": Run("AG News, `configs/text.py`, 1500 steps", "text:",
                  {"data.labeled_batch_size": 64, "data.unlabeled_batch_size": 256,
                   "num_train_steps": 1500, "eval_every_steps": 500}),
}


def make_config(run: Run):
  module, arg = run.config.split(":")
  c = importlib.import_module(f"configs.{module}").get_config(arg or None)
  c.calibration.validation_fraction = 0.2
  for key, value in run.overrides.items():
    *path, last = key.split(".")
    section = c
    for p in path:
      section = section[p]
    section[last] = value
  c.progress_bar = False
  return c


def markdown(results: dict) -> str:
  lines = ["| run | labels (train + validation) | T | accuracy | ECE before → after | "
           "NLL(y\\|x) before → after |", "|---|---|---|---|---|---|"]
  for r in results["rows"]:
    t = r["temperature"]
    t = "1 (kept)" if t == 1.0 else f"{t:.2f}"
    lines.append(f"| {r['run']} | {r['num_train_labels']} + {r['num_validation']} | {t} | "
                 f"{100 * r['accuracy']:.1f} % | {r['ece_before']:.3f} → {r['ece_after']:.3f} | "
                 f"{r['nll_before']:.3g} → {r['nll_after']:.3g} |")
  return "\n".join(lines)


def main(argv=None) -> List[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", default=",".join(RUNS))
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  from flowgmm_jax.training import train_and_evaluate
  from benchmarks.provenance import provenance
  made = provenance(argv)  # before the runs, so its load average is the load they started in
  rows = []
  for name in args.runs.split(","):
    run = RUNS[name]
    with tempfile.TemporaryDirectory() as workdir:
      start = time.perf_counter()
      res = train_and_evaluate(make_config(run), os.path.join(workdir, "run"))
      seconds = time.perf_counter() - start
    num_validation = int(res.get("calibration/num_validation", 0))
    rows.append({"run": run.label, "config": run.config, "overrides": run.overrides,
                 "num_train_labels": int(res["num_labeled"]),
                 "num_validation": num_validation,
                 "temperature": float(res.get("calibration/temperature", 1.0)),
                 "accuracy": float(res["eval/accuracy"]),
                 "ece_before": float(res["calibration/before/ece"]),
                 "ece_after": float(res["calibration/after/ece"]),
                 "nll_before": float(res["calibration/before/nll_y_given_x"]),
                 "nll_after": float(res["calibration/after/nll_y_given_x"]), "seconds": seconds})
    print(f"{name}: {rows[-1]}", flush=True)
  results = {"provenance": made, "rows": rows}
  print("\n" + markdown(results))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)
  return rows


if __name__ == "__main__":
  main()
