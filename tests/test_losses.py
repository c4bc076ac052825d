"""Tests for flowgmm_jax.losses against direct numpy computations."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from flowgmm_jax.losses import FlowGMMLoss, bits_per_dim, consistency_weight_ramp, flowgmm_objective


def _inputs(labels, num_classes=4, seed=0):
  rng = np.random.default_rng(seed)
  batch = len(labels)
  log_n = rng.normal(size=(batch, num_classes)) * 3.0 - 20.0     # log N(z; mu_k)
  log_w = np.log(rng.dirichlet(np.ones(num_classes)))
  log_det = rng.normal(size=batch) * 2.0
  return log_n + log_w, log_n, log_w, log_det, np.asarray(labels)


@pytest.mark.parametrize("labels", [[0, -1, 3, -1, 2, 1, -1],   # mixed
                                    [1, 2, 0, 3],               # no unlabelled rows
                                    [-1, -1, -1]])              # no labelled rows
def test_joint_form_is_the_generative_nll(x64, labels):
  """"joint": labelled -log p(x, y) = -(log pi_y + log N + log_det), unlabelled -log p(x);
  a mean over an empty set is 0."""
  joint, log_n, log_w, log_det, labels = _inputs(labels)
  loss, terms = jax.jit(lambda j, d, y: flowgmm_objective(
      j, d, y, objective="joint", unlabeled_weight=0.7))(joint, log_det, labels)
  lab = [-(log_n[b, y] + log_w[y] + log_det[b]) for b, y in enumerate(labels) if y >= 0]
  unl = [-(special.logsumexp(log_n[b] + log_w) + log_det[b])
         for b, y in enumerate(labels) if y < 0]
  def mean(v):
    return np.mean(v) if v else 0.0
  np.testing.assert_allclose(terms["nll_labeled"], mean(lab), rtol=1e-12)
  np.testing.assert_allclose(terms["nll_unlabeled"], mean(unl), rtol=1e-12)
  np.testing.assert_allclose(loss, mean(lab) + 0.7 * mean(unl), rtol=1e-12)


def test_objective_gradients_are_finite_and_masked(x64):
  joint, _, _, log_det, _ = _inputs([0] * 3)
  labels = np.array([-1, -1, -1])
  def objective(j, d, y):
    return flowgmm_objective(j, d, y, objective="joint")[0]
  grads = jax.grad(objective, argnums=(0, 1))(joint, log_det, labels)
  assert all(np.all(np.isfinite(g)) for g in grads)
  # d/d log_det of the unlabelled mean is -1/3 per row.
  np.testing.assert_allclose(grads[1], -np.ones(3) / 3, rtol=1e-12)
  # All-labelled batch: gradient w.r.t. class_log_joint is -1/B at the label only.
  labels = np.array([2, 0, 1])
  g = jax.grad(lambda j: objective(j, log_det, labels))(joint)
  expected = np.zeros_like(joint)
  expected[np.arange(3), labels] = -1 / 3
  np.testing.assert_allclose(g, expected, atol=1e-15)


def test_consistency_term_stops_the_teachers_gradient(x64):
  """Zero gradient through the teacher view even when both views share parameters; the
  term is -(log N(z_b; mu_y_hat) + log_det_b) with log_weights (the original's), the joint
  log p(z_b, y_hat) without."""
  rng = np.random.default_rng(3)
  weight = jnp.asarray(rng.normal(size=(3, 4)))
  x_a = jnp.asarray(rng.normal(size=(5, 3)))
  x_b = jnp.asarray(rng.normal(size=(5, 3)))
  log_w = jnp.log(jnp.asarray([0.1, 0.2, 0.3, 0.4]))
  labels = jnp.full(5, -1)

  def cons(w, xa, xb, weights=None):
    return flowgmm_objective(xb @ w, jnp.sum(xb, axis=1), labels, class_log_joint_teacher=xa @ w,
                             log_weights=weights)[1]["consistency"]

  grad_w, grad_xa = jax.grad(cons, argnums=(0, 1))(weight, x_a, x_b)
  np.testing.assert_array_equal(grad_xa, 0.0)
  pseudo = np.asarray(x_a @ weight).argmax(1)
  student = np.asarray(x_b @ weight)
  log_det = np.asarray(jnp.sum(x_b, axis=1))
  picked = student[np.arange(5), pseudo]
  np.testing.assert_allclose(cons(weight, x_a, x_b), np.mean(-(picked + log_det)), rtol=1e-12)
  np.testing.assert_allclose(cons(weight, x_a, x_b, log_w),
                             np.mean(-(picked - np.asarray(log_w)[pseudo] + log_det)), rtol=1e-12)
  # The weight gradient comes only from view b: same as with a constant teacher.
  grad_w_ref = jax.grad(lambda w: flowgmm_objective(
      x_b @ w, jnp.sum(x_b, axis=1), labels, class_log_joint_teacher=np.asarray(x_a @ weight)
  )[1]["consistency"])(weight)
  np.testing.assert_allclose(grad_w, grad_w_ref, rtol=1e-12)


def test_padding_rows_count_for_nothing(x64):
  """Rows with mask False change no term, however extreme their values."""
  joint, _, log_w, log_det, labels = _inputs([2, -1, -1, 0, -1, 1])
  teacher, _, _, _, _ = _inputs([0] * 6, seed=4)
  kw = dict(label_weight=3.0, consistency_weight=0.5, log_weights=log_w)
  for objective in ("marginal_and_cross_entropy", "joint"):
    real, real_terms = flowgmm_objective(joint, log_det, labels, objective=objective,
                                         class_log_joint_teacher=teacher, **kw)
    def pad(a, v):
      return np.concatenate([a, np.full((3,) + a.shape[1:], v, a.dtype)])
    padded, padded_terms = flowgmm_objective(
        pad(joint, np.inf), pad(log_det, -1e30), pad(labels, 1), objective=objective,
        class_log_joint_teacher=pad(teacher, 0.0), mask=pad(np.ones(6, bool), False), **kw)
    np.testing.assert_allclose(padded, real, rtol=1e-12)
    for name in real_terms:
      np.testing.assert_allclose(padded_terms[name], real_terms[name], rtol=1e-12)


def test_loss_object_resolves_the_label_weight_and_ramps_the_consistency_weight():
  import ml_collections
  section = ml_collections.ConfigDict(dict(
      objective="marginal_and_cross_entropy", label_weight=None, label_weight_per_feature=10.0,
      unlabeled_weight=0.5, consistency_weight=2.0, consistency_rampup_steps=4))
  loss = FlowGMMLoss.from_config(section, num_dims=13)
  assert loss.label_weight == 130.0
  assert loss.uses_consistency
  assert hash(loss) == hash(FlowGMMLoss.from_config(section, num_dims=13))
  np.testing.assert_allclose(loss.consistency_weight_at(jnp.arange(6)),
                             [0.5, 1.0, 1.5, 2.0, 2.0, 2.0], rtol=1e-6)
  section.label_weight = 3.0
  assert FlowGMMLoss.from_config(section, num_dims=13).label_weight == 3.0
  joint, _, _, log_det, labels = _inputs([1, -1, 0])
  value, _ = loss(joint, log_det, labels, step=jnp.int32(1))
  expected, _ = flowgmm_objective(joint, log_det, labels, objective="marginal_and_cross_entropy",
                                  label_weight=130.0, unlabeled_weight=0.5,
                                  consistency_weight=1.0)
  np.testing.assert_allclose(value, expected, rtol=1e-6)


def _reference_terms(joint, log_n, log_det, labels, teacher):
  """Every term of flowgmm_objective, written out row by row."""
  log_p = joint - special.logsumexp(joint, axis=1, keepdims=True)
  lab = [b for b, y in enumerate(labels) if y >= 0]
  unl = [b for b, y in enumerate(labels) if y < 0]
  mix = -(special.logsumexp(joint, axis=1) + log_det)
  def mean(v):
    return float(np.mean(v)) if len(v) else 0.0
  pseudo = teacher.argmax(1)
  return {"cross_entropy": mean([-log_p[b, labels[b]] for b in lab]),
          "nll_labeled": mean([-(joint[b, labels[b]] + log_det[b]) for b in lab]),
          "nll_unlabeled": mean(mix[unl]),
          "nll_all": mean(mix),
          "consistency": mean(-(log_n[np.arange(len(labels)), pseudo] + log_det))}


@pytest.mark.parametrize("labels", [[2, -1, -1, 0, -1], [1, 2, 0, 3], [-1, -1, -1]])
def test_flowgmm_objective_both_forms_match_the_formulas(x64, labels):
  joint, log_n, log_w, log_det, labels = _inputs(labels)
  teacher, _, _, _, _ = _inputs([0] * len(labels), seed=7)
  ref = _reference_terms(joint, log_n, log_det, labels, teacher)
  kw = dict(label_weight=3.0, unlabeled_weight=0.7, consistency_weight=0.4,
            class_log_joint_teacher=teacher, log_weights=log_w)
  marginal_ce, terms = jax.jit(
      lambda *a: flowgmm_objective(*a, objective="marginal_and_cross_entropy", **kw))(
          joint, log_det, labels)
  joint_form, _ = flowgmm_objective(joint, log_det, labels, objective="joint", **kw)
  for name, value in ref.items():
    np.testing.assert_allclose(terms[name], value, rtol=1e-12, atol=1e-12, err_msg=name)
  # The original train_semisup_cons.py: label_weight * CE + mixture NLL over ALL rows + cons.
  np.testing.assert_allclose(marginal_ce, 3.0 * ref["cross_entropy"] + 0.7 * ref["nll_all"]
                             + 0.4 * ref["consistency"], rtol=1e-12)
  np.testing.assert_allclose(joint_form, 3.0 * ref["nll_labeled"] + 0.7 * ref["nll_unlabeled"]
                             + 0.4 * ref["consistency"], rtol=1e-12)


def test_marginal_and_cross_entropy_with_label_weight_1_puts_the_labelled_rows_in_twice(x64):
  """CE + -log p(x) = -log p(x, y) on a labelled row: with label_weight = 1 the
  marginal_and_cross_entropy form is the labelled joint NLL plus the mixture NLL of every
  row, labelled ones again."""
  joint, _, _, log_det, labels = _inputs([1, -1, 3, 0, -1, -1])
  mix = -(special.logsumexp(joint, axis=1) + log_det)
  marginal_ce, t = flowgmm_objective(joint, log_det, labels,
                                     objective="marginal_and_cross_entropy")
  np.testing.assert_allclose(t["cross_entropy"] + np.mean(mix[[0, 2, 3]]), t["nll_labeled"],
                             rtol=1e-12)
  np.testing.assert_allclose(marginal_ce, t["cross_entropy"] + np.mean(mix), rtol=1e-12)


def test_flowgmm_objective_shares_sum_to_the_global_value(x64):
  """Split a batch in two, normalise each half by the global counts: the halves' values sum
  to the whole batch's (what the data-parallel step relies on)."""
  joint, _, log_w, log_det, labels = _inputs([2, -1, -1, 0, -1, 1, 3, -1])
  teacher, _, _, _, _ = _inputs([0] * 8, seed=3)
  for objective in ("marginal_and_cross_entropy", "joint"):
    kw = dict(objective=objective, label_weight=3.0, consistency_weight=0.5, log_weights=log_w)
    whole, whole_terms = flowgmm_objective(joint, log_det, labels,
                                           class_log_joint_teacher=teacher, **kw)
    counts = dict(num_labeled=4, num_unlabeled=4, num_examples=8)
    parts = [flowgmm_objective(joint[s], log_det[s], labels[s],
                               class_log_joint_teacher=teacher[s], **counts, **kw)
             for s in (slice(0, 3), slice(3, 8))]
    np.testing.assert_allclose(parts[0][0] + parts[1][0], whole, rtol=1e-12)
    for name in whole_terms:
      np.testing.assert_allclose(parts[0][1][name] + parts[1][1][name], whole_terms[name],
                                 rtol=1e-12, atol=1e-12)


def test_flowgmm_objective_rejects_unknown_form():
  with pytest.raises(ValueError, match="objective"):
    flowgmm_objective(jnp.zeros((2, 3)), jnp.zeros(2), jnp.zeros(2, jnp.int32),
                      objective="pi_model")


def test_bits_per_dim():
  np.testing.assert_allclose(bits_per_dim(3072 * math.log(2.0) * 3.5, 3072), 3.5, rtol=1e-6)
  # Uniform density on [0, 1)^D after the Dequantize bijector (log-det -D log 256):
  # NLL = -(0 + (-D log 256)) = D log 256 nats, i.e. exactly 8 bits per dimension.
  dims = 784
  nll = -(0.0 + (-dims * math.log(256.0)))
  np.testing.assert_allclose(bits_per_dim(jnp.array([nll, nll]), dims), [8.0, 8.0], rtol=1e-6)
  with pytest.raises(ValueError, match="num_dims"):
    bits_per_dim(1.0, 0)


def test_consistency_weight_ramp():
  steps = jnp.arange(6)
  np.testing.assert_allclose(consistency_weight_ramp(steps, 2.0, 4),
                             [0.5, 1.0, 1.5, 2.0, 2.0, 2.0], rtol=1e-6)
  np.testing.assert_allclose(consistency_weight_ramp(3, 1.5, 0), 1.5)
  jitted = jax.jit(lambda s: consistency_weight_ramp(s, 1.0, 10))
  np.testing.assert_allclose(jitted(jnp.int32(4)), 0.5, rtol=1e-6)


def test_shape_errors():
  with pytest.raises(ValueError, match=r"\[B\]"):
    flowgmm_objective(jnp.zeros((3, 2)), jnp.zeros((4,)), jnp.zeros((3,), jnp.int32))
  with pytest.raises(ValueError, match=r"\[B, K\]"):
    flowgmm_objective(jnp.zeros((3,)), jnp.zeros((3,)), jnp.zeros((3,), jnp.int32))
  with pytest.raises(ValueError, match="same"):
    flowgmm_objective(jnp.zeros((3, 4)), jnp.zeros((3,)), jnp.zeros((3,), jnp.int32),
                      class_log_joint_teacher=jnp.zeros((3, 2)))
