"""The semi-supervised table suite: FlowGMMClassifier against classical baselines on 15 tables.

    python -m benchmarks.ssl_suite                                  # the README table
    python -m benchmarks.ssl_suite --tables=wine,pima --seeds=0     # a few rows
    python -m benchmarks.ssl_suite --methods=flowgmm --validation   # tuning: no test rows
    python -m benchmarks.ssl_suite --tables=agnews --labels-per-class=50

Protocol, the same for every table, seed and method:

* a stratified 80/20 train/test split of the whole table (``random_state=seed``);
* ``labels_per_class`` (10) labelled rows per class drawn from the train rows with
  ``np.random.default_rng(seed)``; a class with fewer train rows is labelled whole;
* every other train row is unlabelled (``-1``);
* ``FlowGMMClassifier(random_state=seed)`` with its defaults gets the raw rows; every
  baseline gets rows standardised with a ``StandardScaler`` fitted on all train rows.

``--validation`` never looks at the test rows: it splits the train rows once more (75/25,
stratified, ``random_state=seed``), labels rows of the first part and scores on the second.
Defaults are chosen that way.

Tables (``../shared/data`` and scikit-learn's bundled sets; nothing is downloaded): the 11
offline UCI-style tables, AG News as 384-d MiniLM sentence embeddings, and scikit-learn's
``load_wine``, ``load_breast_cancer`` and ``load_digits``.

Output: one markdown table (mean ± std over seeds, population std, and mean fit seconds),
each method's mean over the tables, FlowGMM's wins / ties / losses against the best
baseline of each table (a tie: within one standard deviation, the larger of the two), a
second table of each method's expected calibration error (ECE, 15 equal-width confidence
bins, on the same evaluation rows), and the per-seed numbers as JSON in
``benchmarks/results/`` (``--output``).

``--calibration-folds=F`` (F >= 2) fits FlowGMM as ``FlowGMMClassifier(calibration=
"cross_fit", calibration_folds=F)``: a temperature T fitted on out-of-fold logits of F extra fits, each
with one fold of the labelled rows hidden, within the estimator's bounds, then applied to
the model fitted on every label; the ECE table shows FlowGMM's ECE before -> after, and
the fit seconds include the F extra fits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

# name -> (source, file or loader name, description)
TABLES = {
    "letter": ("npz", "tabular/letterrecognition_mlbench.npz", "UCI Letter"),
    "shuttle": ("npz", "tabular/shuttle_mlbench.npz", "UCI Shuttle"),
    "spambase": ("npz", "tabular/spam_kernlab.npz", "Spambase"),
    "musk": ("npz", "tabular/musk_kernlab.npz", "Musk v1"),
    "pima": ("npz", "tabular/pima_mlbench.npz", "Pima diabetes"),
    "ionosphere": ("npz", "tabular/ionosphere_mlbench.npz", "Ionosphere"),
    "sonar": ("npz", "tabular/sonar_mlbench.npz", "Sonar"),
    "glass": ("npz", "tabular/glass_mlbench.npz", "Glass"),
    "breastcancer": ("npz", "tabular/breastcancer_mlbench.npz", "Breast Cancer (orig.)"),
    "soybean": ("npz", "tabular/soybean_mlbench.npz", "Soybean"),
    "housevotes": ("npz", "tabular/housevotes84_mlbench.npz", "House Votes 84"),
    "agnews": ("npz", "text/agnews_test_minilm_l6_v2.npz", "AG News (MiniLM)"),
    "wine": ("sklearn", "load_wine", "sklearn wine"),
    "breast_cancer": ("sklearn", "load_breast_cancer", "sklearn breast cancer"),
    "digits": ("sklearn", "load_digits", "sklearn digits"),
}
# Each baseline keeps one fixed setting across all tables.
BASELINES = {
    "labelspreading": "LabelSpreading(knn, k=10)",
    "labelspreading_k30": "LabelSpreading(knn, k=30, alpha=0.8)",
    "logreg": "LogisticRegression, labelled rows",
    "selftraining": "SelfTraining(LogisticRegression(), threshold=0.9)",
}
METHODS = {"flowgmm": "FlowGMMClassifier()", **BASELINES,
           "supervised": "LogisticRegression, all labels (ceiling)"}
LABELS_PER_CLASS = 10
TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.25


def load_table(name: str) -> tuple[np.ndarray, np.ndarray]:
  """(x [N, D] float64, y [N] int64 in 0..K-1) of one suite table."""
  if name not in TABLES:
    raise ValueError(f"unknown table {name!r}; choose from {', '.join(TABLES)}.")
  source, where, _ = TABLES[name]
  if source == "sklearn":
    import sklearn.datasets
    bunch = getattr(sklearn.datasets, where)()
    x, y = bunch.data, bunch.target
  else:
    from flowgmm_jax.data.dataset import default_data_dir
    path = Path(default_data_dir()) / where
    if not path.is_file():
      raise FileNotFoundError(
          f"table {name!r} needs {path}; put the offline data folder there or set "
          "FLOWGMM_DATA_DIR to the folder that holds tabular/ and text/.")
    with np.load(path, allow_pickle=False) as f:
      x, y = f["x"], f["y"]
  _, y = np.unique(np.asarray(y), return_inverse=True)
  return np.asarray(x, np.float64), y.astype(np.int64)


def semi_supervised_labels(y: np.ndarray, seed: int, per_class: int) -> np.ndarray:
  """``y`` with all but ``per_class`` random rows of each class set to -1 (a class with
  fewer rows is labelled whole)."""
  rng = np.random.default_rng(seed)
  y_semi = np.full_like(y, -1)
  for c in np.unique(y):
    members = np.flatnonzero(y == c)
    y_semi[rng.permutation(members)[:per_class]] = c
  return y_semi


def make_split(x, y, seed: int, per_class: int, validation: bool):
  """(x_train, y_semi, y_train_true, x_eval, y_eval) for one seed of the protocol."""
  from sklearn.model_selection import train_test_split
  x_train, x_eval, y_train, y_eval = train_test_split(
      x, y, test_size=TEST_FRACTION, stratify=y, random_state=seed)
  if validation:  # score on a part of the train rows; the test rows stay unseen
    x_train, x_eval, y_train, y_eval = train_test_split(
        x_train, y_train, test_size=VALIDATION_FRACTION, stratify=y_train, random_state=seed)
  return x_train, semi_supervised_labels(y_train, seed, per_class), y_train, x_eval, y_eval


def _ece(probs: np.ndarray, classes: np.ndarray, y_eval: np.ndarray) -> float:
  """ECE of ``probs [N, K]`` (columns: ``classes``) against the true ``y_eval [N]``."""
  from flowgmm_jax import evaluation
  correct = classes[np.argmax(probs, axis=1)] == y_eval
  return evaluation.ece_from_confidences(probs.max(axis=1), correct)


def _softmax(log_probs: np.ndarray) -> np.ndarray:
  z = log_probs - log_probs.max(axis=1, keepdims=True)
  p = np.exp(z)
  return p / p.sum(axis=1, keepdims=True)


def run_method(method: str, x_train, y_semi, y_true, x_eval, y_eval, seed: int,
               flowgmm_params: dict, calibration_folds: int = 0) -> dict:
  """Fits one method on one split; returns its accuracy, ECE and fit seconds (and, for
  FlowGMM with ``calibration_folds >= 2``, the cross-fitted temperature and the ECE after
  it; the seconds then include the extra fits)."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.preprocessing import StandardScaler
  start = time.perf_counter()
  extra = {}
  if method == "flowgmm":
    from flowgmm_jax import FlowGMMClassifier
    # With folds, the estimator's own cross-fitted temperature (its bounds included).
    calibrate = dict(calibration="cross_fit", calibration_folds=calibration_folds) if (
        calibration_folds >= 2) else {}
    model = FlowGMMClassifier(random_state=seed, **calibrate, **flowgmm_params).fit(
        x_train, y_semi)
    predict = model.predict
    log_probs = model.predict_log_proba(x_eval)
    if calibrate:
      # log_probs = log_softmax(logits / T); T * log_probs is the uncalibrated logits up to
      # a constant per row, which softmax ignores.
      t = model.temperature_
      extra = {"temperature": t,
               "ece_calibrated": _ece(_softmax(log_probs), model.classes_, y_eval),
               "out_of_fold_accuracy": model.calibration_["out_of_fold_accuracy"],
               "num_out_of_fold": model.calibration_["num_out_of_fold"]}
      log_probs = t * log_probs
    probs = _softmax(log_probs)
  else:
    scaler = StandardScaler().fit(x_train)
    xs = scaler.transform(x_train)
    labeled = y_semi != -1
    with warnings.catch_warnings():
      # Convergence warnings, and LabelSpreading's 0/0 for rows no label reaches.
      warnings.simplefilter("ignore")
      if method.startswith("labelspreading"):
        from sklearn.semi_supervised import LabelSpreading
        kw = dict(n_neighbors=10) if method == "labelspreading" else dict(n_neighbors=30,
                                                                          alpha=0.8)
        model = LabelSpreading(kernel="knn", **kw).fit(xs, y_semi)
      elif method == "logreg":
        model = LogisticRegression(max_iter=1000).fit(xs[labeled], y_semi[labeled])
      elif method == "selftraining":
        from sklearn.semi_supervised import SelfTrainingClassifier
        model = SelfTrainingClassifier(LogisticRegression(max_iter=1000),
                                       threshold=0.9).fit(xs, y_semi)
      elif method == "supervised":
        model = LogisticRegression(max_iter=1000).fit(xs, y_true)
      else:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}.")
      probs = model.predict_proba(scaler.transform(x_eval))
    # LabelSpreading leaves rows that no label reaches at 0/0 = NaN: no confidence.
    probs = np.nan_to_num(probs, nan=0.0)
    def predict(x):
      return model.predict(scaler.transform(x))
  seconds = time.perf_counter() - start
  accuracy = float(np.mean(predict(x_eval) == y_eval))
  return {"accuracy": accuracy, "ece": _ece(probs, model.classes_, y_eval),
          "seconds": seconds, **extra}


def summarise(results: dict, tables, methods) -> tuple[str, dict]:
  """The markdown table and the summary numbers (means, wins / ties / losses)."""
  def stats(runs):
    acc = 100 * np.array([r["accuracy"] for r in runs])
    return acc.mean(), acc.std(), float(np.mean([r["seconds"] for r in runs]))

  header = "| table | rows × features, classes | " + " | ".join(METHODS[m] for m in methods) + " |"
  lines = [header, "|---|---|" + "---|" * len(methods)]
  per_method_means = {m: [] for m in methods}
  record = {"win": [], "tie": [], "loss": []}
  for table in tables:
    info = results[table]["info"]
    cells, table_stats = [], {}
    for m in methods:
      mean, std, secs = stats(results[table][m])
      table_stats[m] = (mean, std)
      per_method_means[m].append(mean)
      cells.append(f"{mean:.1f} ± {std:.1f} ({secs:.1f} s)")
    baselines = [m for m in methods if m in BASELINES]
    if "flowgmm" in methods and baselines:
      best = max(baselines, key=lambda m: table_stats[m][0])
      (fm, fs), (bm, bs) = table_stats["flowgmm"], table_stats[best]
      if abs(fm - bm) <= max(fs, bs):
        outcome = "tie"
      else:
        outcome = "win" if fm > bm else "loss"
      record[outcome].append(table)
      bold = methods.index("flowgmm")
      if outcome != "loss":
        cells[bold] = f"**{cells[bold]}**"
    lines.append(f"| {TABLES[table][2]} | {info['rows']} × {info['features']}, "
                 f"{info['classes']} | " + " | ".join(cells) + " |")
  lines.append("| **mean over tables** | | " + " | ".join(
      f"**{np.mean(per_method_means[m]):.1f}**" for m in methods) + " |")
  summary = {"mean_accuracy": {m: float(np.mean(v)) for m, v in per_method_means.items()},
             "flowgmm_vs_best_baseline": record}
  text = "\n".join(lines)
  if "flowgmm" in methods and any(m in BASELINES for m in methods):
    text += (f"\n\nFlowGMM against the best baseline of each table (tie: within one std): "
             f"{len(record['win'])} wins, {len(record['tie'])} ties, {len(record['loss'])} "
             f"losses" + (f" ({', '.join(record['loss'])})" if record["loss"] else "") + ".")
  return text, summary


def markdown(report: dict) -> str:
  """The table of a results file written by ``main`` (``benchmarks.report`` renders it)."""
  results = report["results"]
  tables = [t for t in TABLES if t in results]
  methods = [m for m in METHODS if any(m in results[t] for t in tables)]
  text, _ = summarise(results, tables, methods)
  seeds = ",".join(map(str, report["seeds"]))
  return (f"{report['split'].capitalize()} accuracy (%), mean ± std (population std) over seeds "
          f"{seeds}, {report['labels_per_class']} labels per class; mean fit seconds in "
          f"brackets.\n\n{text}")


def summarise_ece(results: dict, tables, methods) -> str:
  """The markdown table of ECE (mean ± std over seeds; FlowGMM's before -> after when the
  runs were calibrated) and each method's mean over the tables."""
  def mean_std(runs, key):
    v = np.array([r[key] for r in runs])
    return v.mean(), v.std()

  lines = ["| table | " + " | ".join(METHODS[m] for m in methods) + " |",
           "|---|" + "---|" * len(methods)]
  means = {m: [] for m in methods}
  calibrated = []
  for table in tables:
    cells = []
    for m in methods:
      runs = results[table][m]
      mean, std = mean_std(runs, "ece")
      means[m].append(mean)
      cell = f"{mean:.3f} ± {std:.3f}"
      if all("ece_calibrated" in r for r in runs):
        after, after_std = mean_std(runs, "ece_calibrated")
        calibrated.append(after)
        cell += f" → {after:.3f} ± {after_std:.3f}"
      cells.append(cell)
    lines.append(f"| {TABLES[table][2]} | " + " | ".join(cells) + " |")
  row = []
  for m in methods:
    cell = f"**{np.mean(means[m]):.3f}**"
    if m == "flowgmm" and len(calibrated) == len(tables):
      cell += f" → **{np.mean(calibrated):.3f}**"
    row.append(cell)
  lines.append("| **mean over tables** | " + " | ".join(row) + " |")
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tables", default=",".join(TABLES))
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--seeds", default="0,1,2,3,4")
  parser.add_argument("--labels-per-class", type=int, default=LABELS_PER_CLASS)
  parser.add_argument("--validation", action="store_true",
                      help="score on a split of the train rows, never on the test rows")
  parser.add_argument("--calibration-folds", type=int, default=0,
                      help="F >= 2: also fit FlowGMM's temperature by F-fold cross-fitting "
                           "over the labelled rows and report its ECE after (F extra fits)")
  parser.add_argument("--flowgmm-params", default="{}",
                      help="JSON dict of FlowGMMClassifier overrides (for tuning)")
  parser.add_argument("--output", default=None,
                      help="JSON file for the per-seed numbers (default: benchmarks/results/"
                           "ssl_suite[_validation][_lpcN].json)")
  args = parser.parse_args(argv)
  tables = [t for t in args.tables.split(",") if t]
  methods = [m for m in args.methods.split(",") if m]
  seeds = [int(s) for s in args.seeds.split(",") if s]
  for kind, allowed, given in (("table", TABLES, tables), ("method", METHODS, methods)):
    unknown = [g for g in given if g not in allowed]
    if unknown:
      parser.error(f"unknown {kind}(s) {unknown}; choose from {', '.join(allowed)}.")
  if args.labels_per_class < 1:
    parser.error("--labels-per-class must be >= 1.")
  if args.calibration_folds == 1 or args.calibration_folds < 0:
    parser.error("--calibration-folds must be 0 (off) or >= 2.")
  flowgmm_params = json.loads(args.flowgmm_params)

  results = {}
  for table in tables:
    x, y = load_table(table)
    results[table] = {"info": {"rows": int(x.shape[0]), "features": int(x.shape[1]),
                               "classes": int(y.max() + 1)}}
    for m in methods:
      results[table][m] = []
    for seed in seeds:
      split = make_split(x, y, seed, args.labels_per_class, args.validation)
      for m in methods:
        run = run_method(m, *split, seed, flowgmm_params, args.calibration_folds)
        run["seed"] = seed
        results[table][m].append(run)
        calibrated = (f", ECE {run['ece']:.3f} -> {run['ece_calibrated']:.3f} at T = "
                      f"{run['temperature']:.2f}" if "temperature" in run else
                      f", ECE {run['ece']:.3f}")
        print(f"{table} {m} seed {seed}: {100 * run['accuracy']:.1f}%{calibrated} "
              f"({run['seconds']:.1f} s)", file=sys.stderr, flush=True)

  text, summary = summarise(results, tables, methods)
  ece_text = summarise_ece(results, tables, methods)
  split_name = "validation" if args.validation else "test"
  print(f"{split_name} accuracy (%), mean ± std over seeds {','.join(map(str, seeds))}, "
        f"{args.labels_per_class} labels per class; mean fit seconds in brackets\n")
  print(text)
  print(f"\n{split_name} ECE (15 bins)" + (
      f", FlowGMM before -> after a temperature cross-fitted over {args.calibration_folds} "
      "folds of the labelled rows" if args.calibration_folds else "") + "\n")
  print(ece_text)
  import jax
  from benchmarks.provenance import provenance
  report = {"provenance": provenance(argv), "split": split_name,
            "labels_per_class": args.labels_per_class, "seeds": seeds,
            "flowgmm_params": flowgmm_params, "calibration_folds": args.calibration_folds,
            "summary": summary, "results": results,
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                        "jax_backend": jax.default_backend(), "jax_version": jax.__version__},
            "markdown": text, "markdown_ece": ece_text}
  output = args.output
  if output is None:
    suffix = ("_validation" if args.validation else "") + (
        f"_lpc{args.labels_per_class}" if args.labels_per_class != LABELS_PER_CLASS else "")
    output = REPO / "benchmarks" / "results" / f"ssl_suite{suffix}.json"
  output = Path(output)
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
  return report


if __name__ == "__main__":
  main()
