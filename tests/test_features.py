"""Column kinds, resolutions, dequantisation and one-hot groups (flowgmm_jax/features.py)."""

from __future__ import annotations

import numpy as np
import pytest

from flowgmm_jax import features


def test_column_kinds_and_resolutions():
  rng = np.random.default_rng(0)
  n = 500
  cols = {
      "constant": np.full(n, 3.0),
      "binary": rng.integers(0, 2, n) * 1.0,
      "codes": rng.integers(1, 11, n) * 1.0,                   # Breast Cancer's 1..10
      "half_steps": rng.choice([0.0, 0.5, 1.5, 3.0], n),        # lattice of step 0.5
      "tenths": rng.choice([0.1, 0.2, 0.3, 0.7], n),            # inexact in binary floats
      "irregular": rng.choice([0.0, 1.0, 2.7], n),              # 1.7 / 1.0 is no integer
      "counts": rng.integers(0, 500, n) * 1.0,                  # a lattice, too many levels
      "gaussian": rng.normal(size=n),
  }
  kinds = {name: features.describe_column(v) for name, v in cols.items()}
  assert {k: v.kind for k, v in kinds.items()} == {
      "constant": "constant", "binary": "binary", "codes": "lattice",
      "half_steps": "lattice", "tenths": "lattice", "irregular": "continuous",
      "counts": "continuous", "gaussian": "continuous"}
  assert kinds["binary"].resolution == 1.0
  assert kinds["binary"].levels == 2
  assert kinds["codes"].resolution == 1.0
  assert kinds["codes"].levels == 10
  assert kinds["half_steps"].resolution == 0.5
  assert kinds["half_steps"].levels == 7
  assert kinds["tenths"].resolution == pytest.approx(0.1)
  assert kinds["tenths"].levels == 7
  assert kinds["counts"].lattice
  assert kinds["counts"].resolution == 1.0
  assert not kinds["irregular"].lattice
  assert kinds["constant"].resolution == 0.0
  assert not kinds["constant"].discrete
  # max_levels decides when a lattice counts as discrete.
  assert features.describe_column(cols["counts"], max_levels=1000).kind == "lattice"


def test_dequantization_widths_are_the_lattice_resolution_in_the_rows_units():
  rng = np.random.default_rng(1)
  x = np.stack([rng.integers(0, 2, 20000) * 1.0,               # binary, r = 1
                rng.choice([0.0, 0.5, 1.5], 20000),             # r = 0.5
                rng.normal(size=20000)], axis=1)                # continuous: none
  np.testing.assert_array_equal(features.dequantization_widths(x), [1.0, 0.5, 0.0])
  # In standardised units the widths scale with 1 / std.
  scale = np.array([2.0, 0.25, 1.0])
  np.testing.assert_allclose(features.dequantization_widths(x, scale), [0.5, 2.0, 0.0])


def test_training_noise_dequantizes_discrete_columns_and_keeps_gaussian_elsewhere():
  """The train step's augmentation with ``augment.dequantize="auto"``: the widths are each
  discrete column's resolution in the (standardised, float32) training rows, found through
  the quick screen; in a batch, those columns move by U(-w/2, w/2) (range, variance
  w^2 / 12, rounding back), the others by N(0, noise_std^2); "off" gives ()."""
  import jax
  import ml_collections

  from flowgmm_jax.data import add_feature_noise
  from flowgmm_jax.data.dataset import Dataset
  from flowgmm_jax.training import programs

  rng = np.random.default_rng(4)
  n = 6000  # more than the screen's 4096 rows: the discrete columns are described on all
  raw = np.stack([rng.integers(0, 2, n) * 1.0, rng.integers(1, 11, n) * 1.0,
                  rng.normal(size=n), rng.integers(0, 500, n) * 1.0], axis=1)
  mean, std = raw.mean(0), raw.std(0)
  x = ((raw - mean) / std).astype(np.float32)
  dataset = Dataset(name="t", kind="tabular", x_train=x, y_train=np.full(n, -1, np.int32),
                    x_test=x[:0], y_test=np.zeros(0, np.int32), num_classes=2)
  config = ml_collections.ConfigDict({"augment": {"dequantize": "auto"}})
  widths = np.array(programs.dequantize_widths(config, dataset))
  np.testing.assert_allclose(widths, [1 / std[0], 1 / std[1], 0.0, 0.0], rtol=1e-5)
  config.augment.dequantize = "off"
  assert programs.dequantize_widths(config, dataset) == ()
  assert programs.dequantize_widths(ml_collections.ConfigDict({"augment": {}}), dataset) == ()

  batch = np.repeat(x[:1], 20000, axis=0)
  noisy = np.asarray(add_feature_noise(jax.random.PRNGKey(0), batch, 0.1,
                                       tuple(float(w) for w in widths)))
  delta = (noisy - batch).astype(np.float64)
  for j in (0, 1):
    w = widths[j]
    assert delta[:, j].min() >= -w / 2 - 1e-6
    assert delta[:, j].max() <= w / 2 + 1e-6
    assert delta[:, j].var() == pytest.approx(w ** 2 / 12, rel=0.03)
    np.testing.assert_array_equal(np.round((noisy[:, j] - x[0, j]) / w), 0.0)  # own cell
  for j in (2, 3):  # continuous (and a lattice of too many levels): Gaussian noise_std
    assert abs(delta[:, j].mean()) < 0.005
    assert delta[:, j].std() == pytest.approx(0.1, rel=0.03)
  # Without widths the noise is Gaussian everywhere, drawn as before (same key, same draw).
  plain = np.asarray(add_feature_noise(jax.random.PRNGKey(0), batch, 0.1))
  np.testing.assert_allclose(plain - batch, 0.1 * np.asarray(
      jax.random.normal(jax.random.PRNGKey(0), batch.shape, batch.dtype)), atol=1e-6)


def test_standardized_rows_match_the_standardised_table_for_every_index():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(50, 4)) * [1.0, 10.0, 0.1, 3.0] + [0.0, 5.0, -2.0, 100.0]
  mean, scale = x.mean(0), x.std(0)
  full = ((x - mean) / scale).astype(np.float32)
  rows = features.StandardizedRows(x, mean, scale)
  assert rows.shape == (50, 4)
  assert len(rows) == 50
  assert rows.dtype == np.float32
  idx = np.array([7, 0, 49, 7])
  for key in (idx, slice(3, 9), (slice(None), 2), 5, (idx, 1)):
    got = rows[key]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, full[key])
  np.testing.assert_array_equal(np.asarray(rows), full)
  # float32 storage gives the same standardised values as the float64 upcast of it.
  x32 = x.astype(np.float32)
  np.testing.assert_array_equal(features.StandardizedRows(x32, mean, scale)[idx],
                                ((x32.astype(np.float64) - mean) / scale).astype(np.float32)[idx])
  # The widths of discrete columns come out the same from the view as from the copy.
  d = np.column_stack([rng.integers(0, 5, 300), rng.normal(size=300)]).astype(np.float64)
  view = features.StandardizedRows(d, d.mean(0), d.std(0))
  np.testing.assert_allclose(features.dequantization_widths(view, tol=1e-4),
                             features.dequantization_widths(np.asarray(view), tol=1e-4))
  assert features.dequantization_widths(view, tol=1e-4)[0] == pytest.approx(1 / d[:, 0].std(),
                                                                            rel=1e-5)


def test_standardized_rows_refuse_bad_input():
  x = np.ones((4, 2))
  with pytest.raises(ValueError, match="NaN or inf"):
    features.StandardizedRows(np.array([[1.0, np.nan], [0.0, 1.0]]), [0, 0], [1, 1])
  with pytest.raises(ValueError, match="shape"):
    features.StandardizedRows(x, [0, 0, 0], [1, 1])
  with pytest.raises(ValueError, match="positive"):
    features.StandardizedRows(x, [0, 0], [1, 0])
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    features.StandardizedRows(np.ones(4), [0], [1])
