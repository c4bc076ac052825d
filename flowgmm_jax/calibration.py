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

Which labels are held back (``config.calibration.method``): "holdout" fits T on a fraction of
each class's labelled rows whose labels training never sees (``data.rows.split_rows``; their
inputs stay in training as unlabelled rows): with very few labels this costs real training
signal, and T rests on a handful of points. "cross_fit" (``cross_fitted_temperature``) spends
no label: it trains one model per fold of the labelled rows (each fold's labels hidden), fits
T on the pooled out-of-fold logits, and leaves the final model to be trained on every label;
the price is one extra training per fold. When every held-back row is classified correctly
the NLL has no finite minimiser (it falls as T -> 0) and T = 1 is kept, with a note.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from flowgmm_jax import evaluation

CALIBRATION_METHODS = ("none", "holdout", "cross_fit")
# The bottom of the search bracket for T: below it a validation set the model gets all right
# would push T towards 0 (ever sharper), which a handful of points cannot justify. The top
# is config.calibration.max_temperature.
MIN_TEMPERATURE = 0.1


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  logits = logits - logits.max(axis=1, keepdims=True)
  return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def nll_given_x(logits, labels, temperature: float = 1.0) -> float:
  """Mean -log p_T(y | x) over rows (nats); ``logits [N, K]``, ``labels [N]``."""
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels)
  log_p = _log_softmax(logits / temperature)
  return float(-np.mean(log_p[np.arange(len(labels)), labels]))


def fit_temperature(logits, labels, *, max_temperature: float,
                    min_temperature: float = MIN_TEMPERATURE, iterations: int = 80) -> float:
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


def metrics(logits, labels, temperature: float = 1.0, num_bins: int = 15) -> dict[str, float]:
  """accuracy, nll_y_given_x and ece of softmax(logits / T)."""
  logits = np.asarray(logits, np.float64)
  probs = np.exp(_log_softmax(logits / temperature))
  return {"accuracy": evaluation.accuracy(logits, labels),
          "nll_y_given_x": nll_given_x(logits, labels, temperature),
          "ece": evaluation.expected_calibration_error(probs, labels, num_bins)}


def calibrate(logits_val, labels_val, logits_test=None, labels_test=None, *,
              max_temperature: float) -> dict:
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
    t = fit_temperature(logits_val, labels_val, max_temperature=max_temperature)
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


def cross_fitted_temperature(fit_logits: Callable[[np.ndarray, np.ndarray], np.ndarray],
                             labels, *, num_folds: int, seed: int,
                             max_temperature: float) -> dict:
  """A temperature fitted on out-of-fold logits, so that no label is held back from the
  final model.

  For each fold F of ``data.rows.calibration_folds(labels, num_folds, seed)``:
  ``fit_logits(train_labels, F)`` trains a model on ``train_labels`` (``labels [N]`` with
  the rows of F set to -1: their inputs stay, as unlabelled rows) and returns the class
  logits ``[|F|, K]`` of the rows F, columns in class order 0..K-1. T is fitted on the
  pooled out-of-fold logits (``fit_temperature`` in ``[MIN_TEMPERATURE,
  max_temperature]``; T = 1 with a note when every pooled row is classified correctly, as
  ``calibrate``). The caller then trains its final model on all of ``labels`` and divides
  that model's logits by T.

  Costs one extra training per fold. Every fold's model has seen fewer labels than the final
  one (k - 1 of k folds), so T is fitted on models slightly less accurate than the one it is
  applied to; their confident mistakes push T up, which the bracket's top bounds.

  Returns ``{"temperature", "num_folds", "num_out_of_fold", "out_of_fold_nll_before",
  "out_of_fold_nll_after", "out_of_fold_accuracy", "out_of_fold_logits" [n, K],
  "out_of_fold_labels" [n]}`` (and "note" when T = 1 is kept).
  """
  from flowgmm_jax.data.rows import calibration_folds
  labels = np.asarray(labels)
  folds = calibration_folds(labels, num_folds, seed)
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
  record = calibrate(logits, truth, max_temperature=max_temperature)
  return {"temperature": record["temperature"], "num_folds": len(folds),
          "num_out_of_fold": int(truth.size),
          "out_of_fold_accuracy": evaluation.accuracy(logits, truth),
          "out_of_fold_nll_before": record["validation_nll_before"],
          "out_of_fold_nll_after": record["validation_nll_after"],
          "out_of_fold_logits": logits, "out_of_fold_labels": truth,
          **({"note": record["note"]} if "note" in record else {})}
