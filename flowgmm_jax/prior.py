"""Gaussian-mixture latent prior of FlowGMM, one component per class.

The flow f maps data to latent (forward = data -> latent, always); this module is the
density on the latent side:

    p(z) = sum_k pi_k N(z; mu_k, Sigma_k),     p(y = k | z) = pi_k N(z; mu_k, Sigma_k) / p(z).

Covariances are closed form only, never a dense D x D matrix:

    covariance="isotropic":  Sigma_k = sigma_k^2 I      log-scales shaped [K, 1]
    covariance="diagonal":   Sigma_k = diag(sigma_k^2)  log-scales shaped [K, D]
    shared_scale=True:       one scale (or one diagonal) for all classes: [1, 1] / [1, D]

so every log-density costs O(B*K*D) (two [B, D] x [D, K] matmuls) instead of the original
PyTorch code's K dense Cholesky factors of size D x D built on every call.

Variables (collection 'params' when the matching ``learn_*`` flag is set, otherwise
collection 'prior': stored and checkpointed, but outside 'params' so an optimiser over
'params' never touches them):

    means          [K, D]
    log_scales     [K or 1, 1 or D]   sigma = exp(log_scales)
    weight_logits  [K]                pi = softmax(weight_logits); zeros = uniform

Mean initialisers, as in the original code (github.com/izmailovpavel/flowgmm):

    "image"             mu_k = r * N(0, I), r = means_scale (default 1.0): the original
                        images script's ``--means random --means_r 1``.
    "tabular_two_class" v ~ N(0, I_D); mu_0 = (d/2) v / ||v||, mu_1 = -mu_0, so the two
                        means are antipodal along a random direction using all D dims and
                        ||mu_0 - mu_1|| = d, d = means_scale (default 7.5)
                        (RealNVPTabularWPrior with 2 classes).
    "multiclass"        mu_k = r * N(0, I), r = means_scale (default 0.56 = 0.8 * 0.7,
                        RealNVPTabularWPrior's means_r=.8 times .7 for more than 2 classes).
    "tabular"           "tabular_two_class" if num_classes == 2 else "multiclass".
    callable            means_init(rng, (K, D), param_dtype) -> [K, D].
    array               a fixed [K, D] array (a callable is preferable: it keeps the module
                        hashable).

Typical use::

    prior = GaussianMixturePrior(num_classes=10, dim=3072)
    variables = prior.init(jax.random.PRNGKey(0), jnp.zeros((1, 3072)))
    logits = prior.apply(variables, z, method=prior.class_logits)   # [B, K]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flowgmm_jax.labels import validate_labels

Array = jax.Array

COVARIANCE_TYPES = ("isotropic", "diagonal")
MEANS_INIT_NAMES = ("image", "tabular_two_class", "multiclass", "tabular", "circle")
# The values a config's prior.means_init may take: the initialisers above, and "auto" / "labeled"
# (resolve_means_init).
MEANS_INIT_CHOICES = ("auto", "labeled") + MEANS_INIT_NAMES
DEFAULT_MEANS_SCALE = {"image": 1.0, "multiclass": 0.56, "tabular_two_class": 7.5,
                       "circle": 3.5}

_LOG_2PI = math.log(2.0 * math.pi)
# Full float32 matmuls: on GPUs/TPUs the default precision may use TF32/bf16 passes,
# whose ~1e-3 relative error on z . mu (|z||mu| ~ 3000 for CIFAR) would cost nats.
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------
# Mean initialisers (plain functions, usable without the module).
# ----------------------------------------------------------------------------------------


def tabular_two_class_means(rng: Array, dim: int, distance: float = 7.5,
                            dtype: Any = jnp.float32) -> Array:
  """Two antipodal means ``[2, D]``: ``mu_0 = (distance/2) v/||v||``, ``mu_1 = -mu_0``.

  ``v ~ N(0, I_D)`` gives a uniformly random direction over all D dimensions, and
  ``||mu_0 - mu_1|| = distance`` (7.5 in the original's RealNVPTabularWPrior).
  """
  direction = jax.random.normal(rng, (dim,), dtype)
  direction = direction / jnp.linalg.norm(direction)
  mu_0 = 0.5 * distance * direction
  return jnp.stack([mu_0, -mu_0])


def circle_means(num_classes: int, dim: int, r: float = 3.5, dtype: Any = jnp.float32) -> Array:
  """K means equally spaced on a circle of radius r in the first two latent dimensions
  (zero elsewhere), ``[K, D]``: the original's 2-D toy experiments (``get_means``; r = 3.5
  for two classes, 5.5 for 3 and 5). Deterministic."""
  if dim < 2:
    raise ValueError(f"means_init='circle' needs dim >= 2, got {dim}.")
  phis = jnp.linspace(0.0, 2.0 * jnp.pi, num_classes + 1)[:-1]
  ring = r * jnp.stack([jnp.cos(phis), jnp.sin(phis)], axis=1)
  return jnp.zeros((num_classes, dim), dtype).at[:, :2].set(ring.astype(dtype))


def resolve_means_init(name: str, *, image: bool) -> str:
  """The initialiser behind a config's ``prior.means_init``.

  "auto" is the paper's choice for the data: "image" for images, else "tabular" (antipodal
  means for 2 classes, "multiclass" otherwise). "labeled" starts from "multiclass"; training
  then moves each mean to its class's labelled latent centroid
  (``place_means_at_centroids``). Other names are returned as they are.
  """
  if name == "labeled":
    return "multiclass"
  if name == "auto":
    return "image" if image else "tabular"
  return name


def _is_concrete(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer)


# ----------------------------------------------------------------------------------------
# The module.
# ----------------------------------------------------------------------------------------


class GaussianMixturePrior(nn.Module):
  """Class-conditional Gaussian mixture on the latent z = f(x) (f: data -> latent).

  Attributes:
    num_classes: K, one Gaussian per class.
    dim: D, the flat latent dimension; every z is [B, D].
    covariance: "isotropic" (sigma_k^2 I) or "diagonal" (diag(sigma_k^2)).
    shared_scale: one scale (vector) shared by all classes instead of one per class.
    means_init: "image" | "tabular_two_class" | "multiclass" | "tabular" | "circle" | callable
      ``(rng, (K, D), dtype) -> [K, D]`` | a [K, D] array. See the module docstring.
    means_scale: r for "image"/"multiclass" (defaults 1.0 / 0.56); the distance between
      the two means for "tabular_two_class" (default 7.5); the radius for "circle"
      (default 3.5). Ignored otherwise.
    scale_init: initial sigma (standard deviation) of every component. The original's
      image code uses 1.0; its tabular code passes ``1/cov_std`` through a softplus, i.e.
      sigma = softplus(1.0) = 1.3133 for its default cov_std = 1.
    learn_means, learn_scales, learn_weights: put that variable in 'params' (trained)
      instead of 'prior' (fixed). The original trains none of them by default.
    param_dtype: dtype of the variables (float64 in tests).
  """

  num_classes: int
  dim: int
  covariance: str = "isotropic"
  shared_scale: bool = False
  means_init: str | Callable[..., Array] | Any = "image"
  means_scale: float | None = None
  scale_init: float = 1.0
  learn_means: bool = False
  learn_scales: bool = False
  learn_weights: bool = False
  param_dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, prior_config, num_classes: int, dim: int, *,
                  image: bool) -> GaussianMixturePrior:
    """The prior described by a config's ``prior`` section, for ``num_classes`` classes and
    ``dim``-dimensional latents of image (``image``) or other data. ``means_init`` goes
    through ``resolve_means_init``; ``means_scale`` None is the paper's value."""
    p = prior_config
    return cls(num_classes=num_classes, dim=dim, covariance=p.covariance,
               means_init=resolve_means_init(p.means_init, image=image),
               means_scale=p.means_scale, learn_means=p.learn_means,
               learn_scales=p.learn_scales, learn_weights=p.learn_weights)

  # -- variables -------------------------------------------------------------------------

  def setup(self):
    if self.num_classes < 1 or self.dim < 1:
      raise ValueError(f"num_classes and dim must be positive, got num_classes="
                       f"{self.num_classes}, dim={self.dim}.")
    if self.covariance not in COVARIANCE_TYPES:
      raise ValueError(f"covariance must be one of {COVARIANCE_TYPES}, got "
                       f"{self.covariance!r}; dense covariances are not supported.")
    if not self.scale_init > 0:
      raise ValueError(f"scale_init is a standard deviation and must be > 0, got "
                       f"{self.scale_init}.")
    num_scales = 1 if self.shared_scale else self.num_classes
    scale_width = 1 if self.covariance == "isotropic" else self.dim
    log_scale_init = math.log(self.scale_init)

    self._means = self._make_variable(
        self.learn_means, "means", self._init_means, needs_rng=True)
    self._log_scales = self._make_variable(
        self.learn_scales, "log_scales",
        lambda: jnp.full((num_scales, scale_width), log_scale_init, self.param_dtype))
    self._weight_logits = self._make_variable(
        self.learn_weights, "weight_logits",
        lambda: jnp.zeros((self.num_classes,), self.param_dtype))

  def _make_variable(self, learnable: bool, name: str, init: Callable[..., Array],
                     needs_rng: bool = False) -> nn.Variable | Array:
    """'params' variable if learnable, else a 'prior' variable (no gradient flows)."""
    if learnable:
      if needs_rng:
        return self.param(name, lambda rng: init(rng))
      return self.param(name, lambda rng: init())
    if needs_rng:
      return self.variable("prior", name, lambda: init(self.make_rng("params")))
    return self.variable("prior", name, init)

  def _init_means(self, rng: Array) -> Array:
    shape = (self.num_classes, self.dim)
    init = self.means_init
    if isinstance(init, str):
      if init not in MEANS_INIT_NAMES:
        raise ValueError(f"means_init must be one of {MEANS_INIT_NAMES}, a callable "
                         f"or a [K, D] array, got {init!r}.")
      if init == "tabular":
        init = "tabular_two_class" if self.num_classes == 2 else "multiclass"
      scale = DEFAULT_MEANS_SCALE[init] if self.means_scale is None else self.means_scale
      if init == "tabular_two_class":
        if self.num_classes != 2:
          raise ValueError(f"means_init='tabular_two_class' needs num_classes=2, got "
                           f"{self.num_classes}; use 'multiclass' or 'tabular'.")
        return tabular_two_class_means(rng, self.dim, scale, self.param_dtype)
      if init == "circle":
        return circle_means(self.num_classes, self.dim, scale, self.param_dtype)
      return scale * jax.random.normal(rng, shape, self.param_dtype)
    if callable(init):
      means = jnp.asarray(init(rng, shape, self.param_dtype), self.param_dtype)
    else:
      means = jnp.asarray(init, self.param_dtype)
    if means.shape != shape:
      raise ValueError(f"means_init produced means of shape {means.shape}, expected "
                       f"(num_classes, dim) = {shape}.")
    return means

  @staticmethod
  def _value(variable: nn.Variable | Array) -> Array:
    return variable.value if isinstance(variable, nn.Variable) else variable

  # -- read-outs ---------------------------------------------------------------------------

  def __call__(self, z: Array) -> Array:
    """Same as ``class_logits``; lets ``prior.init(rng, z)`` create every variable."""
    return self.class_logits(z)

  def means(self) -> Array:
    """The component means mu, ``[K, D]``."""
    return self._value(self._means)

  def log_scales(self) -> Array:
    """log sigma, broadcastable to ``[K, D]``: [K|1, 1] isotropic, [K|1, D] diagonal."""
    return self._value(self._log_scales)

  def scales(self) -> Array:
    """The standard deviations sigma_kd, broadcast to ``[K, D]``."""
    return jnp.broadcast_to(jnp.exp(self.log_scales()), (self.num_classes, self.dim))

  def log_weights(self) -> Array:
    """log pi_k = log_softmax(weight_logits), ``[K]``."""
    return jax.nn.log_softmax(self._value(self._weight_logits))

  # -- densities ---------------------------------------------------------------------------

  def _check_z(self, z: Array) -> Array:
    z = jnp.asarray(z)
    if z.ndim != 2 or z.shape[-1] != self.dim:
      raise ValueError(f"z must be a flat latent of shape [B, {self.dim}], got "
                       f"{z.shape}; reshape the flow output with z.reshape(B, -1).")
    return z

  def log_prob_per_class(self, z: Array) -> Array:
    """log N(z; mu_k, Sigma_k) for every class, ``z: [B, D] -> [B, K]``.

    Computed by expanding the squared Mahalanobis distance into matmuls,

        sum_d (z_d - mu_kd)^2 / s_kd^2
          = (z^2) @ (1/s^2)^T - 2 z @ (mu/s^2)^T + sum_d mu_kd^2 / s_kd^2,

    (for isotropic covariances: (||z||^2 - 2 z.mu_k + ||mu_k||^2) / s_k^2), i.e. O(B*K*D)
    work and no [B, K, D] intermediate. Numerical care: z and mu are first shifted by the
    centroid of the means (distances are shift invariant, and it shrinks the terms that
    cancel), matmuls run at HIGHEST precision, and the distance is clamped at 0 against
    round-off. In float32 the remaining error is ~eps * (||z - c||^2 + ||mu - c||^2) / s^2,
    i.e. ~1e-3 nats for CIFAR-sized latents whose log-densities are ~1e4 nats.
    """
    z = self._check_z(z)
    means = self.means()
    log_scales = self.log_scales()
    dtype = jnp.result_type(z.dtype, means.dtype)
    z, means, log_scales = (a.astype(dtype) for a in (z, means, log_scales))

    center = jax.lax.stop_gradient(jnp.mean(means, axis=0))
    z_c = z - center
    means_c = means - center
    inv_var = jnp.exp(-2.0 * log_scales)                       # [K|1, 1|D]

    if self.covariance == "isotropic":
      inv_var_k = jnp.broadcast_to(inv_var[:, 0], (self.num_classes,))       # [K]
      sq_dist = (jnp.sum(z_c**2, axis=-1, keepdims=True)
                 - 2.0 * jnp.matmul(z_c, means_c.T, precision=_HIGHEST)
                 + jnp.sum(means_c**2, axis=-1)[None, :])
      mahalanobis = jnp.maximum(sq_dist, 0.0) * inv_var_k[None, :]
      log_det_cov = self.dim * jnp.broadcast_to(log_scales[:, 0], (self.num_classes,))
    else:
      inv_var_kd = jnp.broadcast_to(inv_var, (self.num_classes, self.dim))   # [K, D]
      mahalanobis = (jnp.matmul(z_c**2, inv_var_kd.T, precision=_HIGHEST)
                     - 2.0 * jnp.matmul(z_c, (means_c * inv_var_kd).T, precision=_HIGHEST)
                     + jnp.sum(means_c**2 * inv_var_kd, axis=-1)[None, :])
      mahalanobis = jnp.maximum(mahalanobis, 0.0)
      log_det_cov = jnp.broadcast_to(jnp.sum(log_scales, axis=-1), (self.num_classes,))
    # log_det_cov is sum_d log s_kd = 0.5 log|Sigma_k|.
    return -0.5 * mahalanobis - log_det_cov[None, :] - 0.5 * self.dim * _LOG_2PI

  def log_prob_given_label(self, z: Array, y: Array) -> Array:
    """log N(z; mu_y, Sigma_y) (no log pi_y), ``z: [B, D], y: [B] int -> [B]``.

    Computed directly from z - mu_y (O(B*D), exact). Labels must be in [0, K); they are
    checked when concrete (outside jit); inside jit out-of-range labels are clipped by
    the gather, so validate data with ``validate_labels`` beforehand.
    """
    z = self._check_z(z)
    y = jnp.asarray(y)
    if y.shape != z.shape[:1]:
      raise ValueError(f"y must have shape [B] = {z.shape[:1]}, got {y.shape}.")
    if _is_concrete(y):
      validate_labels(np.asarray(y), self.num_classes, allow_unlabeled=False,
                      integer_dtype=True)
    means = self.means()
    log_scales = jnp.broadcast_to(self.log_scales(),
                                  (self.num_classes, self.log_scales().shape[-1]))
    dtype = jnp.result_type(z.dtype, means.dtype)
    diff = (z - means[y]).astype(dtype)
    log_scales_y = log_scales[y].astype(dtype)                 # [B, 1|D]
    mahalanobis = jnp.sum(diff**2 * jnp.exp(-2.0 * log_scales_y), axis=-1)
    log_det_cov = jnp.sum(jnp.broadcast_to(log_scales_y, diff.shape), axis=-1)
    return -0.5 * mahalanobis - log_det_cov - 0.5 * self.dim * _LOG_2PI

  def class_logits(self, z: Array) -> Array:
    """log pi_k + log N(z; mu_k, Sigma_k) = log p(z, y=k), ``[B, D] -> [B, K]``.

    softmax over k gives p(y | x) (the flow's log-det is the same for every k).
    """
    return self.log_weights()[None, :] + self.log_prob_per_class(z)

  def log_prob(self, z: Array) -> Array:
    """Mixture log-density log p(z) = logsumexp_k(log pi_k + log N_k), ``[B]``."""
    return jax.nn.logsumexp(self.class_logits(z), axis=-1)

  def class_probs(self, z: Array) -> Array:
    """p(y = k | z), ``[B, K]``, rows sum to 1."""
    return jax.nn.softmax(self.class_logits(z), axis=-1)

  def sample(self, rng: Array, y: Array) -> Array:
    """Latent samples z ~ N(mu_y, Sigma_y), ``y: [N] int -> [N, D]``.

    Map them to data with the flow's inverse (latent -> data).
    """
    y = jnp.asarray(y)
    if y.ndim != 1:
      raise ValueError(f"y must be a 1-D array of class indices [N], got shape {y.shape}.")
    if _is_concrete(y):
      validate_labels(np.asarray(y), self.num_classes, allow_unlabeled=False,
                      integer_dtype=True)
    means = self.means()
    scales = self.scales()
    noise = jax.random.normal(rng, (y.shape[0], self.dim), means.dtype)
    return means[y] + scales[y] * noise


def place_means_at_centroids(variables: dict, z_labeled: np.ndarray, y_labeled: np.ndarray
                             ) -> dict:
  """``variables`` with each prior mean mu_k moved to the centroid of ``z_labeled`` (the
  latents f(x) of the labelled rows ``[N, D]``, f as initialised) over the rows of class k
  (``y_labeled: [N]``).

  At the start of training the classifier is then the nearest-class-mean rule in the
  latent space, the strongest simple rule with a handful of labels, instead of a random
  assignment that the few labelled rows must first undo. A class without labelled rows
  keeps its initial mean.
  """
  z = np.asarray(z_labeled, np.float64)
  collection = "params" if "means" in variables.get("params", {}).get("prior", {}) else "prior"
  means = np.array(variables[collection]["prior"]["means"], np.float64)
  for k in range(means.shape[0]):
    rows = z[np.asarray(y_labeled) == k]
    if len(rows):
      means[k] = rows.mean(axis=0)
  prior_vars = dict(variables[collection]["prior"])
  # On the host (NumPy): an eager jnp conversion would compile a program of its own.
  prior_vars["means"] = np.asarray(means, variables[collection]["prior"]["means"].dtype)
  return {**variables, collection: {**variables[collection], "prior": prior_vars}}
