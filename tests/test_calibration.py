"""The cross-fitted temperature (flowgmm_jax/calibration.py): folds, and T from out-of-fold
logits without spending any label."""

from __future__ import annotations

import numpy as np
import pytest

from flowgmm_jax import calibration
from flowgmm_jax.data.rows import calibration_folds


def _semi_labels(rng, per_class, num_rows=400):
  labels = np.full(num_rows, -1)
  rows = rng.permutation(num_rows)
  start = 0
  for k, n in enumerate(per_class):
    labels[rows[start:start + n]] = k
    start += n
  return labels


def test_folds_keep_a_label_of_every_class_and_never_hold_out_a_single_label():
  rng = np.random.default_rng(0)
  labels = _semi_labels(rng, [10, 2, 1, 7])
  folds = calibration_folds(labels, num_folds=5, seed=3)
  held = np.concatenate(folds)
  assert held.size == len(set(held.tolist()))                       # disjoint
  assert set(held.tolist()) == set(np.flatnonzero((labels >= 0) & (labels != 2)).tolist())
  for fold in folds:
    rest = labels.copy()
    rest[fold] = -1
    assert set(np.unique(rest[rest >= 0])) == {0, 1, 2, 3}          # every class keeps one
    counts = np.bincount(labels[fold], minlength=4)
    assert counts[0] == 2
    assert counts[2] == 0
    assert counts[3] <= 2
  assert calibration_folds(labels, 5, seed=3)[0].tolist() == folds[0].tolist()
  with pytest.raises(ValueError, match="calibration_folds=1"):
    calibration_folds(labels, 1, seed=0)


def test_cross_fitted_temperature_recovers_a_known_over_confidence():
  """Labels drawn from softmax(a); every fold's "model" reports 3 a (three times too
  confident), so the temperature fitted on the pooled out-of-fold logits is about 3. The
  fitting callback never sees the labels of the rows it is asked about."""
  rng = np.random.default_rng(1)
  n, k = 3000, 4
  a = rng.normal(size=(n, k)) * 1.5
  p = np.exp(a - a.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  truth = np.array([rng.choice(k, p=row) for row in p])
  labels = truth.copy()
  labels[rng.random(n) < 0.2] = -1                       # some unlabelled rows, never used
  calls = []

  def fit_logits(train_labels, fold):
    assert np.all(train_labels[fold] == -1)
    assert np.all(train_labels[labels == -1] == -1)
    calls.append(fold.size)
    return 3.0 * a[fold]

  record = calibration.cross_fitted_temperature(fit_logits, labels, num_folds=4, seed=0,
                                                max_temperature=10.0)
  assert record["temperature"] == pytest.approx(3.0, rel=0.1)
  assert record["num_folds"] == len(calls) == 4
  assert record["num_out_of_fold"] == sum(calls) == int(np.sum(labels >= 0))
  assert record["out_of_fold_nll_after"] < record["out_of_fold_nll_before"]
  # The bracket's top bounds T: capped below the truth, it stops at its end.
  capped = calibration.cross_fitted_temperature(fit_logits, labels, num_folds=4, seed=0,
                                                max_temperature=2.0)
  assert capped["temperature"] == pytest.approx(2.0, rel=1e-3)


def test_cross_fitted_temperature_keeps_one_when_every_held_out_row_is_right():
  labels = np.array([0, 0, 1, 1, -1, -1])
  onehot = np.eye(2)[np.maximum(labels, 0)] * 5.0
  record = calibration.cross_fitted_temperature(lambda _, fold: onehot[fold], labels,
                                                num_folds=2, seed=0, max_temperature=10.0)
  assert record["temperature"] == 1.0
  assert "note" in record
  with pytest.raises(ValueError, match="at least 2 labels"):
    calibration.cross_fitted_temperature(lambda _, fold: onehot[fold],
                                         np.array([0, 1, -1]), num_folds=2, seed=0,
                                         max_temperature=10.0)
