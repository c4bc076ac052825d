"""How much of a forest on the labelled rows to average into FlowGMMClassifier's p(y | x),
and at which temperature of the flow: the study behind ``forest_weight=0.5`` and
``flow_temperature=None`` (sqrt(D)), on validation splits of the training rows
(``benchmarks.ssl_suite.make_split(validation=True)``; the test rows are never used),
10 labels per class.

    nice python -m experiments.forest_blend --panel=suite --seeds=0,1,2 --output=/tmp/a.json
    nice python -m experiments.forest_blend --panel=mixed --seeds=0,1,2 --output=/tmp/b.json

Each (table, seed) fits the flow once (``forest_weight=0``) and a forest of ``--trees``
trees on the same standardised labelled rows; every (w, T) of the grid is then the average
(1 - w) softmax(logits / T) + w p_forest, so the grid costs one fit. Prints the mean
accuracy (%) over the tables for each (w, T); ``--output`` keeps the per-seed numbers.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.special

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
# T as a multiple of sqrt(D) ("k*sqrtD") or a number.
TEMPERATURES = ("1", "5", "10", "0.5*sqrtD", "1*sqrtD", "2*sqrtD", "3*sqrtD")


def temperature(spec: str, num_features: int) -> float:
  factor, _, sqrt_d = spec.partition("*")
  return float(factor) * (np.sqrt(num_features) if sqrt_d else 1.0)


def blend_accuracies(tables, seeds, trees: int) -> dict:
  """{table: {"w=..,T=..": [accuracy per seed]}}."""
  from sklearn.ensemble import RandomForestClassifier

  from benchmarks.ssl_suite import load_table, make_split
  from flowgmm_jax import FlowGMMClassifier
  out = {}
  for table in tables:
    x, y = load_table(table)
    out[table] = {}
    for seed in seeds:
      start = time.perf_counter()
      x_train, y_semi, _, x_eval, y_eval = make_split(x, y, seed, 10, validation=True)
      flow = FlowGMMClassifier(random_state=seed, forest_weight=0).fit(x_train, y_semi)
      u_train, u_eval = flow._standardized(x_train), flow._standardized(x_eval)
      logits = flow.model_.logits(u_eval, preprocessed=True).astype(np.float64)
      labeled = np.flatnonzero(y_semi != -1)
      forest = RandomForestClassifier(trees, random_state=seed, n_jobs=1).fit(
          u_train[labeled], np.searchsorted(flow.classes_, y_semi[labeled]))
      forest_proba = forest.predict_proba(u_eval[:])
      for t_spec in TEMPERATURES:
        p_flow = scipy.special.softmax(logits / temperature(t_spec, x.shape[1]), axis=1)
        for w in WEIGHTS:
          p = (1 - w) * p_flow + w * forest_proba
          accuracy = float(np.mean(flow.classes_[p.argmax(axis=1)] == y_eval))
          out[table].setdefault(f"w={w},T={t_spec}", []).append(accuracy)
      print(f"{table} seed {seed}: flow {100 * out[table]['w=0.0,T=1'][-1]:.1f}%, "
            f"w=0.5 T=sqrtD {100 * out[table]['w=0.5,T=1*sqrtD'][-1]:.1f}% "
            f"({time.perf_counter() - start:.1f} s)", flush=True)
  return out


def summary(results: dict) -> str:
  """Markdown: mean accuracy (%) over the tables, a row per T, a column per w."""
  rows = ["| T | " + " | ".join(f"w = {w}" for w in WEIGHTS) + " |",
          "|---|" + "---|" * len(WEIGHTS)]
  for t_spec in TEMPERATURES:
    means = [100 * np.mean([np.mean(r[f"w={w},T={t_spec}"]) for r in results.values()])
             for w in WEIGHTS]
    rows.append(f"| {t_spec} | " + " | ".join(f"{m:.2f}" for m in means) + " |")
  return "\n".join(rows)


def main(argv=None) -> dict:
  from benchmarks.provenance import int_list, provenance, write_json
  from benchmarks.ssl_suite import PANELS
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--panel", choices=sorted(PANELS), default="suite")
  parser.add_argument("--tables", default="", help="comma-separated; default: the panel's")
  parser.add_argument("--seeds", type=int_list, default=[0, 1, 2])
  parser.add_argument("--trees", type=int, default=100)
  parser.add_argument("--output", default="")
  args = parser.parse_args(argv)
  tables = args.tables.split(",") if args.tables else list(PANELS[args.panel])
  results = blend_accuracies(tables, args.seeds, args.trees)
  print(summary(results))
  if args.output:
    write_json(args.output, {"provenance": provenance(argv), "seeds": args.seeds,
                             "trees": args.trees, "results": results})
  return results


if __name__ == "__main__":
  main()
