"""Wall time of ``FlowGMMClassifier().fit`` with its defaults, the number users feel.

    python -m benchmarks.bench_fit                      # all three tables, 3 refits each
    python -m benchmarks.bench_fit --datasets=table20 --repeats=5 --json out.json

Each fit is timed end to end, as a user sees it. The first fit of a process compiles the
model's programs; later fits of the same shapes and settings in the same process reuse
them (the cache in ``training/build.py``), so the first fit and the refits are reported
apart: the second fit, its ratio to the first, and the median of the refits. Also printed:
the optimiser steps taken (``n_iter_``), the wall time per step, and the machine's load
average when the run started (other work on the machine makes every time longer).
  * table20: 1,000 rows x 20 features, two Gaussian classes 1.5 apart in every feature,
    10 labels per class (the rest -1), seed 0.
  * moons: ``make_moons`` 1,000 rows, 5 labels per class (the rest -1), seed 0.
  * letter: the offline UCI letter table (``$FLOWGMM_DATA_DIR``), 10 labels per class.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np

from flowgmm_jax import FlowGMMClassifier
from flowgmm_jax import data as data_lib

DATASETS = ("table20", "moons", "letter")


def dataset(name: str):
  """``(X, y)`` with -1 for the unlabelled rows."""
  if name == "table20":
    rng = np.random.default_rng(0)
    y_true = np.arange(1000) % 2
    x = rng.normal(size=(1000, 20)) + 1.5 * y_true[:, None]
    y = np.full(1000, -1)
    y[:20] = y_true[:20]
    return x, y
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
  load = os.getloadavg()[0]
  header = (f"{datetime.datetime.now().isoformat(timespec='seconds')}, jax {jax.__version__}, "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"load average {load:.2f}")
  print(header)
  print("| dataset | rows | first fit (s) | second fit (s) | second / first | median refit (s) "
        "| steps | ms / step |")
  print("|---|---|---|---|---|---|---|---|")
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
           "second_fit_s": times[1], "second_over_first": times[1] / times[0],
           "median_fit_s": med, "steps": steps[-1], "ms_per_step": 1e3 * med / steps[-1]}
    rows.append(row)
    print(f"| {name} | {len(x)} | {times[0]:.1f} | {times[1]:.2f} | "
          f"{row['second_over_first']:.0%} | {med:.2f} | {steps[-1]} | "
          f"{row['ms_per_step']:.2f} |", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      command = " ".join(["python -m benchmarks.bench_fit",
                          *(sys.argv[1:] if argv is None else argv)])
      json.dump({"header": header, "load_average": load, "command": command,
                 "repeats": args.repeats, "rows": rows}, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
