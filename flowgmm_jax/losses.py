"""FlowGMM losses: pure, jit-compatible functions of the prior's outputs.

Notation (the flow f is data -> latent): z = f(x), log_det = log|det df/dx| ([B]),
class_log_joint[b, k] = log pi_k + log N(z_b; mu_k, Sigma_k) ([B, K], from
``GaussianMixturePrior.class_logits``), log_weights = log pi ([K], from
``GaussianMixturePrior.log_weights``). Every NLL here is in nats per example, never per
dimension; ``flowgmm.bits_per_dim`` converts.

What the original PyTorch code (github.com/izmailovpavel/flowgmm) does, and how it maps here:

* Tabular / text FlowGMM (``SemiFlow.loss``, separate labelled and unlabelled batches):
      loss = mean_lab[-(log N(z; mu_y) + log_det)] + unlab_weight * mean_unlab[-(log p(z) + log_det)]
  with log p(z) = logsumexp_k(log pi_k + log N_k). The labelled term has no log pi_y
  (``SSLGaussMixture.log_prob(z, y)`` uses the unweighted class log-densities).
  -> ``flowgmm_objective(objective="joint")`` is this with the joint -log p(x, y) as the
  labelled term (a constant log K apart for uniform weights; with learnt weights only the
  joint lets labelled rows inform pi).
* Image FlowGMM-cons (``train_semisup_cons.py``, one mixed batch):
      loss = label_weight * CE(class_logits[lab], y) + mean_all[-(log p(z1) + log_det1)]
             + cons_weight * mean_all[-(log N(z1; mu_{argmax p(y|x2)}) + log_det1)]
  i.e. the labelled term is a softmax cross-entropy (discriminative), the unlabelled
  mixture NLL is averaged over the whole batch (labelled rows included), and the
  consistency term is the class-conditional NLL of the gradient-carrying view x1 at the
  class predicted (without gradient) from the other view x2, log-det included, not
  normalised per dimension. The weight ramps up LINEARLY over epochs.
  -> ``flowgmm_objective(objective="marginal_and_cross_entropy",
  log_weights=prior_log_weights)`` reproduces it exactly.

``flowgmm_objective`` is the one objective; ``FlowGMMLoss`` is a config's ``loss`` section
resolved into the settings of that function, the one object the train step receives.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from flowgmm_jax.flowgmm import bits_per_dim, log_px

Array = jax.Array

__all__ = ["OBJECTIVES", "RENAMED_OBJECTIVES", "FlowGMMLoss", "flowgmm_objective",
           "labeled_log_likelihood", "consistency_weight_ramp", "bits_per_dim"]

OBJECTIVES = ("marginal_and_cross_entropy", "joint")
# Former names of objectives, for a one-line error that names the current one.
RENAMED_OBJECTIVES = {"original": "marginal_and_cross_entropy"}


def unknown_objective_message(objective) -> str:
  """The one-line error for an ``objective`` that is not in ``OBJECTIVES``."""
  if objective in RENAMED_OBJECTIVES:
    return (f"objective {objective!r} is now called {RENAMED_OBJECTIVES[objective]!r} "
            "(the same objective); use that name.")
  return f"objective must be one of {OBJECTIVES}, got {objective!r}."


def labeled_log_likelihood(class_log_joint: Array, labels: Array,
                           log_weights: Array | None = None) -> Array:
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


def _check_batch(class_log_joint: Array, *per_example: Array) -> None:
  """Static shape checks (shapes are known under jit, so these never trace values)."""
  if class_log_joint.ndim != 2:
    raise ValueError(f"class_log_joint must be [B, K], got shape {class_log_joint.shape}.")
  batch = class_log_joint.shape[0]
  for array in per_example:
    if array.shape != (batch,):
      raise ValueError(f"per-example inputs must have shape [B] = ({batch},), got "
                       f"{array.shape}; log_det, labels and mask are one value per example.")


def flowgmm_objective(class_log_joint: Array, log_det: Array, labels: Array, *,
                      objective: str = "joint",
                      label_weight: float | Array = 1.0,
                      unlabeled_weight: float | Array = 1.0,
                      consistency_weight: float | Array = 0.0,
                      class_log_joint_teacher: Array | None = None,
                      log_weights: Array | None = None,
                      mask: Array | None = None,
                      num_labeled: Array | None = None,
                      num_unlabeled: Array | None = None,
                      num_examples: Array | None = None,
                      ) -> tuple[Array, dict[str, Array]]:
  """The FlowGMM training objective on one mixed batch.

  Two forms (``objective``), with CE = mean_lab -log softmax(class_log_joint)[y] (the
  discriminative cross-entropy), NLL_gen(x, y) = -(log pi_y + log N(z; mu_y) + log_det) =
  -log p(x, y), NLL_mix(x) = -(logsumexp_k class_log_joint + log_det) = -log p(x) and
  CONS = mean_all -(log N(z; mu_{y_hat}) + log_det) at y_hat = argmax of the teacher view:

    "marginal_and_cross_entropy" (the original image code, ``train_semisup_cons.py``):
        label_weight * CE + unlabeled_weight * mean_all NLL_mix + consistency_weight * CONS
      The mixture NLL runs over every row, labelled ones included. unlabeled_weight = 1 is
      the original; 0 is its --supervised_only.
    "joint" (generative; the original tabular/text ``SemiFlow`` up to the log pi_y term):
        label_weight * mean_lab NLL_gen + unlabeled_weight * mean_unl NLL_mix
        + consistency_weight * CONS
      With label_weight = 1 this is the negative joint log-likelihood of the batch.

  CONS uses -log p(x | y_hat) (no log pi), as the original's ``log_prob(z, y)``; it is
  computed only when ``class_log_joint_teacher`` is given (else 0), and y_hat carries no
  gradient.

  Data parallelism: every term is a sum over this batch's rows divided by a count. The
  counts default to this batch's own (then every value is the batch mean); a data-parallel
  step passes the global counts, so each device returns its share and the sum over devices
  (``psum``) is exactly the value of the global batch.

  Args:
    class_log_joint: [B, K] log pi_k + log N(z_b; mu_k) of the view that carries gradients.
    log_det: [B] flow log|det| of that view.
    labels: [B] int, -1 = unlabelled.
    objective: "marginal_and_cross_entropy" or "joint".
    label_weight, unlabeled_weight, consistency_weight: scalars (may be traced).
    class_log_joint_teacher: optional [B, K] of the second augmentation (only its argmax).
    log_weights: [K] log pi; needed to drop log pi from CONS (None: CONS keeps log pi_y).
    mask: optional [B] bool, False for padding rows, which count for nothing.
    num_labeled, num_unlabeled, num_examples: the counts that normalise the labelled,
      unlabelled and all-row means (default: this batch's, padding excluded).

  Returns:
    (loss, terms); terms holds 'cross_entropy', 'nll_labeled', 'nll_unlabeled' (mean over
    unlabelled rows), 'nll_all' (mean over all rows) and 'consistency', each normalised as
    above and each reported whatever the form, so logs of the two forms compare.
  """
  if objective not in OBJECTIVES:
    raise ValueError(unknown_objective_message(objective))
  class_log_joint = jnp.asarray(class_log_joint)
  log_det = jnp.asarray(log_det)
  labels = jnp.asarray(labels)
  mask = jnp.ones(labels.shape, bool) if mask is None else jnp.asarray(mask, bool)
  _check_batch(class_log_joint, log_det, labels, mask)
  is_labeled = (labels >= 0) & mask
  is_unlabeled = (labels < 0) & mask
  dtype = class_log_joint.dtype
  if num_labeled is None:
    num_labeled = jnp.sum(is_labeled)
  if num_unlabeled is None:
    num_unlabeled = jnp.sum(is_unlabeled)
  if num_examples is None:
    num_examples = jnp.sum(mask)
  def count(n):
    return jnp.maximum(jnp.asarray(n, dtype), 1.0)

  # where(), not multiplication by a mask, so a non-finite value in a row outside a term
  # cannot leak into its sum.
  def total(rows, values):
    return jnp.sum(jnp.where(rows, values, 0.0))

  nll_mix = -log_px(class_log_joint, log_det)
  nll_gen = -(labeled_log_likelihood(class_log_joint, labels) + log_det)
  cross_entropy = -labeled_log_likelihood(jax.nn.log_softmax(class_log_joint, axis=-1), labels)
  terms = {
      "cross_entropy": total(is_labeled, cross_entropy) / count(num_labeled),
      "nll_labeled": total(is_labeled, nll_gen) / count(num_labeled),
      "nll_unlabeled": total(is_unlabeled, nll_mix) / count(num_unlabeled),
      "nll_all": total(mask, nll_mix) / count(num_examples),
      "consistency": jnp.zeros((), dtype),
  }
  if class_log_joint_teacher is not None:
    teacher = jnp.asarray(class_log_joint_teacher)
    if teacher.shape != class_log_joint.shape:
      raise ValueError(f"both views need the same [B, K] shape, got {teacher.shape} and "
                       f"{class_log_joint.shape}.")
    pseudo_labels = jnp.argmax(jax.lax.stop_gradient(teacher), axis=-1)
    cons = -(labeled_log_likelihood(class_log_joint, pseudo_labels, log_weights) + log_det)
    terms["consistency"] = total(mask, cons) / count(num_examples)
  if objective == "marginal_and_cross_entropy":
    loss = label_weight * terms["cross_entropy"] + unlabeled_weight * terms["nll_all"]
  else:
    loss = label_weight * terms["nll_labeled"] + unlabeled_weight * terms["nll_unlabeled"]
  loss = loss + consistency_weight * terms["consistency"]
  return loss, terms


def consistency_weight_ramp(step: Array | int, max_weight: float, rampup_steps: int) -> Array:
  """Consistency weight at ``step`` (0-based), ramped up linearly to ``max_weight``:
  ``max_weight * clip((step + 1) / rampup_steps, 0, 1)`` (the original's
  ``linear_rampup``, applied per epoch there). ``rampup_steps <= 0`` gives ``max_weight``
  from the start. ``step`` may be traced."""
  step = jnp.asarray(step, jnp.float32)
  if rampup_steps <= 0:
    return jnp.full_like(step, max_weight)
  return max_weight * jnp.clip((step + 1.0) / rampup_steps, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class FlowGMMLoss:
  """A config's ``loss`` section, resolved: the one loss object the train step receives.

  Hashable, so that it is part of the key of the step's compilation cache.

  Attributes:
    objective: "marginal_and_cross_entropy" | "joint" (see ``flowgmm_objective``).
    label_weight: the labelled term's weight, resolved (see ``from_config``).
    unlabeled_weight: the density term's weight.
    consistency_weight: the FlowGMM-cons term's final weight (0: no second forward pass).
    consistency_rampup_steps: steps of the linear ramp up to it.
  """
  objective: str = "joint"
  label_weight: float = 1.0
  unlabeled_weight: float = 1.0
  consistency_weight: float = 0.0
  consistency_rampup_steps: int = 0

  @classmethod
  def from_config(cls, loss_config, num_dims: int) -> FlowGMMLoss:
    """From ``config.loss`` for inputs of ``num_dims`` = D dimensions. ``label_weight``
    None is ``label_weight_per_feature * D``: the density term is a sum over the D
    dimensions and the class term one number per row. The one place this is resolved."""
    label_weight = loss_config.label_weight
    if label_weight is None:
      label_weight = loss_config.label_weight_per_feature * num_dims
    return cls(objective=loss_config.objective, label_weight=float(label_weight),
               unlabeled_weight=float(loss_config.unlabeled_weight),
               consistency_weight=float(loss_config.consistency_weight),
               consistency_rampup_steps=int(loss_config.consistency_rampup_steps))

  @property
  def uses_consistency(self) -> bool:
    """Whether the step needs the second (teacher) forward pass."""
    return self.consistency_weight != 0.0

  def consistency_weight_at(self, step: Array) -> Array:
    return consistency_weight_ramp(step, self.consistency_weight,
                                   self.consistency_rampup_steps)

  def __call__(self, class_log_joint: Array, log_det: Array, labels: Array, *, step: Array,
               **kwargs) -> tuple[Array, dict[str, Array]]:
    """``flowgmm_objective`` with these settings at training step ``step``; ``kwargs``:
    its teacher, log_weights, mask and count arguments."""
    return flowgmm_objective(
        class_log_joint, log_det, labels, objective=self.objective,
        label_weight=self.label_weight, unlabeled_weight=self.unlabeled_weight,
        consistency_weight=self.consistency_weight_at(step), **kwargs)
