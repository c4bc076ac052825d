"""Datasets, splits, batching and augmentation for FlowGMM.

Loaders return a `Dataset` (NumPy arrays: images `uint8 [N, H, W, C]`, everything else
`float32 [N, D]`; labels `int32 [N]`). Nothing downloads implicitly: real data for
tests and examples lives in `default_data_dir()` (`$FLOWGMM_DATA_DIR`, else
`~/flowgmm_data`), tfds datasets are read from prepared ArrayRecord files, and
a missing dataset raises `DataNotFoundError` saying how to get it.

`REGISTRY` is the one list of datasets a config can name (`config.data.name`), each with
the data kinds it serves and its loader; `load_dataset(config)` loads the one a config
names. The training loop knows no dataset by name, and training/config.py takes the names
it accepts from here (`names_by_kind`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from flowgmm_jax.data import rows
from flowgmm_jax.data.augment import (
  FLIP_BY_DATASET,
  add_feature_noise,
  augment_images,
  default_augmentation,
  random_crop_with_padding,
  random_horizontal_flip,
)
from flowgmm_jax.data.dataset import (
  DataNotFoundError,
  Dataset,
  default_cache_dir,
  default_data_dir,
  save_npz_atomic,
  validate_arrays,
)
from flowgmm_jax.data.images import (
  CIFAR10_CLASSES,
  DIGIT_CLASSES,
  load_cifar10,
  load_mnist,
  load_svhn,
  load_tfds_images,
  prepare_tfds_dataset,
  read_idx,
  tfds_data_source,
  tfds_prepare_command,
)
from flowgmm_jax.data.records import (
  RecordImages,
  load_image_records,
  load_tfds_records,
  take_rows,
  write_image_records,
)
from flowgmm_jax.data.splits import (
  SemiSupervisedBatches,
  batch_indices,
  labeled_unlabeled_split,
  split_with_given_unlabeled,
  stratified_prefix,
  stratified_train_test_split,
)
from flowgmm_jax.data.tabular import (
  build_tabular_dataset,
  load_csv_table,
  load_hepmass,
  load_miniboone,
  load_npz_table,
  load_uci,
  make_split_dataset,
  read_miniboone,
  standardize_features,
)
from flowgmm_jax.data.text import (
  load_agnews_embeddings,
  load_original_text_embeddings,
  load_text_embeddings_npz,
)
from flowgmm_jax.data.toy import (
  PAPER_NUM_LABELED,
  TOY_DATASETS,
  load_toy,
  make_8gaussians,
  make_circles,
  make_moons,
  make_pinwheel,
)
from flowgmm_jax.labels import UNLABELED


class Source(NamedTuple):
  """A dataset a config can name: the data kinds (``config.data.kind``) it serves and
  ``load(data_config, seed) -> Dataset``, which reads the ``config.data`` fields it needs."""
  kinds: tuple[str, ...]
  load: Callable[[Any, int], Dataset]


def _read_limit(d) -> dict:
  """Image loaders' per-split limits for smoke runs: read no more rows of a split than are
  kept of it (a test-set limit leaves the training set whole)."""
  return {"max_train_examples": d.max_train_examples if d.max_train_examples > 0 else None,
          "max_test_examples": d.max_test_examples if d.max_test_examples > 0 else None}


def _images(loader: Callable[..., Dataset], tfds_name: str) -> Callable[[Any, int], Dataset]:
  def load(d, seed):
    if d.get("loader", "memory") == "grain":
      return load_tfds_records(tfds_name, name=d.name, data_dir=d.data_dir or None,
                               **_read_limit(d))
    return loader(data_dir=d.data_dir or None, source=d.source, **_read_limit(d))
  return load


def _svhn(d, seed) -> Dataset:
  if d.get("loader", "memory") == "grain":
    return load_tfds_records("svhn_cropped", name="svhn", data_dir=d.data_dir or None,
                             class_names=DIGIT_CLASSES, **_read_limit(d))
  kw = {"data_dir": d.data_dir or None}
  if d.path:  # the original train_32x32.mat / test_32x32.mat: no TensorFlow needed
    kw["mat_dir"] = d.path
  return load_svhn(**kw, **_read_limit(d))


def _records(d, seed) -> Dataset:
  if not d.path:
    raise ValueError("data.name='records' needs --config.data.path=FOLDER holding info.json "
                     "and <split>.array_record files (flowgmm_jax/data/records.py).")
  return load_image_records(d.path, in_memory=d.get("loader", "memory") != "grain",
                            **_read_limit(d))


def _user_file(d, seed) -> Dataset:
  path = d.path
  if not path:
    raise ValueError("data.name='file' needs --config.data.path=/path/to/data.npz (or .csv).")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"data file {path!r} does not exist (config.data.path); give "
                            "an .npz with arrays 'x' and 'y', or a .csv with a label column.")
  kw = dict(test_fraction=d.test_fraction, seed=seed)
  if path.endswith(".csv"):
    return load_csv_table(path, label_column=d.label_column or None, **kw)
  if path.endswith(".npz"):
    return load_npz_table(path, **kw)
  raise ValueError(f"data file {path!r}: unknown format; use .npz (arrays 'x', 'y') or .csv.")


def _in_memory(d, seed) -> Dataset:
  raise ValueError("data.name='arrays' is for in-memory data given to "
                   "flowgmm_jax.training.fit or FlowGMMClassifier; from the command line use "
                   "--config.data.name=file --config.data.path=my.npz (or .csv).")


# The one dataset registry. Its order is that of the names in error messages: kinds in
# order of first appearance, names in order within a kind.
REGISTRY: dict[str, Source] = {
    **{name: Source(("toy",), lambda d, seed, name=name: load_toy(
        name, num_train=d.num_points, num_test=d.num_points, seed=seed))
       for name in TOY_DATASETS},
    **{name: Source(("tabular",), lambda d, seed, name=name: load_uci(
        name, d.data_dir or None, test_fraction=d.test_fraction, seed=seed))
       for name in ("letter", "shuttle")},
    "miniboone": Source(("tabular",), lambda d, seed: load_miniboone(
        d.path or None, test_fraction=d.test_fraction, seed=seed)),
    "hepmass": Source(("tabular",), lambda d, seed: load_hepmass(d.path or None, seed=seed)),
    "agnews": Source(("text",), lambda d, seed: load_agnews_embeddings(
        d.path or None, test_fraction=d.test_fraction, seed=seed)),
    "yahoo": Source(("text",), lambda d, seed: load_original_text_embeddings(
        "yahoo", d.path or None)),
    "file": Source(("tabular", "text"), _user_file),
    # In-memory data handed to `training.fit` directly (FlowGMMClassifier): nothing to load.
    "arrays": Source(("tabular",), _in_memory),
    "mnist": Source(("image",), _images(load_mnist, "mnist")),
    "cifar10": Source(("image",), _images(load_cifar10, "cifar10")),
    "svhn": Source(("image",), _svhn),
    # A folder of the user's own images as ArrayRecord files (data/records.py).
    "records": Source(("image",), _records),
}
DATASET_NAMES = tuple(sorted(REGISTRY))


def names_by_kind() -> dict[str, tuple[str, ...]]:
  """``{kind: (names, ...)}``: the names ``config.data.name`` may take for each
  ``config.data.kind``."""
  names = {}
  for name, source in REGISTRY.items():
    for kind in source.kinds:
      names[kind] = names.get(kind, ()) + (name,)
  return names


def load_dataset(config) -> Dataset:
  """The dataset ``config.data`` names (see ``REGISTRY``), split with ``config.seed`` where
  the loader splits, and subsampled to ``config.data.max_train_examples`` /
  ``max_test_examples`` (class-balanced prefixes) when those are > 0 (smoke runs).

  Raises ``DataNotFoundError`` (a FileNotFoundError) or ValueError with one clear message
  for missing or malformed data.
  """
  d = config.data
  source = REGISTRY.get(d.name)
  if source is None or d.kind not in source.kinds:
    raise ValueError(f"Unknown dataset {d.kind}/{d.name} (config.data).")
  ds = source.load(d, config.seed)
  if d.get("validation_examples", 0) > 0:
    ds = hold_out_validation_set(ds, d.validation_examples)
  if d.max_train_examples > 0 and len(ds.x_train) > d.max_train_examples:
    keep = np.sort(stratified_prefix(ds.y_train, d.max_train_examples))
    ds = dataclasses.replace(ds, x_train=take_rows(ds.x_train, keep), y_train=ds.y_train[keep])
  if d.max_test_examples > 0 and len(ds.x_test) > d.max_test_examples:
    keep = np.sort(stratified_prefix(ds.y_test, d.max_test_examples))
    ds = dataclasses.replace(ds, x_test=ds.x_test[keep], y_test=ds.y_test[keep])
  return ds


def hold_out_validation_set(ds: Dataset, num_examples: int) -> Dataset:
  """``ds`` with ``num_examples`` of its training rows (class-stratified, chosen by the one
  seed rule with ``rows.EVALUATION_SEED``, the same rows whatever ``config.seed`` is) moved
  into the evaluation split, which replaces the test split: tuning then never
  sees the test labels. The test rows are dropped."""
  if not 0 < num_examples < len(ds.x_train):
    raise ValueError(f"data.validation_examples={num_examples} must be between 1 and the "
                     f"{len(ds.x_train)} training examples of {ds.name}.")
  if np.any(ds.y_train < 0):
    raise ValueError("data.validation_examples needs a fully labelled training split; "
                     f"{ds.name} has unlabelled (-1) training rows.")
  train, val = stratified_train_test_split(ds.y_train, num_examples / len(ds.y_train),
                                           seed=(rows.EVALUATION_SEED, rows.EVALUATION))
  train, val = np.sort(train), np.sort(val)
  info = {**ds.info, "evaluation_split": f"validation ({len(val)} training examples)"}
  return dataclasses.replace(ds, x_train=take_rows(ds.x_train, train),
                             y_train=ds.y_train[train], x_test=np.asarray(ds.x_train[val]),
                             y_test=ds.y_train[val], info=info)


__all__ = [
    "CIFAR10_CLASSES", "DATASET_NAMES", "DataNotFoundError", "Dataset", "FLIP_BY_DATASET",
    "PAPER_NUM_LABELED", "RecordImages", "REGISTRY", "SemiSupervisedBatches", "Source", "TOY_DATASETS",
    "UNLABELED",
    "add_feature_noise", "augment_images", "batch_indices", "build_tabular_dataset", "default_augmentation", "default_cache_dir",
    "default_data_dir", "hold_out_validation_set", "labeled_unlabeled_split", "load_agnews_embeddings", "load_cifar10",
    "load_csv_table", "load_dataset", "load_hepmass", "load_miniboone", "load_mnist",
    "load_npz_table", "load_original_text_embeddings", "load_svhn", "load_text_embeddings_npz",
    "load_image_records", "load_tfds_images", "load_tfds_records", "load_toy", "load_uci", "make_8gaussians", "make_circles",
    "make_moons", "make_pinwheel", "make_split_dataset", "names_by_kind", "prepare_tfds_dataset",
    "random_crop_with_padding", "random_horizontal_flip", "read_idx", "read_miniboone",
    "save_npz_atomic", "split_with_given_unlabeled", "standardize_features",
    "stratified_prefix", "stratified_train_test_split", "take_rows", "tfds_data_source",
    "tfds_prepare_command", "validate_arrays", "write_image_records",
]
