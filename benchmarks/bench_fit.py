"""Wall time of ``FlowGMMClassifier().fit`` with its defaults, the number users feel.

    python -m benchmarks.bench_fit                      # two moons and letter, 3 fits each
    python -m benchmarks.bench_fit --datasets=moons --repeats=5 --json out.json

Each fit is timed end to end (compilation included, as a user sees it; the first fit of a
process also pays the one-off compilations of the estimator's helpers, so it is reported
separately and left out of the median). Also printed: the optimiser steps taken
(``n_iter_``) and the wall time per step.
  * moons: ``make_moons`` 1,000 rows, 5 labels per class (the rest -1), seed 0.
  * letter: the offline UCI letter table (``../shared/data``), 10 labels per class.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import jax
import numpy as np

from flowgmm_jax import FlowGMMClassifier
from flowgmm_jax import data as data_lib

DATASETS = ("moons", "letter")


def dataset(name: str):
  """``(X, y)`` with -1 for the unlabelled rows."""
  if name == "moons":
    ds = data_lib.make_moons(num_train=1000, num_test=10, seed=0)
    per_class = 5
  elif name == "letter":
    ds = data_lib.load_uci("letter", seed=0)
    per_class = 10
  else:
    raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
  labeled = data_lib.labeled_unlabeled_split(ds.y_train, num_labeled_per_class=per_class,
                                             seed=0)[0]
  y = np.full(len(ds.y_train), -1)
  y[labeled] = ds.y_train[labeled]
  return np.asarray(ds.x_train, np.float64), y


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--datasets", default=",".join(DATASETS))
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  unknown = sorted(set(args.datasets.split(",")) - set(DATASETS))
  if unknown:
    parser.error(f"unknown --datasets {unknown}; choose from {', '.join(DATASETS)}")
  if args.repeats < 1:
    parser.error("--repeats must be at least 1")
  header = (f"{datetime.datetime.now().isoformat(timespec='seconds')}, jax {jax.__version__}, "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
  print(header)
  print("| dataset | rows | first fit (s) | median fit (s) | steps | ms / step |")
  print("|---|---|---|---|---|---|")
  rows = []
  for name in args.datasets.split(","):
    x, y = dataset(name)
    times, steps = [], []
    for _ in range(args.repeats + 1):
      start = time.perf_counter()
      clf = FlowGMMClassifier(random_state=0).fit(x, y)
      times.append(time.perf_counter() - start)
      steps.append(clf.n_iter_)
    med = statistics.median(times[1:])
    row = {"dataset": name, "rows": len(x), "first_fit_s": times[0], "fit_s": times[1:],
           "median_fit_s": med, "steps": steps[-1], "ms_per_step": 1e3 * med / steps[-1]}
    rows.append(row)
    print(f"| {name} | {len(x)} | {times[0]:.1f} | {med:.1f} | {steps[-1]} | "
          f"{row['ms_per_step']:.2f} |", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"header": header, "repeats": args.repeats, "rows": rows}, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
