"""The README's one results table: a row per kind of data, each computed from its own results
file (``benchmarks/results/headline.json`` lists the rows; what each kind picks from its file:
benchmarks/README.md).
"""

from __future__ import annotations

import json

import numpy as np

from benchmarks.provenance import REPO
from benchmarks.report import md_table


def _mean_std(values) -> str:
  v = 100 * np.asarray(values, np.float64)
  return f"{v.mean():.1f} ± {v.std():.1f}"


def _toy(results, row) -> str:
  r = next(r for r in results["rows"] if r["dataset"] == row["dataset"])
  return f"{_mean_std(r['accuracy'])}% (seeds {', '.join(map(str, r['seeds']))})"


def _ssl_suite(results, row) -> str:
  from benchmarks.ssl_suite import METHODS, best_single
  per_table = results["results"]
  tables = [row["table"]] if "table" in row else sorted(per_table)
  best = best_single(per_table, tables)[1]

  def cell(method: str, mean: float) -> str:
    """The mean with its spread over the seeds (of the mean over the tables, per seed)."""
    per_seed = np.mean([[r["accuracy"] for r in per_table[t][method]] for t in tables], axis=0)
    return f"{mean:.1f} ± {100 * np.std(per_seed):.1f}"

  flowgmm = (f"FlowGMM {cell('flowgmm', best['flowgmm_mean'])}%" if "flowgmm_mean" in best
             else "FlowGMM not run yet")
  seeds = ", ".join(map(str, results["seeds"]))
  over = f"mean over {len(tables)} tables (± over seeds): " if len(tables) > 1 else ""
  below = best.get("tables_more_than_margin_below_their_best")
  if below is None or len(tables) == 1:
    below = ""
  else:
    one = len(below) == 1
    below = (f"; {len(below)} table{'' if one else 's'} more than {best['margin']:g} points "
             f"below {'its' if one else 'their'} best method")
  return (f"{over}{flowgmm}, best single method ({METHODS[best['method']]}) "
          f"{cell(best['method'], best['mean_accuracy'])}%{below} (seeds {seeds})")


def _mnist_seeds(results, row) -> str:
  runs = results["runs"]
  # The final test metrics: the last evaluation, or with a validation split the test
  # evaluation of the final checkpoint.
  acc = [r.get("test", r["evals"][-1])["eval/accuracy"] for r in runs]
  minutes = [r["wall_s"] / 60 for r in runs]
  where = row.get("machine", "one core")
  if len(runs) == 1:  # no spread to report
    return (f"{100 * acc[0]:.1f}% (seed {runs[0]['seed']} only; {minutes[0]:.0f} min on "
            f"{where})")
  seeds = ", ".join(str(r["seed"]) for r in runs)
  return (f"{_mean_std(acc)}% (seeds {seeds}; {min(minutes):.0f}-{max(minutes):.0f} min a "
          f"run on {where})")


_KINDS = {"toy": _toy, "ssl_suite": _ssl_suite, "mnist_seeds": _mnist_seeds}


def _results(files) -> dict:
  """One results file, or a list of ssl_suite files (disjoint tables, the same seeds) read
  as one: the 25 tables of both panels together."""
  if isinstance(files, str):
    return json.loads((REPO / files).read_text())
  parts = [json.loads((REPO / f).read_text()) for f in files]
  if any(p["seeds"] != parts[0]["seeds"] for p in parts):
    raise ValueError(f"{files} were run on different seeds; rerun them on the same ones.")
  return {"seeds": parts[0]["seeds"],
          "results": {t: r for p in parts for t, r in p["results"].items()}}


def markdown(headline: dict) -> str:
  rows = [[row["data"], row["labels"], _KINDS[row["kind"]](_results(row["results"]), row),
           f"[{row['section']}]({row['link']})"] for row in headline["rows"]]
  return md_table(["data", "labels", "test accuracy, mean ± std", "details"], rows)
