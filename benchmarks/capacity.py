"""Flow sizes on the table suite's validation split, and choosing a size by held-out NLL.

    python -m benchmarks.capacity --tables=agnews,pima --seeds=0,1,2,3,4 \\
        --output=benchmarks/results/capacity_a.json
    python -m benchmarks.capacity --summarise benchmarks/results/capacity_*.json

For each table, seed and size (``--sizes``: a JSON dict {name: FlowGMMClassifier
overrides}; default the near-identity "tiny" flow, 2 couplings x 8, against the default
6 x 64), ``FlowGMMClassifier(random_state=seed, **size)`` is fitted on the suite's
``--validation`` split (``benchmarks.ssl_suite.make_split``: the test rows are never
used) and scored on the validation rows. Each fit also records its best held-out NLL: the
number early stopping measures on the held-out unlabelled rows, in nats per row.

"select" is what choosing the size inside ``fit`` by that NLL (the lowest wins) would have
scored: the question issue 22 asks of "capacity from the data". ``--summarise`` merges the
JSON of several runs (e.g. one per core) into one table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

SIZES = {"tiny": {"num_coupling_layers": 2, "hidden_dim": 8}, "default": {}}


def best_heldout_nll(history: list) -> float:
  """The lowest held-out NLL in a fit's ``history_`` (inf when nothing was held out)."""
  nlls = [h["early_stopping/heldout_nll"] for h in history
          if "early_stopping/heldout_nll" in h]
  return float(min(nlls)) if nlls else float("inf")


def select_by_heldout_nll(run: dict, sizes) -> str:
  """The size with the lowest best held-out NLL in one seed's ``run`` ({size: {"nll": ..}});
  ties go to the size listed first."""
  return min(sizes, key=lambda name: run[name]["nll"])


def fit_sizes(table: str, seed: int, sizes: dict) -> dict:
  """{size: {accuracy, nll, steps, seconds}} for one table and seed (validation split)."""
  from benchmarks import ssl_suite
  from flowgmm_jax import FlowGMMClassifier
  x, y = ssl_suite.load_table(table)
  x_train, y_semi, _, x_eval, y_eval = ssl_suite.make_split(
      x, y, seed, ssl_suite.LABELS_PER_CLASS, validation=True)
  run = {"seed": seed}
  for name, params in sizes.items():
    start = time.perf_counter()
    model = FlowGMMClassifier(random_state=seed, **params).fit(x_train, y_semi)
    run[name] = {"accuracy": float(np.mean(model.predict(x_eval) == y_eval)),
                 "nll": best_heldout_nll(model.history_), "steps": int(model.n_iter_),
                 "seconds": time.perf_counter() - start}
  return run


def summarise(results: dict, sizes) -> str:
  """Markdown: validation accuracy (%) per table and size, mean over seeds, then "select"
  and how often it chose each size; the last row is the mean over tables."""
  sizes = list(sizes)
  lines = ["| table | " + " | ".join(sizes) + " | select (held-out NLL) | chosen |",
           "|---|" + "---|" * (len(sizes) + 2)]
  means = {name: [] for name in sizes + ["select"]}
  for table, runs in results.items():
    cells = []
    for name in sizes:
      acc = [r[name]["accuracy"] for r in runs]
      means[name].append(np.mean(acc))
      cells.append(f"{100 * np.mean(acc):.1f} ± {100 * np.std(acc):.1f}")
    chosen = [select_by_heldout_nll(r, sizes) for r in runs]
    selected = [r[c]["accuracy"] for r, c in zip(runs, chosen)]
    means["select"].append(np.mean(selected))
    counts = ", ".join(f"{name} {chosen.count(name)}/{len(runs)}" for name in sizes)
    lines.append(f"| {table} | " + " | ".join(cells) +
                 f" | {100 * np.mean(selected):.1f} ± {100 * np.std(selected):.1f} | {counts} |")
  lines.append("| **mean** | " + " | ".join(f"**{100 * np.mean(means[n]):.2f}**"
                                            for n in sizes + ["select"]) + " | |")
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tables", default="")
  parser.add_argument("--seeds", default="0,1,2,3,4")
  parser.add_argument("--sizes", default=json.dumps(SIZES),
                      help="JSON dict {name: FlowGMMClassifier overrides}")
  parser.add_argument("--output", default="")
  parser.add_argument("--summarise", nargs="*", default=None,
                      help="merge these JSON outputs into one table and exit")
  args = parser.parse_args(argv)
  if args.summarise is not None:
    reports = [json.loads(Path(f).read_text()) for f in args.summarise]
    sizes = reports[0]["sizes"]
    if any(r["sizes"] != sizes for r in reports):
      parser.error("the files were run with different --sizes; merge runs of one set.")
    results = {t: runs for r in reports for t, runs in r["results"].items()}
    print(summarise(results, sizes))
    return {"sizes": sizes, "results": results}
  from benchmarks import ssl_suite
  tables = [t for t in args.tables.split(",") if t] or list(ssl_suite.TABLES)
  unknown = [t for t in tables if t not in ssl_suite.TABLES]
  if unknown:
    parser.error(f"unknown table(s) {unknown}; choose from {', '.join(ssl_suite.TABLES)}.")
  try:
    sizes = json.loads(args.sizes)
  except json.JSONDecodeError as e:
    parser.error(f"--sizes is not JSON ({e}); give a dict such as {json.dumps(SIZES)}.")
  if not isinstance(sizes, dict) or not sizes or not all(isinstance(p, dict)
                                                         for p in sizes.values()):
    parser.error(f"--sizes must be a non-empty JSON dict {{name: {{parameter: value}}}}, "
                 f"such as {json.dumps(SIZES)}.")
  seeds = [int(s) for s in args.seeds.split(",") if s]
  from benchmarks.provenance import provenance
  report = {"provenance": provenance(argv), "sizes": sizes, "seeds": seeds, "results": {}}
  for table in tables:
    report["results"][table] = []
    for seed in seeds:
      run = fit_sizes(table, seed, sizes)
      report["results"][table].append(run)
      print(f"{table} seed {seed}: " + ", ".join(
          f"{n} {100 * run[n]['accuracy']:.1f}% (NLL {run[n]['nll']:.2f})" for n in sizes),
          file=sys.stderr, flush=True)
      if args.output:  # written after every seed: a stopped run keeps what it measured
        Path(args.output).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
  print(summarise(report["results"], sizes))
  return report


if __name__ == "__main__":
  main()
