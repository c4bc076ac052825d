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


def cell_averaged_predict(model, x, draws: int, seed: int = 0) -> np.ndarray:
  """Classes of ``x`` under the simplex encoding with each categorical level's cell
  integrated by Monte Carlo instead of read at its centroid: p(y | x) proportional to
  ``mean_s q(a_s, y) exp(-sum_j log p_sj)`` over ``draws`` uniform points of each row's
  cells (``a_s = alr(p_s)``; the factor is the density of a over p)."""
  import scipy.special

  from flowgmm_jax import features
  encoder = model.encoder_
  numeric, codes = encoder.split(x, "ignore")
  levels = [len(c) for c in encoder.categories]
  rows = features.CategoricalRows(numeric, codes, levels, encoder.is_categorical,
                                  model.feature_mean_, model.feature_scale_, noise_seed=seed)
  weights = []
  for _ in range(draws):
    u = np.asarray(rows[:], np.float64)  # a fresh draw of every row's cells
    out = model.model_.outputs(u.astype(np.float32), preprocessed=True,
                               keys=("log_det", "logits"))
    a = u * model.feature_scale_ + model.feature_mean_
    correction = np.zeros(len(u))
    col, g = 0, 0
    for categorical in encoder.is_categorical:
      if categorical:
        k = levels[g]
        p = features.inverse_additive_log_ratio(a[:, col:col + k - 1])
        correction -= features.additive_log_ratio_log_det(p)
        col += k - 1
        g += 1
      else:
        col += 1
    weights.append(out["logits"].astype(np.float64) + out["log_det"][:, None] +
                   correction[:, None])
  joint = scipy.special.logsumexp(np.stack(weights), axis=0)
  return model.classes_[joint.argmax(axis=1)]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tables", required=True)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--variants", default="today,simplex")
  parser.add_argument("--params", default="{}", help="JSON FlowGMMClassifier overrides")
  parser.add_argument("--output", default="")
  parser.add_argument("--mc-draws", type=int, default=0,
                      help="also score the simplex fits with cells integrated by this many "
                      "draws (column simplex_mc)")
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
        if variant == "simplex" and args.mc_draws:
          mc = 100 * float(np.mean(cell_averaged_predict(model, x_eval, args.mc_draws)
                                   == y_eval))
          results[table].setdefault("simplex_mc", []).append(mc)
          print(f"{table} seed {seed} simplex_mc: {mc:.1f}%", flush=True)
  variants = args.variants.split(",") + (["simplex_mc"] if args.mc_draws else [])
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
