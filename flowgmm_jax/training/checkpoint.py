"""Orbax checkpoints of the whole TrainState, in ``workdir/checkpoints``.

Each checkpoint holds two items:
  * ``state``: the TrainState pytree (params incl. learnable prior, optimiser state, batch
    stats, fixed prior variables such as the class means, step and RNG key). The step is
    also the data position: batches are a pure function of (data seed, step).
  * ``meta``: JSON with the model/data/prior config the state was made with, so that a
    resume under an incompatible config fails with a clear message instead of a shape error.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from flowgmm_jax.training.state import TrainState


class IncompatibleCheckpointError(ValueError):
  """A checkpoint exists in the workdir but was written by a different model or data setup."""


def _describe_mismatch(saved: Any, expected: Any, path: str = "") -> Optional[str]:
  if isinstance(expected, dict) and isinstance(saved, dict):
    for k in sorted(set(expected) | set(saved)):
      if k not in saved:
        return f"{path}/{k} is missing in the checkpoint"
      if k not in expected:
        return f"{path}/{k} is in the checkpoint but not in this config"
      msg = _describe_mismatch(saved[k], expected[k], f"{path}/{k}")
      if msg:
        return msg
    return None
  return None if saved == expected else f"{path}: checkpoint has {saved!r}, config has {expected!r}"


class Checkpointer:
  """Saves and restores TrainStates with orbax's CheckpointManager."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3, meta: Optional[dict] = None):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.meta = json.loads(json.dumps(meta or {}))  # plain JSON types only
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_names=("state", "meta"))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, state: TrainState, *, force: bool = False) -> None:
    step = int(jax.device_get(state.step))
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(self.meta)), force=force)

  def restore(self, template: TrainState) -> Optional[TrainState]:
    """Restores the latest checkpoint onto ``template``'s structure/sharding, or None."""
    step = self.manager.latest_step()
    if step is None:
      return None
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    mismatch = _describe_mismatch(meta, self.meta)
    if mismatch:
      raise IncompatibleCheckpointError(
          f"The checkpoint at {self.directory} (step {step}) was written with a different "
          f"model/data configuration: {mismatch}. Resume with the same config, or start a "
          f"new run with another --workdir (or delete {self.directory}).")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))["state"]
    except (ValueError, KeyError, TypeError) as e:
      raise IncompatibleCheckpointError(
          f"The checkpoint at {self.directory} (step {step}) does not fit this model: {e}. "
          f"Start a new run with another --workdir (or delete {self.directory}).") from e
    return restored

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
