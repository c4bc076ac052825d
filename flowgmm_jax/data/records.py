"""Images read row by row from ArrayRecord files (``config.data.loader = "grain"``).

``RecordImages`` stands in for ``x_train``'s ``uint8 [N, H, W, C]`` array: indexing it with
row indices reads only those records (through grain's ``ArrayRecordDataSource``, or a tfds
data source, which is one), in worker threads, and the next step's rows are read in the
background while the current step runs (``prefetch``). Each host then reads only the rows
its own devices train on (``training/batching.py`` with ``mesh.process_rows``), and no
host holds the whole training set in memory. Batches stay a pure function of (seed, step):
the rows of a step are the memory loader's rows, only read differently.

Two sources:

* a tfds dataset prepared as ArrayRecord (``tfds.data_source``; mnist, cifar10,
  svhn_cropped or any image dataset with "image" and "label" features). Its training
  labels are read once, by one pass over the split, and cached as ``.npy`` in
  ``default_cache_dir() / "tfds_labels"`` (keyed by the dataset's name, version, split
  and record count), so later runs never read the images to split them;
* a folder of the user's own files (``data.name = "records"``, ``data.path = FOLDER``)::

      FOLDER/info.json            {"shape": [H, W, C], "num_classes": K,
                                   "class_names": [...]}   (class_names optional)
      FOLDER/train.array_record   (or train-00000-of-00004.array_record, ...: shards,
      FOLDER/test.array_record     read in sorted name order)
      FOLDER/train_labels.npy     int32 [N]: the labels of the records in order (-1 =
      FOLDER/test_labels.npy      unlabelled, train only), so that the split never needs
                                  to read the images

  Record i of a split is its label as a little-endian int32 (4 bytes) followed by the
  image's H * W * C bytes (uint8, C order). ``write_image_records`` writes such a folder;
  a missing ``<split>_labels.npy`` is rebuilt from the records' labels (one pass) and
  written beside them when the folder is writable.

The test split is small next to the training set and every host evaluates on it, so it is
read whole into memory.
"""

from __future__ import annotations

import concurrent.futures
import glob
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flowgmm_jax.data.dataset import DataNotFoundError, Dataset, default_cache_dir

LABEL_BYTES = 4  # each record starts with its label, int32 little-endian
# Reader threads per request: a request is split into this many chunks of records.
DEFAULT_THREADS = 8
# Records per read call of one thread.
READ_BATCH = 1024


def encode_record(image: np.ndarray, label: int) -> bytes:
  """One record of the folder format: int32 LE label + the image's uint8 bytes."""
  return np.asarray(label, "<i4").tobytes() + np.ascontiguousarray(image, np.uint8).tobytes()


def _decoder(shape: tuple[int, ...]) -> Callable[[bytes], np.ndarray]:
  size = int(np.prod(shape))
  def decode(record: bytes) -> np.ndarray:
    if len(record) != LABEL_BYTES + size:
      raise ValueError(f"an image record has {len(record)} bytes; info.json's shape "
                       f"{list(shape)} needs {LABEL_BYTES + size} (4 label bytes + pixels).")
    return np.frombuffer(record, np.uint8, offset=LABEL_BYTES).reshape(shape)
  return decode


def _record_label(record: bytes) -> int:
  return int(np.frombuffer(record[:LABEL_BYTES], "<i4")[0])


class RecordImages:
  """A lazy ``uint8 [N, H, W, C]`` array over a random-access source of records.

  ``x[rows]`` (rows: an int, a slice, or an int array ``[B]``) reads only those records and
  returns ``np.ndarray [B, H, W, C]``; a row asked for twice is read once. ``prefetch(rows)``
  starts reading rows in the background; the next ``x[rows]`` with the same rows takes
  them from there. ``rows_read`` counts the records read from the source and
  ``rows_touched()`` says which (both shared with the ``take`` subsets). ``np.asarray(x)`` reads everything.

  Args:
    source: random access to records, ``len(source)`` and ``source.__getitems__(keys)``
      (grain's ``ArrayRecordDataSource``) or ``source[key]`` (with ``batched=False``: a
      tfds data source, which decodes one example at a time anyway).
    decode: record -> ``uint8 [H, W, C]``.
    image_shape: ``(H, W, C)``.
    rows: the source records this array's rows are (None: all, in order).
    num_threads: reader threads per request.
    batched: read a chunk of records with one ``source.__getitems__`` call.
  """

  reads_rows_lazily = True  # Dataset and load_dataset keep it lazy (dataset.py)
  dtype = np.dtype(np.uint8)
  ndim = 4

  def __init__(self, source, decode: Callable[[Any], np.ndarray], image_shape: Sequence[int],
               rows: np.ndarray | None = None, num_threads: int = DEFAULT_THREADS,
               batched: bool = True, _shared: dict | None = None):
    self._source = source
    self._batched = batched
    self._decode = decode
    self._rows = None if rows is None else np.asarray(rows, np.int64)
    length = len(source) if rows is None else len(self._rows)
    self.shape = (int(length),) + tuple(int(s) for s in image_shape)
    self._num_threads = max(1, int(num_threads))
    # The readers, the counter and the pending prefetch are shared with ``take`` subsets.
    self._shared = _shared if _shared is not None else {
        "lock": threading.Lock(), "rows_read": 0, "pool": None, "prefetcher": None,
        "pending": None, "touched": np.zeros(len(source), bool)}

  @property
  def rows_read(self) -> int:
    return self._shared["rows_read"]

  def rows_touched(self) -> np.ndarray:
    """``int64 [M]``: the source records read at least once, ascending."""
    return np.nonzero(self._shared["touched"])[0]

  def __len__(self) -> int:
    return self.shape[0]

  def __repr__(self) -> str:
    return f"RecordImages(shape={self.shape}, rows_read={self.rows_read})"

  def take(self, indices) -> RecordImages:
    """The lazy subset of rows ``indices`` (nothing is read)."""
    indices = self._indices(indices)
    rows = indices if self._rows is None else self._rows[indices]
    return RecordImages(self._source, self._decode, self.shape[1:], rows, self._num_threads,
                        self._batched, self._shared)

  def _indices(self, key) -> np.ndarray:
    if isinstance(key, slice):
      return np.arange(*key.indices(len(self)), dtype=np.int64)
    idx = np.asarray(key)
    if idx.dtype == np.bool_:
      if idx.shape != (len(self),):
        raise IndexError(f"a boolean row mask needs shape ({len(self)},), got {idx.shape}.")
      return np.nonzero(idx)[0]
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
      raise IndexError(f"RecordImages rows must be a 1-D int array, an int or a slice; "
                       f"got {idx.dtype} {idx.shape}.")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
      raise IndexError(f"row index out of range for {len(self)} rows.")
    return np.where(idx < 0, idx + len(self), idx)

  def __getitem__(self, key) -> np.ndarray:
    if isinstance(key, (int, np.integer)):
      return self[np.array([key])][0]
    if isinstance(key, tuple):  # x[rows, ...]: only the row axis is lazy
      return self[key[0]][(slice(None),) + key[1:]]
    idx = self._indices(key)
    with self._shared["lock"]:
      pending, self._shared["pending"] = self._shared["pending"], None
    if pending is not None and pending[0] is self and np.array_equal(pending[1], idx):
      return pending[2].result()
    return self._read(idx)

  def prefetch(self, key) -> None:
    """Starts reading rows ``key`` in the background (one request pending at a time)."""
    idx = self._indices(key)
    with self._shared["lock"]:
      if self._shared["prefetcher"] is None:
        self._shared["prefetcher"] = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="flowgmm-prefetch")
      future = self._shared["prefetcher"].submit(self._read, idx)
      self._shared["pending"] = (self, idx, future)

  def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
    with self._shared["lock"]:
      if self._shared["pool"] is None:
        self._shared["pool"] = concurrent.futures.ThreadPoolExecutor(
            self._num_threads, thread_name_prefix="flowgmm-records")
      return self._shared["pool"]

  def _read(self, idx: np.ndarray) -> np.ndarray:
    unique, inverse = np.unique(idx, return_inverse=True)
    keys = unique if self._rows is None else self._rows[unique]
    out = np.empty((len(unique),) + self.shape[1:], np.uint8)
    chunks = [c for c in np.array_split(np.arange(len(keys)), self._num_threads) if len(c)]
    def read(chunk):
      # At most READ_BATCH encoded records alive per thread: reading a whole split into
      # memory holds the decoded array, not a second copy as bytes.
      for lo in range(0, len(chunk), READ_BATCH):
        part = chunk[lo:lo + READ_BATCH]
        wanted = [int(k) for k in keys[part]]
        records = (self._source.__getitems__(wanted) if self._batched
                   else [self._source[k] for k in wanted])
        for i, record in zip(part, records, strict=False):
          out[i] = self._decode(record)
    if len(chunks) <= 1:
      for chunk in chunks:
        read(chunk)
    else:
      list(self._pool().map(read, chunks))
    with self._shared["lock"]:
      self._shared["rows_read"] += len(unique)
      self._shared["touched"][keys] = True
    if len(unique) == len(idx) and np.array_equal(unique, idx):
      return out  # rows asked for in order, each once (reading all): no second copy
    return out[inverse.reshape(-1)]

  def __array__(self, dtype=None, copy=None):
    out = self[np.arange(len(self))]
    return out if dtype is None else out.astype(dtype)


def take_rows(x, indices):
  """``x[indices]``, lazily for ``RecordImages`` (a subset that reads nothing yet)."""
  return x.take(indices) if isinstance(x, RecordImages) else x[indices]


# ----------------------------------------------------------------------------- the folder format

def _split_paths(folder: Path, split: str) -> list[str]:
  single = folder / f"{split}.array_record"
  if single.is_file():
    return [str(single)]
  return sorted(glob.glob(str(folder / f"{split}-*.array_record")))


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.save(f, array)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_image_records(folder: str | os.PathLike, split: str, images: np.ndarray,
                        labels: np.ndarray, *, num_classes: int,
                        class_names: Sequence[str] | None = None, num_shards: int = 1) -> None:
  """Writes ``images uint8 [N, H, W, C]`` and ``labels int [N]`` as ``split`` of the folder
  format (module docstring): the records, ``<split>_labels.npy`` and ``info.json``."""
  from array_record.python.array_record_module import ArrayRecordWriter
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f"write_image_records needs uint8 [N, H, W, C] images, got "
                     f"{images.dtype} {images.shape}.")
  labels = np.asarray(labels, np.int32)
  bounds = np.linspace(0, len(images), num_shards + 1).astype(int)
  for shard in range(num_shards):
    name = (f"{split}.array_record" if num_shards == 1
            else f"{split}-{shard:05d}-of-{num_shards:05d}.array_record")
    # group_size:1: each record is its own chunk, so reading one row decodes one record.
    writer = ArrayRecordWriter(str(folder / name), "group_size:1")
    for i in range(bounds[shard], bounds[shard + 1]):
      writer.write(encode_record(images[i], labels[i]))
    writer.close()
  _save_npy_atomic(folder / f"{split}_labels.npy", labels)
  info = {"shape": list(images.shape[1:]), "num_classes": int(num_classes)}
  if class_names is not None:
    info["class_names"] = list(class_names)
  (folder / "info.json").write_text(json.dumps(info))


def _folder_labels(folder: Path, split: str, source) -> np.ndarray:
  path = folder / f"{split}_labels.npy"
  if path.is_file():
    labels = np.load(path, allow_pickle=False)
    if labels.shape != (len(source),):
      raise ValueError(f"{path} holds {labels.shape} labels for {len(source)} records; "
                       f"delete it to rebuild it from the records.")
    return labels.astype(np.int32)
  labels = np.array([_record_label(r) for r in source.__getitems__(range(len(source)))],
                    np.int32)
  if os.access(folder, os.W_OK):
    _save_npy_atomic(path, labels)
  return labels


def load_image_records(folder: str | os.PathLike, *, in_memory: bool = False,
                       max_train_examples: int | None = None,
                       max_test_examples: int | None = None,
                       num_threads: int = DEFAULT_THREADS) -> Dataset:
  """A folder of the format above as a Dataset: ``x_train`` a ``RecordImages`` (or, with
  ``in_memory``, read whole into ``uint8 [N, H, W, C]``), the test split in memory. Each
  split keeps at most its limit of first records."""
  import grain
  folder = Path(folder).expanduser()
  info_path = folder / "info.json"
  if not info_path.is_file():
    raise DataNotFoundError(f"{info_path} not found: a records folder needs info.json, "
                            "<split>.array_record and <split>_labels.npy "
                            "(flowgmm_jax/data/records.py; write one with "
                            "write_image_records).")
  info = json.loads(info_path.read_text())
  shape = tuple(int(s) for s in info["shape"])
  arrays = {}
  for split, limit in (("train", max_train_examples), ("test", max_test_examples)):
    paths = _split_paths(folder, split)
    if not paths:
      raise DataNotFoundError(f"no {split}.array_record (or {split}-*.array_record) in "
                              f"{folder}.")
    source = grain.sources.ArrayRecordDataSource(paths)
    x = RecordImages(source, _decoder(shape), shape, num_threads=num_threads)
    y = _folder_labels(folder, split, source)
    if limit is not None and limit > 0 and limit < len(x):
      x, y = x.take(np.arange(limit)), y[:limit]
    arrays[split] = (np.asarray(x) if (in_memory or split == "test") else x, y)
  return Dataset(name=info.get("name", folder.name), kind="image",
                 x_train=arrays["train"][0], y_train=arrays["train"][1],
                 x_test=arrays["test"][0], y_test=arrays["test"][1],
                 num_classes=int(info["num_classes"]), class_names=info.get("class_names"),
                 info={"source": f"array_record files in {folder}",
                       "loader": "memory" if in_memory else "grain"})


# ----------------------------------------------------------------------------- tfds

def _tfds_labels(source, tfds_name: str, split: str) -> np.ndarray:
  """The split's labels: cached .npy, else one pass over the split (then cached)."""
  try:
    version = str(source.dataset_info.version)
  except Exception:  # pylint: disable=broad-except  (only part of the cache key)
    version = "unknown"
  key = hashlib.sha1(f"{tfds_name}|{version}|{split}|{len(source)}".encode()).hexdigest()[:16]
  path = default_cache_dir() / "tfds_labels" / f"{tfds_name}_{split}_{key}.npy"
  try:
    labels = np.load(path, allow_pickle=False)
    if labels.shape == (len(source),):
      return labels.astype(np.int32)
  except (OSError, ValueError):
    pass  # absent or unreadable: read the labels again
  labels = np.array([int(source[i]["label"]) for i in range(len(source))], np.int32)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_npy_atomic(path, labels)
  except OSError:
    pass  # a read-only cache: the labels are read again next time
  return labels


def load_tfds_records(tfds_name: str, *, name: str | None = None,
                      data_dir: str | os.PathLike | None = None,
                      class_names: tuple[str, ...] | None = None,
                      max_train_examples: int | None = None,
                      max_test_examples: int | None = None,
                      num_threads: int = DEFAULT_THREADS) -> Dataset:
  """A tfds image dataset prepared as ArrayRecord, ``x_train`` read lazily
  (``RecordImages``; the same rows, in the same order, as ``images.load_tfds_images``), the
  test split in memory. Each split keeps at most its limit of first records."""
  from flowgmm_jax.data import images
  train = images.tfds_data_source(tfds_name, "train", data_dir)
  first = np.asarray(train[0]["image"])
  x = RecordImages(train, lambda example: np.asarray(example["image"]), first.shape,
                   num_threads=num_threads, batched=False)
  y = _tfds_labels(train, tfds_name, "train")
  if max_train_examples is not None and 0 < max_train_examples < len(x):
    x, y = x.take(np.arange(max_train_examples)), y[:max_train_examples]
  test = images.tfds_data_source(tfds_name, "test", data_dir)
  x_test, y_test = images._read_tfds_split(test, max_test_examples)  # pylint: disable=protected-access
  try:
    num_classes = int(train.dataset_info.features["label"].num_classes)
  except Exception:  # pylint: disable=broad-except
    num_classes = int(max(y.max(), y_test.max())) + 1
  names = class_names or images._label_names(train)  # pylint: disable=protected-access
  return Dataset(name=name or tfds_name, kind="image", x_train=x, y_train=y, x_test=x_test,
                 y_test=y_test, num_classes=num_classes,
                 class_names=names if names and len(names) == num_classes else None,
                 info={"source": f"tfds {tfds_name}", "tfds_data_dir": data_dir,
                       "loader": "grain"})
