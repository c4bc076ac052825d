"""Tests for flowgmm_jax.evaluation: hand-computed ECE, exact multi-batch aggregation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from flowgmm_jax.evaluation import (
  accuracy,
  aggregate_metric_sums,
  batch_metric_sums,
  calibration_bins,
  ece_from_confidences,
  expected_calibration_error,
)


def test_accuracy_logits_and_probs():
  logits = np.array([[2.0, 1.0, 0.0], [0.0, 0.5, 0.1], [1.0, 3.0, 2.0], [0.0, 0.0, 5.0]])
  labels = np.array([0, 2, 1, 2])
  assert accuracy(logits, labels) == 0.75
  assert accuracy(special.softmax(logits, axis=1), labels) == 0.75
  with pytest.raises(ValueError, match="labels"):
    accuracy(logits, np.array([0, 1, 2, 3]))


def test_ece_hand_computed():
  probs = np.array([[0.9, 0.1],     # conf .90, correct
                    [0.15, 0.85],   # conf .85, wrong
                    [0.7, 0.3],     # conf .70, correct
                    [0.45, 0.55],   # conf .55, correct
                    [0.05, 0.95]])  # conf .95, correct
  labels = np.array([0, 0, 0, 1, 1])
  # 5 bins of width .2: (.8,1] holds .9,.85,.95: acc 2/3, conf .9; (.6,.8] holds .7: acc 1;
  # (.4,.6] holds .55: acc 1.  ECE = 3/5 |2/3 - .9| + 1/5 |1 - .7| + 1/5 |1 - .55| = 0.29.
  np.testing.assert_allclose(expected_calibration_error(probs, labels, num_bins=5), 0.29,
                             rtol=1e-12)
  bins = calibration_bins(probs.max(1), probs.argmax(1) == labels, num_bins=5)
  np.testing.assert_array_equal(bins["count"], [0, 0, 1, 1, 3])
  np.testing.assert_allclose(bins["accuracy"][4], 2 / 3)
  np.testing.assert_allclose(bins["confidence"][4], 0.9)


def test_ece_bins_are_right_closed():
  bins = calibration_bins([0.0, 0.2, 0.2000001, 1.0], [1, 1, 1, 1], num_bins=5)
  np.testing.assert_array_equal(bins["count"], [2, 1, 0, 0, 1])


def test_ece_perfect_calibration_is_zero():
  # Every bin's accuracy equals its mean confidence: ten at .7 with seven right, four at
  # 1.0 all right, six at .5 with three right.
  confidences = np.array([0.7] * 10 + [1.0] * 4 + [0.5] * 6)
  correct = np.array([1] * 7 + [0] * 3 + [1] * 4 + [1] * 3 + [0] * 3)
  assert ece_from_confidences(confidences, correct, num_bins=10) == pytest.approx(0.0, abs=1e-12)
  # An overconfident version is not calibrated: every prediction wrong at conf 1.
  assert ece_from_confidences([1.0, 1.0], [0, 0]) == pytest.approx(1.0)


def test_ece_matches_reference_loop():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(500, 10)) * 2.0
  labels = rng.integers(0, 10, 500)
  probs = special.softmax(logits, axis=1)
  conf, pred = probs.max(1), probs.argmax(1)
  edges = np.linspace(0, 1, 16)
  reference = 0.0
  for low, high in zip(edges[:-1], edges[1:], strict=False):   # Guo et al.'s loop: low < conf <= high
    in_bin = (conf > low) & (conf <= high)
    if in_bin.any():
      reference += in_bin.mean() * abs((pred[in_bin] == labels[in_bin]).mean()
                                       - conf[in_bin].mean())
  np.testing.assert_allclose(expected_calibration_error(probs, labels), reference, rtol=1e-12)
  with pytest.raises(ValueError, match="softmax"):
    expected_calibration_error(logits, labels)


def test_batch_aggregation_is_exact():
  rng = np.random.default_rng(1)
  num, num_classes, dims = 23, 4, 12
  joint = rng.normal(size=(num, num_classes)) * 3.0 - 10.0
  labels = rng.integers(0, num_classes, num)
  log_det = rng.normal(size=num)
  log_w = np.log(rng.dirichlet(np.ones(num_classes)))

  sums_fn = jax.jit(batch_metric_sums)
  batches, start = [], 0
  for size in (8, 8, 5):   # unequal batches ...
    sl = slice(start, start + size)
    batches.append(sums_fn(joint[sl], labels[sl], log_det[sl], None, log_w))
    start += size
  # ... and a padded final batch of 8 holding the last 2 examples.
  pad = 6
  def padded(a):
    return np.concatenate([a[start:], np.zeros((pad,) + a.shape[1:], a.dtype)])
  mask = np.array([True] * 2 + [False] * pad)
  batches.append(sums_fn(padded(joint), padded(labels), padded(log_det), mask, log_w))

  metrics = aggregate_metric_sums(batches, num_dims=dims, num_bins=15)
  probs = special.softmax(joint, axis=1)
  assert metrics["num_examples"] == num
  np.testing.assert_allclose(metrics["accuracy"], accuracy(joint, labels), rtol=1e-6)
  np.testing.assert_allclose(metrics["ece"], expected_calibration_error(probs, labels),
                             rtol=1e-5, atol=1e-6)
  log_p = np.log(probs)
  np.testing.assert_allclose(metrics["nll_y_given_x"], -np.mean(log_p[np.arange(num), labels]),
                             rtol=1e-5)
  nll = np.mean(-(special.logsumexp(joint, axis=1) + log_det))
  np.testing.assert_allclose(metrics["nll"], nll, rtol=1e-5)
  np.testing.assert_allclose(metrics["bpd"], nll / (dims * math.log(2)), rtol=1e-5)
  nll_given = np.mean(-(joint[np.arange(num), labels] - log_w[labels] + log_det))
  np.testing.assert_allclose(metrics["nll_given_label"], nll_given, rtol=1e-5)


def test_aggregation_without_log_det_and_errors():
  joint = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  sums = batch_metric_sums(joint, jnp.array([0, 0]))
  metrics = aggregate_metric_sums([sums])
  assert metrics["accuracy"] == 0.5
  assert "nll" not in metrics
  with pytest.raises(ValueError, match="at least one batch"):
    aggregate_metric_sums([])
  with pytest.raises(ValueError, match="no unmasked"):
    aggregate_metric_sums([batch_metric_sums(joint, jnp.array([0, 0]),
                                             mask=jnp.array([False, False]))])
