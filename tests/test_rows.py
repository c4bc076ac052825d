"""The one split of a run (flowgmm_jax/data/rows.py): every held-out row by one seed rule."""

from __future__ import annotations

import numpy as np
import pytest

from flowgmm_jax.data import Dataset
from flowgmm_jax.data import rows as rows_lib
from flowgmm_jax.training import base_config


def _dataset(n=400, k=3, seed=0):
  y = np.random.default_rng(seed).integers(0, k, n)
  return Dataset(name="rows", kind="tabular", x_train=np.zeros((n, 2), np.float32), y_train=y,
                 x_test=np.zeros((0, 2), np.float32), y_test=np.zeros(0, np.int64),
                 num_classes=k)


def _config(seed=0, per_class=10, calibration="none", fraction=0.2, holdout=0.1):
  c = base_config()
  c.seed = seed
  c.data.num_labeled_per_class = per_class
  c.calibration.method = calibration
  c.calibration.calibration_fraction = fraction
  c.early_stopping.holdout_fraction = holdout
  return c


def test_rows_are_disjoint_cover_the_data_and_repeat_with_the_seed():
  ds = _dataset()
  r = rows_lib.split_rows(_config(calibration="holdout"), ds)
  everything = np.concatenate([r.labeled, r.unlabeled, r.early_stopping])
  assert sorted(everything.tolist()) == list(range(400))           # disjoint, all rows
  assert set(r.calibration.tolist()) <= set(r.unlabeled.tolist()) | set(
      r.early_stopping.tolist())                                    # only labels held back
  assert np.bincount(ds.y_train[r.labeled]).tolist() == [8, 8, 8]  # 10 per class, 2 held
  assert np.bincount(ds.y_train[r.calibration]).tolist() == [2, 2, 2]
  assert len(r.early_stopping) == round(0.1 * (400 - 24))
  again = rows_lib.split_rows(_config(calibration="holdout"), ds)
  assert again.fingerprint() == r.fingerprint()
  other = rows_lib.split_rows(_config(seed=1, calibration="holdout"), ds)
  assert not np.array_equal(other.labeled, r.labeled)


def test_each_purpose_draws_its_own_stream():
  """Changing how many rows one purpose takes never moves another purpose's choice."""
  ds = _dataset()
  base = rows_lib.split_rows(_config(holdout=0.1), ds)
  more_es = rows_lib.split_rows(_config(holdout=0.3), ds)
  np.testing.assert_array_equal(base.labeled, more_es.labeled)
  cal = rows_lib.split_rows(_config(calibration="holdout", fraction=0.2), ds)
  more_cal = rows_lib.split_rows(_config(calibration="holdout", fraction=0.4, holdout=0.3), ds)
  # The same labelled pool, whatever calibration and early stopping take from it.
  assert np.array_equal(np.union1d(cal.labeled, cal.calibration),
                        np.union1d(more_cal.labeled, more_cal.calibration))
  # The fingerprint covers every part.
  assert len({base.fingerprint(), more_es.fingerprint(), cal.fingerprint()}) == 3


def test_rows_marked_unlabelled_and_given_pools_are_kept():
  ds = _dataset()
  ds.y_train[::2] = -1
  r = rows_lib.split_rows(_config(holdout=0.0), ds)
  assert np.array_equal(r.labeled, np.arange(1, 400, 2))
  assert np.array_equal(r.unlabeled, np.arange(0, 400, 2))
  given = rows_lib.split_rows(_config(holdout=0.0), _dataset(), pools=([3, 1], [0, 2]))
  assert given.labeled.tolist() == [1, 3]
  assert given.unlabeled.tolist() == [0, 2]


def test_calibration_rows_keep_a_label_in_every_class():
  y = np.array([0] * 5 + [1] * 2 + [2] * 1 + [-1] * 10)
  labeled = np.arange(8)
  train, held = rows_lib.calibration_rows(labeled, y, 0.4, seed=0)
  assert len(np.intersect1d(train, held)) == 0
  assert len(train) + len(held) == 8
  assert sorted(np.unique(y[train])) == [0, 1, 2]
  assert np.bincount(y[held], minlength=3).tolist() == [2, 1, 0]
  train, held = rows_lib.calibration_rows(labeled, y, 0.0, seed=0)
  assert len(held) == 0
  assert len(train) == 8
  with pytest.raises(ValueError, match="calibration_fraction=1.0"):
    rows_lib.calibration_rows(labeled, y, 1.0, seed=0)


def test_early_stopping_rows_bounds():
  pool = np.arange(10_000)
  train, held = rows_lib.early_stopping_rows(pool, 0.1, seed=3)
  assert len(held) == 1000
  assert len(np.intersect1d(train, held)) == 0
  np.testing.assert_array_equal(held, rows_lib.early_stopping_rows(pool, 0.1, seed=3)[1])
  assert not np.array_equal(held, rows_lib.early_stopping_rows(pool, 0.1, seed=4)[1])
  assert len(rows_lib.early_stopping_rows(pool[:100], 0.05, seed=0)[1]) == 16  # at least 16
  assert len(rows_lib.early_stopping_rows(pool[:40], 0.9, seed=0)[1]) == 20   # at most half
  assert len(rows_lib.early_stopping_rows(pool[:31], 0.1, seed=0)[1]) == 0    # too small
  assert len(rows_lib.early_stopping_rows(pool, 0.0, seed=0)[1]) == 0         # off
  assert len(rows_lib.early_stopping_rows(np.arange(100_000), 0.5, seed=0)[1]) == 4096
