"""Training: config schema, state, optimiser, the data-parallel step, the loop and its parts."""

from flowgmm_jax.training.config import base_config, validate_config
from flowgmm_jax.training.loop import FitResult, fit, train_and_evaluate

__all__ = ["base_config", "validate_config", "FitResult", "fit", "train_and_evaluate"]
