"""Evaluation metrics: accuracy, expected calibration error, exact multi-batch aggregation.

Independent of the training code. Two layers:

* One-shot metrics on full arrays (numpy in, Python float out): ``accuracy``,
  ``expected_calibration_error`` (and ``calibration_bins`` behind it).
* Exact evaluation over many batches: ``batch_metric_sums`` (jnp, jit-able, one batch,
  optional padding mask) returns sums plus the per-example confidences; then
  ``aggregate_metric_sums`` (host side) adds the sums and concatenates the confidences,
  so every final number equals the one computed on the whole set at once, whatever the
  batch sizes (ECE needs all confidences, not per-batch ECEs).
* ``metrics_from_outputs``: the evaluation metrics of a model's outputs on a whole set (the
  training loop's evaluation and ``--mode=eval``; the outputs come from
  ``trained.TrainedFlowGMM``, the one inference path).

Inputs come from the prior: class_log_joint = log pi_k + log N(z; mu_k, Sigma_k) ([B, K],
softmax = p(y|x)); log_det = log|det df/dx| of the flow (data -> latent).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flowgmm_jax.flowgmm import bits_per_dim, log_px

Array = jax.Array


def _as_scores_and_labels(scores: Any, labels: Any):
  scores = np.asarray(scores)
  labels = np.asarray(labels)
  if scores.ndim != 2:
    raise ValueError(f"scores must be [N, K] logits or probabilities, got {scores.shape}.")
  if labels.shape != scores.shape[:1]:
    raise ValueError(f"labels must have shape [N] = {scores.shape[:1]}, got {labels.shape}.")
  if labels.size and (labels.min() < 0 or labels.max() >= scores.shape[1]):
    raise ValueError(f"labels must be in 0..{scores.shape[1] - 1} (no unlabelled -1 rows "
                     f"in evaluation), got range [{labels.min()}, {labels.max()}].")
  return scores, labels


def accuracy(scores: Any, labels: Any) -> float:
  """Fraction of rows whose argmax over ``scores`` [N, K] (logits or probs) equals ``labels``."""
  scores, labels = _as_scores_and_labels(scores, labels)
  if labels.size == 0:
    raise ValueError("accuracy of an empty set is undefined; pass at least one example.")
  return float(np.mean(np.argmax(scores, axis=1) == labels))


def calibration_bins(confidences: Any, correct: Any, num_bins: int = 15) -> dict[str, np.ndarray]:
  """Equal-width confidence bins B_m = ((m-1)/M, m/M], m = 1..M (confidence 0 goes to bin 1).

  Returns per-bin 'count' [M], 'accuracy' [M] and 'confidence' [M] (0 for empty bins) and
  the bin 'edges' [M + 1].
  """
  confidences = np.asarray(confidences, np.float64).reshape(-1)
  correct = np.asarray(correct, np.float64).reshape(-1)
  if confidences.shape != correct.shape:
    raise ValueError(f"confidences and correct must have equal length, got "
                     f"{confidences.shape} and {correct.shape}.")
  if num_bins < 1:
    raise ValueError(f"num_bins must be >= 1, got {num_bins}.")
  if confidences.size and (confidences.min() < 0 or confidences.max() > 1):
    raise ValueError("confidences must lie in [0, 1]; pass probabilities, not logits.")
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  # Right-closed bins: index m-1 for conf in ((m-1)/M, m/M]; conf = 0 joins the first bin.
  index = np.clip(np.searchsorted(edges, confidences, side="left") - 1, 0, num_bins - 1)
  count = np.bincount(index, minlength=num_bins).astype(np.float64)
  sum_correct = np.bincount(index, weights=correct, minlength=num_bins)
  sum_confidence = np.bincount(index, weights=confidences, minlength=num_bins)
  safe = np.maximum(count, 1.0)
  return {"count": count, "accuracy": sum_correct / safe,
          "confidence": sum_confidence / safe, "edges": edges}


def ece_from_confidences(confidences: Any, correct: Any, num_bins: int = 15) -> float:
  """ECE = sum_m (|B_m| / N) |acc(B_m) - conf(B_m)| from per-example top-1 confidence and
  correctness (Guo et al. 2017)."""
  bins = calibration_bins(confidences, correct, num_bins)
  total = bins["count"].sum()
  if total == 0:
    raise ValueError("ECE of an empty set is undefined; pass at least one example.")
  return float(np.sum(bins["count"] / total * np.abs(bins["accuracy"] - bins["confidence"])))


def expected_calibration_error(probs: Any, labels: Any, num_bins: int = 15) -> float:
  """ECE of class probabilities ``probs`` [N, K] (rows sum to 1) for ``labels`` [N].

  Confidence = max_k probs, prediction = argmax_k probs, equal-width bins on [0, 1].
  """
  probs, labels = _as_scores_and_labels(probs, labels)
  if probs.size and (probs.min() < 0 or np.max(np.abs(probs.sum(axis=1) - 1)) > 1e-3):
    raise ValueError("probs must be probabilities (non-negative rows summing to 1); "
                     "apply softmax to logits first.")
  confidences = probs.max(axis=1)
  correct = probs.argmax(axis=1) == labels
  return ece_from_confidences(confidences, correct, num_bins)


def batch_metric_sums(class_log_joint: Array, labels: Array,
                      log_det: Array | None = None, mask: Array | None = None,
                      log_weights: Array | None = None) -> dict[str, Array]:
  """Sums over one evaluation batch (jnp, jit-able; padded rows excluded by ``mask``).

  Args:
    class_log_joint: [B, K], log pi_k + log N(z; mu_k, Sigma_k).
    labels: [B] int in 0..K-1 (padding rows may hold anything when masked).
    log_det: optional [B] flow log-det; enables the density sums.
    mask: optional [B] bool, True = real example.
    log_weights: optional [K] log pi; if given, 'sum_nll_given_label' is the original's
      -(log N(z; mu_y) + log_det), otherwise the joint -(log pi_y + log N + log_det).
  Returns dict of
    'num_examples', 'num_correct', 'sum_log_p_y_given_x' (sum of log softmax at the
    true label), and if log_det is given 'sum_nll' (mixture: -(log p(z) + log_det)) and
    'sum_nll_given_label'; plus per-example 'confidence' [B], 'correct' [B] and 'mask' [B]
    for ECE.
  """
  class_log_joint = jnp.asarray(class_log_joint)
  labels = jnp.asarray(labels)
  batch = class_log_joint.shape[0]
  if class_log_joint.ndim != 2 or labels.shape != (batch,):
    raise ValueError(f"need class_log_joint [B, K] and labels [B], got "
                     f"{class_log_joint.shape} and {labels.shape}.")
  mask = jnp.ones((batch,), bool) if mask is None else jnp.asarray(mask).astype(bool)
  if mask.shape != (batch,):
    raise ValueError(f"mask must have shape [B] = ({batch},), got {mask.shape}.")
  safe_labels = jnp.where(mask, labels, 0)

  log_probs = jax.nn.log_softmax(class_log_joint, axis=-1)
  log_p_true = jnp.take_along_axis(log_probs, safe_labels[:, None], axis=1)[:, 0]
  correct = jnp.argmax(class_log_joint, axis=-1) == safe_labels
  confidence = jnp.exp(jnp.max(log_probs, axis=-1))

  def masked_sum(values):
    return jnp.sum(jnp.where(mask, values, 0.0))

  sums = {
      "num_examples": jnp.sum(mask).astype(jnp.float32),
      "num_correct": masked_sum(correct.astype(class_log_joint.dtype)),
      "sum_log_p_y_given_x": masked_sum(log_p_true),
      "confidence": confidence,
      "correct": correct,
      "mask": mask,
  }
  if log_det is not None:
    log_det = jnp.asarray(log_det)
    if log_det.shape != (batch,):
      raise ValueError(f"log_det must have shape [B] = ({batch},), got {log_det.shape}.")
    log_lik_y = jnp.take_along_axis(class_log_joint, safe_labels[:, None], axis=1)[:, 0]
    if log_weights is not None:
      log_lik_y = log_lik_y - jnp.asarray(log_weights)[safe_labels]
    sums["sum_nll"] = masked_sum(-log_px(class_log_joint, log_det))
    sums["sum_nll_given_label"] = masked_sum(-(log_lik_y + log_det))
  return sums


def aggregate_metric_sums(batch_sums: Sequence[dict[str, Any]], num_dims: int | None = None,
                          num_bins: int = 15) -> dict[str, float]:
  """Final metrics from a list of ``batch_metric_sums`` outputs (host side, exact).

  Returns 'num_examples', 'accuracy', 'nll_y_given_x' (mean -log p(y|x), nats), 'ece',
  and when the batches carried log-dets 'nll' and 'nll_given_label' (nats per example)
  and, if ``num_dims`` is given, 'bpd' and 'bpd_given_label' (= nll / (D log 2)).
  """
  if not batch_sums:
    raise ValueError("aggregate_metric_sums needs at least one batch.")
  keys = set(batch_sums[0])
  total = {}
  for key in ("num_examples", "num_correct", "sum_log_p_y_given_x", "sum_nll",
              "sum_nll_given_label"):
    if key in keys:
      total[key] = float(sum(np.asarray(s[key], np.float64) for s in batch_sums))
  count = total["num_examples"]
  if count == 0:
    raise ValueError("no unmasked examples in any batch; nothing to evaluate.")
  masks = [np.asarray(s["mask"], bool) for s in batch_sums]
  confidence = np.concatenate([np.asarray(s["confidence"])[m] for s, m in zip(batch_sums, masks, strict=False)])
  correct = np.concatenate([np.asarray(s["correct"])[m] for s, m in zip(batch_sums, masks, strict=False)])
  metrics = {
      "num_examples": count,
      "accuracy": total["num_correct"] / count,
      "nll_y_given_x": -total["sum_log_p_y_given_x"] / count,
      "ece": ece_from_confidences(confidence, correct, num_bins),
  }
  if "sum_nll" in total:
    metrics["nll"] = total["sum_nll"] / count
    metrics["nll_given_label"] = total["sum_nll_given_label"] / count
    if num_dims is not None:
      metrics["bpd"] = float(bits_per_dim(metrics["nll"], num_dims))
      metrics["bpd_given_label"] = float(bits_per_dim(metrics["nll_given_label"], num_dims))
  return metrics


def metrics_from_outputs(class_log_joint: Any, log_det: Any, labels: Any, *,
                         log_weights: Any, num_dims: int, num_bins: int = 15
                         ) -> dict[str, float]:
  """The evaluation metrics of a whole set from the model's outputs on it
  (``class_log_joint [N, K]``, ``log_det [N]``, ``labels [N]``, the prior's ``log_weights
  [K]``): accuracy, ECE, nll_y_given_x, nll / nll_given_label (nats per example) and their
  bits/dim (see ``aggregate_metric_sums``)."""
  sums = batch_metric_sums(class_log_joint, np.asarray(labels), log_det,
                           log_weights=log_weights)
  return aggregate_metric_sums([sums], num_dims=num_dims, num_bins=num_bins)
