"""Wall time of ``FlowGMMClassifier().fit`` with its defaults, the number users feel: refits in
one process (default), the README example's fit in new processes with the compilation cache
off, empty and warm (``--new-process``), and one fit per method on a large synthetic table,
with its memory (``--rows``). Commands and what each mode measures: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.provenance import REPO, name_list, provenance, write_json
from benchmarks.report import md_row, md_table

# JAX and the library are imported where a FlowGMM fit needs them: the baselines' child
# processes of --rows never load them.

DATASETS = ("table20", "moons", "letter")
METHODS = ("flowgmm", "selftraining", "labelspreading")
LABELS_PER_CLASS = 10
TEST_ROWS = 10_000


def readme_moons():
  """The README example's ``(X, y_semi, y)``: two moons, 5 labels per class, -1 elsewhere."""
  from sklearn.datasets import make_moons
  X, y = make_moons(n_samples=1000, noise=0.05, random_state=0)
  rng = np.random.default_rng(0)
  y_semi = np.full_like(y, -1)
  for c in (0, 1):
    y_semi[rng.choice(np.flatnonzero(y == c), 5, replace=False)] = c
  return X, y_semi, y


def dataset(name: str):
  """``(X, y)`` with -1 for the unlabelled rows."""
  if name == "table20":
    rng = np.random.default_rng(0)
    y_true = np.arange(1000) % 2
    y = np.where(np.arange(1000) < 20, y_true, -1)
    return rng.normal(size=(1000, 20)) + 1.5 * y_true[:, None], y
  if name == "moons":
    return readme_moons()[:2]
  if name != "letter":
    raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
  from flowgmm_jax import data as data_lib
  ds = data_lib.load_uci("letter", seed=0)
  labeled = data_lib.labeled_unlabeled_split(ds.y_train, num_labeled_per_class=10, seed=0)[0]
  y = np.full(len(ds.y_train), -1)
  y[labeled] = ds.y_train[labeled]
  return np.asarray(ds.x_train, np.float64), y


def synthetic_table(rows: int, features: int, classes: int = 2, seed: int = 0):
  """``(X [rows, D] float64, y [rows] with -1 on all but 10 rows per class, X_test, y_test)``:
  class k's rows are ``N(c_k, I)`` with centres ``c_k ~ N(0, I) * 3 / sqrt(D)`` (the
  classes overlap a little, whatever D), ``TEST_ROWS`` fresh test rows."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, features)) * 3.0 / np.sqrt(features)
  y_all = rng.integers(0, classes, rows + TEST_ROWS)
  x_all = rng.standard_normal((rows + TEST_ROWS, features))
  x_all += centres[y_all]
  y = np.full(rows, -1)
  for k in range(classes):
    y[rng.permutation(np.flatnonzero(y_all[:rows] == k))[:LABELS_PER_CLASS]] = k
  return x_all[:rows], y, x_all[rows:], y_all[rows:]


def _resident_mib() -> float:
  """The current resident set (Linux /proc), else the peak so far, in MiB."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(method: str, rows: int, features: int, classes: int, memory_gb: float) -> dict:
  """One fit in this (child) process; returns its numbers."""
  if method != "flowgmm" and memory_gb > 0:  # JAX reserves address space: never for it
    limit = int(memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  x, y, x_test, y_test = synthetic_table(rows, features, classes)
  data_mib = _resident_mib()
  start = time.perf_counter()
  if method == "flowgmm":
    from flowgmm_jax import FlowGMMClassifier
    model = FlowGMMClassifier(random_state=0).fit(x, y)
    predict, steps = model.predict, int(model.n_iter_)
  else:  # the suite's baselines, as it fits them
    import warnings

    from sklearn.preprocessing import StandardScaler

    from benchmarks.ssl_suite import baseline
    scaler = StandardScaler().fit(x)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      model = baseline(method, 0)[0].fit(scaler.transform(x), y)
    predict, steps = (lambda a: model.predict(scaler.transform(a))), None
  seconds = time.perf_counter() - start
  peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return {"method": method, "rows": rows, "features": features, "classes": classes,
          "fit_s": seconds, "steps": steps, "accuracy": float(np.mean(predict(x_test) == y_test)),
          "data_mib": data_mib, "peak_mib": peak_mib, "fit_mib": peak_mib - data_mib}


def _child_readme_fit() -> dict:
  """The README example's fit in this (new) process: imports, fit and score, timed."""
  t0 = time.perf_counter()
  import jax

  from flowgmm_jax import FlowGMMClassifier
  import_s = time.perf_counter() - t0
  compiles, hits, durations = [], [], {"trace": 0.0, "lower": 0.0}
  events = {"/jax/core/compile/jaxpr_trace_duration": "trace",
            "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower"}

  def on_duration(event, seconds, **kw):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(seconds)
    elif event in events:
      durations[events[event]] += seconds

  jax.monitoring.register_event_duration_secs_listener(on_duration)
  jax.monitoring.register_event_listener(
      lambda event, **kw: hits.append(1) if event == "/jax/compilation_cache/cache_hits" else None)
  X, y_semi, y = readme_moons()
  t0, c0 = time.perf_counter(), time.process_time()
  clf = FlowGMMClassifier(random_state=0).fit(X, y_semi)
  row = {"import_s": import_s, "fit_s": time.perf_counter() - t0,
         "fit_cpu_s": time.process_time() - c0, "steps": int(clf.n_iter_),
         "fit_compiles": len(compiles), "fit_compile_s": sum(compiles),
         "fit_trace_s": durations["trace"], "fit_lower_s": durations["lower"],
         "fit_cache_hits": len(hits), "cache_dir": jax.config.jax_compilation_cache_dir}
  t0 = time.perf_counter()
  row["accuracy"] = clf.score(X, y)
  return {**row, "score_s": time.perf_counter() - t0}


def _run_child(args, **kwargs) -> dict:
  """The JSON that ``python -m benchmarks.bench_fit --child ARGS`` prints last."""
  proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_fit", "--child", *args],
                        capture_output=True, text=True, cwd=REPO, **kwargs)
  lines = proc.stdout.strip().splitlines()
  if proc.returncode or not lines:
    err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"exit {proc.returncode}: {err}")
  return json.loads(lines[-1])


def new_process_fits(repeats: int) -> dict:
  """``repeats`` triples of new processes: cache off, an empty cache, the cache just left."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")
         and k != "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"}
  caches = {"off": "off", "first": "empty temporary", "second": "left by the first"}
  runs = []
  print(md_table(["repeat", "process", "cache", "fit (s)", "fit CPU (s)", "process (s)",
                  "compiles", "compile (s)", "trace + lower (s)", "cache hits", "load before"],
                 []))
  for repeat in range(repeats):
    with tempfile.TemporaryDirectory(prefix="flowgmm-bench-cache-") as cache:
      for which, cache_dir in caches.items():
        load, t0 = os.getloadavg(), time.perf_counter()
        child = _run_child(["readme"], env={
            **env, "FLOWGMM_COMPILATION_CACHE": "off" if which == "off" else cache})
        r = {"repeat": repeat, "process": which, "process_s": time.perf_counter() - t0,
             "load_average_before": load, "load_average_after": os.getloadavg(), **child,
             "cache_dir": cache_dir}
        runs.append(r)
        print(md_row([repeat, which, cache_dir, f"{r['fit_s']:.2f}", f"{r['fit_cpu_s']:.2f}",
                      f"{r['process_s']:.1f}", r["fit_compiles"], f"{r['fit_compile_s']:.2f}",
                      f"{r['fit_trace_s'] + r['fit_lower_s']:.2f}", r["fit_cache_hits"],
                      f"{load[0]:.2f}"]), flush=True)
  summary = {}
  for which in caches:
    for key in ("fit_s", "process_s"):
      v = [r[key] for r in runs if r["process"] == which]
      summary.setdefault(which, {})[f"{key}_mean"] = statistics.mean(v)
      summary[which][f"{key}_std"] = statistics.stdev(v) if len(v) > 1 else 0.0
  ratios = [b["fit_s"] / a["fit_s"] for a, b in zip(runs[1::3], runs[2::3], strict=True)]
  summary["second_over_first_mean"] = statistics.mean(ratios)
  print("; ".join(f"{which}: fit {summary[which]['fit_s_mean']:.2f} +- "
                  f"{summary[which]['fit_s_std']:.2f} s" for which in caches)
        + f"; second / first {summary['second_over_first_mean']:.0%}")
  return {"runs": runs, "summary": summary}


def large_table(args) -> list:
  """Each method's one fit on the synthetic table, each in its own child process."""
  print(f"{args.rows:,} rows x {args.features} features, {args.classes} classes, "
        f"{LABELS_PER_CLASS} labels per class; one fit per method, each in its own process")
  print(md_table(TABLE_HEAD, []))
  rows = []
  for method in args.methods:
    start = time.perf_counter()
    try:
      row = _run_child([method, f"--rows={args.rows}", f"--features={args.features}",
                        f"--classes={args.classes}",
                        f"--baseline-memory-gb={args.baseline_memory_gb}"], timeout=args.timeout)
    except RuntimeError as e:
      row = {"method": method, "failed": str(e)}
    except subprocess.TimeoutExpired:
      row = {"method": method, "failed": f"stopped after {args.timeout} s (--timeout)"}
    row["wall_s"] = time.perf_counter() - start
    rows.append(row)
    print(md_row(table_row(row)), flush=True)
  return rows


TABLE_HEAD = ["method", "fit (s)", "steps", "test accuracy", "data MiB", "peak MiB", "fit MiB"]


def table_row(row: dict) -> list:
  """One method's cells in the ``--rows`` table (its failure, when it did not finish)."""
  if "failed" in row:
    return [row["method"], row["failed"], "", "", "", "", ""]
  return [row["method"], f"{row['fit_s']:.1f}", row["steps"] or "",
          f"{100 * row['accuracy']:.1f}%", f"{row['data_mib']:.0f}", f"{row['peak_mib']:.0f}",
          f"{row['fit_mib']:.0f}"]


def markdown(results: dict) -> str:
  """The table of a ``--rows`` results file (``bench_fit_large.json``)."""
  return md_table(TABLE_HEAD, [table_row(r) for r in results["rows"]])


def _write_json(path, argv, **fields) -> None:
  """``fields`` with the run's provenance to ``path`` (nothing when ``path`` is empty)."""
  if path:
    write_json(path, {"provenance": provenance(argv), **fields})


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--datasets", type=name_list(DATASETS), default=",".join(DATASETS))
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--json", default=None)
  parser.add_argument("--rows", type=int, default=0,
                      help="> 0: one fit per method on a synthetic table of this many rows")
  parser.add_argument("--features", type=int, default=50)
  parser.add_argument("--classes", type=int, default=2)
  parser.add_argument("--methods", type=name_list(METHODS), default="flowgmm",
                      help=f"with --rows: comma-separated, from {', '.join(METHODS)}")
  parser.add_argument("--timeout", type=float, default=900.0,
                      help="with --rows: seconds before a method's child process is stopped")
  parser.add_argument("--baseline-memory-gb", type=float, default=8.0,
                      help="with --rows: the baselines' address-space limit (0 = none)")
  parser.add_argument("--new-process", action="store_true",
                      help="the README example's fit in a new process, cold cache then warm")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:  # one fit in this process, for the parent's --new-process or --rows
    print(json.dumps(_child_readme_fit() if args.child == "readme" else _child(
        args.child, args.rows, args.features, args.classes, args.baseline_memory_gb)))
    return None
  if args.repeats < 1:
    parser.error("--repeats must be at least 1")
  if args.new_process:
    import jax  # noqa: F401 - the provenance records its version and devices
    results = new_process_fits(args.repeats)
    _write_json(args.json, argv, repeats=args.repeats, **results)
    return results
  if args.rows:
    if args.features < 2 or args.classes < 2:
      parser.error("--features and --classes must be at least 2")
    load_before = os.getloadavg()
    rows = large_table(args)
    _write_json(args.json, argv, load_average_before=load_before,
                load_average_after=os.getloadavg(), timeout_s=args.timeout,
                baseline_memory_gb=args.baseline_memory_gb, rows=rows)
    return rows
  from flowgmm_jax import FlowGMMClassifier
  made = provenance(argv)  # before the fits: its load average is the one they started in
  m = made["machine"]
  print(f"{made['date']}, jax {m['jax']}, {m['cpu']}, {m['cores']} cores, load average "
        f"{m['load_average_1min']:.2f}")
  print(md_table(["dataset", "rows", "first fit (s)", "second fit (s)", "second / first",
                  "median refit (s)", "steps", "ms / step"], []))
  rows = []
  for name in args.datasets:
    x, y = dataset(name)
    times = []
    for _ in range(args.repeats + 1):
      start = time.perf_counter()
      steps = FlowGMMClassifier(random_state=0).fit(x, y).n_iter_
      times.append(time.perf_counter() - start)
    med = statistics.median(times[1:])
    rows.append({"dataset": name, "rows": len(x), "first_fit_s": times[0], "fit_s": times[1:],
                 "second_fit_s": times[1], "second_over_first": times[1] / times[0],
                 "median_fit_s": med, "steps": steps, "ms_per_step": 1e3 * med / steps})
    print(md_row([name, len(x), f"{times[0]:.1f}", f"{times[1]:.2f}",
                  f"{times[1] / times[0]:.0%}", f"{med:.2f}", steps,
                  f"{1e3 * med / steps:.2f}"]), flush=True)
  if args.json:
    write_json(args.json, {"provenance": made, "repeats": args.repeats, "rows": rows})
  return rows


if __name__ == "__main__":
  main()
