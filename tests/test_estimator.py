"""FlowGMMClassifier: scikit-learn behaviour, bad input, and the density in user units."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import jax
import jax.numpy as jnp
import joblib
import numpy as np
import pytest
import scipy.special
from scipy import stats
from scipy.special import logsumexp
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted
from tiny import OFFSET, TINY, UNITS, gaussian_table

from flowgmm_jax.data import make_moons
from flowgmm_jax.estimator import FlowGMMClassifier
from flowgmm_jax.models import TabularFlow

REPO = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="module")
def table():
  return gaussian_table()


@pytest.fixture(scope="module")
def fitted(table):
  X, y_semi, _ = table
  return FlowGMMClassifier(random_state=0, **TINY).fit(X, y_semi)


def assert_unfitted(estimator):
  with pytest.raises(NotFittedError):
    check_is_fitted(estimator)
  with pytest.raises(NotFittedError):
    estimator.predict(np.zeros((2, 3)))


# ----------------------------------------------------------------------------- learning

@pytest.mark.slow
def test_two_moons_with_10_labels_reaches_99_percent():
  """``FlowGMMClassifier()`` at its defaults on the paper's toy setting: 1000 points, 5
  labels per class, evaluated on 1000 fresh points, reaches >= 99% (docs/results.md, the
  toy data, gives seeds 0-2). Before early stopping waited for ``min_steps``, this seed
  stopped at step 375 with 95.6%.
  """
  ds = make_moons(num_train=1000, num_test=1000, seed=0)
  rng = np.random.default_rng(0)
  y = np.full(len(ds.y_train), -1)
  for c in (0, 1):
    y[rng.permutation(np.flatnonzero(ds.y_train == c))[:5]] = c
  clf = FlowGMMClassifier(random_state=0).fit(ds.x_train, y)
  assert (y != -1).sum() == 10
  assert clf.score(ds.x_test, ds.y_test) >= 0.99


def test_fit_predict_basics(fitted, table):
  X, y_semi, y_true = table
  np.testing.assert_array_equal(fitted.classes_, [0, 1])
  assert fitted.n_features_in_ == 3
  assert fitted.n_iter_ == TINY["num_train_steps"]
  np.testing.assert_allclose(fitted.feature_mean_, X.mean(axis=0))
  np.testing.assert_allclose(fitted.feature_scale_, X.std(axis=0))
  proba = fitted.predict_proba(X)
  assert proba.shape == (len(X), 2)
  np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
  np.testing.assert_allclose(np.exp(fitted.predict_log_proba(X)), proba, atol=1e-12)
  np.testing.assert_array_equal(fitted.predict(X), fitted.classes_[proba.argmax(axis=1)])
  assert fitted.score(X, y_true) >= 0.9  # the classes are 3 standard deviations apart
  # score skips the rows labelled -1.
  labeled = y_semi != -1
  expected = np.mean(fitted.predict(X[labeled]) == y_semi[labeled])
  assert fitted.score(X, y_semi) == pytest.approx(expected)
  # Rows in any order / any batch size give the same numbers (padding is dropped).
  np.testing.assert_allclose(fitted.predict_proba(X[::-1][:7]), proba[::-1][:7], atol=1e-6)


class _Compilations:
  """Counts XLA compilations (and traces) while active: JAX's monitoring events, which fire
  for every program handed to the compiler (persistent-cache hits included) and never for
  a call that reuses a compiled program."""

  def __init__(self):
    self.events, self.active = [], False
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, name, seconds, **kwargs):
    if self.active and name in ("/jax/core/compile/backend_compile_duration",
                                "/jax/core/compile/jaxpr_trace_duration"):
      self.events.append(name)

  def __enter__(self):
    self.events, self.active = [], True
    return self

  def __exit__(self, *exc):
    self.active = False


def test_same_random_state_same_model_other_state_other_model(fitted, table):
  """And a second fit of the same shapes and settings compiles nothing: the programs are
  cached on the settings, the seed is an argument, and near pool sizes share one padded
  batch shape."""
  X, y_semi, _ = table
  compilations = _Compilations()
  with compilations:
    again = FlowGMMClassifier(random_state=0, **TINY).fit(X, y_semi)
  assert compilations.events == []
  np.testing.assert_array_equal(again.predict_proba(X), fitted.predict_proba(X))
  np.testing.assert_array_equal(again.predict(X), fitted.predict(X))
  with compilations:
    other = FlowGMMClassifier(random_state=1, **TINY).fit(X, y_semi)
    more_labels = y_semi.copy()
    more_labels[10:13] = (np.arange(10, 13) % 2)  # 13 labelled rows: the same padded batch
    FlowGMMClassifier(random_state=0, **{**TINY, "labeled_batch_size": 16}).fit(
        X, more_labels)
  assert np.abs(other.predict_proba(X) - fitted.predict_proba(X)).max() > 1e-3
  # The batch size is a setting: the third fit compiled its own step, the others nothing.
  assert 0 < len(compilations.events)
  with compilations:
    fewer = more_labels.copy()
    fewer[12] = -1  # 12 labelled rows, padded to 16 like 13
    FlowGMMClassifier(random_state=2, **{**TINY, "labeled_batch_size": 16}).fit(X, fewer)
  assert compilations.events == []


def test_any_integer_labels_float_labels_and_no_unlabelled_rows(capsys):
  """Class values 3, 7, 9 given as floats, every row labelled (no unlabelled batch)."""
  X, _, y_true = gaussian_table(n=120, seed=1)
  X = np.concatenate([X, X[:40] + 3.0 * UNITS])  # a third class
  y = np.concatenate([np.where(y_true == 0, 3, 7), np.full(40, 9)]).astype(np.float64)
  clf = FlowGMMClassifier(random_state=0, verbose=2, **TINY).fit(X, y)
  np.testing.assert_array_equal(clf.classes_, [3, 7, 9])
  predictions = clf.predict(X)
  assert set(np.unique(predictions)) <= {3, 7, 9}
  assert clf.score(X, y) >= 0.8
  assert "FlowGMMClassifier step 80" in capsys.readouterr().out  # verbose=2 logs the loss


def test_string_and_object_class_labels_give_the_same_model(fitted, table):
  """Class values of any type, as in SelfTrainingClassifier: an object array marks its
  unlabelled rows with -1; classes_ are the sorted labelled values, so "no" < "yes" maps
  like 0 < 1 and the same seed trains the same model as ``fitted`` (integer labels)."""
  X, y_semi, y_true = table
  names = np.array(["no", "yes"], dtype=object)
  y_obj = np.where(y_semi == -1, -1, names[np.maximum(y_semi, 0)]).astype(object)
  clf = FlowGMMClassifier(random_state=0, **TINY).fit(X, y_obj)
  assert clf.classes_.tolist() == ["no", "yes"]
  np.testing.assert_array_equal(clf.predict(X), names[fitted.predict(X)])
  np.testing.assert_allclose(clf.predict_proba(X), fitted.predict_proba(X), rtol=1e-6)
  assert clf.score(X, y_obj) == pytest.approx(fitted.score(X, y_semi))
  assert clf.score(X, names[y_true].astype(str)) == pytest.approx(fitted.score(X, y_true))
  # A numeric class value below -1 is a class like any other (only -1 means unlabelled).
  y_neg = np.where(y_semi == 0, -2, y_semi)
  assert FlowGMMClassifier(random_state=0, **TINY).fit(X, y_neg).classes_.tolist() == [-2, 1]


def test_calibrate_cross_fits_a_temperature_and_keeps_the_final_model(table):
  """calibration="cross_fit": 2 fold fits (same shapes as ``fitted``: nothing compiles) give the
  out-of-fold logits of all 10 labels; the final model is the uncalibrated one (same seed,
  all labels), predict is unchanged and the flow's predict_proba is softmax(logits / T)."""
  X, y_semi, _ = table
  flow_only = FlowGMMClassifier(random_state=0, forest_weight=0, **TINY).fit(X, y_semi)
  clf = FlowGMMClassifier(random_state=0, calibration="cross_fit", calibration_folds=2,
                          forest_weight=0, **TINY).fit(X, y_semi)
  record = clf.calibration_
  assert record["num_folds"] == 2
  assert record["num_out_of_fold"] == 10
  assert clf.temperature_ == record["temperature"]
  assert 0.1 <= clf.temperature_ <= 10.0
  np.testing.assert_array_equal(clf.predict(X), flow_only.predict(X))
  expected = scipy.special.softmax(np.log(flow_only.predict_proba(X)) / clf.temperature_, axis=1)
  np.testing.assert_allclose(clf.predict_proba(X), expected, rtol=1e-5, atol=1e-9)
  # With the forest, the calibrated T replaces the default sqrt(D) in the average.
  blended = FlowGMMClassifier(random_state=0, calibration="cross_fit", calibration_folds=2,
                              **TINY).fit(X, y_semi)
  assert blended.flow_temperature_ == blended.temperature_ == clf.temperature_
  with pytest.raises(ValueError, match=r"calibration_folds=1 must be an integer >= 2"):
    FlowGMMClassifier(calibration="cross_fit", calibration_folds=1).fit(X, y_semi)


def test_predict_proba_averages_the_flow_at_temperature_sqrt_d_with_the_forest(fitted, table):
  """p(y | x) = (1 - w) softmax(logits / sqrt(D)) + w p_forest(y | u), w = 0.5 by default,
  the forest (100 trees) fitted on the standardised labelled rows; forest_weight=0 is
  FlowGMM's own softmax(logits), and the forest never changes the flow."""
  X, y_semi, _ = table
  u = fitted._standardized(X)
  logits = fitted.model_.logits(u, preprocessed=True).astype(np.float64)
  assert fitted.forest_weight_ == 0.5
  assert fitted.flow_temperature_ == pytest.approx(np.sqrt(3))
  assert fitted.forest_.n_estimators == 100
  labeled = y_semi != -1
  np.testing.assert_array_equal(fitted.forest_.predict(u[np.flatnonzero(labeled)]),
                                y_semi[labeled])  # a forest fits its training rows
  forest = fitted.forest_.predict_proba(u[:])
  expected = 0.5 * scipy.special.softmax(logits / np.sqrt(3), axis=1) + 0.5 * forest
  np.testing.assert_allclose(fitted.predict_proba(X), expected, rtol=1e-6, atol=1e-9)
  np.testing.assert_array_equal(fitted.predict(X), expected.argmax(axis=1))
  flow_only = FlowGMMClassifier(random_state=0, forest_weight=0, **TINY).fit(X, y_semi)
  assert flow_only.forest_ is None
  np.testing.assert_allclose(flow_only.model_.logits(u, preprocessed=True), logits, rtol=1e-6)
  np.testing.assert_allclose(flow_only.predict_proba(X), scipy.special.softmax(logits, axis=1),
                             rtol=1e-5, atol=1e-9)
  assert FlowGMMClassifier(random_state=0, flow_temperature=2.0, **TINY).fit(
      X, y_semi).flow_temperature_ == 2.0


def test_fit_and_predict_memory_does_not_grow_with_rows_beyond_the_data():
  """Batches are standardised as they are gathered (``features.StandardizedRows``), float32
  input is not copied to float64, and ``predict`` keeps no ``[N, D]`` latent: doubling the
  rows of a float32 table adds (almost) nothing to the NumPy memory that ``fit`` and
  ``predict`` allocate, where a standardised copy alone would add the table's size. The
  result is the same for float32 and float64 input of the same values."""
  import tracemalloc
  rng = np.random.default_rng(0)
  n, d = 150_000, 50
  y_true = np.arange(2 * n) % 2
  X = (rng.normal(size=(2 * n, d)) + 2.0 * y_true[:, None]).astype(np.float32)
  y = np.full(2 * n, -1)
  y[:20] = y_true[:20]
  clf = FlowGMMClassifier(random_state=0, num_coupling_layers=2, hidden_dim=16,
                          hidden_layers=1, num_train_steps=10, min_steps=0)
  clf.fit(X[:2000], y[:2000])  # compiles outside the measurement
  peaks = {}
  for rows in (n, 2 * n):
    tracemalloc.start()
    try:
      clf.fit(X[:rows], y[:rows])
      fit_peak = tracemalloc.get_traced_memory()[1]
      tracemalloc.reset_peak()
      accuracy = np.mean(clf.predict(X[:rows]) == y_true[:rows])
      peaks[rows] = (fit_peak, tracemalloc.get_traced_memory()[1])
    finally:
      tracemalloc.stop()
    assert accuracy > 0.95
  table = X[:n].nbytes  # the rows added
  fit_growth = peaks[2 * n][0] - peaks[n][0]
  predict_growth = peaks[2 * n][1] - peaks[n][1]
  assert fit_growth < 0.1 * table, (fit_growth, table)
  assert predict_growth < 0.3 * table, (predict_growth, table)  # [N, K] outputs only
  p32 = clf.predict_proba(X[:500])
  clf64 = FlowGMMClassifier(**clf.get_params()).fit(X[:2 * n].astype(np.float64), y)
  np.testing.assert_allclose(clf64.predict_proba(X[:500].astype(np.float64)),
                             clf.predict_proba(X[:500]), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(p32, clf.predict_proba(X[:500].astype(np.float64)), atol=1e-7)


def test_batch_sizes_are_capped_bucketed_and_divisible_by_the_device_count():
  from flowgmm_jax.training.batching import BatchLayout, batch_layout
  clf = FlowGMMClassifier(labeled_batch_size=64, unlabeled_batch_size=256)
  c = clf._make_config(seed=0)
  # A pool smaller than its batch: each of its rows once, padded to the next power of two
  # (at least 8) and to a multiple of the device count.
  assert batch_layout(c, 5, 13, num_devices=8) == BatchLayout(5, 13, 8, 16)
  assert batch_layout(c, 500, 0, num_devices=8) == BatchLayout(64, 0, 64, 0)
  assert batch_layout(c, 20, 1000, num_devices=1) == BatchLayout(20, 256, 32, 256)
  # Near pool sizes share one padded shape, so one compiled step.
  assert {batch_layout(c, n, 1000, 1).labeled_padded for n in (17, 20, 29, 32)} == {32}
  assert batch_layout(c, 40, 300, num_devices=6) == BatchLayout(40, 256, 66, 258)
  assert (c.data.kind, c.data.name, c.model.name) == ("tabular", "arrays", "realnvp_tabular")


# The estimator on 8 devices with pool sizes 8 does not divide runs in the 8-device process of
# tests/test_training.py::test_data_parallel_8_devices_equals_1_device_and_the_estimator_fits_on_8.


# ----------------------------------------------------------------------------- scikit-learn

def test_params_clone_and_set_params(fitted):
  rs = np.random.RandomState(3)
  params = dict(model="spline_tabular", num_coupling_layers=3, hidden_dim=32, means_scale=None,
                unlabeled_weight=0.5, random_state=rs, verbose=1)
  est = FlowGMMClassifier(**params)
  got = est.get_params()
  for name, value in params.items():
    assert got[name] is value  # stored unchanged
  twin = clone(est)  # sklearn's clone checks that __init__ stores every param unchanged
  assert twin.get_params()["num_coupling_layers"] == 3
  assert twin.model == "spline_tabular"
  assert est.set_params(num_train_steps=7) is est
  assert est.num_train_steps == 7
  with pytest.raises(ValueError, match="no_such_param"):
    est.set_params(no_such_param=1)
  with pytest.raises(TypeError):
    FlowGMMClassifier("spline_tabular")  # keyword arguments only
  unfitted = clone(fitted)
  assert unfitted.get_params() == fitted.get_params()
  assert_unfitted(unfitted)


def test_pipeline_cross_val_score_and_grid_search(table):
  X, y_semi, _ = table
  pipe = make_pipeline(StandardScaler(), FlowGMMClassifier(standardize=False, random_state=0,
                                                           **TINY))
  pipe.fit(X, y_semi)
  assert pipe.predict(X).shape == (len(X),)
  np.testing.assert_allclose(pipe.predict_proba(X).sum(axis=1), 1.0, atol=1e-12)
  cv = StratifiedKFold(n_splits=2, shuffle=True, random_state=0)
  scores = cross_val_score(pipe, X, y_semi, cv=cv)  # test folds: only labelled rows count
  assert scores.shape == (2,)
  assert np.all((0 <= scores) & (scores <= 1))
  search = GridSearchCV(pipe, {"flowgmmclassifier__random_state": [0, 1]}, cv=cv)
  search.fit(X, y_semi)
  assert search.best_params_["flowgmmclassifier__random_state"] in (0, 1)
  assert search.best_estimator_.predict(X).shape == (len(X),)


def test_pickle_and_joblib_round_trips_give_identical_predictions(fitted, table, tmp_path):
  X, _, _ = table
  proba = fitted.predict_proba(X)  # places the variables on the devices, which is not pickled
  density = fitted.score_samples(X)
  samples = fitted.sample(20, random_state=5)
  restored = pickle.loads(pickle.dumps(fitted))
  assert fitted.model_._placed is not None
  assert restored.model_._placed is None
  path = tmp_path / "clf.joblib"
  joblib.dump(fitted, path)
  for other in (restored, joblib.load(path)):
    np.testing.assert_array_equal(other.predict_proba(X), proba)
    np.testing.assert_array_equal(other.predict(X), fitted.predict(X))
    np.testing.assert_array_equal(other.score_samples(X), density)
    np.testing.assert_array_equal(other.sample(20, random_state=5)[0], samples[0])
    assert other.get_params() == fitted.get_params()


def test_a_pickle_of_another_parameter_layout_is_refused_in_one_line(fitted):
  """An estimator pickled before the flows were scanned (metadata version 2, no
  ``param_layout``: layout 1) or with an unknown layout is refused in one line."""
  import copy

  from flowgmm_jax.models import LayoutVersionError
  for change, words in ((lambda m: (m.pop("param_layout"), m.update(meta_version=2)),
                         "parameter layout 1"),
                        (lambda m: m.update(param_layout=7), "newer than this flowgmm_jax")):
    bad = copy.deepcopy(fitted)
    change(bad.model_.meta)
    with pytest.raises(LayoutVersionError, match=words) as e:
      pickle.loads(pickle.dumps(bad))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("method", "args"), [
    ("predict", ()), ("predict_proba", ()), ("predict_log_proba", ()),
    ("score_samples", ()), ("score", (np.zeros(3),)), ("sample", None),
    ("outlier_score", ()), ("query", (2,))])
def test_using_an_unfitted_estimator_raises_not_fitted_error(method, args):
  est = FlowGMMClassifier()
  call = ((lambda: getattr(est, method)(5)) if args is None
          else (lambda: getattr(est, method)(np.zeros((3, 3)), *args)))
  with pytest.raises(NotFittedError):
    call()


# ----------------------------------------------------------------------------- bad input

def _bad_fit_inputs():
  X, y_semi, _ = gaussian_table(n=40)
  with_nan = X.copy()
  with_nan[3, 1] = np.nan
  with_inf = X.copy()
  with_inf[7, 0] = np.inf
  return [
      ("nan", with_nan, y_semi,
       r"Input X contains NaN\. X contains NaN or inf in 1 row\(s\) \(first: row 3\).*impute"),
      ("inf", with_inf, y_semi, r"infinity.*NaN or inf .*first: row 7"),
      ("1-d X", X[:, 0], y_semi, r"X must be 2-D .*reshape"),
      ("3-d X", X[:, :, None], y_semi, r"dim 3.*X must be 2-D .*reshape"),
      ("lengths", X, y_semi[:-1],
       r"inconsistent numbers of samples: \[40, 39\].*one label per row"),
      ("fractional label", X, np.where(np.arange(40) == 2, 0.5, y_semi),
       r"Unknown label type: continuous.*-1 marks the unlabelled rows.*LabelEncoder"),
      ("nan label", X, np.where(np.arange(40) == 30, np.nan, y_semi),
       r"Input y contains NaN.*unlabelled rows with -1, not NaN"),
      ("no labels", X, np.full(40, -1), r"no labelled rows.*label at least one row"),
      ("one class", X, np.where(y_semi == 1, -1, y_semi),
       r"only one class \(0\).*at least 2 classes"),
      ("one feature", X[:, :1], y_semi, r"1 feature\(s\).*at least 2 features.*Add a feature"),
  ]


@pytest.mark.parametrize(("name", "X", "y", "message"), _bad_fit_inputs(),
                         ids=[case[0] for case in _bad_fit_inputs()])
def test_bad_fit_input_is_a_clear_value_error_and_leaves_the_estimator_unfitted(
    name, X, y, message):
  est = FlowGMMClassifier(**TINY)
  with pytest.raises(ValueError, match=message):
    est.fit(X, y)
  assert_unfitted(est)


def test_failed_refit_of_a_fitted_estimator_leaves_it_unfitted(fitted, table):
  X, y_semi, _ = table
  est = copy.deepcopy(fitted)
  est.predict(X)
  bad = X.copy()
  bad[0, 0] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    est.fit(bad, y_semi)
  assert_unfitted(est)


def test_bad_hyperparameters_are_clear_value_errors(table):
  X, y_semi, _ = table
  for params, message in [({"model": "spline"}, r"model='spline'; choose one of"),
                          ({"num_train_steps": 0}, r"num_train_steps=0 must be an integer >= 1"),
                          ({"learning_rate": -1.0}, r"learning_rate=-1.0 must be .*> 0"),
                          ({"hidden_dim": 2.5}, r"hidden_dim=2.5 must be an integer"),
                          ({"bound": 5.0}, r"bound does not apply to model='realnvp_tabular'"),
                          ({"means_init": "random"}, r"means_init='random'; choose one of"),
                          ({"random_state": -3}, r"random_state=-3"),
                          ({"forest_weight": 1.5}, r"forest_weight=1.5 must be a number in"),
                          ({"flow_temperature": 0.0}, r"flow_temperature=0.0 must be None")]:
    est = FlowGMMClassifier(**params)
    with pytest.raises(ValueError, match=message):
      est.fit(X, y_semi)
    assert_unfitted(est)


def test_bad_predict_input_is_a_clear_value_error(fitted, table):
  X, _, _ = table
  with pytest.raises(ValueError, match=r"X has 2 features, but .* expecting 3 features.*same "
                     "columns"):
    fitted.predict(X[:, :2])
  with pytest.raises(ValueError, match=r"X has 4 features, but .* expecting 3 features"):
    fitted.score_samples(np.concatenate([X, X[:, :1]], axis=1))
  bad = X[:5].copy()
  bad[2, 2] = np.inf
  with pytest.raises(ValueError, match=r"NaN or inf .*first: row 2"):
    fitted.predict_proba(bad)
  with pytest.raises(ValueError, match=r"X must be 2-D"):
    fitted.predict(X[0])
  with pytest.raises(ValueError, match=r"not a class; choose from classes_ = \[0, 1\]"):
    fitted.sample(3, y=4)


# ----------------------------------------------------------------------------- sklearn checks

# The smallest flow that is still a FlowGMM (one coupling of width 8, 5 steps, no held-out
# split): the checks test the scikit-learn contract (validation, fitted state, shapes,
# pickling, determinism), not accuracy, and compiling for each check's own shapes is
# most of their time.
CHECKS_FLOW = dict(num_coupling_layers=1, hidden_dim=8, num_train_steps=5,
                   unlabeled_batch_size=16, holdout_fraction=0.0)


# The checks this test runs: every check that needs no fit, plus the fitting ones that
# failed before validation went through scikit-learn (the whole list, 55 checks of which
# ~30 compile the flow for their own shapes, takes minutes on a 2-core machine: run
# ``sklearn.utils.estimator_checks.check_estimator(FlowGMMClassifier())`` for all of them;
# docs/tables.md has the last table). These compile
# three flows; 54 s on a 2-core CPU at load average 20.
SKLEARN_CHECKS = (
    "check_no_attributes_set_in_init", "check_estimators_unfitted", "check_mixin_order",
    "check_parameters_default_constructible", "check_get_params_invariance",
    "check_set_params", "check_estimator_sparse_array", "check_estimator_sparse_matrix",
    "check_complex_data", "check_estimators_empty_data_messages", "check_fit1d",
    "check_fit2d_1sample", "check_fit2d_1feature", "check_classifiers_one_label",
    "check_classifiers_regression_target", "check_requires_y_none",
    "check_n_features_in_after_fitting", "check_dtype_object", "check_supervised_y_2d",
    "check_dict_unchanged", "check_fit2d_predict1d")


def test_scikit_learn_estimator_checks():
  """scikit-learn's own estimator checks (``SKLEARN_CHECKS`` of them) pass, as a new
  user's CI would run them; ``EXPECTED_FAILED_CHECKS`` names the one that fails by design."""
  from sklearn.utils.estimator_checks import estimator_checks_generator

  from flowgmm_jax.estimator import EXPECTED_FAILED_CHECKS
  assert set(EXPECTED_FAILED_CHECKS) == {"check_classifiers_classes"}
  ran = []
  for estimator, check in estimator_checks_generator(
      FlowGMMClassifier(random_state=0, **CHECKS_FLOW), legacy=True,
      expected_failed_checks=EXPECTED_FAILED_CHECKS):
    name = getattr(check, "func", check).__name__
    if name in SKLEARN_CHECKS:
      check(estimator)  # raises on failure
      ran.append(name)
  assert set(ran) == set(SKLEARN_CHECKS)


# ----------------------------------------------------------------------------- density

def test_score_samples_equals_flow_log_det_plus_prior_plus_standardisation(fitted, table):
  """log p(x) recomputed independently: the flow's Jacobian by autodiff (float64),
  the mixture by scipy, the standardisation from the training data."""
  X, _, _ = table
  x = X[:25]
  mean, std = X.mean(axis=0), X.std(axis=0)
  u = (x - mean) / std
  variables = fitted.variables_
  flow = TabularFlow(num_coupling_layers=TINY["num_coupling_layers"],
                        hidden_dim=TINY["hidden_dim"], hidden_layers=TINY["hidden_layers"])
  with jax.enable_x64(True):
    flow_params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                               variables["params"]["flow"])
    def f(row):
      return flow.apply({"params": flow_params}, row[None])[0][0]
    z = np.asarray(jax.vmap(f)(jnp.asarray(u)))
    jacobians = jax.vmap(jax.jacfwd(f))(jnp.asarray(u))
    log_det = np.asarray(jnp.linalg.slogdet(jacobians)[1])
  # Learnable prior variables live in 'params', fixed ones in the 'prior' collection.
  prior = {**variables["prior"]["prior"], **variables["params"].get("prior", {})}
  assert {"means", "weight_logits"} <= set(variables["params"]["prior"])  # learnt (defaults)
  means = np.asarray(prior["means"], np.float64)
  sigmas = np.exp(np.asarray(prior["log_scales"], np.float64))[:, 0]  # isotropic
  logits = np.asarray(prior["weight_logits"], np.float64)
  log_pi = logits - logsumexp(logits)
  log_normal = np.stack([stats.multivariate_normal(m, s**2 * np.eye(3)).logpdf(z)
                         for m, s in zip(means, sigmas, strict=False)], axis=1)
  expected = logsumexp(log_pi + log_normal, axis=1) + log_det - np.sum(np.log(std))
  np.testing.assert_allclose(fitted.score_samples(x), expected, rtol=1e-4, atol=1e-3)
  # The standardisation term matters here: -sum(log std) = about -2.7 nats.
  assert abs(np.sum(np.log(std))) > 2.0


def test_score_samples_is_a_normalised_density_in_user_units(fitted, table):
  """exp(score_samples) integrates to 1 over the user's feature space (Riemann sum)."""
  X, _, _ = table
  mean, std = X.mean(axis=0), X.std(axis=0)
  axes = [np.linspace(m - 7 * s, m + 7 * s, 56) for m, s in zip(mean, std, strict=False)]
  grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
  cell = np.prod([a[1] - a[0] for a in axes])
  total = np.exp(fitted.score_samples(grid)).sum() * cell
  assert total == pytest.approx(1.0, abs=0.03)


def test_sample_returns_rows_in_user_units(fitted, table):
  X, _, y_true = table
  x_samples, y_samples = fitted.sample(2000, random_state=0)
  assert x_samples.shape == (2000, 3)
  assert set(np.unique(y_samples)) <= {0, 1}
  # The learnt class weights of balanced data: about half of each class.
  assert 0.4 < np.mean(y_samples == 1) < 0.6
  # In the user's units: the sample mean and spread match the data's (offsets up to 100,
  # scales from 0.1 to 10), which the standardised space would not.
  assert np.all(np.abs(x_samples.mean(axis=0) - X.mean(axis=0)) < 0.35 * X.std(axis=0))
  np.testing.assert_allclose(x_samples.std(axis=0), X.std(axis=0), rtol=0.35)
  # With learnt means that start together (the defaults) the two class Gaussians stay
  # close, so class-conditional samples overlap; the difference still points the right way.
  x0, _ = fitted.sample(1000, y=0, random_state=1)
  x1, _ = fitted.sample(1000, y=1, random_state=1)
  true_shift = X[y_true == 1].mean(axis=0) - X[y_true == 0].mean(axis=0)
  assert np.dot((x1.mean(axis=0) - x0.mean(axis=0)) / UNITS, true_shift / UNITS) > 0


def test_class_conditional_samples_match_each_class_with_fixed_separated_means(table):
  """The paper's prior (fixed means 7.5 apart): p(x | y) is each class's Gaussian."""
  X, y_semi, y_true = table
  params = {**TINY, "num_train_steps": 400, "learning_rate": 1e-2}
  clf = FlowGMMClassifier(means_init="auto", means_scale=None, learn_means=False,
                          learn_weights=False, objective="joint", label_weight=1.0,
                          holdout_fraction=0.0, random_state=0, **params).fit(X, y_semi)
  assert clf.score(X, y_true) >= 0.97
  for value in (0, 1):
    xs, ys = clf.sample(2000, y=value, random_state=1)
    assert np.all(ys == value)
    # Each class is N(offset + 3 * value * units, units^2) per feature: the samples' mean
    # is within 0.5 units of it (3 units from the other class's, 1.5 from the mixture's).
    expected_mean = OFFSET + 3.0 * value * UNITS
    assert np.all(np.abs(xs.mean(axis=0) - expected_mean) < 0.5 * UNITS)
    np.testing.assert_allclose(xs.std(axis=0), UNITS, rtol=0.35)


def test_sample_arguments(fitted):
  _, ys = fitted.sample(3, y=[1, 0, 1], random_state=2)
  np.testing.assert_array_equal(ys, [1, 0, 1])
  np.testing.assert_array_equal(fitted.sample(4, random_state=3)[0],
                                fitted.sample(4, random_state=3)[0])
  assert np.abs(fitted.sample(4, random_state=3)[0] - fitted.sample(4, random_state=4)[0]).max() > 0
  with pytest.raises(ValueError, match=r"n_samples=0 must be an integer >= 1"):
    fitted.sample(0)
  with pytest.raises(ValueError, match=r"n_samples=3 class values, got shape \(2,\)"):
    fitted.sample(3, y=[0, 1])


def test_a_first_fit_compiles_six_programs_and_a_second_none(caplog):
  """Each program a fit compiles costs a first process its compile time: the key split
  (once per process), model.init, the forward pass (the labelled rows' centroids and the
  early-stopping rows share one padded size), the optimiser state, the train step and the
  prior's parameters. An op-by-op jax call inside a fit would add one program each."""
  import logging
  x, y_semi, _ = gaussian_table()
  x = np.concatenate([x, x[:, :1] ** 2], axis=1)  # 4 features: a shape no other test fits
  params = {**TINY, "hidden_dim": 12, "num_train_steps": 60, "min_steps": 0}

  def compiled_programs() -> list[str]:
    caplog.clear()
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
      FlowGMMClassifier(random_state=0, **params).fit(x, y_semi)
    return [r.getMessage().split(" with ")[0] for r in caplog.records
            if r.getMessage().startswith("Compiling ")]

  first = [name for name in compiled_programs() if name != "Compiling jit(_split_seed)"]
  assert len(first) == 5, first
  assert compiled_programs() == []
