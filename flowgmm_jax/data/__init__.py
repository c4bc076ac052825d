"""Datasets, splits, batching and augmentation for FlowGMM.

Loaders return a `Dataset` (NumPy arrays: images `uint8 [N, H, W, C]`, everything else
`float32 [N, D]`; labels `int32 [N]`). Nothing downloads implicitly: real data for
tests and examples lives in `default_data_dir()` (`$FLOWGMM_DATA_DIR` or
`<repo>/../shared/data`), tfds datasets are read from prepared ArrayRecord files, and
a missing dataset raises `DataNotFoundError` saying how to get it.

`load_dataset(name, **kwargs)` dispatches by name to the loaders below.
"""

from __future__ import annotations

from flowgmm_jax.data.augment import (FLIP_BY_DATASET, add_feature_noise, augment_images,
                                      default_augmentation, random_crop_with_padding,
                                      random_horizontal_flip)
from flowgmm_jax.data.dataset import (DataNotFoundError, Dataset, default_cache_dir,
                                      default_data_dir, save_npz_atomic, validate_arrays)
from flowgmm_jax.data.images import (CIFAR10_CLASSES, load_cifar10, load_mnist, load_svhn,
                                     load_tfds_images, prepare_tfds_dataset, read_idx,
                                     tfds_data_source, tfds_prepare_command)
from flowgmm_jax.data.splits import (SemiSupervisedBatches, batch_indices,
                                     labeled_unlabeled_split, split_with_given_unlabeled,
                                     stratified_prefix, stratified_train_test_split)
from flowgmm_jax.data.tabular import (build_tabular_dataset, load_csv_table, load_hepmass,
                                      load_miniboone, load_npz_table, load_uci,
                                      make_split_dataset, read_miniboone, standardize_features)
from flowgmm_jax.data.text import (load_agnews_embeddings, load_original_text_embeddings,
                                   load_text_embeddings_npz)
from flowgmm_jax.labels import UNLABELED
from flowgmm_jax.data.toy import (PAPER_NUM_LABELED, TOY_DATASETS, load_toy, make_8gaussians,
                                  make_circles, make_moons, make_pinwheel)

_LOADERS = {
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "svhn": load_svhn,
    "letter": lambda **kw: load_uci("letter", **kw),
    "shuttle": lambda **kw: load_uci("shuttle", **kw),
    "miniboone": load_miniboone,
    "hepmass": load_hepmass,
    "agnews": load_agnews_embeddings,
    "ag_news_bert": lambda **kw: load_original_text_embeddings("ag_news", **kw),
    "yahoo_bert": lambda **kw: load_original_text_embeddings("yahoo", **kw),
    **TOY_DATASETS,
}
DATASET_NAMES = tuple(sorted(_LOADERS))


def load_dataset(name: str, **kwargs) -> Dataset:
  """Loads a dataset by name (one of `DATASET_NAMES`), passing kwargs to its loader."""
  key = name.lower()
  if key not in _LOADERS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASET_NAMES}.")
  return _LOADERS[key](**kwargs)


__all__ = [
    "CIFAR10_CLASSES", "DATASET_NAMES", "DataNotFoundError", "Dataset", "FLIP_BY_DATASET",
    "PAPER_NUM_LABELED", "SemiSupervisedBatches", "TOY_DATASETS", "UNLABELED",
    "add_feature_noise", "augment_images", "batch_indices", "build_tabular_dataset", "default_augmentation", "default_cache_dir",
    "default_data_dir", "labeled_unlabeled_split", "load_agnews_embeddings", "load_cifar10",
    "load_csv_table", "load_dataset", "load_hepmass", "load_miniboone", "load_mnist",
    "load_npz_table", "load_original_text_embeddings", "load_svhn", "load_text_embeddings_npz",
    "load_tfds_images", "load_toy", "load_uci", "make_8gaussians", "make_circles",
    "make_moons", "make_pinwheel", "make_split_dataset", "prepare_tfds_dataset",
    "random_crop_with_padding", "random_horizontal_flip", "read_idx", "read_miniboone",
    "save_npz_atomic", "split_with_given_unlabeled", "standardize_features",
    "stratified_prefix", "stratified_train_test_split", "tfds_data_source",
    "tfds_prepare_command", "validate_arrays",
]
