"""Orbax checkpoints of the whole TrainState, in ``workdir/checkpoints``.

Each checkpoint holds two items:
  * ``state``: the TrainState pytree (params incl. learnable prior, optimiser state, batch
    stats, fixed prior variables such as the class means, step and RNG key). The step is
    also the data position: batches are a pure function of (data seed, step).
  * ``meta``: JSON with the model/data/prior config the state was made with (and the seed
    and labelled split, and the optimiser), so that a resume under an incompatible config
    fails with a clear message instead of a shape error.

A checkpoint that cannot be read, or holds non-finite numbers, is damaged: ``restore`` warns
in one line and falls back to the newest good one (the damaged ones are moved aside to
``workdir/checkpoints_damaged``). No checkpoint is ever written from a non-finite state.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import sys
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from flowgmm_jax.training.state import TrainState


class IncompatibleCheckpointError(ValueError):
  """A checkpoint exists in the workdir but was written by a different model or data setup."""


class DamagedCheckpointError(ValueError):
  """Checkpoints exist in the workdir but none of them can be read."""


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


def _one_line(e: BaseException, limit: int = 160) -> str:
  """``TypeName: first line of the message``, cut to ``limit`` characters."""
  text = str(e).strip().splitlines()[0] if str(e).strip() else ""
  text = f"{type(e).__name__}: {text}" if text else type(e).__name__
  return text if len(text) <= limit else text[:limit - 3] + "..."


@contextlib.contextmanager
def _quiet():
  """Keeps orbax's (and its event loop's) logging out of the terminal while we probe
  checkpoints that may be damaged; our own one-line messages say what happened."""
  loggers = [logging.getLogger(n) for n in ("absl", "asyncio", "orbax", "")]
  levels = [lg.level for lg in loggers]
  for lg in loggers:
    lg.setLevel(logging.CRITICAL + 1)
  # A failed read leaves tensorstore callbacks that print "Event loop is closed" traces to
  # sys.stderr shortly afterwards; they are caught here, with a moment for them to arrive.
  stderr, unraisable = sys.stderr, sys.unraisablehook
  sys.stderr, sys.unraisablehook = io.StringIO(), (lambda *a: None)
  failed = False
  try:
    yield
  except BaseException:
    failed = True
    raise
  finally:
    if failed:
      time.sleep(0.5)
    sys.stderr, sys.unraisablehook = stderr, unraisable
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)


def _warn(msg: str) -> None:
  if jax.process_index() == 0:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def _host_leaves(tree) -> list:
  """The leaves of ``tree`` as numpy arrays, from this process's own copy of each (the
  state is replicated, so every process holds all of it)."""
  def local(leaf):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      leaf = leaf.addressable_data(0)
    return np.asarray(jax.device_get(leaf))
  return [local(leaf) for leaf in jax.tree.leaves(tree)]


def is_finite(tree) -> bool:
  """Whether every floating-point leaf of ``tree`` is finite."""
  return all(bool(np.isfinite(x.astype(np.float32)).all()) for x in _host_leaves(tree)
             if jnp.issubdtype(x.dtype, jnp.inexact))


def checksum(tree) -> int:
  """A uint32 position-weighted wrapping sum of the bits of every leaf: a flipped block of
  array bytes changes it.

  Leaf ``i`` (in ``jax.tree.leaves`` order), raveled to 32-bit words ``b`` (4-byte dtypes
  bitcast; others first cast to float32 or int32), adds ``sum_j b[j] * (j % 65521 + i + 1)``
  mod 2**32. Computed on the host with numpy: the earlier jitted form gave the same number
  but took XLA ~12 s to compile for an image model's few hundred leaves.
  """
  total = 0
  for i, x in enumerate(_host_leaves(tree)):
    x = np.ravel(x)
    if x.dtype.itemsize == 4:
      bits = x.view(np.uint32)
    else:
      wide = np.float32 if jnp.issubdtype(x.dtype, jnp.inexact) else np.int32
      bits = x.astype(wide).view(np.uint32)
    weights = (np.arange(x.size, dtype=np.uint32) % np.uint32(65521)) + np.uint32(i + 1)
    total = (total + int(np.sum(bits * weights, dtype=np.uint32))) & 0xFFFFFFFF
  return total


class Checkpointer:
  """Saves and restores TrainStates with orbax's CheckpointManager.

  ``meta`` must match on resume (else IncompatibleCheckpointError, naming the key);
  ``soft_meta`` (the optimiser settings) may change between runs: a change is reported in
  one line, except ``optimizer`` itself, whose state cannot be carried over.
  """

  def __init__(self, workdir: str, *, max_to_keep: int = 3, meta: Optional[dict] = None,
               soft_meta: Optional[dict] = None):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.damaged_directory = os.path.abspath(os.path.join(workdir, "checkpoints_damaged"))
    self.meta = json.loads(json.dumps(meta or {}))  # plain JSON types only
    self.soft_meta = json.loads(json.dumps(soft_meta or {}))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_names=("state", "meta"))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, state: TrainState, *, force: bool = False) -> None:
    step = int(jax.device_get(state.step))
    # One host copy for both checks (each would otherwise fetch the whole state again).
    host = jax.tree.unflatten(jax.tree.structure(state), _host_leaves(state))
    if not is_finite(host):
      raise FloatingPointError(
          f"Not saving a checkpoint at step {step}: the training state is not finite.")
    if step == self.manager.latest_step():
      return
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({**self.meta, "_soft": self.soft_meta,
                                "_checksum": checksum(host)})), force=force)

  def _check_meta(self, step: int, saved: dict) -> None:
    """Raises IncompatibleCheckpointError for a real config mismatch; warns for a changed
    optimiser setting."""
    saved = dict(saved)
    saved_soft = saved.pop("_soft", None)
    saved.pop("_checksum", None)
    expected = dict(self.meta)
    for key in ("seed", "split"):  # checkpoints written before these were recorded
      if key not in saved:
        expected.pop(key, None)
    mismatch = _describe_mismatch(saved, expected)
    if mismatch:
      key = mismatch.split(":")[0].split(" ")[0]
      if key.startswith(("/seed", "/split")):
        raise IncompatibleCheckpointError(
            f"The checkpoint at {self.directory} (step {step}) was trained with a different "
            f"seed or labelled/unlabelled split ({mismatch}); rerun with the checkpoint's "
            f"value, or start a new run with another --workdir.")
      raise IncompatibleCheckpointError(
          f"The checkpoint at {self.directory} (step {step}) does not fit this model: it was "
          f"written with a different model/data configuration ({mismatch}). Resume with the same config, "
          f"or start a new run with another --workdir (or delete {self.directory}).")
    if saved_soft is None or saved_soft == self.soft_meta:
      return
    if saved_soft.get("optimizer") != self.soft_meta.get("optimizer"):
      raise IncompatibleCheckpointError(
          f"The checkpoint at {self.directory} (step {step}) was trained with "
          f"optim.optimizer={saved_soft.get('optimizer')!r}, this run uses "
          f"{self.soft_meta.get('optimizer')!r}, whose state cannot be carried over; keep "
          f"the optimizer or start a new run with another --workdir.")
    changed = ", ".join(f"optim.{k}: {saved_soft.get(k)!r} -> {v!r}"
                        for k, v in sorted(self.soft_meta.items()) if saved_soft.get(k) != v)
    _warn(f"the optimiser settings changed since the checkpoint at step {step} ({changed}); "
          "resuming with the new ones.")

  def restore(self, template: TrainState) -> Optional[TrainState]:
    """Restores the newest good checkpoint onto ``template``'s structure/sharding, or None
    when there is none. Damaged ones (unreadable, or not finite) are skipped with a one-line
    warning and moved aside; when none is readable, raises DamagedCheckpointError."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    damaged = []
    restored = None
    for step in steps:
      try:
        with _quiet():
          saved_meta = self.manager.restore(step, args=ocp.args.Composite(
              meta=ocp.args.JsonRestore()))["meta"]
        if not isinstance(saved_meta, dict):
          raise ValueError("its meta item is not a JSON object")
      except Exception as e:  # any failure to read is damage
        damaged.append((step, _one_line(e)))
        continue
      self._check_meta(step, saved_meta)
      try:
        with _quiet():
          candidate = self.manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract)))["state"]
      except Exception as e:
        damaged.append((step, _one_line(e)))
        continue
      if not is_finite(candidate):
        damaged.append((step, "it holds non-finite numbers"))
        continue
      if "_checksum" in saved_meta and checksum(candidate) != saved_meta["_checksum"]:
        damaged.append((step, "its arrays do not match the checksum written with them"))
        continue
      restored = candidate
      break
    if restored is None:
      reasons = "; ".join(f"step {s}: {r}" for s, r in damaged)
      raise DamagedCheckpointError(
          f"No checkpoint in {self.directory} can be read ({reasons}). To start afresh, "
          f"delete {self.directory} or use another --workdir.")
    good_step = int(jax.device_get(restored.step))
    for step, reason in damaged:
      _warn(f"checkpoint step {step} in {self.directory} is damaged ({reason}); resuming "
            f"from step {good_step} (the damaged one is moved to {self.damaged_directory}).")
    if damaged:
      self._move_aside([s for s, _ in damaged])
    return restored

  def _move_aside(self, steps) -> None:
    """Moves damaged step folders out of the way, so that later saves at those steps (and
    later resumes) do not meet them again."""
    if jax.process_index() == 0:
      os.makedirs(self.damaged_directory, exist_ok=True)
      for step in steps:
        src = os.path.join(self.directory, str(step))
        dst = os.path.join(self.damaged_directory, str(step))
        if os.path.exists(dst):
          shutil.rmtree(dst, ignore_errors=True)
        if os.path.exists(src):
          shutil.move(src, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("flowgmm_checkpoint_move_aside")
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
