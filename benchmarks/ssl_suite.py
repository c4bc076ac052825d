"""The semi-supervised table suite: FlowGMMClassifier against classical baselines. Commands,
flags and output: benchmarks/README.md; the protocol: docs/results.md, "Tables".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.provenance import REPO, int_list, name_list, provenance, write_json
from benchmarks.report import md_table

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
# The second panel: ten spreadsheets of numeric, integer and one-hot columns (the data
# README says which column came from which raw column); none of them tuned any default.
MIXED_TABLES = {
    "credit": ("npz", "tabular/credit_modeldata.npz", "Credit scoring (modeldata)"),
    "creditcard": ("npz", "tabular/creditcard_aer.npz", "Credit card (AER)"),
    "gsoep9402": ("npz", "tabular/gsoep9402_aer.npz", "GSOEP 94-02 school (AER)"),
    "oj": ("npz", "tabular/oj_islr.npz", "Orange juice (ISLR)"),
    "cps1985": ("npz", "tabular/cps1985_aer.npz", "CPS 1985 occupation (AER)"),
    "yrbss": ("npz", "tabular/yrbss_openintro.npz", "YRBSS (openintro)"),
    "kershaw": ("npz", "tabular/kershaw_stat2data.npz", "Kershaw pitches (Stat2Data)"),
    "hi": ("npz", "tabular/hi_ecdat.npz", "Health insurance (Ecdat)"),
    "rotterdam": ("npz", "tabular/rotterdam_survival.npz", "Rotterdam (survival)"),
    "salaries": ("npz", "tabular/salaries_cardata.npz", "Salaries (carData)"),
}
PANELS = {"suite": TABLES, "mixed": MIXED_TABLES}
ALL_TABLES = {**TABLES, **MIXED_TABLES}
FOREST_TREES = 300
# Each baseline keeps one fixed setting across all tables.
BASELINES = {
    "labelspreading": "LabelSpreading(knn, k=10)",
    "labelspreading_k30": "LabelSpreading(knn, k=30, alpha=0.8)",
    "logreg": "LogisticRegression, labelled rows",
    "selftraining": "SelfTraining(LogisticRegression(), threshold=0.9)",
    "random_forest": f"RandomForest({FOREST_TREES}), labelled rows",
    "svm_rbf": "SVC(RBF), labelled rows",
    "nearest_neighbour": "1-NN, labelled rows",
    "selftraining_rf": f"SelfTraining(RandomForest({FOREST_TREES}))",
    "selftraining_hgb": "SelfTraining(HistGradientBoosting())",
}
METHODS = {"flowgmm": "FlowGMMClassifier()",
           "flowgmm_flow_only": "FlowGMMClassifier(forest_weight=0), the flow alone",
           # What the unlabelled rows add to the flow: without them, and with every label.
           "flowgmm_labelled_only": "the flow alone, on the labelled rows only",
           "flowgmm_all_labels": "the flow alone, every training row labelled", **BASELINES,
           "supervised": "LogisticRegression, all labels (ceiling)"}
DEFAULT_METHODS = [m for m in METHODS if m not in ("flowgmm_labelled_only", "flowgmm_all_labels")]
LABELS_PER_CLASS = 10
TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.25


def load_table(name: str) -> tuple[np.ndarray, np.ndarray]:
  """(x [N, D] float64, y [N] int64 in 0..K-1) of one suite table."""
  if name not in ALL_TABLES:
    raise ValueError(f"unknown table {name!r}; choose from {', '.join(ALL_TABLES)}.")
  source, where, _ = ALL_TABLES[name]
  if source == "sklearn":
    import sklearn.datasets
    x, y = getattr(sklearn.datasets, where)(return_X_y=True)
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


def baseline(method: str, seed: int):
  """(unfitted estimator, whether it takes the unlabelled rows as -1) of one baseline;
  every setting is scikit-learn's default unless named in ``METHODS``."""
  from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
  from sklearn.linear_model import LogisticRegression
  from sklearn.neighbors import KNeighborsClassifier
  from sklearn.semi_supervised import LabelSpreading, SelfTrainingClassifier
  from sklearn.svm import SVC
  def forest():
    return RandomForestClassifier(FOREST_TREES, random_state=seed, n_jobs=1)
  models = {
      "labelspreading": lambda: (LabelSpreading(kernel="knn", n_neighbors=10), True),
      "labelspreading_k30": lambda: (LabelSpreading(kernel="knn", n_neighbors=30, alpha=0.8),
                                     True),
      "logreg": lambda: (LogisticRegression(max_iter=1000), False),
      "selftraining": lambda: (SelfTrainingClassifier(LogisticRegression(max_iter=1000),
                                                      threshold=0.9), True),
      "random_forest": lambda: (forest(), False),
      # probability=True: Platt scaling by libsvm's internal cross-validation, for the ECE
      # only; predict() stays the decision function's argmax.
      "svm_rbf": lambda: (SVC(kernel="rbf", probability=True, random_state=seed), False),
      "nearest_neighbour": lambda: (KNeighborsClassifier(n_neighbors=1), False),
      "selftraining_rf": lambda: (SelfTrainingClassifier(forest()), True),
      "selftraining_hgb": lambda: (SelfTrainingClassifier(
          HistGradientBoostingClassifier(random_state=seed)), True),
      "supervised": lambda: (LogisticRegression(max_iter=1000), False),
  }
  if method not in models:
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}.")
  return models[method]()


def run_method(method: str, x_train, y_semi, y_true, x_eval, y_eval, seed: int,
               flowgmm_params: dict, calibration_folds: int = 0) -> dict:
  """One method's accuracy, ECE and fit seconds on one split (with ``calibration_folds >=
  2``, FlowGMM's cross-fitted temperature and ECE after it, its seconds those of every fit)."""
  import threadpoolctl
  from scipy.special import softmax
  from sklearn.preprocessing import StandardScaler
  start = time.perf_counter()
  extra = {}
  if method.startswith("flowgmm"):
    from flowgmm_jax import FlowGMMClassifier
    # With folds, the estimator's own cross-fitted temperature (its bounds included), of
    # the flow alone: the rescaling below holds for the flow's softmax only.
    calibrate = dict(calibration="cross_fit", calibration_folds=calibration_folds,
                     forest_weight=0.0) if calibration_folds >= 2 else {}
    alone = {} if method == "flowgmm" else {"forest_weight": 0.0}
    x_fit, y_fit = {"flowgmm_labelled_only": (x_train[y_semi != -1], y_semi[y_semi != -1]),
                    "flowgmm_all_labels": (x_train, y_true)}.get(method, (x_train, y_semi))
    model = FlowGMMClassifier(random_state=seed, **{**flowgmm_params, **calibrate, **alone}).fit(
        x_fit, y_fit)
    predict = model.predict
    log_probs = model.predict_log_proba(x_eval)
    if calibrate:
      # log_probs = log_softmax(logits / T); T * log_probs is the uncalibrated logits up to
      # a constant per row, which softmax ignores.
      t = model.temperature_
      extra = {"temperature": t,
               "ece_calibrated": _ece(softmax(log_probs, axis=1), model.classes_, y_eval),
               "out_of_fold_accuracy": model.calibration_["out_of_fold_accuracy"],
               "num_out_of_fold": model.calibration_["num_out_of_fold"]}
      log_probs = t * log_probs
    probs = softmax(log_probs, axis=1)
  else:
    scaler = StandardScaler().fit(x_train)
    xs = scaler.transform(x_train)
    labeled = y_semi != -1
    # One thread for every baseline (OpenMP, BLAS): gradient boosting's OpenMP loops on
    # a few hundred rows run many times slower with threads on a busy machine, and one
    # thread makes the baselines' fit seconds comparable across tables and runs.
    with warnings.catch_warnings(), threadpoolctl.threadpool_limits(1):
      # Convergence warnings, and LabelSpreading's 0/0 for rows no label reaches.
      warnings.simplefilter("ignore")
      model, semi_supervised = baseline(method, seed)
      if method == "supervised":
        model.fit(xs, y_true)
      elif semi_supervised:
        model.fit(xs, y_semi)
      else:
        model.fit(xs[labeled], y_semi[labeled])
      probs = model.predict_proba(scaler.transform(x_eval))
    # LabelSpreading leaves rows that no label reaches at 0/0 = NaN: no confidence.
    probs = np.nan_to_num(probs, nan=0.0)
    def predict(x):
      return model.predict(scaler.transform(x))
  seconds = time.perf_counter() - start
  accuracy = float(np.mean(predict(x_eval) == y_eval))
  return {"accuracy": accuracy, "ece": _ece(probs, model.classes_, y_eval),
          "seconds": seconds, **extra}


def _accuracy(results: dict, table: str, method: str):
  """(mean, population std) of a method's accuracy (%) over the seeds, or None if not run."""
  runs = results[table].get(method)
  if not runs:
    return None
  acc = 100 * np.array([r["accuracy"] for r in runs])
  return float(acc.mean()), float(acc.std())


def summarise(results: dict, tables, methods) -> tuple[str, dict]:
  """(markdown, numbers): accuracies, means over the tables, wins / ties / losses and the
  best single method; a method run on only some tables shows "—" and has no mean."""
  rows = []
  complete = [m for m in methods if all(_accuracy(results, t, m) for t in tables)]
  record = {"win": [], "tie": [], "loss": []}
  for table in tables:
    info = results[table]["info"]
    cells = []
    for m in methods:
      stats = _accuracy(results, table, m)
      secs = np.mean([r["seconds"] for r in results[table].get(m, [])] or [0.0])
      cells.append(f"{stats[0]:.1f} ± {stats[1]:.1f} ({secs:.1f} s)" if stats else "—")
    baselines = [m for m in methods if m in BASELINES and _accuracy(results, table, m)]
    if "flowgmm" in complete and baselines:
      best = max(baselines, key=lambda m: _accuracy(results, table, m)[0])
      (fm, fs), (bm, bs) = _accuracy(results, table, "flowgmm"), _accuracy(results, table, best)
      outcome = "tie" if abs(fm - bm) <= max(fs, bs) else ("win" if fm > bm else "loss")
      record[outcome].append(table)
      if outcome != "loss":
        cells[methods.index("flowgmm")] = f"**{cells[methods.index('flowgmm')]}**"
    rows.append([ALL_TABLES[table][2],
                 f"{info['rows']} × {info['features']}, {info['classes']}", *cells])
  means = {m: float(np.mean([_accuracy(results, t, m)[0] for t in tables])) for m in complete}
  rows.append(["**mean over tables**", "",
               *(f"**{means[m]:.1f}**" if m in means else "—" for m in methods)])
  summary = {"mean_accuracy": means, "flowgmm_vs_best_baseline": record,
             "best_single_method": best_single(results, tables)[1]}
  text = md_table(["table", "rows × features, classes", *(METHODS[m] for m in methods)], rows)
  if "flowgmm" in complete and any(m in BASELINES for m in methods):
    text += (f"\n\nFlowGMM against the best baseline of each table (tie: within one std): "
             f"{len(record['win'])} wins, {len(record['tie'])} ties, {len(record['loss'])} "
             f"losses" + (f" ({', '.join(record['loss'])})" if record["loss"] else "") + ".")
  return text, summary


def best_single(results: dict, tables, margin: float = 4.0) -> tuple[str, dict]:
  """(markdown, numbers): each table's best baseline, the best single baseline (the highest
  mean of those run on every table; never the supervised ceiling) and FlowGMM against both,
  and one more comparison on the tables every baseline ran on when some ran on fewer."""
  def ran(m, t):
    return _accuracy(results, t, m) is not None
  candidates = [m for m in BASELINES if all(ran(m, t) for t in tables)]
  if not candidates:
    return "", {}
  has_flowgmm = all(ran("flowgmm", t) for t in tables)

  def compare(subset, methods):
    means = {m: float(np.mean([_accuracy(results, t, m)[0] for t in subset])) for m in methods}
    single = max(methods, key=means.get)
    text = f"**{METHODS[single]}, {means[single]:.1f}**."
    numbers = {"method": single, "mean_accuracy": means[single]}
    if has_flowgmm:
      fmean = float(np.mean([_accuracy(results, t, "flowgmm")[0] for t in subset]))
      numbers.update(flowgmm_mean=fmean, flowgmm_minus_best_single=fmean - means[single])
      text += f" FlowGMM {fmean:.1f} ({fmean - means[single]:+.1f})."
    return text, numbers

  rows, per_table, below = [], {}, []
  for t in tables:
    best = max((m for m in BASELINES if ran(m, t)), key=lambda m: _accuracy(results, t, m)[0])
    bm = _accuracy(results, t, best)[0]
    per_table[t] = {"method": best, "accuracy": bm}
    flow = gap = "not run yet"
    if has_flowgmm:
      fm = _accuracy(results, t, "flowgmm")[0]
      per_table[t]["flowgmm"] = fm
      flow, gap = f"{fm:.1f}", f"{fm - bm:+.1f}"
      if fm < bm - margin:
        below.append(t)
    rows.append([ALL_TABLES[t][2], METHODS[best], f"{bm:.1f}", flow, gap])
  text, summary = compare(tables, candidates)
  text = (f"Best single method over these {len(tables)} tables (highest mean of one fixed "
          f"method): {text}")
  summary["per_table"] = per_table
  if has_flowgmm:
    summary.update(tables_more_than_margin_below_their_best=below, margin=margin)
    text += (f" Tables more than {margin:g} points below their best method: {len(below)}"
             + (f" ({', '.join(below)})" if below else "") + ".")
  else:
    text += (" FlowGMM has not been run on these tables yet; `--methods=flowgmm --merge` "
             "with this file's panel adds its column and these comparisons.")
  every = [t for t in tables if all(ran(m, t) for m in BASELINES)]
  if every and len(every) < len(tables):
    part, summary["on_tables_with_every_baseline"] = compare(every, list(BASELINES))
    summary["on_tables_with_every_baseline"]["tables"] = every
    missing = [t for t in tables if t not in every]
    text += (f" On the {len(every)} tables every baseline has run on (not yet on "
             f"{', '.join(missing)}): {part}")
  head = ["table", "best method on the table", "its accuracy", "FlowGMM", "FlowGMM − best"]
  return text + "\n\n" + md_table(head, rows), summary


def markdown(report: dict) -> str:
  """The tables of a results file written by ``main`` (``benchmarks.report`` renders it):
  accuracy of every method, then each table's best method and the best single method."""
  results = report["results"]
  tables = [t for t in ALL_TABLES if t in results]
  methods = [m for m in METHODS if any(m in results[t] for t in tables)]
  text, _ = summarise(results, tables, methods)
  # The best of one baseline is no comparison (a study file with a single baseline).
  several = len(tables) > 1 and sum(m in BASELINES for m in methods) > 1
  best_text = best_single(results, tables)[0] if several else ""
  seeds = ",".join(map(str, report["seeds"]))
  return (f"{report['split'].capitalize()} accuracy (%), mean ± std (population std) over seeds "
          f"{seeds}, {report['labels_per_class']} labels per class; mean fit seconds in "
          f"brackets.\n\n{text}" + (f"\n\n{best_text}" if best_text else ""))


def summarise_ece(results: dict, tables, methods) -> str:
  """The markdown table of ECE (mean ± std over seeds; FlowGMM's before -> after when the
  runs were calibrated) and each method's mean over the tables."""
  rows, means, calibrated = [], {m: [] for m in methods}, []
  for table in tables:
    cells = []
    for m in methods:
      runs = results[table].get(m)
      if not runs:  # a method merged in on other tables only
        cells.append("—")
        continue
      ece = np.array([r["ece"] for r in runs])
      means[m].append(ece.mean())
      cells.append(f"{ece.mean():.3f} ± {ece.std():.3f}")
      if all("ece_calibrated" in r for r in runs):
        after = np.array([r["ece_calibrated"] for r in runs])
        calibrated.append(after.mean())
        cells[-1] += f" → {after.mean():.3f} ± {after.std():.3f}"
    rows.append([ALL_TABLES[table][2], *cells])
  row = [f"**{np.mean(means[m]):.3f}**" if len(means[m]) == len(tables) else "—"
         for m in methods]
  if "flowgmm" in methods and len(calibrated) == len(tables):
    row[methods.index("flowgmm")] += f" → **{np.mean(calibrated):.3f}**"
  rows.append(["**mean over tables**", *row])
  return md_table(["table", *(METHODS[m] for m in methods)], rows)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--panel", default="suite", choices=list(PANELS),
                      help="suite: the 15 tables; mixed: the 10 spreadsheets of mixed columns")
  parser.add_argument("--tables", type=name_list(ALL_TABLES), help="default: the panel's")
  parser.add_argument("--methods", type=name_list(METHODS), default=",".join(DEFAULT_METHODS))
  parser.add_argument("--baselines-only", action="store_true", help="no FlowGMM fit")
  parser.add_argument("--merge", action="store_true",
                      help="add this run's methods to the output file's other methods "
                           "(same split, seeds and labels), each keeping its provenance")
  parser.add_argument("--seeds", type=int_list, default="0,1,2,3,4")
  parser.add_argument("--labels-per-class", type=int, default=LABELS_PER_CLASS)
  parser.add_argument("--validation", action="store_true",
                      help="score on a split of the train rows, never on the test rows")
  parser.add_argument("--calibration-folds", type=int, default=0,
                      help="F >= 2: also fit FlowGMM's temperature by F-fold cross-fitting "
                           "over the labelled rows and report its ECE after (F extra fits)")
  parser.add_argument("--flowgmm-params", default="{}", help="JSON of FlowGMMClassifier overrides")
  parser.add_argument("--output", default=None,
                      help="JSON file for the per-seed numbers (default: benchmarks/results/"
                           "ssl_suite[_mixed][_validation][_lpcN].json)")
  args = parser.parse_args(argv)
  tables, seeds = args.tables or list(PANELS[args.panel]), args.seeds
  methods = [m for m in args.methods if not (args.baselines_only and m.startswith("flowgmm"))]
  if args.labels_per_class < 1 or args.calibration_folds == 1 or args.calibration_folds < 0:
    parser.error("--labels-per-class must be >= 1 and --calibration-folds 0 (off) or >= 2.")
  flowgmm_params = json.loads(args.flowgmm_params)
  split_name = "validation" if args.validation else "test"
  suffix = ("_mixed" if args.panel == "mixed" else "") + (
      "_validation" if args.validation else "") + (
      f"_lpc{args.labels_per_class}" if args.labels_per_class != LABELS_PER_CLASS else "")
  output = Path(args.output or REPO / "benchmarks" / "results" / f"ssl_suite{suffix}.json")
  run_provenance = provenance(argv)
  previous = {}
  if args.merge and output.is_file():
    previous = json.loads(output.read_text())
    same = (previous.get("split"), previous.get("seeds"), previous.get("labels_per_class"))
    if same != (split_name, seeds, args.labels_per_class):
      parser.error(f"--merge: {output} holds split, seeds, labels per class {same}; this run "
                   f"has {(split_name, seeds, args.labels_per_class)}. Match them or drop "
                   "--merge.")
    if "flowgmm" in methods and previous.get("flowgmm_params", {}) != flowgmm_params:
      parser.error(f"--merge: {output} was made with --flowgmm-params "
                   f"{previous.get('flowgmm_params')}; pass the same or drop --merge.")

  results = {}
  for table in tables:
    x, y = load_table(table)
    results[table] = {"info": {"rows": int(x.shape[0]), "features": int(x.shape[1]),
                               "classes": int(y.max() + 1)}, **{m: [] for m in methods}}
    for seed in seeds:
      split = make_split(x, y, seed, args.labels_per_class, args.validation)
      for m in methods:
        run = run_method(m, *split, seed, flowgmm_params, args.calibration_folds)
        run["seed"] = seed
        results[table][m].append(run)
        after = (f" -> {run['ece_calibrated']:.3f} at T = {run['temperature']:.2f}"
                 if "temperature" in run else "")
        print(f"{table} {m} seed {seed}: {100 * run['accuracy']:.1f}%, ECE {run['ece']:.3f}"
              f"{after} ({run['seconds']:.1f} s)", file=sys.stderr, flush=True)
    # After every table, so a long run that stops keeps the tables it finished.
    report = write_results(output, previous, results, methods, run_provenance,
                           dict(split=split_name, labels_per_class=args.labels_per_class,
                                seeds=seeds, calibration_folds=args.calibration_folds,
                                flowgmm_params=flowgmm_params))

  print(markdown(report))
  print(f"\n{split_name} ECE (15 bins)" + (
      f", FlowGMM before -> after a temperature cross-fitted over {args.calibration_folds} "
      "folds of the labelled rows" if args.calibration_folds else "") + "\n")
  print(report["markdown_ece"])
  return report


def write_results(output: Path, previous: dict, results: dict, methods, run_provenance: dict,
                  settings: dict) -> dict:
  """Writes ``results`` (this run's methods) over ``previous`` (--merge's file, or {}) to
  ``output``; each method keeps the provenance of the run that made it."""
  merged = {t: dict(v) for t, v in previous.get("results", {}).items()}
  for table, runs in results.items():
    merged.setdefault(table, {}).update(runs)
  by_method = {**previous.get("provenance_by_method", {}), **{m: run_provenance for m in methods}}
  tables = [t for t in ALL_TABLES if t in merged]
  present = [m for m in METHODS if any(m in merged[t] for t in tables)]
  report = {**settings, "provenance": run_provenance, "provenance_by_method": by_method,
            "summary": summarise(merged, tables, present)[1], "results": merged,
            "markdown_ece": summarise_ece(merged, tables, present)}
  write_json(output, report, indent=2, sort_keys=True)
  return report


if __name__ == "__main__":
  main()
