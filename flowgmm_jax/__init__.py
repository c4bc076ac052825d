"""flowgmm_jax: FlowGMM (Izmailov et al., ICML 2020) in JAX/Flax.

Forward is always data -> latent. Public names only; see the submodules for everything else.
"""

from flowgmm_jax import bijectors
from flowgmm_jax import data
from flowgmm_jax import models
from flowgmm_jax.estimator import FlowGMMClassifier
from flowgmm_jax.flowgmm import FlowGMM
from flowgmm_jax.losses import bits_per_dim, consistency_nll, semi_supervised_nll
from flowgmm_jax.prior import GaussianMixturePrior

__version__ = "0.1.0"

__all__ = [
    "bijectors", "data", "models", "FlowGMM", "FlowGMMClassifier", "GaussianMixturePrior", "semi_supervised_nll",
    "consistency_nll", "bits_per_dim", "train_and_evaluate", "load",
]


def train_and_evaluate(config, workdir):
  """Runs the experiment in ``config`` (see configs/); imported lazily to keep import light."""
  from flowgmm_jax.training import train_and_evaluate as _run
  return _run(config, workdir)


def load(workdir, step=None, **kwargs):
  """The trained model of the run in ``workdir`` (see flowgmm_jax/trained.py)."""
  from flowgmm_jax.trained import load as _load
  return _load(workdir, step, **kwargs)
