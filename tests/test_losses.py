"""Tests for flowgmm_jax.losses against direct numpy computations."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from flowgmm_jax.losses import (bits_per_dim, consistency_nll, consistency_weight_ramp,
                                flowgmm_objective, semi_supervised_nll)


def _inputs(labels, num_classes=4, seed=0):
  rng = np.random.default_rng(seed)
  batch = len(labels)
  log_n = rng.normal(size=(batch, num_classes)) * 3.0 - 20.0     # log N(z; mu_k)
  log_w = np.log(rng.dirichlet(np.ones(num_classes)))
  log_det = rng.normal(size=batch) * 2.0
  return log_n + log_w, log_n, log_w, log_det, np.asarray(labels)


def _reference_ssl(log_n, log_w, log_det, labels, unlabeled_weight, conditional):
  lab_terms, unl_terms = [], []
  for b, y in enumerate(labels):
    if y >= 0:
      log_lik = log_n[b, y] + (0.0 if conditional else log_w[y])
      lab_terms.append(-(log_lik + log_det[b]))
    else:
      unl_terms.append(-(special.logsumexp(log_n[b] + log_w) + log_det[b]))
  lab = np.mean(lab_terms) if lab_terms else 0.0
  unl = np.mean(unl_terms) if unl_terms else 0.0
  return lab + unlabeled_weight * unl, lab, unl, len(lab_terms), len(unl_terms)


@pytest.mark.parametrize("labels", [[0, -1, 3, -1, 2, 1, -1],   # mixed
                                    [1, 2, 0, 3],               # no unlabelled rows
                                    [-1, -1, -1]])              # no labelled rows
@pytest.mark.parametrize("conditional", [False, True])
def test_semi_supervised_nll_matches_numpy(x64, labels, conditional):
  joint, log_n, log_w, log_det, labels = _inputs(labels)
  fn = jax.jit(lambda j, d, y, w: semi_supervised_nll(
      j, d, y, unlabeled_weight=0.7, log_weights=w if conditional else None))
  loss, aux = fn(joint, log_det, labels, log_w)
  expected, lab, unl, n_lab, n_unl = _reference_ssl(log_n, log_w, log_det, labels, 0.7,
                                                    conditional)
  np.testing.assert_allclose(loss, expected, rtol=1e-12)
  np.testing.assert_allclose(aux["nll_labeled"], lab, rtol=1e-12)
  np.testing.assert_allclose(aux["nll_unlabeled"], unl, rtol=1e-12)
  assert float(aux["num_labeled"]) == n_lab and float(aux["num_unlabeled"]) == n_unl


def test_conditional_and_joint_differ_by_log_k_for_uniform_weights(x64):
  joint, log_n, _, log_det, labels = _inputs([0, 1, 2, -1])
  log_w = np.full(4, -np.log(4.0))
  joint = log_n + log_w
  with_pi, _ = semi_supervised_nll(joint, log_det, labels)
  without_pi, _ = semi_supervised_nll(joint, log_det, labels, log_weights=log_w)
  np.testing.assert_allclose(with_pi - without_pi, np.log(4.0), rtol=1e-12)


def test_semi_supervised_gradients_are_finite_and_masked(x64):
  joint, _, _, log_det, _ = _inputs([0] * 3)
  labels = np.array([-1, -1, -1])
  grads = jax.grad(lambda j, d: semi_supervised_nll(j, d, labels)[0], argnums=(0, 1))(
      joint, log_det)
  assert all(np.all(np.isfinite(g)) for g in grads)
  # d/d log_det of the unlabelled mean is -1/3 per row.
  np.testing.assert_allclose(grads[1], -np.ones(3) / 3, rtol=1e-12)
  # All-labelled batch: gradient w.r.t. class_log_joint is -1/B at the label only.
  labels = np.array([2, 0, 1])
  g = jax.grad(lambda j: semi_supervised_nll(j, log_det, labels)[0])(joint)
  expected = np.zeros_like(joint)
  expected[np.arange(3), labels] = -1 / 3
  np.testing.assert_allclose(g, expected, atol=1e-15)


def test_consistency_nll_matches_numpy_and_stops_gradient(x64):
  joint_a, _, log_w, _, _ = _inputs([0] * 6, seed=1)
  joint_b, log_n_b, _, log_det_b, _ = _inputs([0] * 6, seed=2)
  joint_b = log_n_b + log_w
  pseudo = joint_a.argmax(1)
  log_n_pseudo = log_n_b[np.arange(6), pseudo]
  # Without log_weights: joint log p(z_b, y_hat); with them: log N(z_b; mu_y_hat).
  for weights, log_lik in ((None, log_n_pseudo + log_w[pseudo]), (log_w, log_n_pseudo)):
    got = consistency_nll(joint_a, joint_b, log_det_b, log_weights=weights)
    np.testing.assert_allclose(got, np.mean(-(log_lik + log_det_b)), rtol=1e-12)

  grad_a, grad_b, grad_det = jax.grad(consistency_nll, argnums=(0, 1, 2))(
      jnp.asarray(joint_a), jnp.asarray(joint_b), jnp.asarray(log_det_b))
  np.testing.assert_array_equal(grad_a, 0.0)
  expected_b = np.zeros_like(joint_b)
  expected_b[np.arange(6), pseudo] = -1 / 6
  np.testing.assert_allclose(grad_b, expected_b, atol=1e-15)
  np.testing.assert_allclose(grad_det, -np.ones(6) / 6, rtol=1e-12)


def test_consistency_gradient_zero_through_inputs_of_view_a(x64):
  """Zero gradient w.r.t. the INPUT of view a even when a and b share parameters."""
  rng = np.random.default_rng(3)
  weight = jnp.asarray(rng.normal(size=(3, 4)))
  x_a = jnp.asarray(rng.normal(size=(5, 3)))
  x_b = jnp.asarray(rng.normal(size=(5, 3)))

  def loss(w, xa, xb):
    return consistency_nll(xa @ w, xb @ w, jnp.sum(xb, axis=1))

  grad_w, grad_xa = jax.grad(loss, argnums=(0, 1))(weight, x_a, x_b)
  np.testing.assert_array_equal(grad_xa, 0.0)
  # The weight gradient comes only from view b: same as with a constant teacher.
  pseudo_logits = np.asarray(x_a @ weight)
  grad_w_ref = jax.grad(lambda w: consistency_nll(pseudo_logits, x_b @ w,
                                                  jnp.sum(x_b, axis=1)))(weight)
  np.testing.assert_allclose(grad_w, grad_w_ref, rtol=1e-12)


def _reference_terms(joint, log_n, log_det, labels, teacher):
  """Every term of flowgmm_objective, written out row by row."""
  log_p = joint - special.logsumexp(joint, axis=1, keepdims=True)
  lab = [b for b, y in enumerate(labels) if y >= 0]
  unl = [b for b, y in enumerate(labels) if y < 0]
  mix = -(special.logsumexp(joint, axis=1) + log_det)
  mean = lambda v: float(np.mean(v)) if len(v) else 0.0
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
  original, terms = jax.jit(lambda *a: flowgmm_objective(*a, objective="original", **kw))(
      joint, log_det, labels)
  joint_form, _ = flowgmm_objective(joint, log_det, labels, objective="joint", **kw)
  for name, value in ref.items():
    np.testing.assert_allclose(terms[name], value, rtol=1e-12, atol=1e-12, err_msg=name)
  # The original train_semisup_cons.py: label_weight * CE + mixture NLL over ALL rows + cons.
  np.testing.assert_allclose(original, 3.0 * ref["cross_entropy"] + 0.7 * ref["nll_all"]
                             + 0.4 * ref["consistency"], rtol=1e-12)
  np.testing.assert_allclose(joint_form, 3.0 * ref["nll_labeled"] + 0.7 * ref["nll_unlabeled"]
                             + 0.4 * ref["consistency"], rtol=1e-12)


def test_original_with_label_weight_1_puts_the_labelled_rows_in_twice(x64):
  """CE + -log p(x) = -log p(x, y) on a labelled row: with label_weight = 1 the original
  form is the labelled joint NLL plus the mixture NLL of every row, labelled ones again."""
  joint, _, _, log_det, labels = _inputs([1, -1, 3, 0, -1, -1])
  mix = -(special.logsumexp(joint, axis=1) + log_det)
  original, t = flowgmm_objective(joint, log_det, labels, objective="original")
  np.testing.assert_allclose(t["cross_entropy"] + np.mean(mix[[0, 2, 3]]), t["nll_labeled"],
                             rtol=1e-12)
  np.testing.assert_allclose(original, t["cross_entropy"] + np.mean(mix), rtol=1e-12)


def test_flowgmm_objective_shares_sum_to_the_global_value(x64):
  """Split a batch in two, normalise each half by the global counts: the halves' values sum
  to the whole batch's (what the data-parallel step relies on)."""
  joint, _, log_w, log_det, labels = _inputs([2, -1, -1, 0, -1, 1, 3, -1])
  teacher, _, _, _, _ = _inputs([0] * 8, seed=3)
  for objective in ("original", "joint"):
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
  t = np.clip(np.arange(6) / 4, 0, 1)
  np.testing.assert_allclose(consistency_weight_ramp(steps, 2.0, 4, schedule="sigmoid"),
                             2.0 * np.exp(-5 * (1 - t) ** 2), rtol=1e-6)
  np.testing.assert_allclose(consistency_weight_ramp(3, 1.5, 0), 1.5)
  jitted = jax.jit(lambda s: consistency_weight_ramp(s, 1.0, 10, "sigmoid"))
  np.testing.assert_allclose(jitted(jnp.int32(10)), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="schedule"):
    consistency_weight_ramp(0, 1.0, 10, schedule="cosine")


def test_shape_errors():
  with pytest.raises(ValueError, match=r"\[B\]"):
    semi_supervised_nll(jnp.zeros((3, 2)), jnp.zeros((4,)), jnp.zeros((3,), jnp.int32))
  with pytest.raises(ValueError, match=r"\[B, K\]"):
    semi_supervised_nll(jnp.zeros((3,)), jnp.zeros((3,)), jnp.zeros((3,), jnp.int32))
  with pytest.raises(ValueError, match="same"):
    consistency_nll(jnp.zeros((3, 2)), jnp.zeros((3, 4)), jnp.zeros((3,)))
