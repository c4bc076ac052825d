"""scikit-learn's estimator checks on ``FlowGMMClassifier``, every one, with its time.

    python -m benchmarks.sklearn_checks [--json benchmarks/results/sklearn_checks.json]

Runs ``sklearn.utils.estimator_checks.estimator_checks_generator`` (the list
``check_estimator`` runs) on the smallest FlowGMM (tests/test_estimator.py's
``CHECKS_FLOW``), each check alone, and prints one line per check: passed / failed /
skipped / xfail (``flowgmm_jax.estimator.EXPECTED_FAILED_CHECKS``, failing by design) and
seconds. Most of the time is compiling the flow for each check's own data shapes, which is
why the test suite runs only a subset (``SKLEARN_CHECKS`` there).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

# The flow the checks fit (the same as tests/test_estimator.py's CHECKS_FLOW).
CHECKS_FLOW = dict(num_coupling_layers=1, hidden_dim=8, num_train_steps=5,
                   unlabeled_batch_size=16, holdout_fraction=0.0)


def run_checks() -> list:
  from sklearn.utils.estimator_checks import estimator_checks_generator
  from flowgmm_jax import FlowGMMClassifier
  from flowgmm_jax.estimator import EXPECTED_FAILED_CHECKS
  rows = []
  for estimator, check in estimator_checks_generator(
      FlowGMMClassifier(random_state=0, **CHECKS_FLOW), legacy=True):
    name = getattr(check, "func", check).__name__
    start = time.perf_counter()
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      try:
        check(estimator)
        status, message = "passed", ""
      except Exception as e:  # noqa: BLE001 - every outcome is reported
        status = "skipped" if type(e).__name__ == "SkipTest" else "failed"
        message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    if status == "failed" and name in EXPECTED_FAILED_CHECKS:
      status, message = "xfail", EXPECTED_FAILED_CHECKS[name]
    rows.append({"check": name, "status": status, "seconds": time.perf_counter() - start,
                 "message": message})
    print(f"{rows[-1]['seconds']:7.1f} s  {status:8s} {name}  {message[:100]}", flush=True)
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--json", default="", help="write the results (with provenance) here")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  rows = run_checks()
  counts = {s: sum(r["status"] == s for r in rows)
            for s in ("passed", "failed", "xfail", "skipped")}
  total = time.perf_counter() - start
  print(f"{len(rows)} checks: {counts}; {total:.0f} s")
  if args.json:
    from benchmarks.provenance import provenance
    with open(args.json, "w") as f:
      json.dump({"provenance": provenance(argv), "flow": CHECKS_FLOW, "counts": counts,
                 "seconds": total, "checks": rows}, f, indent=1)
  return counts


if __name__ == "__main__":
  main()
