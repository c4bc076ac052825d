"""FlowGMM: a flow (data -> latent) with a Gaussian-mixture prior on the latent.

    log p(x | y) = log N(f(x); mu_y, Sigma_y) + log|det J_f(x)|
    log p(x)     = logsumexp_k [log pi_k + log N(f(x); mu_k, Sigma_k)] + log|det J_f(x)|
    p(y | x)     = softmax_k [log pi_k + log N(f(x); mu_k, Sigma_k)]

For 8-bit images the flow's input is ``logit(alpha + (1 - 2 alpha) (x + u) / 256)`` with
dequantisation noise ``u`` passed in by the caller; the preprocessing log-det, including the
``-D log 256`` term, is part of ``log_det``, so ``-(log p(x)) / (D log 2)`` is bits/dim of the
8-bit data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flowgmm_jax import models
from flowgmm_jax.bijectors import Logit, dequantize_logit
from flowgmm_jax.prior import GaussianMixturePrior

Array = jax.Array


def _on_host(*arrays) -> bool:
  """Whether every input is a host value (numpy or Python), computed in numpy at its own
  precision (jnp would round float64 to float32 unless x64 is on)."""
  return not any(isinstance(a, (jax.Array, jax.core.Tracer)) for a in arrays)


def log_px(class_log_joint: Array, log_det: Array) -> Array:
  """log p(x) = logsumexp_k [log pi_k + log N(f(x); mu_k, Sigma_k)] + log|det J_f(x)|,
  ``[B, K], [B] -> [B]``: the one place this formula is written. Numpy inputs give numpy
  (at their own precision), jax inputs jax."""
  if _on_host(class_log_joint, log_det):
    import scipy.special
    return scipy.special.logsumexp(np.asarray(class_log_joint), axis=-1) + np.asarray(log_det)
  return jax.nn.logsumexp(class_log_joint, axis=-1) + log_det


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
  scale = int(num_dims) * math.log(2.0)
  return np.asarray(nll_nats) / scale if _on_host(nll_nats) else jnp.asarray(nll_nats) / scale


class FlowGMM(nn.Module):
  """Flow + GMM prior as one Linen module. Forward (``__call__``) is data -> latent.

  Attributes:
    flow: a flow module with ``__call__(x, train) -> (z [B, D], log_det [B])`` and
      ``inverse(z, train) -> x``.
    prior: a ``GaussianMixturePrior`` over ``z``.
    dequantize: if True, inputs are 8-bit pixel values (floats in 0..255) and are mapped
      through Dequantize + Logit before the flow.
    logit_alpha: the logit transform's alpha (0.05 as in RealNVP / FlowGMM).
  """
  flow: nn.Module
  prior: GaussianMixturePrior
  dequantize: bool = False
  logit_alpha: float = 0.05

  @classmethod
  def from_config(cls, config, input_shape: Sequence[int], num_classes: int, *, image: bool,
                  bn_axis_name: str | None = None) -> FlowGMM:
    """FlowGMM from a config's ``model`` and ``prior`` sections: the flow
    (``models.build``) for inputs of ``input_shape`` (no batch axis), a
    ``GaussianMixturePrior`` with ``num_classes`` components, and for 8-bit images
    (``image``) dequantisation. ``bn_axis_name``: see ``models.build``."""
    dim = int(math.prod(input_shape))
    prior = GaussianMixturePrior.from_config(config.prior, num_classes, dim, image=image)
    flow = models.build(config.model, input_shape, bn_axis_name=bn_axis_name,
                        compute_dtype=config.get("compute_dtype", "float32"))
    return cls(flow=flow, prior=prior, dequantize=image)

  def _preprocess(self, noise, x):
    if noise is None:
      noise = jnp.full_like(x, 0.5)  # midpoint dequantisation: deterministic evaluation
    return dequantize_logit(noise, self.logit_alpha)

  def __call__(self, x: jax.Array, noise: jax.Array | None = None, train: bool = False,
               mask: jax.Array | None = None):
    """Data -> latent.

    Args:
      x: [B, *input_shape] data (8-bit pixel values as floats when ``dequantize``).
      noise: [B, *input_shape] dequantisation noise in [0, 1); None means 0.5.
      train: BatchNorm batch statistics (with ``mutable=['batch_stats']``) and dropout.
      mask: [B] bool, the rows BatchNorm's batch statistics count (False: padding rows,
        which then change neither them nor the running averages); None: every row.

    Returns:
      z [B, D], log_det [B] (log|det dz/dx| including preprocessing),
      class_log_joint [B, K] = log pi_k + log N(z; mu_k, Sigma_k).
    """
    x = x.astype(jnp.float32) if not jnp.issubdtype(x.dtype, jnp.floating) else x
    log_det = jnp.zeros(x.shape[:1], x.dtype)
    if self.dequantize:
      x, log_det = self._preprocess(noise, x).forward_and_log_det(x)
    z, flow_log_det = self.flow(x, train=train, mask=mask)
    return z, log_det + flow_log_det, self.prior.class_logits(z)

  def log_prob(self, x, noise=None):
    """log p(x) [B] (eval mode)."""
    _, log_det, class_log_joint = self(x, noise)
    return log_px(class_log_joint, log_det)

  def class_probs(self, x, noise=None):
    """p(y | x) [B, K] (eval mode)."""
    return jax.nn.softmax(self(x, noise)[2], axis=-1)

  def inverse(self, z: jax.Array, train: bool = False) -> jax.Array:
    """Latent -> data. For images returns continuous pixel values in [0, 256)."""
    x = self.flow.inverse(z, train=train)
    if self.dequantize:
      # Undo the logit; the dequantisation noise is unknown, so return (x + u) itself.
      x = jnp.clip(Logit(self.logit_alpha).inverse(x), 0.0, 1.0) * 256.0
    return x

  def sample(self, rng: jax.Array, y: jax.Array) -> jax.Array:
    """Draws x ~ p(x | y) for integer labels ``y: [N]``; returns [N, *input_shape]."""
    return self.inverse(self.prior.sample(rng, y))
