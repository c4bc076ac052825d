"""Categorical columns: the simplex dequantisation's maths (flowgmm_jax/features.py), the
table encoder (DataFrames, ``categorical_features`` forms, unseen levels, column checks) and
FlowGMMClassifier fitted on a DataFrame with a categorical and a string column."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from flowgmm_jax import FlowGMMClassifier, features

# A tiny flow: these tests check the plumbing, not accuracy (tests/test_estimator.py's TINY).
TINY = dict(num_coupling_layers=2, hidden_dim=16, hidden_layers=1, num_train_steps=60,
            labeled_batch_size=4, unlabeled_batch_size=32, learning_rate=3e-3,
            holdout_fraction=0.0)


# ----------------------------------------------------------------------------- maths

@pytest.mark.parametrize("k", [2, 3, 5])
def test_simplex_cell_noise_is_uniform_on_the_level_cell(k):
  """Every draw lies on the simplex in its level's arg-max cell, and the draws' mean is the
  cell's centroid (p_k = H_K / K), the mean of a uniform point of the cell."""
  rng = np.random.default_rng(0)
  codes = rng.integers(0, k, 200_000)
  p = features.simplex_cell_noise(codes, k, rng)
  assert np.all(p >= 0)
  assert np.allclose(p.sum(axis=1), 1.0, atol=1e-12)
  assert np.array_equal(p.argmax(axis=1), codes)
  centroid = features.simplex_cell_centroid(k)
  assert centroid[0, 0] == pytest.approx(sum(1 / i for i in range(1, k + 1)) / k, rel=1e-12)
  for level in range(k):
    mean = p[codes == level].mean(axis=0)
    assert np.abs(mean - centroid[level]).max() < 4e-3
  if k == 2:  # p_k ~ U(1/2, 1): variance 1/48
    assert p[codes == 1, 1].var() == pytest.approx(1 / 48, rel=0.02)


def test_additive_log_ratio_round_trip_and_jacobian():
  """softmax([alr(p), 0]) == p, the arg max survives, and log|det dp/da| = sum log p
  against a central finite-difference Jacobian (float64)."""
  rng = np.random.default_rng(1)
  p = rng.dirichlet(np.ones(4), size=50)
  a = features.additive_log_ratio(p)
  assert a.shape == (50, 3)
  np.testing.assert_allclose(features.inverse_additive_log_ratio(a), p, rtol=1e-12, atol=0)
  assert np.array_equal(np.concatenate([a, np.zeros((50, 1))], 1).argmax(1), p.argmax(1))
  h = 1e-6
  for row in range(5):
    jac = np.empty((3, 3))
    for j in range(3):
      step = np.zeros((1, 3))
      step[0, j] = h
      jac[:, j] = (features.inverse_additive_log_ratio(a[row:row + 1] + step)[0, :3]
                   - features.inverse_additive_log_ratio(a[row:row + 1] - step)[0, :3]) / (2 * h)
    assert math.log(abs(np.linalg.det(jac))) == pytest.approx(
        features.additive_log_ratio_log_det(p[row:row + 1])[0], abs=1e-7)


def test_cells_carry_their_volume_in_log_ratio_coordinates():
  """The uniform density of the simplex, (K-1)! in p_1..p_{K-1}, carried to a = alr(p) by
  the Jacobian, integrates to 1 over R^{K-1}, and to exp(log vol(R_k)) (K-1)! = 1/K over
  each level's cone {argmax [a, 0] = k} (K = 3, quadrature on a grid)."""
  k = 3
  grid = np.linspace(-30, 30, 1201)
  da = grid[1] - grid[0]
  # Axes shifted apart by a fraction of a step: no grid point lies on a cone's boundary.
  a = np.stack(np.meshgrid(grid + 0.31 * da, grid + 0.77 * da, indexing="ij"),
               -1).reshape(-1, 2)
  p = features.inverse_additive_log_ratio(a)
  density = math.factorial(k - 1) * np.exp(features.additive_log_ratio_log_det(p))
  assert density.sum() * da**2 == pytest.approx(1.0, abs=1e-3)
  level = np.concatenate([a, np.zeros((len(a), 1))], 1).argmax(1)
  volume = math.exp(features.simplex_cell_log_volume(k)) * math.factorial(k - 1)
  assert volume == pytest.approx(1 / 3, rel=1e-12)
  for cell in range(k):
    assert density[level == cell].sum() * da**2 == pytest.approx(volume, abs=2e-3)


def test_categorical_rows_decode_to_their_codes():
  """Noisy (training) and centroid (prediction) rows decode to the codes and the numeric
  values; an unseen level (-1) is the simplex centre, a = 0; fresh noise every gather."""
  rng = np.random.default_rng(2)
  numeric = rng.normal(size=(40, 2))
  codes = np.stack([rng.integers(0, 3, 40), rng.integers(0, 2, 40)], 1)
  mask = [False, True, False, True]
  noisy = features.CategoricalRows(numeric, codes, [3, 2], mask, noise_seed=0)
  assert noisy.shape == (40, 2 + 2 + 1)
  clean = features.CategoricalRows(numeric, codes, [3, 2], mask, noisy.mean, noisy.scale)
  for rows in (noisy, clean):
    got_numeric, got_codes = rows.decode(np.asarray(rows[:], np.float64))
    np.testing.assert_allclose(got_numeric, numeric, rtol=1e-5, atol=1e-5)
    assert np.array_equal(got_codes, codes)
  assert not np.array_equal(noisy[:5], noisy[:5])  # a fresh draw per indexing
  np.testing.assert_array_equal(clean[:5], clean[:5])
  unseen = features.CategoricalRows(numeric[:1], [[-1, 0]], [3, 2], mask, noisy.mean,
                                    noisy.scale)
  np.testing.assert_allclose(unseen.encode(slice(None))[0, 1:3], 0.0)


# ----------------------------------------------------------------------------- encoder

def frame(n=120, seed=0):
  rng = np.random.default_rng(seed)
  return pd.DataFrame({
      "age": rng.normal(40, 10, n),
      "colour": pd.Categorical(rng.choice(["red", "green", "blue"], n)),
      "city": pd.array(rng.choice(["Oslo", "Lima", "Pune", "Kyiv"], n), dtype="string"),
      "member": rng.random(n) < 0.5,
      "income": rng.lognormal(3, 0.5, n)})


def test_categorical_features_forms_agree():
  """None and "from_dtype" on a DataFrame, a mask, indices and names pick the same columns
  (category and string dtypes; bool is numeric); None on an array picks none."""
  df = frame()
  expected = [False, True, True, False, False]
  for spec in (None, "from_dtype", expected, [1, 2], ["colour", "city"], np.array([2, 1])):
    encoder = features.TableEncoder(spec).fit(df)
    assert encoder.is_categorical.tolist() == expected, spec
  assert features.TableEncoder(None).fit(np.zeros((3, 2))).is_categorical.tolist() == [0, 0]
  encoder = features.TableEncoder([1, 2]).fit(df)
  assert encoder.categories[0].tolist() == ["blue", "green", "red"]
  numeric, codes = encoder.split(df.iloc[:3])
  assert numeric.shape == (3, 3)
  assert codes.shape == (3, 2)
  assert encoder.categories[1][codes[:, 1]].tolist() == df["city"].iloc[:3].tolist()
  with pytest.raises(ValueError, match="must be None, 'from_dtype'"):
    features.TableEncoder("auto").fit(df)
  with pytest.raises(ValueError, match="column index 7"):
    features.TableEncoder([7]).fit(df)


def test_unseen_level_and_wrong_columns_are_one_line_errors():
  df = frame()
  encoder = features.TableEncoder().fit(df)
  new = df.iloc[:2].copy()
  new["city"] = pd.array(["Oslo", "Rome"], dtype="string")
  with pytest.raises(ValueError, match="'city'") as error:
    encoder.split(new)
  assert "'Rome'" in str(error.value)
  assert "\n" not in str(error.value)
  ignoring = features.TableEncoder(handle_unknown="ignore").fit(df)
  numeric, codes = ignoring.split(new)
  assert codes[1, 1] == -1
  one_hot = ignoring.one_hot(numeric, codes)  # age, colour (3), city (4), member, income
  assert one_hot.shape == (2, 10)
  assert one_hot[0, 4:8].tolist() == [0, 0, 1, 0]
  assert one_hot[1, 4:8].sum() == 0
  for bad, words in ((df[["colour", "age", "city", "member", "income"]], "another order"),
                     (df.drop(columns="city"), "lacks ['city']"),
                     (df.assign(extra=1.0), "did not see: ['extra']")):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")) as e:
      encoder.split(bad)
    assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="is not numeric") as e:
    features.TableEncoder([]).fit(df).split(df)  # strings in a column called numeric
  assert "'colour'" in str(e.value)


# ----------------------------------------------------------------------------- estimator

@pytest.fixture(scope="module")
def fitted_on_frame():
  df = frame(160)
  y = (df["colour"].astype(str) == "red").to_numpy().astype(int)
  y_semi = np.full_like(y, -1)
  y_semi[:24] = y[:24]
  return FlowGMMClassifier(random_state=0, categorical_encoding="simplex", **TINY).fit(
      df, y_semi), df


def test_dataframe_with_categorical_and_string_columns_fits_and_predicts(fitted_on_frame):
  clf, df = fitted_on_frame
  assert clf.n_features_in_ == 5
  assert clf.feature_names_in_.tolist() == list(df.columns)
  assert clf.feature_mean_.shape == (3 + 2 + 3,)  # 3 numeric, K - 1 per categorical
  new = frame(7, seed=5)
  proba = clf.predict_proba(new)
  assert proba.shape == (7, 2)
  assert np.allclose(proba.sum(1), 1.0)
  assert set(clf.predict(new)) <= {0, 1}
  assert np.isfinite(clf.score_samples(new)).all()
  assert 0.0 <= clf.score(new, np.zeros(7, int)) <= 1.0
  import pickle
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(clf)).predict_proba(new), proba)
  samples, labels = clf.sample(6, random_state=0)
  assert list(samples.columns) == list(df.columns)
  assert labels.shape == (6,)
  assert set(samples["colour"].astype(str)) <= {"red", "green", "blue"}
  assert set(samples["city"]) <= {"Oslo", "Lima", "Pune", "Kyiv"}
  with pytest.raises(ValueError, match="which fit did not see"):
    clf.predict(new.assign(colour=pd.Categorical(["pink"] * 7)))
  with pytest.raises(ValueError, match="another order"):
    clf.predict(new[list(new.columns)[::-1]])


def test_unseen_level_with_ignore_is_the_simplex_centre(fitted_on_frame):
  """handle_unknown="ignore" (read at predict time, as OneHotEncoder reads it at
  transform): an unseen level is the point a = 0 of its block, the simplex's centre."""
  clf, _ = fitted_on_frame
  new = frame(3, seed=9).assign(city=pd.array(["Rome"] * 3, dtype="string"))
  clf.set_params(handle_unknown="ignore")
  try:
    u = clf._standardized(new)
    proba = clf.predict_proba(new)
  finally:
    clf.set_params(handle_unknown="error")
  a = np.asarray(u[:], np.float64) * clf.feature_scale_ + clf.feature_mean_
  np.testing.assert_allclose(a[:, 3:6], 0.0, atol=1e-6)  # age, colour (2), then city (3)
  assert proba.shape == (3, 2)
  assert np.allclose(proba.sum(1), 1.0)


def test_array_with_categorical_indices_matches_onehot_handling():
  """A NumPy array with categorical_features= indices fits; the "onehot" encoding puts
  the OneHotEncoder layout through today's path, so its score_samples equals a fit on the
  one-hot array itself (same widths, same flow)."""
  rng = np.random.default_rng(3)
  codes = rng.integers(0, 3, 90).astype(float)
  x = np.stack([rng.normal(size=90), codes, rng.normal(size=90)], 1)
  y_semi = np.full(90, -1)
  y_semi[:10] = np.arange(10) % 2
  one_hot = np.concatenate([x[:, :1], np.eye(3)[codes.astype(int)], x[:, 2:]], 1)
  a = FlowGMMClassifier(random_state=0, categorical_features=[1],
                        categorical_encoding="onehot", **TINY).fit(x, y_semi)
  b = FlowGMMClassifier(random_state=0, **TINY).fit(one_hot, y_semi)
  np.testing.assert_allclose(a.score_samples(x[:5]), b.score_samples(one_hot[:5]), rtol=1e-6)
  np.testing.assert_array_equal(a.predict_proba(x[:5]), b.predict_proba(one_hot[:5]))
  with pytest.raises(ValueError, match="expecting 3 features"):
    a.predict(x[:, :2])
  assert FlowGMMClassifier().categorical_encoding == "onehot"  # the default
  samples, _ = a.sample(20, random_state=0)
  assert samples.shape == (20, 3)
  assert set(samples[:, 1]) <= {0.0, 1.0, 2.0}


def test_strings_in_an_array_without_categorical_features_say_how_to_name_them():
  x = np.array([["red", 1.0], ["blue", 2.0], ["red", 0.5]], dtype=object)
  with pytest.raises(ValueError, match="categorical_features=") as e:
    FlowGMMClassifier(**TINY).fit(x, np.array([0, 1, -1]))
  assert "could not convert" in str(e.value)
  assert "\n" not in str(e.value)
