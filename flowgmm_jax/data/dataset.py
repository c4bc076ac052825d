"""The `Dataset` container, input validation, and where data and caches live.

Every loader in `flowgmm_jax.data` returns a `Dataset`: plain NumPy arrays for the
train and test splits plus a little metadata. Conventions (checked on construction):

* images (`kind="image"`): `x` is `uint8` NHWC, shape `[N, H, W, C]`, integer pixel
  values 0..255 (dequantisation and the logit transform are bijectors, applied later);
* tabular, text and toy data (`kind in {"tabular", "text", "toy"}`): `x` is `float32`
  of shape `[N, D]`, all finite;
* labels `y` are `int32` of shape `[N]` with values in `[0, num_classes)`. Only
  `y_train` may also hold `-1` (= unlabelled, see
  `splits.split_with_given_unlabeled`).

Locations:

* offline data: `$FLOWGMM_DATA_DIR` if set, else `~/flowgmm_data` (`default_data_dir()`);
  the command line, tests and benchmarks set `$FLOWGMM_DATA_DIR` to `../shared/data` next
  to the repository when it is unset and that folder exists;
* caches (decoded CIFAR-10 arrays): `$FLOWGMM_CACHE_DIR` if set, else
  `$XDG_CACHE_HOME/flowgmm_jax`, else `~/.cache/flowgmm_jax` (`default_cache_dir()`).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flowgmm_jax.features import StandardizedRows
from flowgmm_jax.labels import validate_labels

KINDS = ("image", "tabular", "text", "toy")


class DataNotFoundError(FileNotFoundError):
  """A dataset's files (or its prepared tfds copy) are not where we looked.

  The message always says where we looked and the exact command or argument that
  fixes it. Nothing in `flowgmm_jax.data` downloads implicitly.
  """


DATA_DIR_VARIABLE = "FLOWGMM_DATA_DIR"


def default_data_dir() -> Path:
  """Root of the offline data (mnist/, cifar10/, tabular/, text/): `$FLOWGMM_DATA_DIR`,
  else `~/flowgmm_data`."""
  env = os.environ.get(DATA_DIR_VARIABLE)
  if env:
    return Path(env).expanduser()
  return Path.home() / "flowgmm_data"


def use_data_dir_if_unset(path: str | os.PathLike) -> None:
  """Sets `$FLOWGMM_DATA_DIR` to `path` when it is unset and `path` is a directory (the
  command line, tests and benchmarks point it at `../shared/data` next to the
  repository)."""
  if not os.environ.get(DATA_DIR_VARIABLE) and Path(path).is_dir():
    os.environ[DATA_DIR_VARIABLE] = str(Path(path).resolve())


def default_cache_dir() -> Path:
  """Directory for derived caches: `$FLOWGMM_CACHE_DIR`, XDG cache, or ~/.cache."""
  env = os.environ.get("FLOWGMM_CACHE_DIR")
  if env:
    return Path(env).expanduser()
  xdg = os.environ.get("XDG_CACHE_HOME")
  base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
  return base / "flowgmm_jax"


def save_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
  """Writes an uncompressed .npz so that readers never see a half-written file.

  The arrays go to a temporary file in the same directory, which is then renamed
  over `path` (`os.replace` is atomic on POSIX), so concurrent loaders either see
  the old complete file, the new complete file, or none.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; a cache may be shared read-only
    os.replace(tmp_name, path)
  except BaseException:
    if os.path.exists(tmp_name):
      os.remove(tmp_name)
    raise
  return path


def validate_arrays(x: Any, y: Any, num_classes: int, name: str, *,
                    expected_ndim: int | None = None,
                    allow_unlabeled: bool = False) -> None:
  """Checks one split's features and labels; raises one clear ValueError.

  Args:
    x: features, `[N, ...]` (at least 2-D: one row per example).
    y: integer labels, `[N]`, values in `[0, num_classes)`; `-1` is also accepted
      when `allow_unlabeled` (it marks unlabelled examples).
    num_classes: number of classes K (> 0).
    name: what to call this split in messages, e.g. "mnist x_train".
    expected_ndim: if given, the required `x.ndim` (4 for NHWC images, 2 for tables).
    allow_unlabeled: whether `y == -1` is allowed.

  Raises:
    ValueError: for wrong ndim, non-finite float features, non-integer labels,
      labels out of range, or a length mismatch between `x` and `y`.
  """
  x = np.asarray(x)
  y = np.asarray(y)
  if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
    raise ValueError(f"{name}: num_classes must be a positive int, got {num_classes!r}.")
  if x.ndim < 2:
    raise ValueError(
        f"{name}: features must have one row per example (ndim >= 2), got shape "
        f"{x.shape}; reshape a single feature column to [N, 1].")
  if expected_ndim is not None and x.ndim != expected_ndim:
    layout = "[N, H, W, C] (NHWC)" if expected_ndim == 4 else f"{expected_ndim}-D"
    raise ValueError(
        f"{name}: expected features of shape {layout}, got shape {x.shape} "
        f"(ndim {x.ndim}).")
  validate_labels(y, num_classes, allow_unlabeled, where=name)
  if x.shape[0] != y.shape[0]:
    raise ValueError(
        f"{name}: {x.shape[0]} feature rows but {y.shape[0]} labels; x and y must "
        "have the same length.")
  if np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.complexfloating):
    finite = np.isfinite(x)
    if not finite.all():
      bad_rows = np.nonzero(~finite.reshape(x.shape[0], -1).all(axis=1))[0]
      raise ValueError(
          f"{name}: features contain NaN or inf in {bad_rows.size} row(s) (first: "
          f"row {int(bad_rows[0])}); drop or impute those rows before loading.")
  elif not (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
    raise ValueError(f"{name}: features must be numeric, got dtype {x.dtype}.")


@dataclasses.dataclass
class Dataset:
  """A labelled dataset with a train and a test split (NumPy arrays).

  Attributes:
    name: short identifier, e.g. "mnist", "letter", "moons".
    kind: "image" | "tabular" | "text" | "toy".
    x_train: images `uint8 [N, H, W, C]` (or a `records.RecordImages` that reads its rows
      when asked: `config.data.loader="grain"`), otherwise `float32 [N, D]` or a
      `features.StandardizedRows` over the raw table (rows standardised as gathered).
    y_train: `int32 [N]`, in `[0, num_classes)`, or -1 for unlabelled examples.
    x_test: like `x_train` (may have 0 rows).
    y_test: like `y_train` but without -1.
    num_classes: K.
    class_names: optional K names in label order.
    info: free-form metadata, e.g. the standardisation statistics
      (`feature_mean`, `feature_std`: `x_std = (x_raw - mean) / std`), the seed and
      test fraction used for the split, where the data came from, and
      `evaluation_split` when the test split holds held-out training rows
      (`hold_out_validation_set`).
  """

  name: str
  kind: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  class_names: Sequence[str] | None = None
  info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def evaluated_on(self) -> str:
    """What the test split holds: "test", or the held-out training rows of
    ``data.validation_examples`` ("validation (N training examples)")."""
    return self.info.get("evaluation_split", "test")

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"Dataset {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}.")
    self.num_classes = int(self.num_classes)
    for split in ("train", "test"):
      x = getattr(self, f"x_{split}")
      y = np.asarray(getattr(self, f"y_{split}"))
      label = f"{self.name} {split} split"
      # Rows made as they are gathered: standardised table rows (their values were checked
      # when they were made) and data.records.RecordImages (read when a batch asks for them;
      # the dtype and shape are checked here, the pixels when their records are decoded).
      standardized = isinstance(x, StandardizedRows) and self.kind != "image"
      records = getattr(x, "reads_rows_lazily", False) and self.kind == "image"
      if standardized or records:
        if records and (x.dtype != np.uint8 or len(x.shape) != 4):
          raise ValueError(f"{label}: images must be uint8 [N, H, W, C], got {x.dtype} "
                           f"{x.shape}.")
        validate_labels(y, self.num_classes, split == "train", where=label)
        if len(x) != y.shape[0]:
          raise ValueError(f"{label}: {len(x)} {'images' if records else 'feature rows'} but "
                           f"{y.shape[0]} labels; x and y must have the same length.")
        setattr(self, f"y_{split}", y.astype(np.int32, copy=False))
        continue
      x = np.asarray(x)
      if self.kind == "image":
        if x.dtype != np.uint8:
          raise ValueError(
              f"{label}: images must be uint8 with pixel values 0..255, got dtype "
              f"{x.dtype}; convert with np.asarray(x).astype(np.uint8) after checking "
              "the range.")
        validate_arrays(x, y, self.num_classes, label, expected_ndim=4,
                        allow_unlabeled=split == "train")
      else:
        validate_arrays(x, y, self.num_classes, label, expected_ndim=2,
                        allow_unlabeled=split == "train")
        x = x.astype(np.float32, copy=False)
      setattr(self, f"x_{split}", x)
      setattr(self, f"y_{split}", y.astype(np.int32, copy=False))
    if self.x_train.shape[1:] != self.x_test.shape[1:]:
      raise ValueError(
          f"Dataset {self.name!r}: train examples have shape {self.x_train.shape[1:]} "
          f"but test examples {self.x_test.shape[1:]}; both splits must match.")
    if self.class_names is not None:
      self.class_names = tuple(str(c) for c in self.class_names)
      if len(self.class_names) != self.num_classes:
        raise ValueError(
            f"Dataset {self.name!r}: {len(self.class_names)} class names for "
            f"{self.num_classes} classes.")
    self.info = dict(self.info)

  @property
  def input_shape(self) -> tuple[int, ...]:
    """Shape of one example: `(H, W, C)` for images, `(D,)` otherwise."""
    return tuple(self.x_train.shape[1:])

  @property
  def num_train(self) -> int:
    return int(self.x_train.shape[0])

  @property
  def num_test(self) -> int:
    return int(self.x_test.shape[0])

  def __repr__(self) -> str:
    return (f"Dataset(name={self.name!r}, kind={self.kind!r}, train={self.num_train}, "
            f"test={self.num_test}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes})")
