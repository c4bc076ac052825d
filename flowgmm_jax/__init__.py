"""flowgmm_jax: FlowGMM (Izmailov et al., ICML 2020) in JAX/Flax.

Forward is always data -> latent. Public names only; see the submodules for everything else.
"""

from flowgmm_jax import bijectors, data, models
from flowgmm_jax.flowgmm import FlowGMM, bits_per_dim
from flowgmm_jax.losses import flowgmm_objective
from flowgmm_jax.prior import GaussianMixturePrior
from flowgmm_jax.trained import load
from flowgmm_jax.training import train_and_evaluate

__version__ = "0.1.0"


def __getattr__(name):
  # The estimator imports scikit-learn, a third of the time `import flowgmm_jax` takes; the
  # command line, the training loop and load() never need it, so it is imported on first use
  # (`from flowgmm_jax import FlowGMMClassifier` and `flowgmm_jax.estimator` work as before).
  if name in ("FlowGMMClassifier", "estimator"):
    import importlib
    estimator = importlib.import_module("flowgmm_jax.estimator")
    return estimator if name == "estimator" else estimator.FlowGMMClassifier
  raise AttributeError(f"module 'flowgmm_jax' has no attribute {name!r}")

__all__ = [
    "bijectors", "data", "models", "FlowGMM", "FlowGMMClassifier", "GaussianMixturePrior",
    "flowgmm_objective", "bits_per_dim", "train_and_evaluate", "load",
]
