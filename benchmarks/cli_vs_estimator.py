"""The table and text configs against FlowGMMClassifier on the same data, split and seeds.

    python -m benchmarks.cli_vs_estimator                       # letter, shuttle, agnews; seeds 0-2
    python -m benchmarks.cli_vs_estimator --configs=text:agnews --seeds=0

For each config and seed, the command-line path (``train_and_evaluate`` on
``configs/CONFIG.py:ARG`` with ``--config.seed=S``, exactly what ``python -m
experiments.main`` runs) and ``FlowGMMClassifier(random_state=S)`` fitted on the same
training rows with the same labelled rows (the others as -1) are scored on the same test
rows. Both run the one shared recipe (``TABLE_RECIPE``), so their accuracies should agree
up to the randomness of training. Prints a markdown table with wall times and writes
``benchmarks/results/cli_vs_estimator.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

CONFIGS = ("tabular:letter", "tabular:shuttle", "text:agnews")


def run_one(config_spec: str, seed: int) -> dict:
  from flowgmm_jax import FlowGMMClassifier
  from flowgmm_jax import data
  from flowgmm_jax.training import loop

  module, arg = config_spec.split(":")
  config = importlib.import_module(f"configs.{module}").get_config(arg)
  config.seed = seed
  config.progress_bar = False
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as workdir:
    cli = loop.train_and_evaluate(config, workdir)
  cli_seconds = time.perf_counter() - start

  dataset = data.load_dataset(config)
  labeled_idx, _ = data.make_split(config, dataset)
  y_semi = np.full(len(dataset.y_train), -1)
  y_semi[labeled_idx] = dataset.y_train[labeled_idx]
  start = time.perf_counter()
  clf = FlowGMMClassifier(random_state=seed).fit(dataset.x_train, y_semi)
  est_seconds = time.perf_counter() - start
  return {"seed": seed, "cli_accuracy": float(cli["eval/accuracy"]),
          "cli_ece": float(cli["eval/ece"]), "cli_seconds": cli_seconds,
          "cli_steps": int(cli["step"]),
          "estimator_accuracy": float(clf.score(dataset.x_test, dataset.y_test)),
          "estimator_seconds": est_seconds, "num_labeled": int(len(labeled_idx)),
          "num_test": int(len(dataset.y_test))}


def markdown(results: dict) -> str:
  """The table of a results file written by ``main``: per config, test accuracy of the
  command line and of the estimator, mean ± std over the seeds (population std), and the
  command line's mean wall time (``python -m benchmarks.report`` renders it)."""
  lines = ["| config | labels | CLI test accuracy (%) | estimator test accuracy (%) | "
           "CLI wall time (s) |", "|---|---|---|---|---|"]
  for spec, runs in results["results"].items():
    cli = 100 * np.array([r["cli_accuracy"] for r in runs])
    est = 100 * np.array([r["estimator_accuracy"] for r in runs])
    secs = np.mean([r["cli_seconds"] for r in runs])
    lines.append(f"| `configs/{spec.replace(':', '.py:')}` | {runs[0]['num_labeled']} | "
                 f"{cli.mean():.1f} ± {cli.std():.1f} | {est.mean():.1f} ± {est.std():.1f} | "
                 f"{secs:.0f} |")
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--configs", default=",".join(CONFIGS))
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" /
                                              "cli_vs_estimator.json"))
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",") if s]
  results = {}
  for spec in [c for c in args.configs.split(",") if c]:
    results[spec] = []
    for seed in seeds:
      run = run_one(spec, seed)
      results[spec].append(run)
      print(f"{spec} seed {seed}: CLI {100 * run['cli_accuracy']:.1f}% "
            f"({run['cli_seconds']:.0f} s), estimator {100 * run['estimator_accuracy']:.1f}% "
            f"({run['estimator_seconds']:.0f} s)", file=sys.stderr, flush=True)
  table = markdown({"results": results})
  print(f"seeds {','.join(map(str, seeds))}\n\n{table}")
  output = Path(args.output)
  output.parent.mkdir(parents=True, exist_ok=True)
  from benchmarks.provenance import provenance
  output.write_text(json.dumps({"seeds": seeds, "results": results, "markdown": table,
                                "provenance": provenance(argv)}, indent=2, sort_keys=True)
                    + "\n")
  return results


if __name__ == "__main__":
  main()
