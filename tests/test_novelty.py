"""The reject option and the query rules (flowgmm_jax/novelty.py): their maths on a 2-D
mixture whose answers are known, then through a fitted FlowGMMClassifier and a TrainedFlowGMM.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
from scipy.stats import multivariate_normal
from sklearn.metrics import roc_auc_score
from tiny import TINY, gaussian_table

from flowgmm_jax import novelty
from flowgmm_jax.estimator import FlowGMMClassifier

# A 2-D mixture: two unit-variance classes at (-2, 0) and (2, 0), equal weights. With the
# identity as the flow, z = x and log p(x) is the mixture's own log density.
MEANS = np.array([[-2.0, 0.0], [2.0, 0.0]])
SCALES = np.ones((2, 2))


def mixture_outputs(z: np.ndarray) -> dict:
  """The model's outputs for the identity flow: log p(x) [N], logits [N, 2], z."""
  logits = np.stack([np.log(0.5) + multivariate_normal(m, np.eye(2)).logpdf(z)
                     for m in MEANS], axis=1)
  return {"log_px": scipy.special.logsumexp(logits, axis=1), "logits": logits, "z": z}


def test_outlier_scores_match_their_formulas_on_a_known_mixture():
  z = np.array([[-2.0, 0.0], [0.0, 0.0], [2.0, 3.0], [10.0, -10.0]])
  out = mixture_outputs(z)
  ref = mixture_outputs(np.random.default_rng(0).normal(size=(500, 2)) + MEANS[[0, 1] * 250])
  common = dict(**out, means=MEANS, scales=SCALES, reference_log_px=ref["log_px"])
  np.testing.assert_allclose(novelty.outlier_scores("neg_log_px", **common), -out["log_px"])
  m, s = ref["log_px"].mean(), ref["log_px"].std()
  np.testing.assert_allclose(novelty.outlier_scores("typicality", **common),
                             np.abs(out["log_px"] - m) / s)
  # Squared distance to the nearest mean: 0, 4, 9, 8^2 + 10^2.
  np.testing.assert_allclose(novelty.outlier_scores("mahalanobis", **common),
                             [0.0, 4.0, 9.0, 164.0])
  # The midpoint is a coin flip; the class mean is all but certain.
  max_prob = novelty.outlier_scores("max_prob", **common)
  np.testing.assert_allclose(max_prob[1], 0.5, atol=1e-12)
  assert max_prob[0] < 1e-3
  # Every density-based score ranks the far point the most unusual, the mean the least.
  for kind in ("neg_log_px", "typicality", "mahalanobis"):
    scores = novelty.outlier_scores(kind, **common)
    assert np.argmax(scores) == 3, kind
  # A point the mixture finds too likely is atypical too: only typicality sees it.
  too_likely = {k: np.full_like(v, 1.0) if k == "log_px" else v for k, v in out.items()}
  assert novelty.outlier_scores("typicality", **{**common, **too_likely})[0] > 2.0
  # -log p = -1 is below the reference rows' mean -log p: the plain score calls it familiar.
  assert novelty.outlier_scores("neg_log_px", **{**common, **too_likely})[0] < -m


def test_mahalanobis_uses_each_class_scale():
  z = np.array([[0.0, 3.0]])
  d = novelty.mahalanobis(z, np.zeros((2, 2)), np.array([[1.0, 3.0], [3.0, 1.0]]))
  np.testing.assert_allclose(d, [[1.0, 9.0]])


def test_reject_threshold_is_the_reference_quantile():
  ref = np.arange(100.0)  # scores 0..99
  t = novelty.reject_threshold(ref, 0.05)
  assert (ref > t).sum() == 4
  assert (ref >= t).sum() == 5
  assert novelty.reject_threshold(ref, 0.0) == np.inf
  for rate in (-0.1, 1.0):
    with pytest.raises(ValueError, match="reject_rate"):
      novelty.reject_threshold(ref, rate)
  with pytest.raises(ValueError, match="typicality score needs"):
    novelty.outlier_scores("typicality", log_px=np.zeros(3))
  with pytest.raises(ValueError, match="not one of"):
    novelty.outlier_scores("likelihood_ratio", log_px=np.zeros(3))


def test_query_rules_pick_the_known_rows():
  # Candidates: 5 near the boundary x = 0 at y = 0 (ambiguous, dense), 5 on the boundary far
  # out at y = +-6 (ambiguous, rare), and 20 deep inside the classes.
  rng = np.random.default_rng(1)
  boundary = np.c_[rng.uniform(-0.05, 0.05, 5), rng.uniform(-0.5, 0.5, 5)]
  far = np.c_[np.zeros(5), np.array([-7.0, -6.0, 6.0, 6.5, 7.0])]
  inside = MEANS[np.arange(20) % 2] + rng.normal(scale=0.3, size=(20, 2))
  z = np.concatenate([boundary, far, inside])
  out = dict(**mixture_outputs(z), means=MEANS, scales=SCALES)
  entropy_picks = novelty.query_indices("entropy", 10, **out)
  assert set(entropy_picks) == set(range(10))  # all the ambiguous rows, dense or not
  assert set(novelty.query_indices("density_entropy", 5, **out)) == set(range(5))
  assert set(novelty.query_indices("latent_distance", 5, **out)) == set(range(5, 10))
  # Eight copies of density_entropy's best row: it takes copies only, the diverse rule one
  # copy and four other rows.
  best = z[np.argmax(novelty.query_scores("density_entropy", **out))]
  dup = np.concatenate([np.repeat(best[None], 8, axis=0), z])
  out = dict(**mixture_outputs(dup), means=MEANS, scales=SCALES)
  assert set(novelty.query_indices("density_entropy", 5, **out)) <= set(range(8))
  picks = novelty.query_indices("diverse", 5, **out, seed=0)
  assert len(set(picks)) == 5
  assert len(set(picks) & set(range(8))) <= 1
  assert len({tuple(row) for row in dup[picks]}) == 5
  for n in (0, 39, 2.0, True):
    with pytest.raises(ValueError, match="must be an integer in"):
      novelty.query_indices("entropy", n, **out)


# ----------------------------------------------------------------------------- the estimator

@pytest.fixture(scope="module")
def fitted_with_reference():
  # 400 rows, so 10% of the unlabelled rows (39) are held out and become the reference.
  X, y_semi, _ = gaussian_table(n=400)
  return FlowGMMClassifier(random_state=0, **TINY).fit(X, y_semi), X


def test_estimator_rejects_far_rows_and_about_the_rate_of_familiar_ones(fitted_with_reference):
  clf, X = fitted_with_reference
  assert clf.outlier_reference_rows_ == "held_out"
  assert all(len(v) == 39 for v in clf.outlier_reference_.values())
  new_X, _, _ = gaussian_table(n=2000, seed=5)  # fresh rows of the training distribution
  far = new_X[:200] + np.array([0.0, 2.0, 30.0])  # 10 standard deviations off in feature 2
  for kind in novelty.OUTLIER_SCORES[:3]:
    scores = clf.outlier_score(np.concatenate([new_X, far]), kind)
    assert roc_auc_score(np.r_[np.zeros(2000), np.ones(200)], scores) > 0.99, kind
  predicted = clf.predict(np.concatenate([new_X, far]), reject_rate=0.1)
  rejected = predicted == -1
  assert 0.03 < rejected[:2000].mean() < 0.25  # about 10%: 39 reference rows are few
  assert rejected[2000:].mean() > 0.99
  kept = ~rejected[:2000]
  np.testing.assert_array_equal(predicted[:2000][kept], clf.predict(new_X)[kept])
  np.testing.assert_allclose(clf.outlier_score(new_X, "neg_log_px"), -clf.score_samples(new_X),
                             rtol=1e-9)
  # A string reject label, and string classes with the default -1.
  assert (clf.predict(far, reject_rate=0.1, reject_label="unknown") == "unknown").all()


def test_estimator_without_held_out_rows_uses_training_rows(fitted_with_reference):
  _, X = fitted_with_reference
  y = np.where(np.arange(len(X)) < 10, np.arange(len(X)) % 2, -1)
  clf = FlowGMMClassifier(random_state=0, holdout_fraction=0.0, **TINY).fit(X, y)
  assert clf.outlier_reference_rows_ == "training"
  assert len(clf.outlier_reference_["neg_log_px"]) == len(X)
  t = clf.reject_threshold(0.1)
  assert (clf.outlier_score(X) > t).mean() == pytest.approx(0.1, abs=0.01)


def test_estimator_query_returns_distinct_candidate_rows(fitted_with_reference):
  clf, X = fitted_with_reference
  for rule in novelty.QUERY_RULES:
    picks = clf.query(X, 7, rule=rule)
    assert picks.shape == (7,), rule
    assert len(set(picks)) == 7, rule
    assert picks.max() < len(X), rule
  # Entropy's picks are the rows whose flow probabilities (the rules read the flow alone,
  # not its average with the forest) are the most even.
  logits = clf.model_.logits(clf._standardized(X), preprocessed=True)
  order = np.argsort(np.abs(logits[:, 0] - logits[:, 1]), kind="stable")
  np.testing.assert_array_equal(np.sort(clf.query(X, 7, rule="entropy")), np.sort(order[:7]))
  with pytest.raises(ValueError, match="rule='nearest' is not one of"):
    clf.query(X, 3, rule="nearest")


def test_trained_model_typicality_needs_reference_rows(fitted_with_reference):
  clf, X = fitted_with_reference
  u = clf._standardized(X)
  model = clf.model_
  with pytest.raises(ValueError, match="pass reference="):
    model.outlier_score(u[:], "typicality", preprocessed=True)
  scores = model.outlier_score(u[:], "typicality", reference=u[:50], preprocessed=True)
  ref = model.log_prob(u[:50], preprocessed=True)
  np.testing.assert_allclose(
      scores, np.abs(model.log_prob(u[:], preprocessed=True) - ref.mean()) / ref.std(),
      rtol=1e-5, atol=1e-6)
  # The default is the latent distance.
  np.testing.assert_array_equal(model.outlier_score(u[:], preprocessed=True),
                                model.outlier_score(u[:], "mahalanobis", preprocessed=True))
  np.testing.assert_allclose(model.outlier_score(u[:], "neg_log_px", preprocessed=True),
                             -model.log_prob(u[:], preprocessed=True), rtol=1e-6)
