"""Tests for flowgmm_jax.prior.GaussianMixturePrior (values checked against scipy)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from flowgmm_jax.prior import GaussianMixturePrior, tabular_two_class_means, validate_labels


def _fixed_means(means):
  return lambda rng, shape, dtype: jnp.asarray(means, dtype)


def _build(num_classes, dim, covariance, rng, shared_scale=False, **kwargs):
  """A float64 prior with random means, scales and weights written into its variables."""
  means = rng.normal(size=(num_classes, dim)) * 2.0
  prior = GaussianMixturePrior(num_classes=num_classes, dim=dim, covariance=covariance,
                               shared_scale=shared_scale, means_init=_fixed_means(means),
                               param_dtype=jnp.float64, **kwargs)
  variables = prior.init(jax.random.PRNGKey(0), jnp.zeros((1, dim)))
  variables = jax.tree_util.tree_map(lambda a: a, variables)  # plain nested dicts
  num_scales = 1 if shared_scale else num_classes
  width = 1 if covariance == "isotropic" else dim
  log_scales = rng.normal(size=(num_scales, width)) * 0.4
  weight_logits = rng.normal(size=(num_classes,))
  variables["prior"]["log_scales"] = jnp.asarray(log_scales)
  variables["prior"]["weight_logits"] = jnp.asarray(weight_logits)
  sigma = np.broadcast_to(np.exp(log_scales), (num_classes, dim))
  log_w = weight_logits - special.logsumexp(weight_logits)
  return prior, variables, means, sigma, log_w


@pytest.mark.parametrize(("covariance", "shared"), [("isotropic", False), ("isotropic", True),
                                               ("diagonal", False), ("diagonal", True)])
def test_log_probs_match_scipy(x64, covariance, shared):
  rng = np.random.default_rng(0)
  num_classes, dim = 4, 5
  prior, variables, means, sigma, log_w = _build(num_classes, dim, covariance, rng, shared)
  z = rng.normal(size=(7, dim)) * 2.5
  expected = np.stack([stats.multivariate_normal(means[k], np.diag(sigma[k] ** 2)).logpdf(z)
                       for k in range(num_classes)], axis=1)
  if covariance == "diagonal":  # second, independent reference
    expected_diag = np.stack([stats.norm(means[k], sigma[k]).logpdf(z).sum(-1)
                              for k in range(num_classes)], axis=1)
    np.testing.assert_allclose(expected, expected_diag, rtol=1e-12)
  per_class = prior.apply(variables, z, method=prior.log_prob_per_class)
  assert per_class.dtype == jnp.float64
  np.testing.assert_allclose(per_class, expected, rtol=1e-10, atol=1e-10)

  y = np.array([0, 3, 1, 2, 2, 0, 3])
  given = prior.apply(variables, z, y, method=prior.log_prob_given_label)
  np.testing.assert_allclose(given, expected[np.arange(7), y], rtol=1e-10, atol=1e-10)

  joint = expected + log_w
  np.testing.assert_allclose(prior.apply(variables, method=prior.log_weights), log_w, rtol=1e-12)
  np.testing.assert_allclose(prior.apply(variables, z, method=prior.class_logits), joint,
                             rtol=1e-10, atol=1e-10)
  mixture = np.log(sum(np.exp(log_w[k]) * stats.multivariate_normal(
      means[k], np.diag(sigma[k] ** 2)).pdf(z) for k in range(num_classes)))
  np.testing.assert_allclose(prior.apply(variables, z, method=prior.log_prob), mixture,
                             rtol=1e-10, atol=1e-10)
  probs = prior.apply(variables, z, method=prior.class_probs)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-12)
  np.testing.assert_allclose(probs, np.exp(joint - mixture[:, None]), rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(prior.apply(variables, method=prior.scales), sigma, rtol=1e-12)
  np.testing.assert_allclose(prior.apply(variables, method=prior.means), means)


def test_float32_matmul_form_is_accurate_at_cifar_size(x64):
  """float32 expansion ||z||^2 - 2 z.mu + ||mu||^2 vs exact float64, D = 3072, K = 10."""
  rng = np.random.default_rng(1)
  num_classes, dim = 10, 3072
  means = rng.normal(size=(num_classes, dim)) + 5.0   # far from the origin on purpose
  z = means[rng.integers(0, num_classes, 16)] + 0.3 * rng.normal(size=(16, dim))
  sigma = 0.9
  prior = GaussianMixturePrior(num_classes, dim, means_init=_fixed_means(means),
                               scale_init=sigma, param_dtype=jnp.float32)
  variables = prior.init(jax.random.PRNGKey(0), jnp.zeros((1, dim), jnp.float32))
  got = prior.apply(variables, jnp.asarray(z, jnp.float32), method=prior.log_prob_per_class)
  assert got.dtype == jnp.float32
  means32 = np.asarray(means, np.float32).astype(np.float64)
  z32 = np.asarray(z, np.float32).astype(np.float64)
  sq = ((z32[:, None, :] - means32[None]) ** 2).sum(-1)
  expected = -0.5 * sq / sigma**2 - dim * np.log(sigma) - 0.5 * dim * np.log(2 * np.pi)
  # Log-densities are ~1e3..1e4 nats. The uncentred expansion is off by ~0.04 nats here;
  # centring on the means' centroid brings it to ~1e-3.
  np.testing.assert_allclose(np.asarray(got, np.float64), expected, atol=1e-2, rtol=0)


def test_jit_and_gradient_flow(x64):
  rng = np.random.default_rng(2)
  prior = GaussianMixturePrior(3, 4, covariance="diagonal", learn_means=True,
                               learn_scales=True, param_dtype=jnp.float64)
  variables = prior.init(jax.random.PRNGKey(3), jnp.zeros((1, 4)))
  z = jnp.asarray(rng.normal(size=(5, 4)))
  eager = prior.apply(variables, z, method=prior.log_prob)
  jitted = jax.jit(lambda v, x: prior.apply(v, x, method=prior.log_prob))(variables, z)
  np.testing.assert_allclose(eager, jitted, rtol=1e-12)
  # d/dz of log p(z) against central finite differences.
  def f(x):
    return jnp.sum(prior.apply(variables, x, method=prior.log_prob))
  grad = jax.grad(f)(z)
  eps = 1e-6
  direction = jnp.asarray(rng.normal(size=z.shape))
  numeric = (f(z + eps * direction) - f(z - eps * direction)) / (2 * eps)
  np.testing.assert_allclose(jnp.sum(grad * direction), numeric, rtol=1e-6)


def test_sample_statistics():
  means = np.array([[3.0, -2.0, 0.5], [-1.0, 4.0, 2.0]])
  prior = GaussianMixturePrior(2, 3, covariance="diagonal", means_init=_fixed_means(means))
  variables = prior.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))
  sigma = np.array([[0.5, 1.0, 2.0], [1.5, 0.3, 1.0]])
  variables["prior"]["log_scales"] = jnp.log(jnp.asarray(sigma, jnp.float32))
  num = 20000
  y = np.repeat([0, 1], num)
  samples = np.asarray(prior.apply(variables, jax.random.PRNGKey(1), y, method=prior.sample))
  assert samples.shape == (2 * num, 3)
  for k in range(2):
    part = samples[y == k]
    # standard errors: sigma / sqrt(n) ~ 0.014 for the mean, sigma / sqrt(2n) for the std
    assert np.all(np.abs(part.mean(0) - means[k]) < 5 * sigma[k] / np.sqrt(num))
    np.testing.assert_allclose(part.std(0), sigma[k], rtol=0.03)


def test_sample_is_jittable_and_isotropic_scale_used():
  prior = GaussianMixturePrior(3, 50, means_init="multiclass", scale_init=2.0)
  variables = prior.init(jax.random.PRNGKey(0), jnp.zeros((1, 50)))
  y = jnp.array([2] * 400)
  samples = jax.jit(lambda v, k, yy: prior.apply(v, k, yy, method=prior.sample))(
      variables, jax.random.PRNGKey(5), y)
  means = prior.apply(variables, method=prior.means)
  np.testing.assert_allclose(np.std(np.asarray(samples - means[2])), 2.0, rtol=0.03)


def test_mean_initialisers_geometry():
  key = jax.random.PRNGKey(0)
  two = tabular_two_class_means(key, 768)
  assert two.shape == (2, 768)
  np.testing.assert_allclose(np.linalg.norm(two[0] - two[1]), 7.5, rtol=1e-5)
  np.testing.assert_allclose(two[1], -two[0])
  assert np.count_nonzero(np.asarray(two[0])) == 768   # random direction, all dims
  np.testing.assert_allclose(np.linalg.norm(tabular_two_class_means(key, 5, 3.0)[0]), 1.5,
                             rtol=1e-6)

  # The module's string options use the same geometry and defaults.
  def init_means(**kwargs):
    prior = GaussianMixturePrior(dim=kwargs.pop("dim"), **kwargs)
    variables = prior.init(jax.random.PRNGKey(1), jnp.zeros((1, prior.dim)))
    return np.asarray(variables["prior"]["means"])

  m = init_means(num_classes=2, dim=20, means_init="tabular_two_class")
  np.testing.assert_allclose(np.linalg.norm(m[0] - m[1]), 7.5, rtol=1e-5)
  m = init_means(num_classes=2, dim=20, means_init="tabular")
  np.testing.assert_allclose(np.linalg.norm(m[0] - m[1]), 7.5, rtol=1e-5)
  m = init_means(num_classes=6, dim=2000, means_init="tabular")
  np.testing.assert_allclose(m.std(), 0.56, rtol=0.03)
  m = init_means(num_classes=4, dim=768, means_init="multiclass")
  np.testing.assert_allclose(m.std(), 0.56, rtol=0.03)
  m = init_means(num_classes=10, dim=3072, means_init="image", means_scale=0.5)
  np.testing.assert_allclose(m.std(), 0.5, rtol=0.02)
  m = init_means(num_classes=10, dim=3072, means_init="image")
  np.testing.assert_allclose(m.std(), 1.0, rtol=0.02)
  fixed = np.arange(6.0).reshape(2, 3)
  np.testing.assert_allclose(init_means(num_classes=2, dim=3, means_init=fixed), fixed)


def test_learnable_vs_fixed_collections():
  z = jnp.ones((2, 4))
  fixed = GaussianMixturePrior(3, 4)
  variables = fixed.init(jax.random.PRNGKey(0), z)
  assert "params" not in variables
  assert set(variables["prior"]) == {"means", "log_scales", "weight_logits"}
  assert variables["prior"]["log_scales"].shape == (3, 1)

  learn = GaussianMixturePrior(3, 4, covariance="diagonal", shared_scale=True,
                               learn_means=True, learn_weights=True)
  variables = learn.init(jax.random.PRNGKey(0), z)
  assert set(variables["params"]) == {"means", "weight_logits"}
  assert set(variables["prior"]) == {"log_scales"}
  assert variables["prior"]["log_scales"].shape == (1, 4)

  # Gradients only exist for 'params'; 'prior' variables are passed as constants.
  def loss(params):
    return -jnp.sum(learn.apply({"params": params, "prior": variables["prior"]}, z,
                                method=learn.log_prob))
  grads = jax.grad(loss)(variables["params"])
  assert set(grads) == {"means", "weight_logits"}
  assert float(jnp.abs(grads["means"]).sum()) > 0

  # Same rng -> same means whichever collection they live in.
  np.testing.assert_allclose(fixed.init(jax.random.PRNGKey(0), z)["prior"]["means"],
                             GaussianMixturePrior(3, 4, learn_means=True).init(
                                 jax.random.PRNGKey(0), z)["params"]["means"])


def test_errors():
  prior = GaussianMixturePrior(3, 4)
  variables = prior.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))
  with pytest.raises(ValueError, match=r"\[B, 4\]"):
    prior.apply(variables, jnp.zeros((2, 5)), method=prior.log_prob)
  with pytest.raises(ValueError, match=r"\[B, 4\]"):
    prior.apply(variables, jnp.zeros((2, 2, 2)), method=prior.class_logits)
  with pytest.raises(ValueError, match="labels must be"):
    prior.apply(variables, jnp.zeros((2, 4)), jnp.array([0, 3]),
                method=prior.log_prob_given_label)
  with pytest.raises(ValueError, match="labels must be"):
    prior.apply(variables, jax.random.PRNGKey(0), jnp.array([-1]), method=prior.sample)
  with pytest.raises(ValueError, match="covariance"):
    GaussianMixturePrior(3, 4, covariance="full").init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))
  with pytest.raises(ValueError, match="num_classes=2"):
    GaussianMixturePrior(3, 4, means_init="tabular_two_class").init(
        jax.random.PRNGKey(0), jnp.zeros((1, 4)))
  with pytest.raises(ValueError, match="shape"):
    GaussianMixturePrior(3, 4, means_init=np.zeros((2, 4))).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 4)))
  validate_labels(np.array([-1, 0, 2]), 3)
  with pytest.raises(ValueError, match="labels must be"):
    validate_labels(np.array([-1, 0, 2]), 3, allow_unlabeled=False)
  with pytest.raises(ValueError, match="labels must be"):
    validate_labels(np.array([-2]), 3)


def test_circle_means_geometry():
  from flowgmm_jax.prior import circle_means
  means = np.asarray(circle_means(5, 3, r=5.5))
  np.testing.assert_allclose(np.linalg.norm(means, axis=1), 5.5, rtol=1e-6)
  np.testing.assert_allclose(means[:, 2], 0.0)
  gaps = np.linalg.norm(means - np.roll(means, 1, axis=0), axis=1)
  np.testing.assert_allclose(gaps, 2 * 5.5 * np.sin(np.pi / 5), rtol=1e-5)  # equally spaced
  prior = GaussianMixturePrior(num_classes=5, dim=3, means_init="circle", means_scale=5.5)
  variables = prior.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))
  np.testing.assert_allclose(np.asarray(prior.apply(variables, method=prior.means)), means)
