"""The training state: one pytree, replicated on every device, checkpointed whole."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training.

  Attributes:
    step: int32 scalar, the number of optimiser updates done (also the data position: the
      batch sampler is a pure function of (seed, step)).
    params: trainable variables ({'flow': ..., 'prior': ...} when the prior is learnable).
    batch_stats: BatchNorm running statistics.
    fixed: the other variable collections (e.g. {'prior': fixed means and scales}); saved,
      never updated by the optimiser.
    opt_state: the optax state.

  The training key is not part of the state: it is a pure function of ``config.seed``, and
  step ``s`` folds ``s`` into it, so a resumed run draws what the uninterrupted one would.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  fixed: Any
  opt_state: Any

  def variables(self, params=None, batch_stats=None):
    """Variables dict for ``model.apply``."""
    out = {"params": self.params if params is None else params}
    bs = self.batch_stats if batch_stats is None else batch_stats
    if bs:
      out["batch_stats"] = bs
    out.update(self.fixed)
    return out


def create_train_state(variables: dict, tx) -> TrainState:
  """Splits ``model.init`` output into a TrainState and initialises the optimiser."""
  variables = dict(variables)
  params = variables.pop("params")
  batch_stats = variables.pop("batch_stats", {})
  return TrainState(
      step=jnp.asarray(0, jnp.int32), params=params, batch_stats=batch_stats,
      fixed=variables, opt_state=tx.init(params))
