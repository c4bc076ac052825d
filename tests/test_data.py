"""Tests for flowgmm_jax.data: loaders on the offline shared data, tfds through
mock_data, splits, the stateless batch sampler, augmentations and validation."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import shared_data_path as _need

from flowgmm_jax import data as fdata
from flowgmm_jax.data import images as fimages

SHARED_DATA = fdata.default_data_dir()


# ----------------------------------------------------------------------------- MNIST

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_idx_files_shapes_labels_counts():
  ds = fdata.load_mnist(_need("mnist"), source="files")
  assert ds.kind == "image"
  assert ds.num_classes == 10
  assert ds.x_train.shape == (60000, 28, 28, 1)
  assert ds.x_train.dtype == np.uint8
  assert ds.x_test.shape == (10000, 28, 28, 1)
  assert ds.y_test.dtype == np.int32
  assert ds.input_shape == (28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ds.y_train), MNIST_TRAIN_COUNTS)
  np.testing.assert_array_equal(np.bincount(ds.y_test), MNIST_TEST_COUNTS)
  np.testing.assert_array_equal(ds.y_train[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
  np.testing.assert_array_equal(ds.y_test[:5], [7, 2, 1, 0, 4])
  assert ds.x_train.min() == 0
  assert ds.x_train.max() == 255
  # Digits are bright strokes on a black background: corners are empty.
  assert ds.x_train[:, 0, 0, 0].max() == 0
  assert 33.0 < ds.x_train.mean() < 33.6  # known MNIST mean pixel value 33.32


def test_mnist_subset_is_class_balanced_prefix():
  ds = fdata.load_mnist(_need("mnist"), max_examples=50)
  assert ds.x_train.shape == (50, 28, 28, 1)
  assert ds.x_test.shape == (50, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ds.y_train), [5] * 10)
  np.testing.assert_array_equal(ds.y_train[:10], np.arange(10))


def _write_idx(path: Path, array: np.ndarray, magic: int, compress: bool = True) -> None:
  header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
  blob = header + array.astype(np.uint8).tobytes()
  path.write_bytes(gzip.compress(blob) if compress else blob)


def test_read_idx_round_trip_and_errors(tmp_path):
  images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  _write_idx(tmp_path / "imgs.gz", images, fimages.IDX_IMAGES_MAGIC)
  np.testing.assert_array_equal(fdata.read_idx(tmp_path / "imgs.gz", 2051), images)
  _write_idx(tmp_path / "raw", images, fimages.IDX_IMAGES_MAGIC, compress=False)
  np.testing.assert_array_equal(fdata.read_idx(tmp_path / "raw"), images)
  with pytest.raises(ValueError, match="magic number is 2051, expected 2049"):
    fdata.read_idx(tmp_path / "imgs.gz", fimages.IDX_LABELS_MAGIC)
  (tmp_path / "short.gz").write_bytes(
      gzip.compress((2051).to_bytes(4, "big") + b"".join(
          s.to_bytes(4, "big") for s in (2, 3, 4)) + b"\0" * 5))
  with pytest.raises(ValueError, match="truncated or corrupt"):
    fdata.read_idx(tmp_path / "short.gz")
  (tmp_path / "junk").write_bytes(b"\x12\x34\x56\x78junk")
  with pytest.raises(ValueError, match="not an IDX file"):
    fdata.read_idx(tmp_path / "junk")


def test_mnist_missing_files_error(tmp_path):
  with pytest.raises(fdata.DataNotFoundError, match="MNIST IDX files not found"):
    fdata.load_mnist(tmp_path, source="files")


# ----------------------------------------------------------------------------- CIFAR-10

@pytest.fixture(scope="module")
def cifar_subset(tmp_path_factory):
  pytest.importorskip("PIL", reason="decoding CIFAR-10 JPEGs needs Pillow")
  archive = _need("cifar10", "cifar10_jpeg_yoongikim.tar.xz")
  cache_dir = tmp_path_factory.mktemp("cifar_cache")
  return fdata.load_cifar10(archive.parent, source="files", max_examples=1000,
                            cache_dir=cache_dir)


def test_cifar10_jpeg_subset(cifar_subset):
  ds = cifar_subset
  assert ds.x_train.shape == (1000, 32, 32, 3)
  assert ds.x_train.dtype == np.uint8
  assert ds.x_test.shape == (1000, 32, 32, 3)
  assert ds.class_names == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                            "horse", "ship", "truck")
  np.testing.assert_array_equal(np.bincount(ds.y_train), [100] * 10)
  np.testing.assert_array_equal(np.bincount(ds.y_test), [100] * 10)
  np.testing.assert_array_equal(ds.y_train[:20], np.tile(np.arange(10), 2))
  # Standard class order, checked on content: sky/sea classes (airplane=0, ship=8)
  # are much bluer than frogs (6) and deer (4).
  blue_minus_red = np.array([
      (ds.x_train[ds.y_train == c, ..., 2].astype(float) -
       ds.x_train[ds.y_train == c, ..., 0]).mean() for c in range(10)])
  assert min(blue_minus_red[0], blue_minus_red[8]) > max(blue_minus_red[6], blue_minus_red[4]) + 20
  # Overall channel means close to the canonical CIFAR-10 ones.
  np.testing.assert_allclose(ds.x_train.mean(axis=(0, 1, 2)) / 255,
                             [0.4914, 0.4822, 0.4465], atol=0.03)


def _solid_jpeg(value: int) -> bytes:
  Image = pytest.importorskip("PIL.Image", reason="decoding CIFAR-10 JPEGs needs Pillow")
  buf = io.BytesIO()
  Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(buf, format="JPEG", quality=95)
  return buf.getvalue()


def _make_fake_cifar(tmp_path: Path, per_class: dict[str, int]) -> Path:
  """A tar.xz with train/<class>/NNNN.jpg, solid grey level 20 * class + file number."""
  archive = tmp_path / fimages.CIFAR10_JPEG_ARCHIVE
  with tarfile.open(archive, "w:xz") as tar:
    # Added in reverse order so the loader's own ordering is what the test sees.
    for split, count in reversed(list(per_class.items())):
      for c, name in reversed(list(enumerate(fimages.CIFAR10_CLASSES))):
        for i in reversed(range(count)):
          blob = _solid_jpeg(20 * c + i)
          info = tarfile.TarInfo(f"{split}/{name}/{i:04d}.jpg")
          info.size = len(blob)
          tar.addfile(info, io.BytesIO(blob))
  return archive


def test_cifar10_jpeg_labels_order_and_cache(tmp_path):
  (tmp_path / "src").mkdir()
  archive = _make_fake_cifar(tmp_path / "src", {"train": 3, "test": 2})
  cache_dir = tmp_path / "cache"
  ds = fdata.load_cifar10(archive, max_examples=None, cache_dir=cache_dir)
  assert ds.x_train.shape == (30, 32, 32, 3)
  assert ds.x_test.shape == (20, 32, 32, 3)
  # Class-interleaved order: file 0000 of every class, then 0001, ...
  np.testing.assert_array_equal(ds.y_train, np.tile(np.arange(10), 3))
  expected_level = 20 * np.tile(np.arange(10), 3) + np.repeat(np.arange(3), 10)
  np.testing.assert_allclose(ds.x_train.reshape(30, -1).mean(axis=1), expected_level, atol=2)
  cached = list(cache_dir.glob("cifar10_jpeg_*.npz"))
  assert len(cached) == 1
  assert not list(cache_dir.glob("*.tmp"))
  # The second load comes from the cache and is identical; a subset is a prefix.
  again = fdata.load_cifar10(archive, cache_dir=cache_dir)
  np.testing.assert_array_equal(again.x_train, ds.x_train)
  subset_cached = fdata.load_cifar10(archive, max_examples=12, cache_dir=cache_dir)
  subset_direct = fdata.load_cifar10(archive, max_examples=12, cache=False)
  np.testing.assert_array_equal(subset_cached.x_train, subset_direct.x_train)
  np.testing.assert_array_equal(subset_direct.y_train, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
  np.testing.assert_array_equal(subset_direct.x_train, ds.x_train[:12])
  # A corrupt cache file is ignored and rewritten.
  cached[0].write_bytes(b"not an npz")
  rebuilt = fdata.load_cifar10(archive, cache_dir=cache_dir)
  np.testing.assert_array_equal(rebuilt.x_test, ds.x_test)
  assert np.load(cached[0])["x_train"].shape == (30, 32, 32, 3)


def test_cifar10_extracted_directory_and_errors(tmp_path):
  for split in ("train", "test"):
    for c, name in enumerate(fimages.CIFAR10_CLASSES):
      folder = tmp_path / "cifar" / split / name
      folder.mkdir(parents=True)
      (folder / "0000.jpg").write_bytes(_solid_jpeg(20 * c))
  ds = fdata.load_cifar10(tmp_path / "cifar", source="files")
  np.testing.assert_array_equal(ds.y_train, np.arange(10))
  np.testing.assert_allclose(ds.x_test.reshape(10, -1).mean(axis=1), 20 * np.arange(10), atol=2)
  with pytest.raises(fdata.DataNotFoundError, match="No CIFAR-10 JPEG data"):
    fdata.load_cifar10(tmp_path / "nothing_here", source="files")
  with pytest.raises(ValueError, match="source must be"):
    fdata.load_cifar10(tmp_path, source="internet")


# ----------------------------------------------------------------------------- SVHN / tfds

def test_svhn_through_tfds_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=20):
    ds = fdata.load_svhn(data_dir=tmp_path)
    small = fdata.load_svhn(data_dir=tmp_path, max_examples=7)
  assert ds.name == "svhn"
  assert ds.kind == "image"
  assert ds.num_classes == 10
  assert ds.x_train.shape == (20, 32, 32, 3)
  assert ds.x_train.dtype == np.uint8
  assert ds.x_test.shape == (20, 32, 32, 3)
  assert ds.y_train.dtype == np.int32
  assert ds.y_train.min() >= 0
  assert ds.y_train.max() < 10
  assert ds.x_train.std() > 0  # real (random) pixels were read, not zeros
  assert small.x_train.shape == (7, 32, 32, 3)
  np.testing.assert_array_equal(small.x_train, ds.x_train[:7])
  np.testing.assert_array_equal(small.y_test, ds.y_test[:7])


def test_svhn_not_prepared_gives_one_clear_error(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(fdata.DataNotFoundError) as info:
    fdata.load_svhn(data_dir=tmp_path)
  message = str(info.value)
  assert "'svhn_cropped' is not prepared" in message
  assert "pip install 'flowgmm_jax[prepare]'" in message
  assert "file_format='array_record').download_and_prepare()" in message
  assert str(tmp_path) in message
  assert isinstance(info.value, FileNotFoundError)
  assert list(tmp_path.iterdir()) == []  # nothing was downloaded or written


def test_download_without_tensorflow_explains_install(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  try:
    import importlib_resources  # noqa: F401
    import tensorflow  # noqa: F401
    pytest.skip("TensorFlow is installed: preparing would really download")
  except ImportError:
    pass
  with pytest.raises(fdata.DataNotFoundError, match="needs TensorFlow"):
    fdata.load_svhn(data_dir=tmp_path, download=True)
  assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- tabular

@pytest.mark.parametrize(("name", "num_rows", "dim", "num_classes"), [
    ("letter", 20000, 16, 26), ("shuttle", 58000, 9, 7)])
def test_uci_loaders_split_and_standardise(name, num_rows, dim, num_classes):
  _need("tabular")
  ds = fdata.load_uci(name, SHARED_DATA / "tabular", seed=0)
  raw = np.load(SHARED_DATA / "tabular" / fdata.tabular.UCI_FILES[name])
  num_test = round(0.1 * num_rows)
  assert ds.x_train.shape == (num_rows - num_test, dim)
  assert ds.x_test.shape == (num_test, dim)
  assert ds.x_train.dtype == np.float32
  assert ds.num_classes == num_classes
  assert len(ds.class_names) == num_classes
  # (float64 reductions: float32 ones are off by 1e-4 on Shuttle's heavy tails)
  np.testing.assert_allclose(ds.x_train.mean(axis=0, dtype=np.float64), 0.0, atol=1e-5)
  np.testing.assert_allclose(ds.x_train.std(axis=0, dtype=np.float64), 1.0, atol=1e-5)
  assert "dropped_feature_columns" not in ds.info
  # Statistics are returned so the transformation can be inverted exactly.
  mean, std = ds.info["feature_mean"], ds.info["feature_std"]
  np.testing.assert_allclose(ds.x_train * std + mean, raw["x"][ds.info["train_indices"]],
                             rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(ds.x_test * std + mean, raw["x"][ds.info["test_indices"]],
                             rtol=1e-5, atol=1e-3)
  np.testing.assert_array_equal(ds.y_test, raw["y"][ds.info["test_indices"]])
  # Stratified: every class's test share is 10% up to rounding.
  all_counts = np.bincount(raw["y"], minlength=num_classes)
  test_counts = np.bincount(ds.y_test, minlength=num_classes)
  assert np.all(np.abs(test_counts - 0.1 * all_counts) <= 1)
  assert np.all(np.bincount(ds.y_train, minlength=num_classes) >= 1)
  again = fdata.load_uci(name, SHARED_DATA / "tabular", seed=0)
  np.testing.assert_array_equal(again.info["test_indices"], ds.info["test_indices"])
  other = fdata.load_uci(name, SHARED_DATA / "tabular", seed=1)
  assert not np.array_equal(np.sort(other.info["test_indices"]), np.sort(ds.info["test_indices"]))


def test_uci_unknown_and_missing(tmp_path):
  with pytest.raises(ValueError, match="unknown UCI dataset"):
    fdata.load_uci("iris")
  with pytest.raises(fdata.DataNotFoundError, match="letterrecognition_mlbench.npz"):
    fdata.load_uci("letter", tmp_path)


def test_csv_table_loader(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 3))
  labels = np.array(["cat", "dog"] * 20)
  path = tmp_path / "table.csv"
  lines = ["a,b,kind,c"] + [f"{r[0]},{r[1]},{lab},{r[2]}" for r, lab in zip(x, labels, strict=False)]
  path.write_text("\n".join(lines) + "\n")
  ds = fdata.load_csv_table(path, label_column="kind", test_fraction=0.25, standardize=False)
  assert ds.class_names == ("cat", "dog")
  assert ds.num_classes == 2
  assert ds.x_train.shape == (30, 3)
  assert ds.x_test.shape == (10, 3)
  np.testing.assert_allclose(ds.x_test, x[ds.info["test_indices"]], rtol=1e-6)
  np.testing.assert_array_equal(np.bincount(ds.y_test), [5, 5])
  # Default label column = last; headerless numeric file with -1 = unlabelled rows.
  y_num = np.array([0, 1, 2, -1] * 10)
  path2 = tmp_path / "plain.csv"
  path2.write_text("\n".join(f"{r[0]},{r[1]},{r[2]},{v}" for r, v in zip(x, y_num, strict=False)))
  ds2 = fdata.load_csv_table(path2, test_fraction=0.2)
  assert ds2.num_classes == 3
  assert ds2.x_test.shape[0] == 6
  assert (ds2.y_train == -1).sum() == 10
  assert (ds2.y_test >= 0).all()
  labeled, unlabeled = fdata.split_with_given_unlabeled(ds2.y_train)
  assert len(labeled) == 24
  assert len(unlabeled) == 10
  # Headerless with string labels: the label column does not make row 1 a header.
  path3 = tmp_path / "strings.csv"
  path3.write_text("\n".join(f"{r[0]},{r[1]},{lab}" for r, lab in zip(x, labels, strict=False)))
  ds3 = fdata.load_csv_table(path3, test_fraction=0.5)
  assert ds3.num_train + ds3.num_test == 40
  assert ds3.class_names == ("cat", "dog")
  # A constant feature column is dropped (it would make a flow's density degenerate).
  path4 = tmp_path / "constant.csv"
  path4.write_text("\n".join(f"{r[0]},7.0,{r[1]},{lab}" for r, lab in zip(x, labels, strict=False)))
  ds4 = fdata.load_csv_table(path4)
  assert ds4.input_shape == (2,)
  np.testing.assert_array_equal(ds4.info["dropped_feature_columns"], [1])
  with pytest.raises(fdata.DataNotFoundError, match="CSV file not found"):
    fdata.load_csv_table(tmp_path / "missing.csv")
  with pytest.raises(ValueError, match="no column named 'label'"):
    fdata.load_csv_table(path, label_column="label")
  bad = tmp_path / "bad.csv"
  bad.write_text("1.0,2.0,0\n3.0,oops,1\n")
  with pytest.raises(ValueError, match=r"non-numeric value 'oops' in row 2, column 2"):
    fdata.load_csv_table(bad)


def test_miniboone_format(tmp_path):
  rng = np.random.default_rng(1)
  signal, background = rng.normal(size=(6, 50)), rng.normal(size=(4, 50)) + 10
  path = tmp_path / "MiniBooNE_PID.txt"
  rows = [" ".join(f"{v:.6f}" for v in r) for r in np.concatenate([signal, background])]
  path.write_text("   6   4\n" + "\n".join(rows) + "\n")
  x, y = fdata.read_miniboone(path)
  # Balanced: the first min(6, 4) = 4 rows of each class.
  np.testing.assert_allclose(x, np.concatenate([signal[:4], background]), atol=1e-5)
  np.testing.assert_array_equal(y, [1, 1, 1, 1, 0, 0, 0, 0])
  ds = fdata.load_miniboone(path, test_fraction=0.25)
  assert ds.x_train.shape == (6, 50)
  assert ds.x_test.shape == (2, 50)
  np.testing.assert_array_equal(np.bincount(ds.y_test), [1, 1])
  with pytest.raises(fdata.DataNotFoundError, match="MiniBooNE_PID.txt"):
    fdata.load_miniboone(tmp_path / "nope.txt")


def test_hepmass_format(tmp_path):
  rng = np.random.default_rng(2)

  def rows(n, extra_column):
    label = rng.integers(0, 2, n)
    continuous = rng.normal(size=(n, 2))
    discrete = rng.integers(0, 3, n)  # smallest value repeats > 5 times: removed
    mass = np.full(n, 1000.0)          # constant: removed
    out = []
    for i in range(n):
      fields = [f"{label[i]:.1f}", f"{continuous[i, 0]:.6f}", f"{continuous[i, 1]:.6f}",
                f"{discrete[i]:.1f}", f"{mass[i]:.1f}"] + (["0"] if extra_column else [])
      out.append(",".join(fields))
    return label, continuous, out

  y_tr, c_tr, train_rows = rows(60, False)
  y_te, c_te, test_rows = rows(30, True)
  header = "# label,f0,f1,f2,mass"
  (tmp_path / "1000_train.csv").write_text("\n".join([header] + train_rows) + "\n")
  (tmp_path / "1000_test.csv").write_text("\n".join([header] + test_rows) + "\n")
  ds = fdata.load_hepmass(tmp_path, train_fraction=1.0, test_fraction=1.0)
  np.testing.assert_array_equal(ds.info["kept_feature_columns"], [0, 1])
  assert ds.x_train.shape == (60, 2)
  assert ds.x_test.shape == (30, 2)
  np.testing.assert_array_equal(ds.y_train, y_tr)
  np.testing.assert_allclose(ds.x_train.mean(axis=0), 0, atol=1e-5)
  np.testing.assert_allclose(ds.x_test * ds.info["feature_std"] + ds.info["feature_mean"],
                             c_te, atol=1e-5)
  sub = fdata.load_hepmass(tmp_path, train_fraction=0.5, test_fraction=0.5, seed=3)
  assert 15 < sub.num_train < 45
  with pytest.raises(fdata.DataNotFoundError, match="1000_train.csv"):
    fdata.load_hepmass(tmp_path / "empty")


# ----------------------------------------------------------------------------- text

def test_agnews_embeddings_split():
  path = _need("text", "agnews_test_minilm_l6_v2.npz")
  ds = fdata.load_agnews_embeddings(path, seed=0)
  assert ds.kind == "text"
  assert ds.num_classes == 4
  assert ds.class_names == ("World", "Sports", "Business", "Sci/Tech")
  # Two MiniLM dimensions are numerically zero for every item: dropped (382 kept).
  assert ds.x_train.shape == (6080, 382)
  assert ds.x_test.shape == (1520, 382)
  np.testing.assert_array_equal(ds.info["dropped_feature_columns"], [127, 223])
  np.testing.assert_array_equal(np.bincount(ds.y_train), [1520] * 4)
  np.testing.assert_array_equal(np.bincount(ds.y_test), [380] * 4)
  train_idx, test_idx = ds.info["train_indices"], ds.info["test_indices"]
  np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(7600))
  np.testing.assert_allclose(ds.x_train.std(axis=0, dtype=np.float64), 1.0, atol=1e-4)
  raw = fdata.load_agnews_embeddings(path, seed=0, standardize=False,
                                     drop_constant_features=False)
  assert raw.input_shape == (384,)
  np.testing.assert_array_equal(raw.info["test_indices"], test_idx)
  # The raw embeddings are L2-normalised.
  np.testing.assert_allclose(np.linalg.norm(raw.x_test, axis=1), 1.0, atol=1e-4)
  kept = ds.info["kept_feature_columns"]
  np.testing.assert_allclose(ds.x_test * ds.info["feature_std"] + ds.info["feature_mean"],
                             raw.x_test[:, kept], atol=1e-6)


def test_original_text_embedding_files(tmp_path):
  rng = np.random.default_rng(3)
  for split, n in (("train", 12), ("test", 8)):
    np.savez(tmp_path / f"ag_news_{split}.npz", encodings=rng.normal(size=(n, 768)),
             labels=np.arange(n) % 4)
  ds = fdata.load_original_text_embeddings("ag_news", tmp_path, standardize=False)
  assert ds.x_train.shape == (12, 768)
  assert ds.x_test.shape == (8, 768)
  assert ds.num_classes == 4
  np.testing.assert_array_equal(ds.y_test, np.arange(8) % 4)
  with pytest.raises(fdata.DataNotFoundError, match="docs.google.com/uc"):
    fdata.load_original_text_embeddings("yahoo", tmp_path)


# ----------------------------------------------------------------------------- toy

@pytest.mark.parametrize(("name", "num_classes"), [
    ("moons", 2), ("circles", 2), ("8gaussians", 3), ("pinwheel", 5)])
def test_toy_generators(name, num_classes):
  ds = fdata.load_toy(name, seed=0)
  assert ds.kind == "toy"
  assert ds.num_classes == num_classes
  assert ds.x_train.shape == (1000, 2)
  assert ds.x_test.shape == (1000, 2)
  assert ds.x_train.dtype == np.float32
  assert set(np.unique(ds.y_train)) == set(range(num_classes))
  np.testing.assert_array_equal(fdata.load_toy(name, seed=0).x_train, ds.x_train)
  assert not np.array_equal(fdata.load_toy(name, seed=1).x_train, ds.x_train)
  # The paper's handful of labels, class-balanced.
  num_labeled = ds.info["paper_num_labeled"]
  assert 10 <= num_labeled <= 19
  labeled, unlabeled = fdata.labeled_unlabeled_split(ds.y_train, num_labeled=num_labeled)
  assert len(labeled) == num_labeled
  assert len(unlabeled) == 1000 - num_labeled
  counts = np.bincount(ds.y_train[labeled], minlength=num_classes)
  assert counts.max() - counts.min() <= 1


def test_toy_geometry():
  circles = fdata.make_circles(num_train=4000, noise=0.0)
  radius = np.linalg.norm(circles.x_train, axis=1)
  np.testing.assert_allclose(radius[circles.y_train == 0], 1.0, atol=1e-5)
  np.testing.assert_allclose(radius[circles.y_train == 1], 0.4, atol=1e-5)
  moons = fdata.make_moons(num_train=4000, noise=0.0)
  outer = moons.x_train[moons.y_train == 0]
  inner = moons.x_train[moons.y_train == 1]
  np.testing.assert_allclose(np.linalg.norm(outer, axis=1), 1.0, atol=1e-5)
  assert outer[:, 1].min() >= -1e-6
  np.testing.assert_allclose(np.linalg.norm(inner - [1.0, 0.5], axis=1), 1.0, atol=1e-5)
  gauss = fdata.make_8gaussians(num_train=8000, std=0.0, num_classes=8)
  angle = np.degrees(np.arctan2(gauss.x_train[:, 1], gauss.x_train[:, 0])) % 360
  np.testing.assert_allclose(angle, 45.0 * gauss.y_train, atol=1e-3)
  np.testing.assert_allclose(np.linalg.norm(gauss.x_train, axis=1), 2 * np.sqrt(2), atol=1e-5)
  paper = fdata.make_8gaussians(num_train=8000, std=0.0)
  angle = np.round(np.degrees(np.arctan2(paper.x_train[:, 1], paper.x_train[:, 0])) % 360)
  for degrees, label in ((0, 1), (45, 2), (90, 2), (135, 2), (180, 0), (225, 0), (270, 1),
                         (315, 1)):
    assert set(paper.y_train[angle == degrees]) == {label}
  pin = fdata.make_pinwheel(num_train=5000, radial_std=0.0, tangential_std=0.0)
  # Zero noise: every arm collapses to one point at radius 2, angle 72k + 0.25 e rad.
  expected_angle = 2 * np.pi * pin.y_train / 5 + 0.25 * np.e
  np.testing.assert_allclose(pin.x_train, 2 * np.stack(
      [np.cos(expected_angle), np.sin(expected_angle)], axis=1), atol=1e-5)


# ----------------------------------------------------------------------------- splits

def test_labeled_unlabeled_split_stratified_and_deterministic():
  y = np.repeat(np.arange(4), [30, 20, 25, 50])
  rng = np.random.default_rng(0)
  y = y[rng.permutation(y.size)]
  labeled, unlabeled = fdata.labeled_unlabeled_split(y, num_labeled_per_class=5, seed=3)
  np.testing.assert_array_equal(np.bincount(y[labeled]), [5, 5, 5, 5])
  np.testing.assert_array_equal(np.sort(np.concatenate([labeled, unlabeled])), np.arange(y.size))
  again = fdata.labeled_unlabeled_split(y, num_labeled_per_class=5, seed=3)
  np.testing.assert_array_equal(again[0], labeled)
  other = fdata.labeled_unlabeled_split(y, num_labeled_per_class=5, seed=4)
  assert not np.array_equal(other[0], labeled)
  total, _ = fdata.labeled_unlabeled_split(y, num_labeled=10, seed=0)
  assert sorted(np.bincount(y[total], minlength=4)) == [2, 2, 3, 3]
  # Examples already marked -1 are never labelled.
  y_given = y.copy()
  y_given[:40] = -1
  lab, unl = fdata.labeled_unlabeled_split(y_given, num_labeled_per_class=3, seed=0)
  assert lab.min() >= 40
  assert set(range(40)) <= set(unl.tolist())
  with pytest.raises(ValueError, match="exactly one"):
    fdata.labeled_unlabeled_split(y, num_labeled=4, num_labeled_per_class=1)
  with pytest.raises(ValueError, match="class 1 has only 20"):
    fdata.labeled_unlabeled_split(y, num_labeled_per_class=21)
  given_lab, given_unl = fdata.split_with_given_unlabeled(np.array([0, -1, 2, -1, 1]))
  np.testing.assert_array_equal(given_lab, [0, 2, 4])
  np.testing.assert_array_equal(given_unl, [1, 3])
  with pytest.raises(ValueError, match="-1 for unlabelled"):
    fdata.split_with_given_unlabeled(np.array([0, -2]))


def test_stratified_train_test_split_and_prefix():
  y = np.repeat(np.arange(3), [50, 30, 20])
  train, test = fdata.stratified_train_test_split(y, 0.1, seed=0)
  np.testing.assert_array_equal(np.bincount(y[test]), [5, 3, 2])
  assert np.intersect1d(train, test).size == 0
  assert train.size + test.size == 100
  prefix = fdata.stratified_prefix(y, 7)
  np.testing.assert_array_equal(y[prefix], [0, 1, 2, 0, 1, 2, 0])
  np.testing.assert_array_equal(prefix[:3], [0, 50, 80])


def test_batch_indices_epochs_and_resume():
  n, b = 10, 4
  stream = np.concatenate([fdata.batch_indices(n, b, seed=7, step=s) for s in range(10)])
  # Positions 0..39 = 4 full epochs, each a permutation of range(10), all different.
  epochs = stream.reshape(4, n)
  for e in epochs:
    np.testing.assert_array_equal(np.sort(e), np.arange(n))
  assert len({tuple(e) for e in epochs}) == 4
  # Resuming at step s reproduces exactly the batches of an uninterrupted run.
  for s in (0, 2, 3, 7):
    np.testing.assert_array_equal(fdata.batch_indices(n, b, 7, s), stream[s * b:(s + 1) * b])
  # A batch larger than the data set: consecutive permutations (balanced counts).
  big = fdata.batch_indices(3, 8, seed=0, step=0)
  np.testing.assert_array_equal(np.sort(big[:3]), np.arange(3))
  np.testing.assert_array_equal(np.sort(big[3:6]), np.arange(3))
  assert np.bincount(big, minlength=3).min() >= 2
  assert not np.array_equal(fdata.batch_indices(n, b, 8, 0), fdata.batch_indices(n, b, 7, 0))
  with pytest.raises(ValueError, match="step must be >= 0"):
    fdata.batch_indices(n, b, 0, -1)


def test_semi_supervised_batches():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 3, 50)
  x = np.arange(50 * 2, dtype=np.float32).reshape(50, 2)
  labeled, unlabeled = fdata.labeled_unlabeled_split(y, num_labeled_per_class=2, seed=0)
  batches = fdata.SemiSupervisedBatches(x, y, labeled, unlabeled, labeled_batch_size=4,
                                        unlabeled_batch_size=8, seed=5)
  out = batches.batch(3)
  assert out["x"].shape == (12, 2)
  assert out["y"].shape == (12,)
  assert out["y"].dtype == np.int32
  assert np.all(out["y"][4:] == -1)
  rows = (out["x"][:, 0] / 2).astype(int)  # row r holds [2r, 2r+1]
  assert set(rows[:4]) <= set(labeled.tolist())
  assert set(rows[4:]) <= set(unlabeled.tolist())
  np.testing.assert_array_equal(out["y"][:4], y[rows[:4]])
  # Stateless: the same step gives the same batch, from a fresh object too.
  fresh = fdata.SemiSupervisedBatches(x, y, labeled, unlabeled, 4, 8, seed=5)
  np.testing.assert_array_equal(fresh.batch(3)["x"], out["x"])
  resumed = fresh.iterate(start_step=3)
  for expected_step in (3, 4, 5):
    step, batch = next(resumed)
    assert step == expected_step
    np.testing.assert_array_equal(batch["x"], batches.batch(expected_step)["x"])
  # One pass over the 6 labelled examples with B_l = 4 takes two steps (wrapping).
  assert batches.labeled_steps_per_epoch == 2
  with pytest.raises(ValueError, match="label -1"):
    fdata.SemiSupervisedBatches(x, np.full(50, -1), labeled, unlabeled, 4, 8)


# ----------------------------------------------------------------------------- augmentation

def _find_shift(padded: np.ndarray, out: np.ndarray, pad: int):
  h, w = out.shape[:2]
  for dy in range(2 * pad + 1):
    for dx in range(2 * pad + 1):
      if np.array_equal(padded[dy:dy + h, dx:dx + w], out):
        return dy, dx
  return None


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_random_crop_is_a_shift_of_the_padded_image(mode):
  x = jax.random.uniform(jax.random.PRNGKey(0), (16, 8, 8, 3)) * 255
  out = jax.jit(lambda r, v: fdata.random_crop_with_padding(r, v, 3, mode))(
      jax.random.PRNGKey(1), x)
  assert out.shape == x.shape
  assert out.dtype == x.dtype
  padded = np.pad(np.asarray(x), ((0, 0), (3, 3), (3, 3), (0, 0)), mode=mode)
  shifts = [_find_shift(padded[i], np.asarray(out[i]), 3) for i in range(16)]
  assert all(s is not None for s in shifts)
  assert len(set(shifts)) > 4  # offsets are drawn per example
  np.testing.assert_array_equal(fdata.random_crop_with_padding(jax.random.PRNGKey(1), x, 0), x)


def test_random_horizontal_flip_and_augment_images():
  x = jax.random.uniform(jax.random.PRNGKey(0), (32, 4, 5, 2))
  out = np.asarray(fdata.random_horizontal_flip(jax.random.PRNGKey(2), x))
  xn = np.asarray(x)
  flipped = [np.array_equal(out[i], xn[i, :, ::-1]) for i in range(32)]
  kept = [np.array_equal(out[i], xn[i]) for i in range(32)]
  assert all(f or k for f, k in zip(flipped, kept, strict=False))
  assert 4 < sum(flipped) < 28
  step = jax.jit(lambda r, v: fdata.augment_images(r, v, crop_padding=2, flip=True))
  aug = np.asarray(step(jax.random.PRNGKey(3), x))
  assert aug.shape == x.shape
  padded = np.pad(xn, ((0, 0), (2, 2), (2, 2), (0, 0)))
  padded_mirror = np.pad(xn[:, :, ::-1], ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(32):
    assert (_find_shift(padded[i], aug[i], 2) is not None or
            _find_shift(padded_mirror[i], aug[i], 2) is not None)
  assert fdata.default_augmentation("cifar10") == {"crop_padding": 4, "flip": True}
  assert fdata.default_augmentation("mnist")["flip"] is False
  assert fdata.default_augmentation("svhn")["flip"] is False


# ----------------------------------------------------------------------------- validation

def test_validation_errors():
  x = np.zeros((4, 3), np.float32)
  y = np.array([0, 1, 2, 1])
  fdata.validate_arrays(x, y, 3, "ok")
  bad = x.copy()
  bad[2, 1] = np.nan
  with pytest.raises(ValueError, match=r"NaN or inf in 1 row\(s\) \(first: row 2\)"):
    fdata.validate_arrays(bad, y, 3, "t")
  bad[2, 1] = np.inf
  with pytest.raises(ValueError, match="NaN or inf"):
    fdata.validate_arrays(bad, y, 3, "t")
  with pytest.raises(ValueError, match=r"out of range \(first: y\[2\] = 2\)"):
    fdata.validate_arrays(x, y, 2, "t")
  with pytest.raises(ValueError, match="4 feature rows but 3 labels"):
    fdata.validate_arrays(x, y[:3], 3, "t")
  with pytest.raises(ValueError, match="ndim >= 2"):
    fdata.validate_arrays(np.zeros(4), y, 3, "t")
  with pytest.raises(ValueError, match="NHWC"):
    fdata.validate_arrays(x, y, 3, "t", expected_ndim=4)
  with pytest.raises(ValueError, match="labels must be integers"):
    fdata.validate_arrays(x, np.array([0.5, 1, 0, 1]), 3, "t")
  with pytest.raises(ValueError, match="out of range"):
    fdata.validate_arrays(x, np.array([0, -1, 0, 1]), 3, "t")
  fdata.validate_arrays(x, np.array([0, -1, 0, 1]), 3, "t", allow_unlabeled=True)
  # Dataset checks both splits on construction.
  with pytest.raises(ValueError, match="images must be uint8"):
    fdata.Dataset("d", "image", np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, int),
                  np.zeros((1, 4, 4, 1), np.uint8), np.zeros(1, int), 2)
  with pytest.raises(ValueError, match="test split.*out of range"):
    fdata.Dataset("d", "tabular", x, y, x, np.array([0, 1, 5, 1]), 3)
  with pytest.raises(ValueError, match="kind must be one of"):
    fdata.Dataset("d", "audio", x, y, x, y, 3)
  ds = fdata.Dataset("d", "tabular", x.astype(np.float64), np.array([0, -1, 2, 1]), x, y, 3)
  assert ds.x_train.dtype == np.float32
  assert ds.y_train.dtype == np.int32
  assert ds.input_shape == (3,)


# ----------------------------------------------------------------------------- SVHN .mat

def write_svhn_mat(folder: Path, num_train: int = 40, num_test: int = 20, seed: int = 0):
  """Small files in the real layout: X uint8 [32, 32, 3, N], y [N, 1], label 10 = digit 0."""
  from scipy.io import savemat
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  written = {}
  for name, n in (("train_32x32.mat", num_train), ("test_32x32.mat", num_test)):
    digits = np.arange(n) % 10
    x = rng.integers(0, 256, (32, 32, 3, n)).astype(np.uint8)
    savemat(folder / name, {"X": x, "y": np.where(digits == 0, 10, digits)[:, None]})
    written[name] = (x, digits)
  return written


def test_svhn_mat_files_layout_and_label_10_is_digit_0(tmp_path):
  written = write_svhn_mat(tmp_path, num_train=40, num_test=20)
  ds = fdata.load_svhn(mat_dir=tmp_path)
  x, digits = written["train_32x32.mat"]
  assert ds.x_train.shape == (40, 32, 32, 3)
  assert ds.x_train.dtype == np.uint8
  assert ds.x_test.shape == (20, 32, 32, 3)
  assert ds.num_classes == 10
  np.testing.assert_array_equal(ds.x_train[7], x[:, :, :, 7])  # [H, W, C, N] -> [N, H, W, C]
  np.testing.assert_array_equal(ds.y_train, digits)             # 10 read as 0
  assert ds.y_train.dtype == np.int32
  assert set(ds.y_test) == set(range(10))
  # A data_dir holding both files is read the same way; a class-balanced subset.
  small = fdata.load_svhn(data_dir=tmp_path, max_examples=10)
  assert sorted(small.y_train) == list(range(10))


def test_svhn_mat_errors_are_one_clear_line(tmp_path):
  with pytest.raises(fdata.DataNotFoundError, match="train_32x32.mat"):
    fdata.load_svhn(mat_dir=tmp_path)
  from scipy.io import savemat
  savemat(tmp_path / "bad.mat", {"X": np.zeros((28, 28, 1, 3), np.uint8), "y": np.ones((3, 1))})
  with pytest.raises(ValueError, match=r"uint8 \[32, 32, 3, N\]"):
    fimages.read_svhn_mat(tmp_path / "bad.mat")
  savemat(tmp_path / "bad.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": [[0], [11]]})
  with pytest.raises(ValueError, match="1..10"):
    fimages.read_svhn_mat(tmp_path / "bad.mat")


def test_validation_examples_replace_the_test_split_with_held_out_training_rows():
  from flowgmm_jax.training import base_config
  c = base_config()
  c.data.kind, c.data.name, c.data.num_points = "toy", "pinwheel", 1000
  full = fdata.load_dataset(c)
  c.data.validation_examples = 200
  ds = fdata.load_dataset(c)
  assert len(ds.x_test) == 200
  assert len(ds.x_train) == 800
  # The evaluation rows are training rows, none of them still in the training pool, and
  # the classes keep their proportions (5 classes of 200 -> 40 each).
  train_rows = {tuple(r) for r in full.x_train.tolist()}
  assert all(tuple(r) in train_rows for r in ds.x_test.tolist())
  assert not {tuple(r) for r in ds.x_train.tolist()} & {tuple(r) for r in ds.x_test.tolist()}
  np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=5), [40] * 5)
  c.data.validation_examples = 1000
  with pytest.raises(ValueError, match="validation_examples=1000"):
    fdata.load_dataset(c)


# ----------------------------------------------------------------------------- per-split limits
# A test-set limit (to evaluate faster) must leave the training set whole, and the other way
# round, in every image loader (issue 31).

@pytest.mark.shared_data
def test_mnist_test_limit_leaves_the_training_set_whole():
  ds = fdata.load_mnist(_need("mnist"), source="files", max_test_examples=50)
  assert ds.x_train.shape == (60000, 28, 28, 1)
  assert ds.x_test.shape == (50, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ds.y_train), MNIST_TRAIN_COUNTS)
  # Through a config, as a user sets it on the command line.
  from flowgmm_jax.training import base_config
  c = base_config()
  c.data.kind, c.data.name, c.data.max_test_examples = "image", "mnist", 30
  ds = fdata.load_dataset(c)
  assert len(ds.x_train) == 60000
  assert len(ds.x_test) == 30
  c.data.max_test_examples, c.data.max_train_examples = -1, 40
  ds = fdata.load_dataset(c)
  assert len(ds.x_train) == 40
  assert len(ds.x_test) == 10000


def _write_cifar_jpegs(root: Path, per_class: dict[str, int]) -> Path:
  """A CIFAR-10 layout <split>/<class>/<n>.jpg with per_class[split] images per class, and
  the same files as a .tar.gz archive (returned)."""
  from PIL import Image
  rng = np.random.default_rng(0)
  for split, n in per_class.items():
    for name in fimages.CIFAR10_CLASSES:
      (root / split / name).mkdir(parents=True)
      for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)).save(
            root / split / name / f"{i}.jpg")
  archive = root.parent / "cifar_small.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    for split in per_class:
      tar.add(root / split, arcname=f"cifar/{split}")
  return archive


def test_cifar10_jpeg_test_limit_leaves_the_training_set_whole(tmp_path):
  pytest.importorskip("PIL", reason="decoding CIFAR-10 JPEGs needs Pillow")
  archive = _write_cifar_jpegs(tmp_path / "jpeg", {"train": 3, "test": 2})
  for source in (tmp_path / "jpeg", archive):  # extracted folders; the archive (cached)
    whole = fdata.load_cifar10(source, source="files", cache_dir=tmp_path / "cache")
    assert len(whole.x_train) == 30
    assert len(whole.x_test) == 20
    ds = fdata.load_cifar10(source, source="files", max_test_examples=10,
                            cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ds.x_train, whole.x_train)
    np.testing.assert_array_equal(ds.x_test, whole.x_test[:10])
    ds = fdata.load_cifar10(source, source="files", max_train_examples=10,
                            cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ds.x_train, whole.x_train[:10])
    assert len(ds.x_test) == 20
  assert list((tmp_path / "cache").glob("*.npz"))  # the archive's limits came from the cache


def test_svhn_mat_test_limit_leaves_the_training_set_whole(tmp_path):
  write_svhn_mat(tmp_path, num_train=40, num_test=20)
  ds = fdata.load_svhn(mat_dir=tmp_path, max_test_examples=10)
  assert len(ds.x_train) == 40
  assert len(ds.x_test) == 10
  ds = fdata.load_svhn(mat_dir=tmp_path, max_train_examples=10)
  assert len(ds.x_train) == 10
  assert len(ds.x_test) == 20


def test_tfds_test_limit_leaves_the_training_set_whole(tmp_path, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  monkeypatch.setenv("FLOWGMM_CACHE_DIR", str(tmp_path / "cache"))  # the grain label cache
  with tfds.testing.mock_data(num_examples=20):
    ds = fdata.load_svhn(data_dir=tmp_path, max_test_examples=7)
    grain = fdata.load_tfds_records("svhn_cropped", data_dir=tmp_path, max_test_examples=7)
    whole = fdata.load_svhn(data_dir=tmp_path)
  assert len(ds.x_train) == 20
  assert len(ds.x_test) == 7
  np.testing.assert_array_equal(ds.x_train, whole.x_train)
  # The grain loader reads the same rows in the same order.
  assert isinstance(grain.x_train, fdata.RecordImages)
  assert len(grain.x_test) == 7
  np.testing.assert_array_equal(np.asarray(grain.x_train), whole.x_train)
  np.testing.assert_array_equal(grain.y_train, whole.y_train)
  np.testing.assert_array_equal(grain.x_test, whole.x_test[:7])


def test_records_folder_test_limit_leaves_the_training_set_whole(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (30, 4, 4, 3)).astype(np.uint8)
  y = np.arange(30) % 3
  fdata.write_image_records(tmp_path, "train", x[:20], y[:20], num_classes=3)
  fdata.write_image_records(tmp_path, "test", x[20:], y[20:], num_classes=3)
  for in_memory in (True, False):
    ds = fdata.load_image_records(tmp_path, in_memory=in_memory, max_test_examples=4)
    np.testing.assert_array_equal(np.asarray(ds.x_train), x[:20])
    np.testing.assert_array_equal(ds.x_test, x[20:24])
    ds = fdata.load_image_records(tmp_path, in_memory=in_memory, max_train_examples=5)
    np.testing.assert_array_equal(np.asarray(ds.x_train), x[:5])
    assert len(ds.x_test) == 10
