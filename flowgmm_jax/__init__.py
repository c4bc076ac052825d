"""flowgmm_jax: FlowGMM (Izmailov et al., ICML 2020) in JAX/Flax.

Forward is always data -> latent. Public names only; see the submodules for everything else.
"""

from flowgmm_jax import bijectors
from flowgmm_jax import data
from flowgmm_jax import models
from flowgmm_jax.estimator import FlowGMMClassifier
from flowgmm_jax.flowgmm import FlowGMM, bits_per_dim
from flowgmm_jax.losses import flowgmm_objective
from flowgmm_jax.prior import GaussianMixturePrior
from flowgmm_jax.trained import load
from flowgmm_jax.training import train_and_evaluate

__version__ = "0.1.0"

__all__ = [
    "bijectors", "data", "models", "FlowGMM", "FlowGMMClassifier", "GaussianMixturePrior",
    "flowgmm_objective", "bits_per_dim", "train_and_evaluate", "load",
]
