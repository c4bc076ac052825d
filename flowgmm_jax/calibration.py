"""Post-hoc calibration of FlowGMM's p(y | x) with one scalar fitted on held-out labels.

As we read the paper, FlowGMM's predictive distribution comes out over-confident (its latent
classes sit far apart relative to the component widths) and is corrected after training with
a single scalar on the mixture's variance, fitted on held-out labelled data; we found no code
for it in the original repository. We fit a temperature T on the class logits,

    p_T(y = k | x) = softmax_k( [log pi_k + log N(f(x); mu_k, Sigma_k)] / T ),

by minimising the validation NLL(y | x) with a 1-D golden-section search over log(1/T)
(the NLL is convex in 1/T, so the search finds the global minimum in its bracket). For the
usual prior (equal weights, one shared isotropic sigma) this is exactly the same as scaling
every component's variance by T; for per-class scales it is the closest one-scalar version.
Dividing all logits by one positive T never changes their argmax, so accuracy and
``predict`` are unchanged; only the confidences move.

The validation split (``hold_out_validation``): a fraction of the *labelled* pool, taken per
class with the run's seed, keeping at least one training label in every class. The held-out
rows lose only their labels: their inputs join the unlabelled pool, so the flow still sees
them. With very few labels (the toy sets have 10-19) this costs real training signal and
the fitted T rests on a handful of points; it is therefore off by default
(``config.calibration.validation_fraction = 0``) and a run reports the held-out count. When
every validation row is classified correctly (common with 2-5 rows), the NLL has no finite
minimiser (it falls as T -> 0) and T = 1 is kept, with a note in ``calibration.json``.

``cross_fitted_temperature`` spends no label: it trains one model per fold of the labelled
rows (each fold's labels hidden), fits T on the pooled out-of-fold logits, and leaves the
final model to be trained on every label; the price is one extra training per fold.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Tuple

import numpy as np

from flowgmm_jax import evaluation

# The search bracket for T. Below 0.1 a validation set the model gets all right would push
# T towards 0 (ever sharper), which a handful of points cannot justify.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.1, 100.0


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  logits = logits - logits.max(axis=1, keepdims=True)
  return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def nll_given_x(logits, labels, temperature: float = 1.0) -> float:
  """Mean -log p_T(y | x) over rows (nats); ``logits [N, K]``, ``labels [N]``."""
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels)
  log_p = _log_softmax(logits / temperature)
  return float(-np.mean(log_p[np.arange(len(labels)), labels]))


def fit_temperature(logits, labels, *, min_temperature: float = MIN_TEMPERATURE,
                    max_temperature: float = MAX_TEMPERATURE, iterations: int = 80) -> float:
  """The T in [min_temperature, max_temperature] minimising ``nll_given_x``.

  Golden-section search on beta = log(1/T); ``logits [N, K]``, ``labels [N]`` (N >= 1).
  """
  logits, labels = evaluation._as_scores_and_labels(logits, labels)
  if labels.size == 0:
    raise ValueError("fit_temperature needs at least one labelled validation example.")
  lo, hi = -math.log(max_temperature), -math.log(min_temperature)
  def f(b):
    return nll_given_x(logits, labels, math.exp(-b))
  ratio = (math.sqrt(5.0) - 1.0) / 2.0
  a, b = lo, hi
  c, d = b - ratio * (b - a), a + ratio * (b - a)
  fc, fd = f(c), f(d)
  for _ in range(iterations):
    if fc <= fd:
      b, d, fd = d, c, fc
      c = b - ratio * (b - a)
      fc = f(c)
    else:
      a, c, fc = c, d, fd
      d = a + ratio * (b - a)
      fd = f(d)
  beta = (a + b) / 2.0
  # The bracket's ends are candidates too (the minimum may sit on a bound).
  best = min((f(x), x) for x in (beta, lo, hi))[1]
  return float(math.exp(-best))


def metrics(logits, labels, temperature: float = 1.0, num_bins: int = 15) -> Dict[str, float]:
  """accuracy, nll_y_given_x and ece of softmax(logits / T)."""
  logits = np.asarray(logits, np.float64)
  probs = np.exp(_log_softmax(logits / temperature))
  return {"accuracy": evaluation.accuracy(logits, labels),
          "nll_y_given_x": nll_given_x(logits, labels, temperature),
          "ece": evaluation.expected_calibration_error(probs, labels, num_bins)}


def hold_out_validation(labeled_idx: np.ndarray, labels: np.ndarray, fraction: float,
                        seed: int) -> Tuple[np.ndarray, np.ndarray]:
  """Splits the labelled pool into (train_labeled_idx, validation_idx).

  Per class: ``round(fraction * n_k)`` rows, at least 1 when ``fraction > 0`` and the class
  has 2 or more labels, never the class's last label (a class with one label keeps it).
  Chosen with ``seed``; both outputs are sorted.
  """
  labeled_idx = np.asarray(labeled_idx)
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"calibration.validation_fraction={fraction} must be in [0, 1).")
  if fraction == 0.0 or labeled_idx.size == 0:
    return labeled_idx, labeled_idx[:0]
  rng = np.random.default_rng(seed + 7919)  # not the same stream as the label split
  y = np.asarray(labels)[labeled_idx]
  val = []
  for k in np.unique(y):
    rows = labeled_idx[y == k]
    if rows.size < 2:
      continue
    take = min(max(1, int(round(fraction * rows.size))), rows.size - 1)
    val.append(rng.choice(rows, size=take, replace=False))
  val = np.sort(np.concatenate(val)) if val else labeled_idx[:0]
  train = np.setdiff1d(labeled_idx, val)
  return train, val


def split_validation(labeled_idx: np.ndarray, unlabeled_idx: np.ndarray, labels: np.ndarray,
                     fraction: float, seed: int
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(labeled_idx, unlabeled_idx, validation_idx) before training: ``fraction`` of the
  labelled pool is held out (``hold_out_validation``); those rows' inputs join the
  unlabelled pool, so only their labels are withheld from training."""
  labeled, validation = hold_out_validation(labeled_idx, labels, fraction, seed)
  if len(validation):
    unlabeled_idx = np.concatenate([np.asarray(unlabeled_idx), validation])
  return labeled, unlabeled_idx, validation


def calibrate(logits_val, labels_val, logits_test=None, labels_test=None) -> dict:
  """Fits T on validation logits; returns {'temperature', 'num_validation', and
  'before'/'after' metric dicts on the test logits (or the validation ones if none)}."""
  logits_val = np.asarray(logits_val)
  record = {}
  if np.all(np.argmax(logits_val, axis=1) == np.asarray(labels_val)):
    # Every validation row is right, so NLL keeps falling as T -> 0 (ever sharper): the
    # data carry no evidence for any finite T. Keep the model as trained.
    t = 1.0
    record["note"] = ("every validation example is classified correctly; NLL has no finite "
                      "minimiser (T -> 0), so T = 1 is kept")
  else:
    t = fit_temperature(logits_val, labels_val)
  record.update({"temperature": t, "num_validation": int(len(labels_val)),
            "validation_nll_before": nll_given_x(logits_val, labels_val, 1.0),
            "validation_nll_after": nll_given_x(logits_val, labels_val, t)})
  if logits_test is not None and len(logits_test):
    record["test_before"] = metrics(logits_test, labels_test, 1.0)
    record["test_after"] = metrics(logits_test, labels_test, t)
  return record


# ----------------------------------------------------------------------------------------
# Cross-fitted temperature: every label trains the final model, none is spent on T.
# ----------------------------------------------------------------------------------------


def cross_fit_folds(labels, num_folds: int = 5, seed: int = 0) -> List[np.ndarray]:
  """Folds of the labelled rows for cross-fitting, stratified by class.

  ``labels: [N]`` ints, -1 for unlabelled rows (never in a fold). Within each class the
  labelled rows are shuffled (``seed``) and dealt to the folds in turn, so a fold holds at
  most ``ceil(n_k / num_folds)`` rows of a class with ``n_k`` labels and every class keeps
  at least one label outside every fold; a class with a single label is never held out.
  Folds that receive no row are dropped. Returns sorted row-index arrays, disjoint.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D [N], got shape {labels.shape}.")
  if num_folds < 2:
    raise ValueError(f"num_folds={num_folds} must be >= 2.")
  rng = np.random.default_rng(seed + 104729)  # not the label split's stream
  folds = [[] for _ in range(num_folds)]
  for k in np.unique(labels[labels >= 0]):
    rows = rng.permutation(np.flatnonzero(labels == k))
    if rows.size < 2:
      continue
    offset = int(rng.integers(num_folds))  # small classes do not all pile into fold 0
    for i, row in enumerate(rows):
      folds[(i + offset) % num_folds].append(row)
  return [np.sort(np.asarray(f, np.int64)) for f in folds if f]


def shrunk_temperature(temperature: float, num_rows: int, prior_rows: float) -> float:
  """``T ** (n / (n + n0))``: the fitted T pulled toward 1 in log space, the more the
  fewer rows it was fitted on (``n = num_rows``; ``n0 = prior_rows`` rows' worth of belief
  in T = 1; ``n0 = 0`` keeps T)."""
  if prior_rows < 0 or num_rows < 0:
    raise ValueError(f"num_rows={num_rows} and prior_rows={prior_rows} must be >= 0.")
  if prior_rows == 0:
    return float(temperature)
  return float(math.exp(math.log(temperature) * num_rows / (num_rows + prior_rows)))


def cross_fitted_temperature(fit_logits: Callable[[np.ndarray, np.ndarray], np.ndarray],
                             labels, *, num_folds: int = 5, seed: int = 0,
                             max_temperature: float = MAX_TEMPERATURE,
                             prior_rows: float = 0.0) -> dict:
  """A temperature fitted on out-of-fold logits, so that no label is held back from the
  final model.

  For each fold F of ``cross_fit_folds(labels, num_folds, seed)``: ``fit_logits(
  train_labels, F)`` trains a model on ``train_labels`` (``labels`` with the rows of F set
  to -1: their inputs stay, as unlabelled rows) and returns the class logits ``[|F|, K]``
  of the rows F, columns in class order 0..K-1. The out-of-fold logits of all folds are
  pooled and T is fitted on them (``fit_temperature``; T = 1 with a note when every pooled
  row is classified correctly, as ``calibrate``). The caller then trains its final model on
  all of ``labels`` and divides that model's logits by T.

  Costs one extra training per fold. Every fold's model has seen fewer labels than the final
  one (k - 1 of k folds), so T is fitted on models slightly less accurate than the one it is
  applied to.

  Safeguards: T is searched in ``[MIN_TEMPERATURE, max_temperature]``, and then shrunk
  toward 1 (``shrunk_temperature`` with ``prior_rows``), since a few dozen out-of-fold rows
  of weaker fold models can push T to the bracket's end (docs/tables.md).

  Returns ``{"temperature" (shrunk), "fitted_temperature", "num_folds",
  "num_out_of_fold", "out_of_fold_nll_before", "out_of_fold_nll_after" (at the shrunk T),
  "out_of_fold_accuracy", "out_of_fold_logits" [n, K], "out_of_fold_labels" [n]}`` (and
  "note" when T = 1 is kept).
  """
  labels = np.asarray(labels)
  folds = cross_fit_folds(labels, num_folds, seed)
  if not folds:
    raise ValueError("cross_fitted_temperature needs a class with at least 2 labels to "
                     "hold any out; every class has at most one labelled row.")
  logits, truth = [], []
  for fold in folds:
    train_labels = labels.copy()
    train_labels[fold] = -1
    fold_logits = np.asarray(fit_logits(train_labels, fold), np.float64)
    if fold_logits.shape[0] != fold.size or fold_logits.ndim != 2:
      raise ValueError(f"fit_logits returned shape {fold_logits.shape} for a fold of "
                       f"{fold.size} rows; expected [{fold.size}, K].")
    logits.append(fold_logits)
    truth.append(labels[fold])
  logits, truth = np.concatenate(logits), np.concatenate(truth)
  record = {"num_folds": len(folds), "num_out_of_fold": int(truth.size),
            "out_of_fold_accuracy": evaluation.accuracy(logits, truth)}
  if np.all(np.argmax(logits, axis=1) == truth):
    t = 1.0
    record["note"] = ("every out-of-fold row is classified correctly; NLL has no finite "
                      "minimiser (T -> 0), so T = 1 is kept")
  else:
    t = fit_temperature(logits, truth, max_temperature=max_temperature)
  shrunk = shrunk_temperature(t, truth.size, prior_rows)
  record.update(temperature=shrunk, fitted_temperature=t,
                out_of_fold_nll_before=nll_given_x(logits, truth, 1.0),
                out_of_fold_nll_after=nll_given_x(logits, truth, shrunk),
                out_of_fold_logits=logits, out_of_fold_labels=truth)
  return record
