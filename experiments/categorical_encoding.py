"""Today's handling of categorical columns (the one-hot columns of the npz, dequantised as
independent 0/1 columns) against ``categorical_encoding="simplex"`` (each raw categorical
column passed as its level codes, ``categorical_features=`` its indices), on validation
splits of the training rows (``benchmarks.ssl_suite.make_split(validation=True)``; the
test rows are never used), 10 labels per class.

    nice python -m experiments.categorical_encoding --tables=cps1985_aer,salaries_cardata \
        --seeds=0,1,2 --output=/tmp/categorical.json

Prints one line per fit and a summary table (accuracy %, mean ± population std over seeds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def raw_table(path: Path):
  """(x_onehot [N, D], x_codes [N, R], categorical column indices of x_codes, y [N])."""
  with np.load(path, allow_pickle=False) as f:
    x, y, groups, kinds = f["x"].astype(np.float64), f["y"], f["groups"], f["raw_kinds"]
  columns = []
  for g in range(len(kinds)):
    block = x[:, groups == g]
    columns.append(block.argmax(axis=1).astype(np.float64) if kinds[g] == "cat"
                   else block[:, 0])
  categorical = [g for g in range(len(kinds)) if kinds[g] == "cat"]
  return x, np.stack(columns, axis=1), categorical, y.astype(np.int64)


VARIANTS = ("today", "simplex", "onehot")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tables", required=True)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--variants", default="today,simplex")
  parser.add_argument("--params", default="{}", help="JSON FlowGMMClassifier overrides")
  parser.add_argument("--output", default="")
  args = parser.parse_args(argv)
  from benchmarks.ssl_suite import LABELS_PER_CLASS, make_split
  from flowgmm_jax import FlowGMMClassifier
  from flowgmm_jax.data.dataset import default_data_dir
  params = json.loads(args.params)
  results = {}
  for table in args.tables.split(","):
    x_onehot, x_codes, categorical, y = raw_table(
        Path(default_data_dir()) / "tabular" / f"{table}.npz")
    for seed in (int(s) for s in args.seeds.split(",")):
      for variant in args.variants.split(","):
        x = x_onehot if variant == "today" else x_codes
        x_train, y_semi, _, x_eval, y_eval = make_split(x, y, seed, LABELS_PER_CLASS, True)
        extra = {} if variant == "today" else dict(
            categorical_features=categorical, categorical_encoding=variant,
            handle_unknown="ignore")
        start = time.perf_counter()
        model = FlowGMMClassifier(random_state=seed, **extra, **params).fit(x_train, y_semi)
        accuracy = 100 * float(np.mean(model.predict(x_eval) == y_eval))
        seconds = time.perf_counter() - start
        results.setdefault(table, {}).setdefault(variant, []).append(accuracy)
        print(f"{table} seed {seed} {variant}: {accuracy:.1f}% ({seconds:.0f} s, "
              f"{model.n_iter_} steps)", flush=True)
  variants = args.variants.split(",")
  print("| table | " + " | ".join(variants) + " |")
  print("|---|" + "---|" * len(variants))
  for table, runs in results.items():
    print(f"| {table} | " + " | ".join(
        f"{np.mean(runs[v]):.1f} ± {np.std(runs[v]):.1f}" for v in variants) + " |")
  print("| **mean** | " + " | ".join(
      f"{np.mean([np.mean(r[v]) for r in results.values()]):.2f}" for v in variants) + " |")
  if args.output:
    Path(args.output).write_text(json.dumps(results, indent=1))
  return results


if __name__ == "__main__":
  main()
