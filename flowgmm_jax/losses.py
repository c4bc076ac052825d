"""FlowGMM losses: pure, jit-compatible functions of the prior's outputs.

Notation (the flow f is data -> latent): z = f(x), log_det = log|det df/dx| ([B]),
class_log_joint[b, k] = log pi_k + log N(z_b; mu_k, Sigma_k) ([B, K], from
``GaussianMixturePrior.class_logits``), log_weights = log pi ([K], from
``GaussianMixturePrior.log_weights``). Every NLL here is in nats per EXAMPLE, never per
dimension; ``bits_per_dim`` converts.

What the original PyTorch code (github.com/izmailovpavel/flowgmm) does, and how it maps here:

* Tabular / text FlowGMM (``SemiFlow.loss``, separate labelled and unlabelled batches):
      loss = mean_lab[-(log N(z; mu_y) + log_det)] + unlab_weight * mean_unlab[-(log p(z) + log_det)]
  with log p(z) = logsumexp_k(log pi_k + log N_k). The labelled term has NO log pi_y
  (``SSLGaussMixture.log_prob(z, y)`` uses the unweighted class log-densities).
  -> ``semi_supervised_nll(..., log_weights=prior_log_weights)`` reproduces it exactly.
* Image FlowGMM-cons (``train_semisup_cons.py``, one mixed batch):
      loss = label_weight * CE(class_logits[lab], y) + mean_all[-(log p(z1) + log_det1)]
             + cons_weight * mean_all[-(log N(z1; mu_{argmax p(y|x2)}) + log_det1)]
  i.e. the labelled term is a softmax cross-entropy (discriminative), the unlabelled
  mixture NLL is averaged over the WHOLE batch (labelled rows included), and the
  consistency term is the class-conditional NLL of the gradient-carrying view x1 at the
  class predicted (without gradient) from the other view x2, log-det included, not
  normalised per dimension. The weight ramps up LINEARLY over epochs.
  -> ``flowgmm_objective(objective="original", log_weights=prior_log_weights)`` reproduces
  it exactly.

``flowgmm_objective`` is the one objective the train step calls; its "joint" form is the
generative labelled NLL -log p(x, y) plus the unlabelled mixture NLL (plus consistency).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array


def _check_batch(class_log_joint: Array, *per_example: Array) -> None:
  """Static shape checks (shapes are known under jit, so these never trace values)."""
  if class_log_joint.ndim != 2:
    raise ValueError(f"class_log_joint must be [B, K], got shape {class_log_joint.shape}.")
  batch = class_log_joint.shape[0]
  for array in per_example:
    if array.shape != (batch,):
      raise ValueError(f"per-example inputs must have shape [B] = ({batch},), got "
                       f"{array.shape}; log_det and labels are one value per example.")


def _safe_mean(total: Array, count: Array) -> Array:
  """total / count, and 0 (with zero gradient) when count == 0."""
  return total / jnp.maximum(count, 1)


def labeled_log_likelihood(class_log_joint: Array, labels: Array,
                           log_weights: Optional[Array] = None) -> Array:
  """Per-example log-likelihood of the given class, ``[B]``.

  Returns class_log_joint[b, y_b] = log pi_y + log N(z; mu_y)  (the joint log p(z, y)),
  or, when ``log_weights`` is given, log N(z; mu_y) = log p(z | y) (the original's choice).
  Rows with a negative (unlabelled) label read class 0; callers mask them out.
  """
  safe_labels = jnp.where(labels >= 0, labels, 0)
  log_lik = jnp.take_along_axis(class_log_joint, safe_labels[:, None], axis=1)[:, 0]
  if log_weights is not None:
    log_lik = log_lik - jnp.asarray(log_weights)[safe_labels]
  return log_lik


def semi_supervised_nll_terms(class_log_joint: Array, log_det: Array, labels: Array,
                              log_weights: Optional[Array] = None) -> Dict[str, Array]:
  """Per-example terms of ``semi_supervised_nll``, each ``[B]`` and zero off its set.

  Returns 'nll_labeled' (-(labelled log-lik + log_det) on rows with y >= 0, else 0),
  'nll_unlabeled' (-(logsumexp_k class_log_joint + log_det) on rows with y < 0, else 0)
  and the boolean 'is_labeled'. The data-parallel train step sums these per device and
  divides by counts taken over all devices, so its loss is that of the global batch.
  """
  class_log_joint = jnp.asarray(class_log_joint)
  log_det = jnp.asarray(log_det)
  labels = jnp.asarray(labels)
  _check_batch(class_log_joint, log_det, labels)
  is_labeled = labels >= 0
  nll_lab_each = -(labeled_log_likelihood(class_log_joint, labels, log_weights) + log_det)
  nll_unl_each = -(jax.nn.logsumexp(class_log_joint, axis=-1) + log_det)
  # where(), not multiplication by a mask, so a non-finite value on the other side of
  # the split cannot leak into the sum.
  return {"nll_labeled": jnp.where(is_labeled, nll_lab_each, 0.0),
          "nll_unlabeled": jnp.where(is_labeled, 0.0, nll_unl_each),
          "is_labeled": is_labeled}


def semi_supervised_nll(class_log_joint: Array, log_det: Array, labels: Array,
                        unlabeled_weight: float | Array = 1.0,
                        log_weights: Optional[Array] = None,
                        labeled_weight: float | Array = 1.0,
                        ) -> Tuple[Array, Dict[str, Array]]:
  """FlowGMM's generative semi-supervised NLL on a mixed batch.

  Args:
    class_log_joint: [B, K], log pi_k + log N(z_b; mu_k, Sigma_k).
    log_det: [B], log|det df/dx| of the flow (data -> latent).
    labels: [B] int, class index or -1 for unlabelled (any negative counts as unlabelled).
    unlabeled_weight: weight of the unlabelled mean (the original's ``unlab_weight``).
    log_weights: [K] log pi. If given, the labelled term is the original's
      -(log N(z; mu_y) + log_det) = -log p(x | y); if None it is the joint
      -(log pi_y + log N(z; mu_y) + log_det) = -log p(x, y). With fixed uniform weights the
      two differ by the constant log K per labelled example (same gradients); with learnt
      weights only the joint lets labelled data inform pi.
    labeled_weight: weight of the labelled mean (1 in the original).

  Returns:
    (loss, aux) with
      nll_labeled   = sum_{y_b >= 0} -(labelled log-lik_b + log_det_b) / max(n_lab, 1)
      nll_unlabeled = sum_{y_b < 0} -(logsumexp_k class_log_joint[b] + log_det_b) / max(n_unl, 1)
      loss = labeled_weight * nll_labeled + unlabeled_weight * nll_unlabeled
    A mean over a set with no rows is 0 (and contributes no gradient). aux holds
    'nll_labeled', 'nll_unlabeled', 'num_labeled', 'num_unlabeled' (float counts).
    All values are nats per example; divide by D log 2 (``bits_per_dim``) for bits/dim.
  """
  terms = semi_supervised_nll_terms(class_log_joint, log_det, labels, log_weights)
  num_labeled = jnp.sum(terms["is_labeled"]).astype(terms["nll_labeled"].dtype)
  num_unlabeled = jnp.sum(~terms["is_labeled"]).astype(terms["nll_labeled"].dtype)
  nll_labeled = _safe_mean(jnp.sum(terms["nll_labeled"]), num_labeled)
  nll_unlabeled = _safe_mean(jnp.sum(terms["nll_unlabeled"]), num_unlabeled)
  loss = labeled_weight * nll_labeled + unlabeled_weight * nll_unlabeled
  aux = {"nll_labeled": nll_labeled, "nll_unlabeled": nll_unlabeled,
         "num_labeled": num_labeled, "num_unlabeled": num_unlabeled}
  return loss, aux


def consistency_nll(class_log_joint_a: Array, class_log_joint_b: Array, log_det_b: Array,
                    log_weights: Optional[Array] = None) -> Array:
  """FlowGMM-cons consistency term: NLL of view b at the class predicted from view a.

      y_hat = argmax_k stop_gradient(class_log_joint_a)          (p(y | x_a), no gradient)
      loss  = mean_b -(log N(z_b; mu_{y_hat}, Sigma_{y_hat}) + log_det_b)

  as in the original ``train_semisup_cons.py`` (view a = x2 under no_grad, view b = x1):
  the flow's log-det of view b IS included, the mean is over all B examples and there is
  no per-dimension normalisation. Pass ``log_weights`` to drop log pi_y from the term as
  the original does (its ``log_prob(z, y)`` uses unweighted class densities); without it
  the joint log p(z_b, y_hat) is used (a constant log K apart for uniform weights).

  Args:
    class_log_joint_a: [B, K] for the augmentation that provides the pseudo-label.
    class_log_joint_b: [B, K] for the augmentation that is trained.
    log_det_b: [B] flow log-det of augmentation b.
    log_weights: optional [K] log pi.
  Returns:
    scalar, nats per example.
  """
  class_log_joint_a = jnp.asarray(class_log_joint_a)
  class_log_joint_b = jnp.asarray(class_log_joint_b)
  log_det_b = jnp.asarray(log_det_b)
  _check_batch(class_log_joint_b, log_det_b)
  if class_log_joint_a.shape != class_log_joint_b.shape:
    raise ValueError(f"both views need the same [B, K] shape, got "
                     f"{class_log_joint_a.shape} and {class_log_joint_b.shape}.")
  return jnp.mean(consistency_nll_per_example(class_log_joint_b, log_det_b,
                                              jnp.argmax(class_log_joint_a, axis=-1),
                                              log_weights))


def consistency_nll_per_example(class_log_joint_b: Array, log_det_b: Array,
                                pseudo_labels: Array,
                                log_weights: Optional[Array] = None) -> Array:
  """[B] consistency NLL -(log N(z_b; mu_{y_hat}) + log_det_b) at given pseudo-labels.

  The pseudo-labels are taken under stop_gradient (they are integers, so no gradient can
  flow through them anyway); see ``consistency_nll``.
  """
  pseudo_labels = jax.lax.stop_gradient(pseudo_labels)
  log_lik = labeled_log_likelihood(class_log_joint_b, pseudo_labels, log_weights)
  return -(log_lik + log_det_b)


OBJECTIVES = ("original", "joint")


def flowgmm_objective(class_log_joint: Array, log_det: Array, labels: Array, *,
                      objective: str = "joint",
                      label_weight: float | Array = 1.0,
                      unlabeled_weight: float | Array = 1.0,
                      consistency_weight: float | Array = 0.0,
                      class_log_joint_teacher: Optional[Array] = None,
                      log_weights: Optional[Array] = None,
                      num_labeled: Optional[Array] = None,
                      num_unlabeled: Optional[Array] = None,
                      num_examples: Optional[Array] = None,
                      ) -> Tuple[Array, Dict[str, Array]]:
  """The FlowGMM training objective on one mixed batch: the ONE function the train step calls.

  Two forms (``objective``), with CE = mean_lab -log softmax(class_log_joint)[y] (the
  discriminative cross-entropy), NLL_gen(x, y) = -(log pi_y + log N(z; mu_y) + log_det) =
  -log p(x, y), NLL_mix(x) = -(logsumexp_k class_log_joint + log_det) = -log p(x) and
  CONS = mean_all -(log N(z; mu_{y_hat}) + log_det) at y_hat = argmax of the teacher view:

    "original" (the original image code, ``train_semisup_cons.py``):
        label_weight * CE + unlabeled_weight * mean_ALL NLL_mix + consistency_weight * CONS
      The mixture NLL runs over every row, labelled ones included. unlabeled_weight = 1 is
      the original; 0 is its --supervised_only.
    "joint" (generative; the original tabular/text ``SemiFlow`` up to the log pi_y term):
        label_weight * mean_lab NLL_gen + unlabeled_weight * mean_unl NLL_mix
        + consistency_weight * CONS
      With label_weight = 1 this is the negative joint log-likelihood of the batch.

  CONS uses -log p(x | y_hat) (no log pi), as the original's ``log_prob(z, y)``; it is
  computed only when ``class_log_joint_teacher`` is given (else 0), and y_hat carries no
  gradient.

  Data parallelism: every term is a SUM over this batch's rows divided by a count. The
  counts default to this batch's own (then every value is the batch mean); a data-parallel
  step passes the GLOBAL counts, so each device returns its share and the sum over devices
  (``psum``) is exactly the value of the global batch.

  Args:
    class_log_joint: [B, K] log pi_k + log N(z_b; mu_k) of the view that carries gradients.
    log_det: [B] flow log|det| of that view.
    labels: [B] int, -1 = unlabelled.
    objective: "original" or "joint".
    label_weight, unlabeled_weight, consistency_weight: scalars (may be traced).
    class_log_joint_teacher: optional [B, K] of the second augmentation (only its argmax).
    log_weights: [K] log pi; needed to drop log pi from CONS (None: CONS keeps log pi_y).
    num_labeled, num_unlabeled, num_examples: the counts that normalise the labelled,
      unlabelled and all-row means (default: this batch's).

  Returns:
    (loss, terms); terms holds 'cross_entropy', 'nll_labeled', 'nll_unlabeled' (mean over
    unlabelled rows), 'nll_all' (mean over all rows) and 'consistency', each normalised as
    above and each reported whatever the form, so logs of the two forms compare.
  """
  if objective not in OBJECTIVES:
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
  class_log_joint = jnp.asarray(class_log_joint)
  log_det = jnp.asarray(log_det)
  labels = jnp.asarray(labels)
  per_row = semi_supervised_nll_terms(class_log_joint, log_det, labels)
  is_labeled = per_row["is_labeled"]
  dtype = class_log_joint.dtype
  if num_labeled is None:
    num_labeled = jnp.sum(is_labeled)
  if num_unlabeled is None:
    num_unlabeled = jnp.sum(~is_labeled)
  if num_examples is None:
    num_examples = labels.shape[0]
  count = lambda n: jnp.maximum(jnp.asarray(n, dtype), 1.0)

  log_probs = jax.nn.log_softmax(class_log_joint, axis=-1)
  ce_each = -labeled_log_likelihood(log_probs, labels)
  nll_all_each = -(jax.nn.logsumexp(class_log_joint, axis=-1) + log_det)
  terms = {
      "cross_entropy": jnp.sum(jnp.where(is_labeled, ce_each, 0.0)) / count(num_labeled),
      "nll_labeled": jnp.sum(per_row["nll_labeled"]) / count(num_labeled),
      "nll_unlabeled": jnp.sum(per_row["nll_unlabeled"]) / count(num_unlabeled),
      "nll_all": jnp.sum(nll_all_each) / count(num_examples),
      "consistency": jnp.zeros((), dtype),
  }
  if class_log_joint_teacher is not None:
    teacher = jnp.asarray(class_log_joint_teacher)
    if teacher.shape != class_log_joint.shape:
      raise ValueError(f"both views need the same [B, K] shape, got {teacher.shape} and "
                       f"{class_log_joint.shape}.")
    pseudo_labels = jnp.argmax(jax.lax.stop_gradient(teacher), axis=-1)
    cons_each = consistency_nll_per_example(class_log_joint, log_det, pseudo_labels,
                                            log_weights)
    terms["consistency"] = jnp.sum(cons_each) / count(num_examples)
  if objective == "original":
    loss = label_weight * terms["cross_entropy"] + unlabeled_weight * terms["nll_all"]
  else:
    loss = label_weight * terms["nll_labeled"] + unlabeled_weight * terms["nll_unlabeled"]
  loss = loss + consistency_weight * terms["consistency"]
  return loss, terms


def bits_per_dim(nll_nats: Array | float, num_dims: int) -> Array:
  """nll / (D log 2): nats per example -> bits per dimension (any shape, elementwise).

  The NLL must be of the data in the space whose density it measures. For 8-bit images
  the flow starts with the Dequantize bijector (x -> (x + u) / 256), whose log-det
  contributes -D log 256 per example; so -(log p(z) + log_det) is already the NLL of the
  integer-valued pixels in [0, 256)^D (up to the dequantisation bound) and this function
  gives the standard bits/dim with no further correction. (The original added that
  -D log k term in ``FlowLoss`` instead, because its flows started at x / 256.)
  """
  if int(num_dims) <= 0:
    raise ValueError(f"num_dims must be a positive integer, got {num_dims}.")
  return jnp.asarray(nll_nats) / (int(num_dims) * math.log(2.0))


def consistency_weight_ramp(step: Array | int, max_weight: float, rampup_steps: int,
                            schedule: str = "linear") -> Array:
  """Consistency weight at ``step`` (0-based), ramped up from ~0 to ``max_weight``.

  schedule="linear" (the original's ``linear_rampup``, applied per epoch there):
      w = max_weight * clip((step + 1) / rampup_steps, 0, 1)
  schedule="sigmoid" (Laine & Aila 2017, the usual Pi-model schedule):
      t = clip(step / rampup_steps, 0, 1);  w = max_weight * exp(-5 (1 - t)^2)
  rampup_steps <= 0 gives max_weight from the start. ``step`` may be traced.
  """
  if schedule not in ("linear", "sigmoid"):
    raise ValueError(f"schedule must be 'linear' or 'sigmoid', got {schedule!r}.")
  step = jnp.asarray(step, jnp.float32)
  if rampup_steps <= 0:
    return jnp.full_like(step, max_weight)
  if schedule == "linear":
    fraction = jnp.clip((step + 1.0) / rampup_steps, 0.0, 1.0)
    return max_weight * fraction
  fraction = jnp.clip(step / rampup_steps, 0.0, 1.0)
  return max_weight * jnp.exp(-5.0 * (1.0 - fraction) ** 2)
