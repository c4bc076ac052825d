"""Cross-fitted temperature safeguards on the suite's validation splits, per table and seed.

    python -m benchmarks.calibration_safeguards --tables=pima,housevotes --seeds=0,1,2 \\
        [--folds=3] [--json benchmarks/results/calibration_safeguards.json]

Fits ``FlowGMMClassifier(calibrate=True, calibration_folds=F)`` once per (table, seed) on
``benchmarks.ssl_suite.make_split(..., validation=True)`` (never the test rows) and scores
the validation ECE (15 bins) of the final model with each temperature computed from the
same out-of-fold logits: T = 1 (uncalibrated), T fitted in [0.1, 100] (the estimator's
setting), T fitted in [0.1, 10], and each shrunk toward 1 with n0 = 10 K pseudo-rows
(``calibration.shrunk_temperature``).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def run(table: str, seed: int, folds: int) -> dict:
  from benchmarks import ssl_suite
  from flowgmm_jax import FlowGMMClassifier, calibration
  x, y = ssl_suite.load_table(table)
  x_train, y_semi, _, x_eval, y_eval = ssl_suite.make_split(
      x, y, seed, ssl_suite.LABELS_PER_CLASS, True)
  clf = FlowGMMClassifier(random_state=seed, calibrate=True, calibration_folds=folds)
  clf.fit(x_train, y_semi)
  record = clf.calibration_
  logits = clf.predict_log_proba(x_eval) * clf.temperature_  # softmax-equivalent logits
  labels = np.searchsorted(clf.classes_, y_eval)
  oof, truth = record["out_of_fold_logits"], record["out_of_fold_labels"]
  n, k = truth.size, clf.classes_.size
  all_right = bool(np.all(np.argmax(oof, axis=1) == truth))
  t100 = 1.0 if all_right else calibration.fit_temperature(oof, truth, max_temperature=100.0)
  t10 = 1.0 if all_right else calibration.fit_temperature(oof, truth, max_temperature=10.0)
  temps = {"uncalibrated": 1.0, "bracket_100": t100, "bracket_10": t10,
           "bracket_100_shrunk": calibration.shrunk_temperature(t100, n, 10 * k),
           "bracket_10_shrunk": calibration.shrunk_temperature(t10, n, 10 * k)}
  return {"table": table, "seed": seed, "folds": folds, "num_out_of_fold": int(n),
          "out_of_fold_accuracy": record["out_of_fold_accuracy"],
          "accuracy": float(np.mean(np.argmax(logits, 1) == labels)), "temperatures": temps,
          "ece": {name: calibration.metrics(logits, labels, t)["ece"]
                  for name, t in temps.items()}}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tables", default="pima,housevotes")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--folds", type=int, default=3)
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  load = os.getloadavg()
  rows = []
  for table in args.tables.split(","):
    for seed in [int(s) for s in args.seeds.split(",")]:
      rows.append(run(table, seed, args.folds))
      r = rows[-1]
      print(table, seed, {k: round(v, 3) for k, v in r["ece"].items()},
            {k: round(v, 2) for k, v in r["temperatures"].items()}, flush=True)
  for table in args.tables.split(","):
    mine = [r for r in rows if r["table"] == table]
    print(table, {name: round(float(np.mean([r["ece"][name] for r in mine])), 3)
                  for name in mine[0]["ece"]})
  if args.json:
    from benchmarks.provenance import provenance
    with open(args.json, "w") as f:
      json.dump({"provenance": provenance(argv), "load_average_before": load,
                 "rows": rows}, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
