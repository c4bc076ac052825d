"""Training: config schema, the rows, the programs, the one loop and the command line's run."""

from flowgmm_jax.training.config import base_config, validate_config
from flowgmm_jax.training.loop import FitResult, fit
from flowgmm_jax.training.run import train_and_evaluate

__all__ = ["base_config", "validate_config", "FitResult", "fit", "train_and_evaluate"]
