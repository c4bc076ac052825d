"""Tabular datasets: UCI Letter / Shuttle (offline npz), MiniBooNE, HEPMASS, any CSV/npz.

Protocol (following the original FlowGMM code for MiniBooNE and the UCI sets):

* a deterministic stratified train/test split with `test_fraction = 0.1` by default
  (the original used sklearn's `train_test_split(test_size=.1, stratify=y)`), seeded;
* standardisation of every feature with the *training* split's mean and standard
  deviation, `x_std = (x_raw - mean) / std` (constant features get std 1). The
  statistics are returned in `Dataset.info["feature_mean"]` / `["feature_std"]` so
  that `x_raw = x_std * std + mean` can be recovered. (The original standardised
  MiniBooNE with statistics of the full data set before splitting; using the train
  split only avoids leaking test statistics.)
* features that are constant on the training split are dropped (a flow's density
  would be degenerate along them); `info["kept_feature_columns"]` records the rest.

Features are `float32 [N, D]`, labels `int32 [N]`.
"""

from __future__ import annotations

import csv
import itertools
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from flowgmm_jax.data.dataset import DataNotFoundError, Dataset, default_data_dir, validate_arrays
from flowgmm_jax.data.splits import stratified_train_test_split

UCI_FILES = {
    "letter": "letterrecognition_mlbench.npz",
    "shuttle": "shuttle_mlbench.npz",
}
# Where the original code downloaded these (documentation; never fetched here).
MINIBOONE_URL = ("http://archive.ics.uci.edu/ml/machine-learning-databases/00199/"
                 "MiniBooNE_PID.txt")
HEPMASS_URLS = ("http://archive.ics.uci.edu/ml/machine-learning-databases/00347/1000_train.csv.gz",
                "http://archive.ics.uci.edu/ml/machine-learning-databases/00347/1000_test.csv.gz")
DEFAULT_TEST_FRACTION = 0.1


def standardize_features(x_train: np.ndarray, x_test: np.ndarray, eps: float = 1e-12
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Standardises both splits with the training split's per-feature statistics.

  Args:
    x_train: `[N, D]`.
    x_test: `[M, D]`.
    eps: features whose train std is below this are only centred (std set to 1).

  Returns:
    `(x_train_std, x_test_std, mean [D], std [D])`, all float32, with
    `x_std = (x - mean) / std` (population std, ddof=0).
  """
  x_train = np.asarray(x_train, np.float64)
  x_test = np.asarray(x_test, np.float64)
  mean = x_train.mean(axis=0) if x_train.shape[0] else np.zeros(x_train.shape[1])
  std = x_train.std(axis=0) if x_train.shape[0] else np.ones(x_train.shape[1])
  std = np.where(std < eps, 1.0, std)
  return (((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32),
          mean.astype(np.float32), std.astype(np.float32))


def build_tabular_dataset(name: str, kind: str, x_train: np.ndarray, y_train: np.ndarray,
                          x_test: np.ndarray, y_test: np.ndarray, num_classes: int, *,
                          class_names: Sequence[str] | None = None, standardize: bool = True,
                          drop_constant_features: bool = True, info: dict | None = None,
                          eps: float = 1e-12) -> Dataset:
  """Finishes already-split feature tables: drops constant features, standardises.

  A feature whose training standard deviation is below `eps` carries no information
  and would make a flow's density degenerate (a delta along that axis), so by default
  it is removed from both splits; `info["kept_feature_columns"]` and
  `info["dropped_feature_columns"]` record which columns of the input were kept.

  Args:
    name, kind: Dataset name and kind ("tabular" or "text").
    x_train, x_test: `[N, D]`, `[M, D]` features.
    y_train, y_test: labels (`y_train` may hold -1 for unlabelled rows).
    num_classes: K.
    class_names: optional K names.
    standardize: standardise with train statistics (see `standardize_features`).
    drop_constant_features: remove features that are constant on the training split.
    info: extra metadata to store.
    eps: the "constant" threshold on the training std.
  """
  info = dict(info or {})
  x_train = np.asarray(x_train, np.float64)
  x_test = np.asarray(x_test, np.float64)
  validate_arrays(x_train, y_train, num_classes, f"{name} train split", expected_ndim=2,
                  allow_unlabeled=True)
  validate_arrays(x_test, y_test, num_classes, f"{name} test split", expected_ndim=2)
  if drop_constant_features and x_train.shape[0]:
    keep = np.nonzero(x_train.std(axis=0) >= eps)[0]
    if keep.size == 0:
      raise ValueError(f"{name}: every feature is constant on the training split.")
    if keep.size < x_train.shape[1]:
      info["dropped_feature_columns"] = np.setdiff1d(np.arange(x_train.shape[1]), keep)
      x_train, x_test = x_train[:, keep], x_test[:, keep]
    info["kept_feature_columns"] = keep
  info["standardized"] = standardize
  if standardize:
    x_train, x_test, mean, std = standardize_features(x_train, x_test, eps)
    info.update(feature_mean=mean, feature_std=std)
  return Dataset(name=name, kind=kind, x_train=x_train.astype(np.float32), y_train=y_train,
                 x_test=x_test.astype(np.float32), y_test=y_test, num_classes=num_classes,
                 class_names=class_names, info=info)


def make_split_dataset(name: str, kind: str, x: np.ndarray, y: np.ndarray, num_classes: int,
                       *, class_names: Sequence[str] | None = None,
                       test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0,
                       standardize: bool = True, drop_constant_features: bool = True,
                       info: dict | None = None) -> Dataset:
  """Splits one table into a stratified train/test `Dataset`.

  Rows with label -1 are unlabelled: they all go to the training split, and the test
  fraction is held out (stratified) from the labelled rows.

  `info["train_indices"]` / `info["test_indices"]` give each split's rows of `x`.

  Args:
    name, kind: Dataset name and kind ("tabular" or "text").
    x: `[N, D]` features.
    y: `[N]` labels in `[0, num_classes)`, or -1 for unlabelled rows.
    num_classes: K.
    class_names: optional K names.
    test_fraction: fraction of each class held out for testing (stratified).
    seed: split seed.
    standardize, drop_constant_features: see `build_tabular_dataset`.
    info: extra metadata to store.
  """
  validate_arrays(x, y, num_classes, f"{name} data", expected_ndim=2, allow_unlabeled=True)
  x = np.asarray(x)
  y = np.asarray(y)
  # Rows labelled -1 are the unlabelled pool: they all stay in train; the stratified test
  # fraction is held out of the labelled rows only.
  labeled = np.nonzero(y >= 0)[0]
  if labeled.size == 0:
    raise ValueError(f"{name} data: every label is -1; give some labelled rows (a test "
                     "split is held out of them).")
  train_lab, test_idx = stratified_train_test_split(y[labeled], test_fraction, seed)
  train_idx = np.sort(np.concatenate([labeled[train_lab], np.nonzero(y < 0)[0]]))
  test_idx = labeled[test_idx]
  info = dict(info or {})
  info.update(test_fraction=test_fraction, split_seed=seed, train_indices=train_idx,
              test_indices=test_idx)
  return build_tabular_dataset(name, kind, x[train_idx], y[train_idx], x[test_idx], y[test_idx],
                               num_classes, class_names=class_names, standardize=standardize,
                               drop_constant_features=drop_constant_features, info=info)


def _require_file(path: Path, what: str, how: str) -> Path:
  if not path.is_file():
    raise DataNotFoundError(f"{what} not found at {path}. {how}")
  return path


def load_npz_table(path: str | os.PathLike, x_key: str = "x", y_key: str = "y", *,
                   name: str | None = None, class_key: str = "classes",
                   test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0,
                   standardize: bool = True) -> Dataset:
  """A labelled table stored as .npz (`x: [N, D]` numbers, `y: [N]` integer labels).

  Class names are taken from `class_key` if the file has it (then K = its length),
  otherwise K = max(y) + 1.
  """
  path = _require_file(Path(path).expanduser(), "npz table",
                       "Pass the path of an .npz with arrays x [N, D] and y [N].")
  with np.load(path, allow_pickle=False) as data:
    missing = [k for k in (x_key, y_key) if k not in data.files]
    if missing:
      raise ValueError(f"{path}: no array(s) {missing}; it has {data.files}. Pass x_key=/y_key=.")
    x, y = data[x_key], data[y_key]
    class_names = [str(c) for c in data[class_key]] if class_key in data.files else None
  y_arr = np.asarray(y)
  if y_arr.ndim == 1 and y_arr.size and np.issubdtype(y_arr.dtype, np.integer):
    if not np.any(y_arr >= 0):
      raise ValueError(f"{path}: no labelled rows in {y_key!r} (every label is -1); label at "
                       "least one row of each of two or more classes.")
    if np.any(y_arr < -1):
      row = int(np.nonzero(y_arr < -1)[0][0])
      raise ValueError(f"{path}: label {int(y_arr[row])} in row {row} of {y_key!r}; labels "
                       "must be 0..K-1, or -1 for an unlabelled row.")
    if np.unique(y_arr[y_arr >= 0]).size < 2:
      raise ValueError(f"{path}: every labelled row has the class {int(y_arr[y_arr >= 0][0])}; "
                       "FlowGMM needs labelled rows of at least 2 classes.")
  num_classes = len(class_names) if class_names is not None else int(np.max(y)) + 1
  if standardize and np.issubdtype(np.asarray(x).dtype, np.number) and np.all(np.isfinite(x)):
    outliers = find_outliers(x)
    if outliers:
      print("warning: " + outlier_warning(outliers, f"{path} array {x_key!r}"), file=sys.stderr,
            flush=True)
  return make_split_dataset(name or path.stem, "tabular", x, y, num_classes,
                            class_names=class_names, test_fraction=test_fraction, seed=seed,
                            standardize=standardize, info={"source": str(path)})


def load_uci(name: str, data_dir: str | os.PathLike | None = None, *,
             test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0,
             standardize: bool = True) -> Dataset:
  """UCI Letter Recognition (20,000 x 16, 26 classes) or Statlog Shuttle (58,000 x 9,
  7 very imbalanced classes), from the offline npz files (`tabular/<file>.npz`).

  Args:
    name: "letter" or "shuttle".
    data_dir: directory holding the npz (or its parent with `tabular/`); default
      `default_data_dir() / "tabular"`.
    test_fraction, seed, standardize: see `make_split_dataset`.
  """
  key = name.lower()
  if key not in UCI_FILES:
    raise ValueError(f"unknown UCI dataset {name!r}; choose one of {sorted(UCI_FILES)}.")
  filename = UCI_FILES[key]
  if data_dir is None:
    candidates = [default_data_dir() / "tabular" / filename]
  else:
    candidates = [Path(data_dir).expanduser() / filename,
                  Path(data_dir).expanduser() / "tabular" / filename]
  path = next((p for p in candidates if p.is_file()), candidates[0])
  _require_file(path, f"UCI {key} file {filename}",
                "Pass data_dir= (the folder holding it) or set FLOWGMM_DATA_DIR.")
  dataset = load_npz_table(path, name=key, test_fraction=test_fraction, seed=seed,
                           standardize=standardize)
  return dataset


# ----------------------------------------------------------------------------- CSV

def _parse_float(text: str, row: int, column: int, path: Path) -> float:
  try:
    value = float(text)
  except ValueError:
    raise ValueError(
        f"{path}: non-numeric value {text!r} in row {row}, column {column}; feature "
        "columns must be numbers (encode categories first).") from None
  if not np.isfinite(value):
    raise ValueError(
        f"{path}: non-finite value {text.strip()!r} in line {row}, column {column}; remove or "
        "impute missing values first.")
  return value


# Rows from which find_outliers estimates each column's median and MAD (all rows when fewer).
OUTLIER_STATISTICS_ROWS = 65_536
# Rows per chunk of find_outliers' scan (float64 temporaries of [chunk, D]).
OUTLIER_SCAN_CHUNK = 65_536


def find_outliers(x: np.ndarray, threshold: float = 100.0) -> list[tuple[int, int, float]]:
  """Entries far outside their column's bulk: ``|x - median| > threshold * 1.4826 * MAD``.

  One such row (say 1e30) makes mean/std standardisation squash every other row to a point.
  Columns whose MAD is 0 (mostly one value) are not judged. The median and MAD come from
  ``OUTLIER_STATISTICS_ROWS`` evenly spaced rows (every row of a smaller table; a robust
  statistic of 65,536 rows is within a few percent of the full one, and the threshold is
  100 MADs), and the rows are scanned in chunks, so the memory beyond ``x`` is that of one
  chunk whatever N.

  Args:
    x: `[N, D]` features.
  Returns:
    `(row, column, value)` of each outlying entry, 0-based, worst first.
  """
  x = np.asarray(x)
  if x.ndim != 2 or x.shape[0] < 3:
    return []
  n = x.shape[0]
  sample = x if n <= OUTLIER_STATISTICS_ROWS else x[
      np.linspace(0, n - 1, OUTLIER_STATISTICS_ROWS).astype(np.int64)]
  sample = np.asarray(sample, np.float64)
  median = np.median(sample, axis=0)
  mad = 1.4826 * np.median(np.abs(sample - median), axis=0)
  judged = mad > 0
  limit = np.where(judged, threshold * mad, np.inf)
  found = []  # (row, column, score)
  for start in range(0, n, OUTLIER_SCAN_CHUNK):
    deviation = np.abs(np.asarray(x[start:start + OUTLIER_SCAN_CHUNK], np.float64) - median)
    rows, cols = np.nonzero(deviation > limit)
    found.extend(zip(rows + start, cols, deviation[rows, cols] / mad[cols], strict=False))
  found.sort(key=lambda entry: -entry[2])
  return [(int(r), int(c), float(x[r, c])) for r, c, _ in found]


def outlier_warning(outliers: list[tuple[int, int, float]], what: str,
                    row_name=lambda r: f"row {r}", column_name=lambda c: f"column {c}") -> str:
  """One line naming the worst outlier and how many there are."""
  r, c, v = outliers[0]
  more = f" (and {len(outliers) - 1} more entries)" if len(outliers) > 1 else ""
  return (f"{what}: {row_name(r)}, {column_name(c)} holds {v:g}, far outside the rest of the "
          f"column{more}; standardisation will squash the other rows. Check or remove it.")


def load_csv_table(path: str | os.PathLike, label_column: int | str | None = None, *,
                   delimiter: str = ",", header: bool | None = None, name: str | None = None,
                   test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0,
                   standardize: bool = True, drop_constant_features: bool = True) -> Dataset:
  """A labelled table from a CSV file: numeric features plus one label column.

  Labels may be integers (used as they are when they already are 0..K-1, otherwise
  mapped to 0..K-1 in sorted order) or strings (mapped in sorted order); the
  original values become `class_names`. Rows whose label is -1 are unlabelled and go
  to the training split (see `splits.split_with_given_unlabeled`).

  Args:
    path: the CSV file.
    label_column: index (negative counts from the end) or header name; default the
      last column.
    delimiter: field separator.
    header: whether the first row holds column names; None = detect (the first row
      is a header if any of its feature fields is not a number).
    name: Dataset name (default the file stem).
    test_fraction, seed, standardize, drop_constant_features: see `make_split_dataset`.
  """
  path = _require_file(Path(path).expanduser(), "CSV file", "Check the path.")
  with open(path, newline="") as f:
    reader = csv.reader(f, delimiter=delimiter)
    rows, line_numbers = [], []  # line numbers in the user's file, for error messages
    for r in reader:
      if r and any(c.strip() for c in r):
        rows.append(r)
        line_numbers.append(reader.line_num)
  if not rows:
    raise ValueError(f"{path}: the file is empty.")
  width = len(rows[0])
  if width < 2:
    raise ValueError(f"{path}: need at least 2 columns (features and a label), got {width}; "
                     f"is the delimiter {delimiter!r} right?")
  names = None
  if isinstance(label_column, str):
    header = True  # a column name needs a header row
  else:
    label_index = width - 1 if label_column is None else int(label_column)
    if not -width <= label_index < width:
      raise ValueError(f"{path}: label_column {label_column} is out of range for {width} columns.")
    label_index %= width
    if header is None:  # a header row has a non-number among its feature fields
      header = not all(_is_number(c) for j, c in enumerate(rows[0]) if j != label_index)
  if header:
    names, rows, line_numbers = [c.strip() for c in rows[0]], rows[1:], line_numbers[1:]
  if not rows:
    raise ValueError(f"{path}: the file has a header but no data rows; add rows of features "
                     "and a label.")
  if isinstance(label_column, str):
    if label_column not in names:
      raise ValueError(f"{path}: no column named {label_column!r}; columns: {names}.")
    label_index = names.index(label_column)
  features, raw_labels = [], []
  for row_number, row in zip(line_numbers, rows, strict=False):
    if len(row) != width:
      raise ValueError(f"{path}: row {row_number} has {len(row)} fields, expected {width}.")
    raw_labels.append(row[label_index].strip())
    features.append([_parse_float(c, row_number, j + 1, path)
                     for j, c in enumerate(row) if j != label_index])
  x = np.asarray(features, np.float64)
  for i, raw in enumerate(raw_labels):
    if _is_number(raw) and float(raw) < 0 and float(raw) != -1:
      raise ValueError(f"{path}: label {raw!r} in line {line_numbers[i]}; labels must be class "
                       "values (names or integers >= 0), or -1 for an unlabelled row.")
  y, class_names = _encode_labels(raw_labels)
  num_classes = len(class_names)
  if num_classes == 0:
    raise ValueError(f"{path}: no labelled rows (every label is -1); label at least one row of "
                     "each of two or more classes.")
  if num_classes == 1:
    raise ValueError(f"{path}: every labelled row has the class {class_names[0]!r}; FlowGMM "
                     "needs labelled rows of at least 2 classes.")
  outliers = find_outliers(x)
  if outliers:
    feature_columns = [j for j in range(width) if j != label_index]
    print("warning: " + outlier_warning(
        outliers, str(path), row_name=lambda r: f"line {line_numbers[r]}",
        column_name=lambda c: f"column {feature_columns[c] + 1}"
        + (f" ({names[feature_columns[c]]})" if names else "")), file=sys.stderr, flush=True)
  # Unlabelled rows (-1) cannot be stratified; they all go to the training split.
  labeled_rows = np.nonzero(y >= 0)[0]
  unlabeled_rows = np.nonzero(y < 0)[0]
  train_idx, test_idx = stratified_train_test_split(y[labeled_rows], test_fraction, seed)
  train_rows = np.concatenate([labeled_rows[train_idx], unlabeled_rows])
  test_rows = labeled_rows[test_idx]
  info = {"source": str(path), "test_fraction": test_fraction, "split_seed": seed,
          "train_indices": train_rows, "test_indices": test_rows}
  return build_tabular_dataset(name or path.stem, "tabular", x[train_rows], y[train_rows],
                               x[test_rows], y[test_rows], num_classes, class_names=class_names,
                               standardize=standardize,
                               drop_constant_features=drop_constant_features, info=info)


def _is_number(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def _encode_labels(raw: list[str]) -> tuple[np.ndarray, list[str]]:
  """Maps label strings to 0..K-1 (-1 stays unlabelled if labels are numeric)."""
  if all(_is_number(r) for r in raw):
    values = np.asarray([float(r) for r in raw])
    if not np.all(values == np.round(values)):
      raise ValueError("numeric labels must be integers (got fractional values); "
                       "is label_column the right column?")
    values = values.astype(np.int64)
    known = np.unique(values[values != -1])
    if known.size and known[0] == 0 and known[-1] == known.size - 1:
      return values, [str(v) for v in known]  # already 0..K-1
    lookup = {int(v): i for i, v in enumerate(known)}
    return np.asarray([lookup.get(int(v), -1) for v in values]), [str(v) for v in known]
  if any(r == "" for r in raw):
    raise ValueError("some labels are empty; mark unlabelled rows with -1 instead.")
  classes = sorted(set(raw))
  lookup = {c: i for i, c in enumerate(classes)}
  return np.asarray([lookup[r] for r in raw]), classes


# ----------------------------------------------------------------------------- MiniBooNE

def read_miniboone(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Parses `MiniBooNE_PID.txt` the way the original FlowGMM code did.

  Format: the first line holds two integers, the number of signal events S and of
  background events B; then S + B rows of 50 whitespace-separated floats, signal
  rows first. The classes are balanced by keeping the first m = min(S, B) rows of
  each: labels 1 (signal) and 0 (background).

  Returns:
    `x: float32 [2m, 50]`, `y: int32 [2m]` (signal rows first).
  """
  path = _require_file(
      Path(path).expanduser(), "MiniBooNE file MiniBooNE_PID.txt",
      f"Download it from {MINIBOONE_URL} and pass its path.")
  with open(path) as f:
    first = f.readline().split()
    if len(first) != 2 or not all(s.isdigit() for s in first):
      raise ValueError(
          f"{path}: the first line should be 'num_signal num_background', got {first}.")
    num_signal, num_background = int(first[0]), int(first[1])
    data = np.loadtxt(f, dtype=np.float64, ndmin=2)
  if data.shape[0] != num_signal + num_background:
    raise ValueError(f"{path}: header announces {num_signal} + {num_background} rows but the "
                     f"file has {data.shape[0]}.")
  m = min(num_signal, num_background)
  x = np.concatenate([data[:m], data[num_signal:num_signal + m]]).astype(np.float32)
  y = np.concatenate([np.ones(m, np.int32), np.zeros(m, np.int32)])
  return x, y


def load_miniboone(path: str | os.PathLike | None = None, *,
                   test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0,
                   standardize: bool = True) -> Dataset:
  """MiniBooNE particle identification (2 balanced classes, 50 features).

  Not available offline. Args: `path` of `MiniBooNE_PID.txt` (default
  `default_data_dir() / "miniboone" / "MiniBooNE_PID.txt"`), then as
  `make_split_dataset`.
  """
  if path is None:
    path = default_data_dir() / "miniboone" / "MiniBooNE_PID.txt"
  path = Path(path)
  x, y = read_miniboone(path)
  return make_split_dataset("miniboone", "tabular", x, y, 2,
                            class_names=("background", "signal"), test_fraction=test_fraction,
                            seed=seed, standardize=standardize, info={"source": str(path)})


# ----------------------------------------------------------------------------- HEPMASS

def _read_csv_rows(path: Path, keep_probability: float, rng: np.random.Generator,
                   chunk_rows: int = 200_000) -> tuple[list[str], np.ndarray]:
  """Header and a random subset of rows (each kept with `keep_probability`)."""
  with open(path) as f:
    header = [h.strip() for h in f.readline().strip().split(",")]
    chunks = []
    while True:
      lines = list(itertools.islice(f, chunk_rows))
      if not lines:
        break
      keep = rng.random(len(lines)) < keep_probability
      selected = [line for line, k in zip(lines, keep, strict=False) if k and line.strip()]
      if selected:
        chunks.append(np.loadtxt(selected, delimiter=",", dtype=np.float64, ndmin=2))
  width = max((c.shape[1] for c in chunks), default=len(header))
  return header, (np.concatenate(chunks) if chunks else np.zeros((0, width)))


def _discrete_features(x: np.ndarray, max_repeats: int = 5) -> np.ndarray:
  """Feature indices whose smallest value occurs more than `max_repeats` times.

  The criterion of the original HEPMASS preprocessing (from MAF, Papamakarios et al.
  2017): it removes the constant mass column and the few discrete-valued features.
  """
  drop = []
  for j in range(x.shape[1]):
    _, counts = np.unique(x[:, j], return_counts=True)
    if counts.size and counts[0] > max_repeats:
      drop.append(j)
  return np.asarray(drop, np.int64)


def load_hepmass(root: str | os.PathLike | None = None, *, train_fraction: float = 0.2,
                 test_fraction: float = 0.04, seed: int = 0, standardize: bool = True
                 ) -> Dataset:
  """HEPMASS (signal vs background, from `1000_train.csv` / `1000_test.csv`).

  Follows the original FlowGMM loader: the files are subsampled (each train row kept
  with probability `train_fraction`, each test row with `test_fraction`; the original
  sampled the same fractions), the first column is the label, test columns beyond the
  training file's width are dropped (the original noted the test file has an extra
  column), features whose smallest value repeats more than 5 times in the training
  data are removed (this drops the constant mass column and the discrete features),
  and the features are standardised with the training statistics.

  Args:
    root: directory holding `1000_train.csv` and `1000_test.csv` (default
      `default_data_dir() / "hepmass"`). Not available offline: download (and
      gunzip) them from the URLs in `HEPMASS_URLS`.
    train_fraction, test_fraction: row subsampling probabilities in (0, 1].
    seed: subsampling seed.
    standardize: standardise with train statistics.
  """
  root = Path(root).expanduser() if root is not None else default_data_dir() / "hepmass"
  paths = [root / "1000_train.csv", root / "1000_test.csv"]
  for p in paths:
    _require_file(p, f"HEPMASS file {p.name}",
                  f"Download and gunzip {' and '.join(HEPMASS_URLS)} into {root}.")
  for fraction in (train_fraction, test_fraction):
    if not 0.0 < fraction <= 1.0:
      raise ValueError(f"subsampling fractions must be in (0, 1], got {fraction}.")
  rng = np.random.default_rng(seed)
  _, train = _read_csv_rows(paths[0], train_fraction, rng)
  _, test = _read_csv_rows(paths[1], test_fraction, rng)
  if train.shape[0] == 0 or train.shape[1] < 2:
    raise ValueError(f"{paths[0]}: no data rows were read (or fewer than 2 columns).")
  if test.shape[0] and test.shape[1] < train.shape[1]:
    raise ValueError(f"{paths[1]} has {test.shape[1]} columns but {paths[0]} has {train.shape[1]}.")
  y_train, x_train = train[:, 0], train[:, 1:]
  y_test, x_test = test[:, 0], test[:, 1:train.shape[1]]
  keep = np.setdiff1d(np.arange(x_train.shape[1]), _discrete_features(x_train))
  x_train, x_test = x_train[:, keep], x_test[:, keep]
  for labels, name in ((y_train, "train"), (y_test, "test")):
    if not np.isin(labels, (0.0, 1.0)).all():
      raise ValueError(f"HEPMASS {name} labels (first column) must be 0 or 1.")
  info = {"source": str(root), "subsample_fractions": (train_fraction, test_fraction),
          "split_seed": seed, "discrete_feature_columns_removed": np.setdiff1d(
              np.arange(train.shape[1] - 1), keep)}
  dataset = build_tabular_dataset(
      "hepmass", "tabular", x_train, y_train.astype(np.int32), x_test, y_test.astype(np.int32),
      2, class_names=("background", "signal"), standardize=standardize,
      drop_constant_features=False, info=info)
  dataset.info["kept_feature_columns"] = keep  # columns of the file after the label
  return dataset
