"""``FlowGMMClassifier()`` (defaults: the table recipe) on two moons, 10 labels, per seed.

    python -m benchmarks.moons --seeds=0,1,2 [--json benchmarks/results/moons.json]

The paper's toy setting: 1000 points of ``flowgmm_jax.data.make_moons`` (seed s), 5
labels per class drawn with ``numpy.random.default_rng(s)``, accuracy on the 1000 fresh
test points of the same generator, ``random_state=s``. Prints accuracy, steps and fit
seconds per seed and the mean; tests/test_estimator.py asserts seed 0 at >= 99%.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def run_seed(seed: int, **params) -> dict:
  from flowgmm_jax import FlowGMMClassifier
  from flowgmm_jax.data import make_moons
  ds = make_moons(num_train=1000, num_test=1000, seed=seed)
  rng = np.random.default_rng(seed)
  y = np.full(len(ds.y_train), -1)
  for c in (0, 1):
    y[rng.permutation(np.flatnonzero(ds.y_train == c))[:5]] = c
  start = time.perf_counter()
  clf = FlowGMMClassifier(random_state=seed, **params).fit(ds.x_train, y)
  seconds = time.perf_counter() - start
  return {"seed": seed, "accuracy": float(clf.score(ds.x_test, ds.y_test)),
          "steps": int(clf.n_iter_), "fit_s": seconds}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  load = os.getloadavg()
  rows = []
  for seed in [int(s) for s in args.seeds.split(",")]:
    rows.append(run_seed(seed))
    r = rows[-1]
    print(f"seed {seed}: {100 * r['accuracy']:.1f}% in {r['steps']} steps, "
          f"{r['fit_s']:.1f} s", flush=True)
  acc = np.array([r["accuracy"] for r in rows])
  print(f"mean {100 * acc.mean():.1f} +- {100 * acc.std():.1f}% over seeds {args.seeds}")
  if args.json:
    from benchmarks.provenance import provenance
    with open(args.json, "w") as f:
      json.dump({"provenance": provenance(argv), "load_average_before": load,
                 "load_average_after": os.getloadavg(), "rows": rows,
                 "mean_accuracy": float(acc.mean()), "std_accuracy": float(acc.std())},
                f, indent=1)
  return rows


if __name__ == "__main__":
  main()
