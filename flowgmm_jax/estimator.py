"""``FlowGMMClassifier``: semi-supervised FlowGMM as a scikit-learn estimator.

For a table ``X: [N, D]`` whose labels ``y: [N]`` hold ``-1`` on the unlabelled rows (the
convention of ``sklearn.semi_supervised``)::

    from flowgmm_jax import FlowGMMClassifier
    clf = FlowGMMClassifier(random_state=0).fit(X, y)     # y == -1: unlabelled
    clf.predict(X_new), clf.predict_proba(X_new)           # p(y | x)
    clf.score_samples(X_new)                               # log p(x), nats, in X's units
    clf.outlier_score(X_new)                               # higher = less like the training rows
    clf.predict(X_new, reject_rate=0.05)                   # -1 for the most unusual rows
    clf.query(X_pool, n=10)                                # which rows to label next
    X_fake, y_fake = clf.sample(100)                       # rows in X's units

``X`` may also be a pandas DataFrame with numeric, bool, categorical and string columns, or
an array with ``categorical_features=`` column indices; each categorical column becomes its
one-hot block, or with ``categorical_encoding="simplex"`` one variable dequantised on its
simplex cell (``flowgmm_jax.features``).

The model (forward is always data -> latent): with ``standardize=True`` the features are first
standardised, ``u = (x - m) / s`` (``m``, ``s``: per-feature mean and standard deviation of
all rows given to ``fit``, labelled and unlabelled); a normalising flow ``f`` maps ``u`` to
``z = f(u)``, and the latent prior is a Gaussian mixture with one component per class:

    log p(x | y=k) = log N(f(u); mu_k, Sigma_k) + log|det df/du| - sum_d log s_d
    log p(x)       = logsumexp_k [log pi_k + log N(f(u); mu_k, Sigma_k)]
                     + log|det df/du| - sum_d log s_d
    p(y=k | x)     = softmax_k [log pi_k + log N(f(u); mu_k, Sigma_k)]

Training minimises a FlowGMM objective (``flowgmm_jax.losses.flowgmm_objective``; the
class docstring gives the default recipe) with the library's one training loop
(``flowgmm_jax.training.loop.fit``) and its jitted, data-parallel step; this module only turns
the arrays into a config (``TABLE_RECIPE`` with the estimator's parameters) and a
``Dataset``, and keeps what prediction needs.

Memory: ``u`` is computed for each batch as it is gathered (``features.StandardizedRows``),
float32 ``X`` is used as it is (anything else becomes float64), and prediction keeps only
the ``[N, K]`` outputs, so beyond ``X`` itself ``fit`` and ``predict`` hold one chunk of
rows and ``[N]``-sized index and label arrays.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import numpy as np
import scipy.special
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from flowgmm_jax import features as features_lib
from flowgmm_jax import novelty
from flowgmm_jax.features import CategoricalRows, StandardizedRows
from flowgmm_jax.flowgmm import log_px
from flowgmm_jax.labels import UNLABELED
from flowgmm_jax.training.config import (
  RECIPE_PARAMETERS,
  base_config,
  recipe_defaults,
  table_recipe,
  validate_config,
)

_R = recipe_defaults()
# Features whose standard deviation is below this are only centred (scale 1).
_MIN_SCALE = 1e-12
# Rows per chunk of the inference programs (trained.TrainedFlowGMM pads smaller chunks).
_MAX_CHUNK = 4096
# Rows per chunk of the standardisation (float64 temporaries of [chunk, D]).
_STANDARDIZE_CHUNK = 65_536
# Trees of the forest on the labelled rows (``forest_weight``): 300 trees cost three times
# the time and were no better on the validation splits (docs/tables.md).
_FOREST_TREES = 100


# scikit-learn's estimator checks that FlowGMMClassifier fails by design, with the reason:
# pass it to ``sklearn.utils.estimator_checks.check_estimator`` or
# ``parametrize_with_checks`` as ``expected_failed_checks`` (tests/test_estimator.py does).
# scikit-learn exempts its own semi-supervised estimators from this case by their names
# (``_choose_check_classifiers_labels``), not by a tag, so a third-party one declares it.
EXPECTED_FAILED_CHECKS = {
    "check_classifiers_classes": (
        "its last case fits the class values [-1, 1], and -1 marks an unlabelled row, as in "
        "sklearn.semi_supervised (so only class 1 is labelled). Its string and object "
        "class labels pass (tests/test_estimator.py::"
        "test_string_and_object_class_labels_give_the_same_model)."),
}


# ----------------------------------------------------------------------------- validation

def _parameter_name(path: str) -> str:
  """A config field as the estimator's parameter: its own name (``model`` for
  ``model.name``)."""
  selectors = {"model.name": "model", "calibration.method": "calibration"}
  return selectors.get(path, path.rpartition(".")[2])


def _same(value: Any, default: Any) -> bool:
  """Whether a parameter is at its default (same type and value)."""
  return type(value) is type(default) and value == default


def _plain(tree: Any) -> Any:
  """Nested dicts with numpy scalars turned into Python ones (for JSON and ConfigDict)."""
  if isinstance(tree, dict):
    return {k: _plain(v) for k, v in tree.items()}
  if isinstance(tree, (bool, np.bool_)):
    return bool(tree)
  if isinstance(tree, numbers.Integral):
    return int(tree)
  if isinstance(tree, numbers.Real):
    return float(tree)
  return tree


def _hinted(error: ValueError, X: Any, *, name: str = "X", fitted_features=None) -> ValueError:
  """scikit-learn's message of a failed ``validate_data`` with our hint on how to fix it
  appended (scikit-learn's own wording stays first, as its estimator checks match it)."""
  message = str(error)
  hint = ""
  if ("NaN" in message or "infinity" in message) and "Input y" in message:
    hint = "Mark unlabelled rows with -1, not NaN."
  elif "NaN" in message or "infinity" in message:
    message = message.splitlines()[0]  # "Input X contains NaN." (the rest is about NaN-aware models)
    try:
      finite = np.isfinite(np.asarray(X, np.float64))
      if finite.ndim == 1:
        finite = finite[:, None]
      bad_rows = np.nonzero(~finite.all(axis=1))[0]
      hint = (f"{name} contains NaN or inf in {bad_rows.size} row(s) (first: row "
              f"{int(bad_rows[0])}); ")
    except (TypeError, ValueError, IndexError):
      pass
    hint += ("drop those rows or impute the missing values first (e.g. with "
             "sklearn.impute.SimpleImputer in a Pipeline).")
  elif "Expected 2D array" in message or "Found array with dim" in message:
    hint = (f"{name} must be 2-D [n_samples, n_features]; reshape it, e.g. "
            f"{name}.reshape(1, -1) for a single sample or {name}.reshape(len({name}), -1) to "
            "flatten each row.")
  elif "feature(s)" in message:
    hint = ("FlowGMMClassifier needs at least 2 features (each coupling layer transforms one "
            "half of the features given the other). Add a feature column.")
  elif "sample(s)" in message:
    hint = f"Pass at least one row in {name}."
  elif "features, but" in message:
    hint = (f"Pass the same columns, in the same order, as in fit ({fitted_features} "
            "features).")
  elif "Complex data" in message:
    hint = ("Pass real features (e.g. split the real and imaginary parts into two "
            "columns).")
  elif "could not convert" in message or "dtype" in message:
    hint = ("Name categorical or text columns in categorical_features= (column indices, "
            "a mask, or names), or pass a pandas DataFrame with them as category or string "
            "dtype.")
  elif "inconsistent numbers of samples" in message:
    hint = "Give one label per row of X, with -1 for the unlabelled rows."
  return ValueError(f"{message} {hint}".strip())


def _features(estimator, X, *, reset: bool) -> np.ndarray:
  """``X`` as a finite float64 or float32 ``[N, D]`` array (float32 is kept, not copied;
  anything else becomes float64) through scikit-learn's ``validate_data``
  (which sets ``n_features_in_`` when ``reset``, and checks it otherwise), or its
  ValueError with our hint appended. A sparse matrix is refused (TypeError, scikit-learn's
  message: pass ``X.toarray()``); so is an entry that is not a number (TypeError)."""
  try:
    return validate_data(estimator, X, reset=reset, dtype=(np.float64, np.float32),
                         ensure_min_features=2 if reset else 1)
  except ValueError as e:
    raise _hinted(e, X, fitted_features=getattr(estimator, "n_features_in_", None)) from None


def _is_unlabeled(value: Any) -> bool:
  return (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
          and value == UNLABELED)


def _labeled_mask(y: np.ndarray) -> np.ndarray:
  """``[N]`` bool, True where ``y`` (1-D, any class values) is not the unlabelled mark -1.

  As in ``sklearn.semi_supervised.SelfTrainingClassifier``: in numeric and object arrays
  -1 marks an unlabelled row; an array of strings is labelled throughout."""
  if y.dtype.kind in "US":
    return np.ones(y.shape[0], bool)
  if y.dtype.kind == "O":
    return np.fromiter((not _is_unlabeled(v) for v in y), bool, count=y.shape[0])
  return y != UNLABELED


def _check_labels(y: np.ndarray) -> np.ndarray:
  """The labelled mask ``[N]`` of ``y [N]`` (class values of any type, -1 = unlabelled),
  after scikit-learn's checks of the labelled values (``check_classification_targets``:
  continuous or unknown targets are refused), with our hint appended."""
  labeled = _labeled_mask(y)
  try:
    check_classification_targets(y[labeled])
  except ValueError as e:
    raise ValueError(
        f"{e} y must hold class labels (integers, strings or other values; -1 marks the "
        "unlabelled rows); encode the classes first (e.g. with "
        "sklearn.preprocessing.LabelEncoder).") from None
  return labeled


def _column_mean_and_std(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-column mean and (population) standard deviation of ``x [N, D]`` (float64 or
  float32), float64 ``[D]`` each, accumulated in float64 over row chunks (two passes), so
  the memory beyond ``x`` is one chunk."""
  mean = x.mean(axis=0, dtype=np.float64)
  squares = np.zeros(x.shape[1])
  for start in range(0, x.shape[0], _STANDARDIZE_CHUNK):
    chunk = np.asarray(x[start:start + _STANDARDIZE_CHUNK], np.float64)
    squares += np.square(chunk - mean).sum(axis=0)
  return mean, np.sqrt(squares / x.shape[0])


def _checked_y(y, num_rows: int) -> np.ndarray:
  """``y`` as a 1-D array of ``num_rows`` labels (scikit-learn's checks of a 1-D y, for X
  that did not go through ``validate_data``)."""
  y = column_or_1d(y, warn=True)
  if y.shape[0] != num_rows:
    raise ValueError(f"Found input variables with inconsistent numbers of samples: "
                     f"[{num_rows}, {y.shape[0]}]. Give one label per row of X, with -1 for "
                     "the unlabelled rows.")
  if y.dtype.kind == "f" and not np.isfinite(y).all():
    raise ValueError("Input y contains NaN. Mark unlabelled rows with -1, not NaN.")
  return y


# ----------------------------------------------------------------------------- estimator

class FlowGMMClassifier(ClassifierMixin, BaseEstimator):
  """Semi-supervised FlowGMM classifier and density model for tables and embeddings.

  ``fit(X, y)`` takes features ``X: [N, D]`` (float, D >= 2) and labels ``y: [N]``
  (integers; ``-1`` marks unlabelled rows, as in ``sklearn.semi_supervised``). Training
  runs the library's one training loop (``flowgmm_jax.training.loop.fit``) for at most
  ``num_train_steps`` optimiser steps on batches of ``labeled_batch_size`` labelled plus
  ``unlabeled_batch_size`` unlabelled rows. With the default
  ``objective="marginal_and_cross_entropy"`` it minimises
  (``flowgmm_jax.losses.flowgmm_objective``)

      label_weight * mean_labelled[-log p(y | x)] + unlabeled_weight * mean_all[-log p(x)],

  and with ``objective="joint"`` (the paper's tabular form)
  ``label_weight * mean_labelled[-log p(x, y)] + unlabeled_weight * mean_unlabelled[-log p(x)]``.

  The flow maps data to latent (forward = data -> latent); its prior is a Gaussian
  mixture with one component per class (see the module docstring for the formulas).

  The defaults (``TABLE_RECIPE`` in ``flowgmm_jax/training/config.py``; the table and text
  configs of the command line run the same recipe) rest on three measured points, from
  ``python -m benchmarks.ssl_suite --validation`` (a split of the training rows, never the
  test rows):

  * The flow overfits the density of a small table within a few hundred steps (on Breast
    Cancer the held-out log-likelihood fell from -14 to -4206 nats while accuracy fell
    from 95% to 90%). So ``holdout_fraction`` of the unlabelled rows are held out, their
    NLL is measured every ``check_every_steps`` steps, training stops after ``patience``
    checks without improvement (not before ``min_steps``), and the parameters of the best
    check are kept. This scales the
    training length with the data without a per-table setting.
  * The means start at the labelled rows' latent centroids (``means_init="labeled"``), so
    training starts from the nearest-class-mean rule, and are learnt, as are the class
    weights (Shuttle is 78% one class).
  * The density term is summed over D features while the class term is one number per
    row, so the class term is weighted up (``label_weight``), making p(y | x) a trained
    classifier rather than a by-product of the density.

  A fit takes seconds (hundreds of rows) to tens of seconds (20,000 x 400 or a million x
  50 rows on a 2-core CPU; docs/tables.md).

  Args (keyword only; every one is stored unchanged, so ``get_params``, ``set_params`` and
  ``sklearn.base.clone`` work). Each recipe parameter is the field of the same name in the
  training config (``flowgmm_jax/training/config.py``; ``model`` is ``config.model.name``),
  and the defaults are ``TABLE_RECIPE`` there:
    model: "realnvp_tabular" (default): affine coupling layers (RealNVP-tabular, as in the
      paper); "spline_tabular": rational-quadratic spline couplings (Durkan et al. 2019).
    num_coupling_layers: number of coupling layers (default 6); alternate layers transform
      the first and the second half of the features.
    hidden_dim: width of each coupling's MLP conditioner (default 64).
    hidden_layers: hidden layers of width ``hidden_dim`` in each conditioner (default 1).
    dropout_rate: dropout after each conditioner's first layer while training. None
      (default): the paper's 0.5 when X has at least 4 features, else 0
      (``flowgmm_jax.models.tabular_dropout_rate``). Prediction and the held-out NLL run
      without it.
    zero_init_last: start every coupling as the identity (default False).
    num_bins, bound: ``model="spline_tabular"`` only: bins per spline (default 8) and the
      half-width of the interval on which the splines act (default 4.0 standardised units;
      identity outside it).
    covariance: prior covariance per class, "isotropic" (sigma_k^2 I, default) or
      "diagonal".
    means_init: "labeled" (default): after the flow's initialisation each mean is put at
      the centroid of f(x) over that class's labelled rows; "auto": the paper's random
      means, spread by ``means_scale``.
    means_scale: with ``means_init="auto"``, the initial spread of the prior means in the
      latent space: with more than 2 classes ``mu_k = means_scale * N(0, I_D)``; with 2
      classes the means are antipodal at distance ``means_scale``. Default 0.01; None uses
      the paper's values (0.56 and 7.5), meant for fixed means.
    learn_means: train the means (default True; the paper kept them fixed).
    learn_scales: train each class's scale sigma_k (default False).
    learn_weights: train the class weights pi (default True: the unlabelled rows then
      estimate the class proportions, which matters for imbalanced data; the paper kept
      them uniform).
    objective: "marginal_and_cross_entropy" (default): ``label_weight`` x cross-entropy of
      p(y | x) on the labelled rows + ``unlabeled_weight`` x -log p(x) over all rows
      (the original image code's objective); "joint": the paper's tabular form,
      ``label_weight`` x -log p(x, y) on the labelled rows + ``unlabeled_weight`` x
      -log p(x) on the unlabelled ones.
    label_weight: weight of the labelled term. None (default): ``label_weight_per_feature
      * D``, since the density term is a sum over the D features.
    label_weight_per_feature: see ``label_weight`` (default 10).
    unlabeled_weight: weight of the density term (default 1.0).
    noise_std: Gaussian noise added to the standardised features of every training row,
      in units of each feature's standard deviation (default 0.1).
    dequantize: "auto" (default): each discrete column of X (binary, or integer-like codes
      on a lattice of at most 64 levels, found by ``flowgmm_jax.features``) gets uniform
      noise of its own resolution r, U(-r/2, r/2), every training step instead of the
      Gaussian noise, so the flow models the mass of each value's cell rather than spikes
      on the values (prediction uses the values themselves); "off": Gaussian noise on every
      column.
    optimizer: "adam" (default), "adamw" or "sgd".
    learning_rate: learning rate (default 1e-2), decayed by ``lr_schedule``.
    lr_schedule: "cosine" (default: cosine decay to 0 over ``num_train_steps``),
      "constant" or "hold_then_linear" (the original code's: constant, then linear decay
      to 1% from 50% to 90%).
    weight_decay: L2 on the weight-norm gains (the coupling scales) only, as in the
      original (default 0).
    num_train_steps: the most optimiser steps (default 3000); early stopping usually ends
      training sooner.
    labeled_batch_size: labelled rows per step (default 64; a smaller labelled pool gives
      each of its rows once per step).
    unlabeled_batch_size: unlabelled rows per step (default 256; likewise for a smaller
      unlabelled pool).
    holdout_fraction: fraction of the unlabelled rows held out of training to measure
      -log p(x) for early stopping (default 0.1, at most 0.5; at least 16 rows, at most
      half the pool and 4096 rows; none when fewer than 32 rows are unlabelled). 0 turns
      early stopping off.
    check_every_steps: steps between two held-out measurements (default 25).
    patience: measurements without improvement before training stops (default 5); the
      parameters of the best measurement are kept. 0: train ``num_train_steps``, then keep
      the best.
    min_steps: no early stop before this step (default 1000, a third of the default
      schedule): early in the cosine schedule the held-out NLL is noisy, and patience
      alone stopped two moons at 250-375 steps (docs/tables.md). The best measurement is
      kept either way, so a table that overfits early keeps its early parameters.
    categorical_features: which columns of X are categorical. None (default): for a pandas
      DataFrame, ``"from_dtype"``; for an array, none (every column is a number, as
      before). ``"from_dtype"``: the DataFrame's columns of pandas ``category``, ``object``
      or ``string`` dtype (bool columns are numeric 0/1; an array has no categorical
      column). Or an array of ``n_features`` bools (a mask), of column indices, or of
      column names (a DataFrame), as in ``HistGradientBoostingClassifier``. A categorical
      column may hold any hashable values (strings, numbers); its levels are the values
      seen in ``fit``; a missing value (None, NaN) in it is refused.
    categorical_encoding: how the flow sees a categorical column of K levels (only with
      categorical columns). "onehot" (default): K 0/1 columns in the column's place
      (``OneHotEncoder``'s layout), dequantised per column like any binary column, so a
      DataFrame fits exactly as its one-hot encoded array would. "simplex": K - 1
      continuous coordinates, the additive log-ratios of a point drawn uniformly, afresh
      every training step, from the level's arg-max cell of the probability simplex (its
      dequantisation; prediction uses the cell's centroid; ``flowgmm_jax/features.py``
      gives the maths). On eight mixed tables neither is better on the whole (simplex
      +6.9 points on CPS1985, -4.7 on credit; docs/tables.md), so the default is the
      encoding every numeric table already had.
    handle_unknown: a level of a categorical column that ``fit`` did not see, at predict
      time: "error" (default) raises a one-line ValueError naming the column and value;
      "ignore" gives the column an all-zero one-hot block, as
      ``OneHotEncoder(handle_unknown="ignore")`` (with "simplex": the simplex's centre, all
      levels equally likely, a = 0).
      Read at predict time, as ``OneHotEncoder`` reads it at transform.
    standardize: standardise the features with the mean and standard deviation of all rows
      given to ``fit`` (default True). The prior assumes unit-scale features; pass False
      only for features that are standardised already (e.g. after a StandardScaler in a
      Pipeline). ``score_samples`` and ``sample`` are in ``X``'s own units either way.
    calibration: a temperature T for ``predict_proba``, p(y | x) = softmax(logits / T)
      (``predict`` is unchanged): "none" (default); "cross_fit": ``calibration_folds``
      extra fits, each with one fold of the labelled rows unlabelled, give out-of-fold
      logits on which T is fitted, and the final model trains on every label;
      "holdout": ``calibration_fraction`` of each class's labels are held back from
      training and T is fitted on them. T is searched in [0.1, ``max_temperature``]
      (``flowgmm_jax.calibration``). At 10 labels per class it helps only where the model
      is very over-confident (docs/tables.md). The same fields as the command line's
      ``config.calibration``.
    calibration_folds: folds of "cross_fit" (default 3, the measured setting; at least 2).
    calibration_fraction: the labels "holdout" holds back (default 0.2).
    max_temperature: the top of T's search bracket (default 10).
    forest_weight: w, the weight of a random forest (100 trees) trained on the labelled
      rows alone in ``predict_proba`` and ``predict``:
      p(y | x) = (1 - w) softmax(logits / T) + w p_forest(y | x) (default 0.5; 0 gives
      FlowGMM's own classifier, softmax(logits / T) with T = ``temperature_``). The two
      err on different rows: the flow where its density does not separate the classes
      (tables of integer codes and one-hot columns), the forest where 10 labels per class
      do not cover a class. On the validation splits of 25 tables the average raised the
      mean accuracy by 0.6 points (docs/tables.md). ``score_samples``, ``sample``,
      ``outlier_score`` and ``query`` read the flow alone.
    flow_temperature: T of the flow's softmax in that average. None (default): sqrt(D),
      D the flow's input columns. The logits are sums of squared latent distances over D
      dimensions, so their gap between two classes grows with D and its noise like
      sqrt(D); T = sqrt(D) measures the gap in units of that noise, so that neither
      model outvotes the other on every row of a wide table. ``temperature_`` replaces it
      when ``calibration`` fits one. Unused with ``forest_weight=0``.
    compilation_cache_dir: JAX's persistent compilation cache, so that fits in later
      processes load their compiled programs instead of compiling them (process-wide once
      set). None (default): on, in the per-user directory ``$XDG_CACHE_HOME/flowgmm_jax/xla``
      (``~/.cache/flowgmm_jax/xla``), unless JAX already has a cache directory or
      ``$FLOWGMM_COMPILATION_CACHE=off``; ``"off"``: the estimator leaves it off; a path:
      that directory (``flowgmm_jax/compile_cache.py``). Within one process a second fit of
      the same shapes and settings compiles nothing either way.
    random_state: None (default: a fresh seed for every fit), an int, or a
      ``numpy.random.RandomState``. The same data and the same int give the same model and
      the same predictions (on the same machine and JAX version).
    verbose: 0 (default) silent; 1 a progress bar; 2 also prints the training loss ten
      times per fit.

  Attributes (after ``fit``):
    classes_: sorted class values ``[K]`` seen among the labelled rows.
    n_features_in_: D, the columns of X.
    feature_names_in_: X's column names, when X was a DataFrame with string column names
      (predict then needs the same columns in the same order).
    encoder_: the ``features.TableEncoder`` of the categorical columns (levels in
      ``encoder_.categories``), or None when X had none; ``categorical_encoding_`` the
      encoding it was fitted with (None without categorical columns).
    feature_mean_, feature_scale_: the standardisation ``u = (x - mean) / scale``, ``[D']``
      (zeros and ones with ``standardize=False``), of the flow's input columns: X's own
      columns (D' = D), or with categorical columns the encoded ones (each categorical
      column of K levels replaced in place by K - 1 log-ratios, or K 0/1 columns).
    model_: the trained model, a ``flowgmm_jax.trained.TrainedFlowGMM`` whose input is the
      standardised X: every prediction goes through it (the library's one inference path).
    variables_: its variables (NumPy arrays) for ``model_.model.apply``.
    config_: the training config (``base_config()`` schema) as a plain dict.
    dequantize_widths_: ``[D]``, the uniform-noise width of each feature in X's units (the
      resolution of each discrete column; 0 for the others and with ``dequantize="off"``).
      ``score_samples(x) + sum_d log w_d`` over the discrete columns is the log of the
      model's mass of x's cell (a density in the continuous columns).
    temperature_: T of the flow's p(y | x) (1.0 unless ``calibration`` is set);
      ``calibration_`` the temperature fit's record (None without one).
    forest_: the ``RandomForestClassifier`` on the labelled rows (None with
      ``forest_weight=0``), ``forest_weight_`` its weight and ``flow_temperature_`` the
      flow's T in the average (``temperature_`` when calibrated, else
      ``flow_temperature``, sqrt(D) by default).
    history_: the training log, a list of metric dicts (loss, NLLs, gradient norm).
    outlier_reference_: {kind: sorted ``outlier_score`` of the reference rows} for each
      kind of ``novelty.OUTLIER_SCORES``; ``reject_threshold`` takes its quantiles.
      ``outlier_reference_rows_`` says which rows: "held_out" (the early-stopping rows,
      never trained on) or "training" (no rows were held out, ``holdout_fraction=0`` or
      fewer than 32 unlabelled rows: training rows look more familiar than new rows, so a
      reject rate r then rejects more than r of new rows).
    n_iter_: number of optimiser steps taken (early stopping may end training before
      ``num_train_steps``; the parameters are those of the best held-out check).

  A failed ``fit`` (bad input, or diverged training) leaves the estimator unfitted, even
  if it was fitted before: ``fit`` first discards the previous fit.
  """

  # Defaults: TABLE_RECIPE (training/config.py), which configs/tabular.py and
  # configs/text.py also run.
  def __init__(self, *,
               model: str = _R['model'],
               num_coupling_layers: int = _R['num_coupling_layers'],
               hidden_dim: int = _R['hidden_dim'],
               hidden_layers: int = _R['hidden_layers'],
               dropout_rate: float | None = _R['dropout_rate'],
               zero_init_last: bool = _R['zero_init_last'],
               num_bins: int = _R['num_bins'],
               bound: float = _R['bound'],
               covariance: str = _R['covariance'],
               means_init: str = _R['means_init'],
               means_scale: float | None = _R['means_scale'],
               learn_means: bool = _R['learn_means'],
               learn_scales: bool = _R['learn_scales'],
               learn_weights: bool = _R['learn_weights'],
               objective: str = _R['objective'],
               label_weight: float | None = _R['label_weight'],
               label_weight_per_feature: float = _R['label_weight_per_feature'],
               unlabeled_weight: float = _R['unlabeled_weight'],
               noise_std: float = _R['noise_std'],
               dequantize: str = _R['dequantize'],
               optimizer: str = _R['optimizer'],
               learning_rate: float = _R['learning_rate'],
               lr_schedule: str = _R['lr_schedule'],
               weight_decay: float = _R['weight_decay'],
               num_train_steps: int = _R['num_train_steps'],
               labeled_batch_size: int = _R['labeled_batch_size'],
               unlabeled_batch_size: int = _R['unlabeled_batch_size'],
               holdout_fraction: float = _R['holdout_fraction'],
               check_every_steps: int = _R['check_every_steps'],
               patience: int = _R['patience'],
               min_steps: int = _R['min_steps'],
               calibration: str = _R['calibration'],
               calibration_folds: int = _R['calibration_folds'],
               calibration_fraction: float = _R['calibration_fraction'],
               max_temperature: float = _R['max_temperature'],
               forest_weight: float = 0.5, flow_temperature: float | None = None,
               standardize: bool = True, categorical_features: Any = None,
               categorical_encoding: str = "onehot", handle_unknown: str = "error",
               compilation_cache_dir: str | None = None,
               random_state: Any = None, verbose: int = 0):
    self.model = model
    self.num_coupling_layers = num_coupling_layers
    self.hidden_dim = hidden_dim
    self.hidden_layers = hidden_layers
    self.dropout_rate = dropout_rate
    self.zero_init_last = zero_init_last
    self.num_bins = num_bins
    self.bound = bound
    self.covariance = covariance
    self.means_init = means_init
    self.means_scale = means_scale
    self.learn_means = learn_means
    self.learn_scales = learn_scales
    self.learn_weights = learn_weights
    self.objective = objective
    self.label_weight = label_weight
    self.label_weight_per_feature = label_weight_per_feature
    self.unlabeled_weight = unlabeled_weight
    self.noise_std = noise_std
    self.dequantize = dequantize
    self.optimizer = optimizer
    self.learning_rate = learning_rate
    self.lr_schedule = lr_schedule
    self.weight_decay = weight_decay
    self.num_train_steps = num_train_steps
    self.labeled_batch_size = labeled_batch_size
    self.unlabeled_batch_size = unlabeled_batch_size
    self.holdout_fraction = holdout_fraction
    self.check_every_steps = check_every_steps
    self.patience = patience
    self.min_steps = min_steps
    self.standardize = standardize
    self.categorical_features = categorical_features
    self.categorical_encoding = categorical_encoding
    self.handle_unknown = handle_unknown
    self.calibration = calibration
    self.calibration_folds = calibration_folds
    self.calibration_fraction = calibration_fraction
    self.max_temperature = max_temperature
    self.forest_weight = forest_weight
    self.flow_temperature = flow_temperature
    self.compilation_cache_dir = compilation_cache_dir
    self.random_state = random_state
    self.verbose = verbose

  # --------------------------------------------------------------------------- params

  def _seed(self) -> int:
    """The training seed: ``random_state`` itself when it is an int."""
    rs = self.random_state
    if isinstance(rs, numbers.Integral) and not isinstance(rs, bool):
      if not 0 <= rs < 2**32:
        raise ValueError(f"random_state={rs} must be in [0, 2**32).")
      return int(rs)
    try:
      return int(check_random_state(rs).randint(np.iinfo(np.int32).max))
    except ValueError:
      raise ValueError(f"random_state={rs!r} must be None, an int or a "
                       "numpy.random.RandomState.") from None

  def _make_config(self, seed: int):
    """The training config of this fit (``base_config()`` schema, data.kind='tabular',
    data.name='arrays'): the table recipe with this estimator's parameters, checked by the
    one validator (``validate_config``) in the parameters' own names."""
    if not isinstance(self.verbose, numbers.Integral):  # bools are fine: True means 1
      raise ValueError(f"verbose={self.verbose!r} must be 0, 1 or 2.")
    overrides = {name: getattr(self, name) for name in RECIPE_PARAMETERS
                 if not _same(getattr(self, name), _R[name])}
    recipe = table_recipe(**overrides)
    c = base_config().to_dict()
    c["model"] = recipe.pop("model")
    for section, fields in recipe.items():
      (c[section] if section else c).update(fields)
    c["seed"] = seed
    c["data"].update(kind="tabular", name="arrays")
    validate_config(c, field_name=_parameter_name)
    c = _plain(c)
    steps = c["num_train_steps"]
    c.update(log_every_steps=max(1, min(100, steps // 10)), eval_every_steps=steps,
             checkpoint_every_steps=steps, progress_bar=self.verbose >= 1,
             # The fit's inference chunks as the fitted model's: one padded size for both.
             eval_batch_size=_MAX_CHUNK,
             compilation_cache_dir=self._compilation_cache_setting())
    import ml_collections
    return ml_collections.ConfigDict(c)

  def _compilation_cache_setting(self) -> str:
    """``config.compilation_cache_dir`` of this estimator: None is "on" (a fast first fit
    in a new process matters on every backend, CPU included)."""
    if self.compilation_cache_dir is None:
      return "on"
    from flowgmm_jax.compile_cache import check_setting
    return check_setting(self.compilation_cache_dir) or "off"

  # --------------------------------------------------------------------------- fit

  def _reset(self) -> None:
    """Forgets a previous fit (fitted attributes end in '_'; caches start with '_')."""
    for name in list(vars(self)):
      if name.endswith("_") and not name.startswith("__"):
        delattr(self, name)

  def _fit_encoder(self, X) -> features_lib.TableEncoder | None:
    """The ``TableEncoder`` of X (sets ``n_features_in_`` and, for a DataFrame whose
    column names are strings, ``feature_names_in_``), or None when no column is categorical
    (X then goes through scikit-learn's ``validate_data`` as a numeric table)."""
    if self.categorical_encoding not in ("simplex", "onehot"):
      raise ValueError(f"categorical_encoding={self.categorical_encoding!r} must be "
                       "'simplex' or 'onehot'.")
    frame = features_lib.is_dataframe(X)
    if not frame and self.categorical_features is None:
      return None
    encoder = features_lib.TableEncoder(self.categorical_features, self.handle_unknown)
    encoder.fit(X)
    if not encoder.is_categorical.any():
      return None
    self.n_features_in_ = encoder.n_features
    if frame and all(isinstance(c, str) for c in encoder.columns):
      self.feature_names_in_ = np.asarray(encoder.columns, dtype=object)
    return encoder

  def fit(self, X, y) -> FlowGMMClassifier:
    """Trains FlowGMM on ``X: [N, D]`` with labels ``y: [N]`` (-1 = unlabelled).

    ``classes_`` becomes the sorted set of labelled values; at least one labelled row of
    each of two or more classes is needed. Raises ValueError (and stays unfitted) for bad
    input; see the class docstring.
    """
    self._reset()
    try:
      return self._fit(X, y)
    except BaseException:
      self._reset()  # validate_data may have set n_features_in_
      raise

  def _blend_parameters(self) -> tuple[float, float]:
    """(forest_weight, flow_temperature), checked."""
    w, t = self.forest_weight, self.flow_temperature
    if isinstance(w, bool) or not isinstance(w, numbers.Real) or not 0.0 <= w <= 1.0:
      raise ValueError(f"forest_weight={w!r} must be a number in [0, 1] (0: FlowGMM's own "
                       "classifier, no forest).")
    if t is not None and (isinstance(t, bool) or not isinstance(t, numbers.Real)
                          or not 0.0 < t < np.inf):
      raise ValueError(f"flow_temperature={t!r} must be None (sqrt of the number of "
                       "features) or a positive number.")
    return float(w), None if t is None else float(t)

  def _fit(self, X, y) -> FlowGMMClassifier:
    config = self._make_config(self._seed())
    forest_weight, flow_temperature = self._blend_parameters()
    encoder = self._fit_encoder(X)
    rows = None  # CategoricalRows of the training rows with categorical_encoding="simplex"
    if encoder is None:
      try:
        # float32 input stays float32: no float64 copy of a large table.
        x, y = validate_data(self, X, y, dtype=(np.float64, np.float32),
                             ensure_min_features=2)
      except ValueError as e:
        raise _hinted(e, X) from None
    else:
      numeric, codes = encoder.split(X)
      y = _checked_y(y, numeric.shape[0])
      x = numeric
      if self.categorical_encoding == "onehot":
        x = encoder.one_hot(numeric, codes)
      else:
        rows = CategoricalRows(numeric, codes, [len(c) for c in encoder.categories],
                               encoder.is_categorical, noise_seed=config.seed)
      width = x.shape[1] if rows is None else rows.shape[1]
      if width < 2:
        raise ValueError(f"X encodes to {width} feature(s) (a categorical column of K levels "
                         "gives K - 1), but FlowGMMClassifier needs at least 2. Add a "
                         "feature column.")
    labeled = _check_labels(y)
    if not labeled.any():
      raise ValueError("y has no labelled rows (every label is -1); label at least one row "
                       "of each of two or more classes.")
    classes = np.unique(y[labeled])
    if classes.size < 2:
      raise ValueError(f"y has labelled rows of only one class ({classes[0]}); "
                       "FlowGMM needs labelled rows of at least 2 classes, one Gaussian per "
                       "class. Label some rows of another class.")
    if self.standardize and x.shape[1]:
      from flowgmm_jax.data.tabular import find_outliers, outlier_warning
      outliers = find_outliers(x)
      if outliers:
        # With the simplex encoding x holds only X's numeric columns: name them as in X.
        numeric_columns = (np.arange(x.shape[1]) if rows is None
                           else np.flatnonzero(~encoder.is_categorical))
        names = encoder.columns if encoder is not None and encoder.columns else None
        def column_name(c):
          j = int(numeric_columns[c])
          return f"column {names[j]!r}" if names else f"column {j}"
        warnings.warn(outlier_warning(outliers, "X", row_name=lambda r: f"row {r}",
                                      column_name=column_name), stacklevel=3)

    import jax

    from flowgmm_jax import mesh as mesh_lib
    from flowgmm_jax.data.dataset import Dataset
    from flowgmm_jax.training import loop

    if rows is not None:
      # Standardised from one dequantised pass (the encoded table is never stored);
      # standardize=False leaves the log-ratios as they are.
      if not self.standardize:
        rows.mean, rows.scale = np.zeros(rows.shape[1]), np.ones(rows.shape[1])
      mean, scale = rows.mean, rows.scale
      x_std = rows  # every gathered batch is dequantised anew
      x_eval = CategoricalRows(numeric, codes, rows.num_levels, rows.is_categorical, mean,
                               scale)
    else:
      if self.standardize:
        mean, scale = _column_mean_and_std(x)
        scale = np.where(scale < _MIN_SCALE, 1.0, scale)
      else:
        mean, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
      # Batches are standardised as they are gathered: no standardised [N, D] copy.
      # validate_data (or the encoder) has checked that x is finite.
      x_std = x_eval = StandardizedRows(x, mean, scale, check_finite=False)
    num_inputs = x_std.shape[1]
    class_index = np.full(len(x_std), UNLABELED, np.int64)
    class_index[labeled] = np.searchsorted(classes, y[labeled])
    mesh = mesh_lib.make_mesh()
    log_fn = None
    if self.verbose >= 2:
      every = max(1, config.num_train_steps // 10)
      def log_fn(step, metrics):
        if step % every == 0 or step == config.num_train_steps:
          print(f"FlowGMMClassifier step {step}: loss {metrics['train/loss']:.4f} "
                f"(labelled NLL {metrics['train/nll_labeled']:.4f}, unlabelled NLL "
                f"{metrics['train/nll_unlabeled']:.4f})", flush=True)
    from flowgmm_jax import checkpoint, trained
    meta = checkpoint.make_meta(config, input_shape=(num_inputs,), num_classes=classes.size)

    from flowgmm_jax.data.rows import split_rows
    from flowgmm_jax.training.temperature import fit_temperature
    dataset = Dataset(
        name="arrays", kind="tabular", x_train=x_std, y_train=class_index.astype(np.int32),
        x_test=np.zeros((0, num_inputs), np.float32), y_test=np.zeros(0, np.int32),
        num_classes=int(classes.size))
    split = split_rows(config, dataset, pools=(np.flatnonzero(labeled),
                                               np.flatnonzero(~labeled)))
    try:
      result = loop.fit(config, dataset, split, mesh=mesh, log_fn=log_fn)
      model = trained.from_variables(
          meta, jax.tree.map(np.asarray, jax.device_get(result.variables)),
          step=int(jax.device_get(result.state.step)), batch_size=_MAX_CHUNK, mesh=mesh)
      # Predicted on x_eval: with the simplex encoding the training rows are noisy.
      calibration = fit_temperature(config, dataset, split, model, mesh=mesh, x_eval=x_eval)
    except FloatingPointError as e:
      raise FloatingPointError(
          f"{e} For FlowGMMClassifier: lower learning_rate (now {self.learning_rate}), "
          "keep standardize=True, or remove extreme outliers from X.") from e

    # Only now, with training done, does the estimator become fitted.
    self.model_ = model
    self.temperature_ = float(calibration["temperature"]) if calibration else 1.0
    self.calibration_ = calibration
    self.forest_weight_ = forest_weight
    self.flow_temperature_ = self.temperature_ if calibration else (
        flow_temperature or float(np.sqrt(num_inputs)))
    self.forest_ = None
    if forest_weight > 0:
      from sklearn.ensemble import RandomForestClassifier
      # On the flow's own input rows (noise-free); one job: fits run side by side in
      # GridSearchCV and the suite, and the labelled rows are few.
      self.forest_ = RandomForestClassifier(_FOREST_TREES, random_state=config.seed, n_jobs=1)
      self.forest_.fit(x_eval[split.labeled], class_index[split.labeled])
    self.config_ = config.to_dict()
    self.classes_ = classes
    self.feature_mean_ = mean.astype(np.float64)
    self.feature_scale_ = scale.astype(np.float64)
    self.encoder_ = encoder
    self.categorical_encoding_ = self.categorical_encoding if encoder is not None else None
    widths = np.asarray(result.dequantize_widths or np.zeros(num_inputs), np.float64)
    self.dequantize_widths_ = widths * scale
    self.history_ = [dict(h) for h in result.history]
    self.n_iter_ = self.model_.step
    # The reject option's reference: the rows held out for early stopping (never trained
    # on), else at most MAX_EARLY_STOPPING_ROWS training rows.
    reference = split.early_stopping
    self.outlier_reference_rows_ = "held_out"
    if reference.size == 0:
      from flowgmm_jax.data.rows import MAX_EARLY_STOPPING_ROWS, OUTLIER_REFERENCE
      from flowgmm_jax.data.rows import rng as rows_rng
      gen = rows_rng(config.seed, OUTLIER_REFERENCE)
      reference = np.sort(gen.permutation(len(x_std))[:MAX_EARLY_STOPPING_ROWS])
      self.outlier_reference_rows_ = "training"
    if rows is None:
      u_ref = StandardizedRows(x[reference], mean, scale, check_finite=False)
    else:
      u_ref = CategoricalRows(numeric[reference], codes[reference], rows.num_levels,
                              rows.is_categorical, mean, scale)
    density = self._density(u_ref, with_z=True)
    self.outlier_reference_ = {kind: np.sort(self._outlier_scores(kind, density, check=False))
                               for kind in novelty.OUTLIER_SCORES}
    return self

  @property
  def variables_(self) -> dict:
    check_is_fitted(self)
    return self.model_.variables

  def _standardized(self, X) -> np.ndarray:
    """X as the model's standardised input rows ``[N, D]`` (``StandardizedRows``, or
    ``CategoricalRows`` without noise for categorical columns with the simplex encoding)."""
    check_is_fitted(self)
    encoder = self.__dict__.get("encoder_")
    if encoder is None:
      x = _features(self, X, reset=False)
      return StandardizedRows(x, self.feature_mean_, self.feature_scale_, check_finite=False)
    if self.handle_unknown not in ("error", "ignore"):
      raise ValueError(f"handle_unknown={self.handle_unknown!r} must be 'error' or 'ignore'.")
    # Read at predict time, as OneHotEncoder reads its handle_unknown at transform.
    numeric, codes = encoder.split(X, self.handle_unknown)
    if self.categorical_encoding_ == "onehot":
      return StandardizedRows(encoder.one_hot(numeric, codes), self.feature_mean_,
                              self.feature_scale_, check_finite=False)
    return CategoricalRows(numeric, codes, [len(c) for c in encoder.categories],
                           encoder.is_categorical, self.feature_mean_, self.feature_scale_)

  def _density(self, u, with_z: bool) -> dict:
    """One pass over standardised rows ``u``: {'log_px' [N] (``score_samples``), 'logits'
    [N, K] (uncalibrated), float64, and 'z' [N, D] (None unless ``with_z``)}."""
    keys = ("log_det", "logits", "z") if with_z else ("log_det", "logits")
    out = self.model_.outputs(u, preprocessed=True, keys=keys)
    logits = out["logits"].astype(np.float64)
    log_p = (log_px(logits, out["log_det"].astype(np.float64))
             - float(np.sum(np.log(self.feature_scale_))))
    if isinstance(u, CategoricalRows):
      log_p = log_p + u.log_cell_correction()
    return {"log_px": log_p, "logits": logits, "z": out.get("z")}

  def _prior_arguments(self) -> dict:
    """The prior's means and scales ``[K, D]`` and the temperature, as ``novelty`` takes them."""
    return {"means": self.model_.means().astype(np.float64),
            "scales": self.model_.scales().astype(np.float64),
            "temperature": self.__dict__.get("temperature_", 1.0)}

  def _outlier_scores(self, kind: str, density: dict, check: bool = True) -> np.ndarray:
    reference = None
    if kind == "typicality":
      # The reference rows' log p(x) is -neg_log_px's sorted scores (any order will do).
      reference = -self.outlier_reference_["neg_log_px"] if check else density["log_px"]
    return novelty.outlier_scores(kind, **density, **self._prior_arguments(),
                                  reference_log_px=reference)

  def _outlier_kind(self, kind: str | None) -> str:
    return novelty.check_choice(kind or novelty.DEFAULT_OUTLIER_SCORE, novelty.OUTLIER_SCORES,
                                "kind")

  def outlier_score(self, X, kind: str | None = None) -> np.ndarray:
    """How unlike the training rows each row of ``X`` is, ``[N]``: higher = more unusual.

    ``kind`` (default ``novelty.DEFAULT_OUTLIER_SCORE``): "neg_log_px" (-log p(x)),
    "typicality" (|log p(x) - m| / s against the held-out training rows), "mahalanobis"
    (latent distance to the nearest class mean) or "max_prob" (1 - max_k p(y | x));
    ``flowgmm_jax/novelty.py`` gives the maths, docs/novelty.md the measurements and when
    not to trust them.
    """
    kind = self._outlier_kind(kind)
    density = self._density(self._standardized(X), with_z=kind in novelty.NEEDS_LATENT)
    return self._outlier_scores(kind, density)

  def reject_threshold(self, reject_rate: float, kind: str | None = None) -> float:
    """The ``outlier_score`` above which ``predict(X, reject_rate)`` rejects a row: the
    ``1 - reject_rate`` quantile of the scores of training rows held out of training
    (``outlier_reference_rows_`` says which)."""
    check_is_fitted(self)
    return novelty.reject_threshold(self.outlier_reference_[self._outlier_kind(kind)],
                                    reject_rate)

  def query(self, X, n: int, rule: str | None = None, random_state: int = 0) -> np.ndarray:
    """Indices into ``X`` (unlabelled candidate rows) of the ``n`` rows to label next,
    ``[n]`` int64, most useful first.

    ``rule`` (default ``novelty.DEFAULT_QUERY_RULE``): "entropy" of p(y | x),
    "density_entropy" (the entropy weighted by the rank of log p(x)), "latent_distance"
    (farthest from every class mean) or "diverse" (k-means over density_entropy's top 10 n
    rows in latent space, the best row of each cluster, so no two picks are near-duplicates);
    ``flowgmm_jax/novelty.py`` gives the maths, docs/novelty.md the measurements.
    """
    rule = novelty.check_choice(rule or novelty.DEFAULT_QUERY_RULE, novelty.QUERY_RULES,
                                "rule")
    density = self._density(self._standardized(X), with_z=rule in novelty.NEEDS_LATENT)
    return novelty.query_indices(rule, n, **density, **self._prior_arguments(),
                                 seed=random_state)

  # --------------------------------------------------------------------------- predict

  def _class_log_proba(self, u, class_log_joint: np.ndarray | None = None) -> np.ndarray:
    """log p(y | x) ``[N, K]`` of standardised rows ``u``, from the flow's class log-joint
    ``[N, K]`` (computed here unless given): the flow's log_softmax(logits / T), or with a
    forest log((1 - w) softmax(logits / T) + w p_forest)."""
    if class_log_joint is None:
      class_log_joint = self.model_.outputs(u, preprocessed=True,
                                            keys=("logits",))["logits"].astype(np.float64)
    forest = self.__dict__.get("forest_")
    if forest is None:
      return scipy.special.log_softmax(
          class_log_joint / self.__dict__.get("temperature_", 1.0), axis=1)
    w = self.forest_weight_
    flow = scipy.special.softmax(class_log_joint / self.flow_temperature_, axis=1)
    forest_proba = np.concatenate([forest.predict_proba(u[start:start + _STANDARDIZE_CHUNK])
                                   for start in range(0, len(u), _STANDARDIZE_CHUNK)])
    with np.errstate(divide="ignore"):  # a class both give probability 0: log 0 = -inf
      return np.log((1.0 - w) * flow + w * forest_proba)

  def predict_log_proba(self, X) -> np.ndarray:
    """log p(y = classes_[k] | x), ``[N, K]`` (see ``predict_proba``)."""
    return self._class_log_proba(self._standardized(X))

  def predict_proba(self, X) -> np.ndarray:
    """p(y = classes_[k] | x), ``[N, K]``, rows sum to 1:

        (1 - w) softmax_k([log pi_k + log N(f(u); mu_k, Sigma_k)] / T) + w p_forest(k | u)

    with w = ``forest_weight_`` and T = ``flow_temperature_``; with ``forest_weight=0``
    FlowGMM's own softmax_k(... / T), T = ``temperature_`` (1 without ``calibration``).
    """
    return np.exp(self.predict_log_proba(X))

  def predict(self, X, reject_rate: float | None = None, reject_label: Any = -1,
              outlier_kind: str | None = None) -> np.ndarray:
    """The most probable class value for each row, ``[N]`` (values from ``classes_``).

    With ``reject_rate`` r in (0, 1), a row whose ``outlier_score`` (of ``outlier_kind``)
    is above ``reject_threshold(r)`` gets ``reject_label`` instead: about r of new rows from
    the training distribution, and more of the unfamiliar ones (docs/novelty.md).
    """
    if not reject_rate:
      log_proba = self._class_log_proba(self._standardized(X))  # checks the fit first
      return self.classes_[np.argmax(log_proba, axis=1)]
    kind = self._outlier_kind(outlier_kind)
    threshold = self.reject_threshold(reject_rate, kind)
    u = self._standardized(X)
    density = self._density(u, with_z=kind in novelty.NEEDS_LATENT)
    predicted = self.classes_[np.argmax(self._class_log_proba(u, density["logits"]), axis=1)]
    try:
      dtype = np.result_type(predicted.dtype, np.asarray(reject_label).dtype)
    except TypeError:  # e.g. string classes and an int reject label
      dtype = object
    out = predicted.astype(dtype)
    out[self._outlier_scores(kind, density) > threshold] = reject_label
    return out

  def score(self, X, y, sample_weight=None) -> float:
    """Accuracy of ``predict(X)`` on the rows whose label is not -1.

    Rows labelled -1 (unlabelled) are skipped, so ``cross_val_score`` and ``GridSearchCV``
    can split semi-supervised ``y`` directly.
    """
    u = self._standardized(X)  # checks that the estimator is fitted
    num_rows = len(u)
    labels = column_or_1d(y, warn=True)
    if labels.shape[0] != num_rows:
      raise ValueError(f"X has {num_rows} rows but y has {labels.shape[0]} labels; give "
                       "one label per row of X, with -1 for the unlabelled rows.")
    keep = _labeled_mask(labels)
    if not keep.any():
      raise ValueError("score needs labelled rows, but every label in y is -1.")
    weights = None
    if sample_weight is not None:
      weights = np.asarray(sample_weight, np.float64).reshape(-1)
      if weights.shape[0] != num_rows:
        raise ValueError(f"sample_weight has {weights.shape[0]} entries for {num_rows} rows.")
      weights = weights[keep]
    predicted = self.classes_[np.argmax(self._class_log_proba(u), axis=1)]
    correct = predicted[keep] == labels[keep]
    return float(np.average(correct, weights=weights))

  def score_samples(self, X) -> np.ndarray:
    """log p(x) in nats, in the units of ``X`` itself, ``[N]``.

        log p(x) = logsumexp_k [log pi_k + log N(f(u); mu_k, Sigma_k)]
                   + log|det df/du| - sum_d log scale_d,      u = (x - mean) / scale,

    the last term being the log-det of the standardisation (0 with ``standardize=False``).
    With categorical columns (``categorical_encoding="simplex"``) each adds the log of the
    model's mass of its level's cell, estimated at the cell's centroid ``p``: the flow's
    density there ``- sum_j log p_j - log K!`` (``CategoricalRows.log_cell_correction``), so
    the result is a log-probability in those columns and a log-density in the others.
    """
    return self._density(self._standardized(X), with_z=False)["log_px"]

  def sample(self, n_samples: int = 1, y=None, random_state=None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Draws rows from the model, in the units of ``X``.

    Args:
      n_samples: number of rows N.
      y: None (default): classes drawn from the prior weights pi (uniform unless
        ``learn_weights``), i.e. x ~ p(x); a class value from ``classes_``: N rows of that
        class, x ~ p(x | y); or an array of N class values, one per row.
      random_state: None (fresh randomness), an int or a RandomState.

    Returns:
      ``(X_samples [N, D], y_samples [N])``: z ~ N(mu_y, Sigma_y), u = f^{-1}(z) (latent ->
      data), x = u * scale + mean; y_samples are values from ``classes_``. With
      categorical columns X_samples is a DataFrame with the columns of ``fit`` (or an
      array, object-typed when a level is not a number) whose categorical columns hold the
      level of each sampled cell (the arg max).
    """
    check_is_fitted(self)
    if (isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral)
        or n_samples < 1):
      raise ValueError(f"n_samples={n_samples!r} must be an integer >= 1.")
    n = int(n_samples)
    rng = check_random_state(random_state)
    if y is None:
      weights = np.exp(self.model_.log_weights().astype(np.float64))
      class_index = rng.choice(len(self.classes_), size=n, p=weights / weights.sum())
    else:
      values = np.asarray(y)
      if values.ndim == 0:
        values = np.full(n, values)
      if values.shape != (n,):
        raise ValueError(f"y must be one class value or an array of n_samples={n} class "
                         f"values, got shape {values.shape}.")
      unknown = ~np.isin(values, self.classes_)
      if unknown.any():
        raise ValueError(f"y contains {values[unknown][0]!r}, which is not a class; choose "
                         f"from classes_ = {self.classes_.tolist()}.")
      class_index = np.searchsorted(self.classes_, values)
    u = self.model_.sample(n, y=class_index, seed=int(rng.randint(np.iinfo(np.int32).max)),
                           raw=False).astype(np.float64)
    encoder = self.__dict__.get("encoder_")
    if encoder is None:
      return u * self.feature_scale_ + self.feature_mean_, self.classes_[class_index]
    if self.categorical_encoding_ == "onehot":
      numeric, codes = encoder.from_one_hot(u * self.feature_scale_ + self.feature_mean_)
    else:
      empty = CategoricalRows(
          np.zeros((0, int((~encoder.is_categorical).sum()))),
          np.zeros((0, len(encoder.categories)), np.int64),
          [len(c) for c in encoder.categories], encoder.is_categorical, self.feature_mean_,
          self.feature_scale_)
      numeric, codes = empty.decode(u)
    return encoder.rows(numeric, codes), self.classes_[class_index]
