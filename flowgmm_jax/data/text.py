"""Text classification as fixed sentence embeddings (`float32 [N, D]`).

FlowGMM models text through pre-computed sentence embeddings, treated as tabular
data. Two sources:

* `load_agnews_embeddings`: the offline AG News *test* split (7,600 items, 4
  classes) embedded with all-MiniLM-L6-v2 (384-d, L2-normalised), from
  `text/agnews_test_minilm_l6_v2.npz`. The AG News train split is not available
  offline, so this loader makes its own stratified train/test split of those 7,600.
* `load_original_text_embeddings` / `load_text_embeddings_npz`: the embedding files
  of the original FlowGMM code (AG News and Yahoo Answers, 768-d BERT sentence
  encodings): npz files with arrays `encodings [N, 768]` and `labels [N]`, one file
  per split. They were distributed through Google Drive (ids in
  `ORIGINAL_TEXT_EMBEDDINGS`); this module never downloads them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from flowgmm_jax.data.dataset import DataNotFoundError, Dataset, default_data_dir
from flowgmm_jax.data.tabular import build_tabular_dataset, make_split_dataset

AGNEWS_EMBEDDINGS_FILE = "agnews_test_minilm_l6_v2.npz"
AGNEWS_CLASSES = ("World", "Sports", "Business", "Sci/Tech")
YAHOO_CLASSES = ("Society & Culture", "Science & Mathematics", "Health",
                 "Education & Reference", "Computers & Internet", "Sports",
                 "Business & Finance", "Entertainment & Music", "Family & Relationships",
                 "Politics & Government")

GDRIVE_URL = "https://docs.google.com/uc?export=download&id={file_id}"
# The original code's embedding files: (Google Drive file id, file name) per split.
ORIGINAL_TEXT_EMBEDDINGS = {
    "ag_news": {
        "train": ("1k40hM-x91OPUwGXhWVU7NoCUOXXEuFR4", "ag_news_train.npz"),
        "test": ("1cPzyv6UW6Cau87fDj3hxe523UL4qw4EJ", "ag_news_test.npz"),
        "num_classes": 4, "class_names": AGNEWS_CLASSES, "max_test_examples": None,
        "default_root": "~/datasets/AGNEWS",
    },
    "yahoo": {
        "train": ("1nkf9k3Cqfxxpk05c0yN0HVVtijrVWjde", "yahoo_train.npz"),
        "test": ("1Z20AEPvX_mVle_1SFCyrWYBiglmZ6_wv", "yahoo_test.npz"),
        # The original evaluated on the first 10,000 test items only.
        "num_classes": 10, "class_names": YAHOO_CLASSES, "max_test_examples": 10_000,
        "default_root": "~/datasets/YAHOO",
    },
}


def load_agnews_embeddings(path: str | os.PathLike | None = None, *,
                           test_fraction: float = 0.2, seed: int = 0,
                           standardize: bool = True,
                           drop_constant_features: bool = True) -> Dataset:
  """AG News sentence embeddings (384-d MiniLM), 4 classes, split into train/test here.

  Only AG News's official *test* split (7,600 items, 1,900 per class) is available
  offline. This loader therefore splits those 7,600 items itself, stratified by class
  and deterministic given `seed`: with the default `test_fraction=0.2`, 6,080 train
  (1,520 per class) and 1,520 test (380 per class). Numbers are not comparable with
  results on the official 120,000 / 7,600 split.

  Args:
    path: the npz file (arrays `x [7600, 384]`, `y [7600]`, `classes`); default
      `default_data_dir() / "text" / "agnews_test_minilm_l6_v2.npz"`.
    test_fraction: fraction held out for testing (per class).
    seed: split seed.
    standardize: standardise features with train statistics (the embeddings are
      L2-normalised, so their per-feature std is only about 0.05).
    drop_constant_features: remove features constant on the train split. Two of the
      384 MiniLM dimensions (127 and 223) are numerically zero (|x| < 1e-32) for every
      item, so by default the features are 382-d; `info["kept_feature_columns"]`
      lists the kept dimensions.
  """
  path = Path(path).expanduser() if path is not None else (
      default_data_dir() / "text" / AGNEWS_EMBEDDINGS_FILE)
  if not path.is_file():
    raise DataNotFoundError(
        f"AG News embeddings not found at {path}. Pass path= or set FLOWGMM_DATA_DIR to "
        "the folder holding text/agnews_test_minilm_l6_v2.npz.")
  with np.load(path, allow_pickle=False) as data:
    x, y = data["x"], data["y"]
    class_names = (tuple(str(c) for c in data["classes"]) if "classes" in data.files
                   else AGNEWS_CLASSES)
  return make_split_dataset(
      "agnews", "text", x, y, len(class_names), class_names=class_names,
      test_fraction=test_fraction, seed=seed, standardize=standardize,
      drop_constant_features=drop_constant_features,
      info={"source": str(path), "note": "official AG News test split only, re-split here",
            "embedding_model": "all-MiniLM-L6-v2"})


def load_text_embeddings_npz(train_path: str | os.PathLike, test_path: str | os.PathLike, *,
                             name: str = "text", x_key: str = "encodings",
                             y_key: str = "labels", num_classes: int | None = None,
                             class_names=None, max_test_examples: int | None = None,
                             standardize: bool = True,
                             drop_constant_features: bool = True) -> Dataset:
  """Pre-split embedding files in the original FlowGMM format.

  Each file is an npz with `encodings: [N, D]` floats and `labels: [N]` ints
  (keys configurable).

  Args:
    train_path, test_path: the two npz files.
    name: Dataset name.
    x_key, y_key: array names in the files.
    num_classes: K (default: len(class_names), else max label + 1).
    class_names: optional K names.
    max_test_examples: keep only the first this many test items.
    standardize: standardise features with train statistics (the original code did
      not; pass False to reproduce it exactly).
    drop_constant_features: remove features constant on the train split (see
      `tabular.build_tabular_dataset`).
  """
  arrays = []
  for path in (Path(train_path).expanduser(), Path(test_path).expanduser()):
    if not path.is_file():
      raise DataNotFoundError(f"embedding file not found: {path}.")
    with np.load(path, allow_pickle=False) as data:
      missing = [k for k in (x_key, y_key) if k not in data.files]
      if missing:
        raise ValueError(f"{path}: no array(s) {missing}; it has {data.files}. "
                         "Pass x_key=/y_key=.")
      arrays.append((np.asarray(data[x_key], np.float32), np.asarray(data[y_key])))
  (x_train, y_train), (x_test, y_test) = arrays
  if max_test_examples is not None:
    x_test, y_test = x_test[:max_test_examples], y_test[:max_test_examples]
  if num_classes is None:
    num_classes = len(class_names) if class_names is not None else int(
        max(y_train.max(), y_test.max() if y_test.size else 0)) + 1
  return build_tabular_dataset(
      name, "text", x_train, y_train, x_test, y_test, num_classes, class_names=class_names,
      standardize=standardize, drop_constant_features=drop_constant_features,
      info={"source": (str(train_path), str(test_path))})


def load_original_text_embeddings(name: str = "ag_news", root: str | os.PathLike | None = None,
                                  *, standardize: bool = True,
                                  drop_constant_features: bool = True) -> Dataset:
  """The original code's AG News or Yahoo Answers BERT embeddings (768-d).

  Args:
    name: "ag_news" or "yahoo".
    root: folder holding `<name>_train.npz` and `<name>_test.npz` (default the
      original's `~/datasets/AGNEWS` or `~/datasets/YAHOO`).
    standardize, drop_constant_features: see `load_text_embeddings_npz`.

  Raises:
    DataNotFoundError: with the Google Drive download links when the files are absent.
  """
  key = name.lower()
  if key not in ORIGINAL_TEXT_EMBEDDINGS:
    raise ValueError(f"unknown text dataset {name!r}; choose one of "
                     f"{sorted(ORIGINAL_TEXT_EMBEDDINGS)}.")
  spec = ORIGINAL_TEXT_EMBEDDINGS[key]
  root = Path(root if root is not None else spec["default_root"]).expanduser()
  paths = {split: root / spec[split][1] for split in ("train", "test")}
  missing = [split for split, p in paths.items() if not p.is_file()]
  if missing:
    links = "; ".join(f"{spec[s][1]}: {GDRIVE_URL.format(file_id=spec[s][0])}" for s in missing)
    raise DataNotFoundError(
        f"{key} embedding files missing in {root}: {[paths[s].name for s in missing]}. "
        f"Download them (Google Drive, from the original FlowGMM release) into {root}: {links}")
  return load_text_embeddings_npz(
      paths["train"], paths["test"], name=key, num_classes=spec["num_classes"],
      class_names=spec["class_names"], max_test_examples=spec["max_test_examples"],
      standardize=standardize, drop_constant_features=drop_constant_features)
