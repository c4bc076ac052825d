"""Orbax checkpoints in ``workdir/checkpoints``: the metadata schema, the one reader, the writer.

Each checkpoint step holds two items:
  * ``state``: the training state pytree (``training.state.TrainState``: step, params incl.
    a learnable prior, batch stats, fixed prior variables such as the class means, optimiser
    state). The step is also the data position: batches are a pure function of (seed, step).
  * ``meta``: JSON, the schema below (``make_meta``), so that ``load`` rebuilds the model
    without a config, and a resume under an incompatible config fails with a clear message
    instead of a shape error.

``read_checkpoint`` (what ``trained.load`` uses, read-only) and ``Checkpointer.restore``
(what a resuming run uses) read through the same two functions, ``_read_meta`` and
``_read_state``. This module imports nothing of ``training/``, so ``trained.py`` reads
checkpoints without an upward import.

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
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from flowgmm_jax.models import (MODEL_FIELDS, PARAM_LAYOUT_VERSION, LayoutVersionError,
                                check_layout_version)

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "checkpoints_damaged"

# ----------------------------------------------------------------------------- the schema

# The metadata written with every checkpoint (JSON):
#   meta_version  META_VERSION; older checkpoints (no key) are read through upgrade_meta
#   model         config.model: "name" and that model's fields (models.MODEL_FIELDS)
#   prior         config.prior
#   data          {"kind", "name", "path"} of config.data
#   input_shape   one example's shape, e.g. [32, 32, 3] or [D]
#   num_classes   K
#   seed          config.seed
#   split         {"labeled", "unlabeled": row counts, "fingerprint": split_fingerprint}
#   param_layout  models.PARAM_LAYOUT_VERSION, the one parameter layout read (identical
#                 layers stacked); older checkpoints (no key) hold layout 1, refused
# Checkpointer adds "_soft" (config.optim: may change on resume) and "_checksum".
META_VERSION = 3
META_KEYS = ("meta_version", "model", "prior", "data", "input_shape", "num_classes", "seed",
             "split", "param_layout")
# What load needs to rebuild the model (a meta without a run's seed and split, e.g. a
# fitted estimator's, has only these).
MODEL_META_KEYS = ("model", "prior", "data", "input_shape", "num_classes", "param_layout")


class RunNotFoundError(FileNotFoundError):
  """The workdir has no checkpoint, or not the requested step."""


class IncompatibleCheckpointError(ValueError):
  """A checkpoint exists in the workdir but was written by a different model or data setup."""


class DamagedCheckpointError(ValueError):
  """Checkpoints exist in the workdir but none of them can be read."""


def split_fingerprint(labeled_idx: np.ndarray, unlabeled_idx: np.ndarray) -> str:
  """A short hash of the labelled/unlabelled split, stored in checkpoints so that a resume
  on another split (a changed seed, data file or label count) is caught."""
  import hashlib
  h = hashlib.sha256()
  for a in (labeled_idx, unlabeled_idx):
    h.update(np.asarray(a, np.int64).tobytes())
    h.update(b"|")
  return h.hexdigest()[:16]


def make_meta(config, *, input_shape: Sequence[int], num_classes: int,
              labeled_idx: Optional[np.ndarray] = None,
              unlabeled_idx: Optional[np.ndarray] = None) -> dict:
  """The metadata of a run of ``config`` on examples of ``input_shape`` with
  ``num_classes`` classes (and, for a training run, its labelled/unlabelled split)."""
  meta = {"meta_version": META_VERSION, "model": config.model.to_dict(),
          "prior": config.prior.to_dict(),
          "data": {k: config.data[k] for k in ("kind", "name", "path")},
          "input_shape": [int(s) for s in input_shape], "num_classes": int(num_classes),
          "param_layout": PARAM_LAYOUT_VERSION}
  if labeled_idx is not None:
    meta["seed"] = int(config.seed)
    meta["split"] = {"labeled": int(len(labeled_idx)), "unlabeled": int(len(unlabeled_idx)),
                     "fingerprint": split_fingerprint(labeled_idx, unlabeled_idx)}
  return json.loads(json.dumps(meta))  # plain JSON types only


def upgrade_meta(meta: dict) -> dict:
  """``meta`` in the current schema. Metadata older than ``META_VERSION`` came with flows
  stored unrolled (parameter layout 1), which this version does not read: it is marked
  ``param_layout`` 1, so that ``models.check_layout_version`` refuses it in one line. Image
  models saved before ``sync_batch_norm`` existed synced their BatchNorm: True."""
  meta = dict(meta)
  if meta.get("meta_version", 1) < META_VERSION:
    meta["param_layout"] = 1
  model = meta.get("model")
  if isinstance(model, dict) and "sync_batch_norm" in MODEL_FIELDS.get(model.get("name"), {}):
    meta["model"] = {**model, "sync_batch_norm": model.get("sync_batch_norm", True)}
  return meta


# ----------------------------------------------------------------------------- helpers

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
  """Keeps orbax's (and its event loop's) logging out of the terminal while we read
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
  mod 2**32. Computed on the host with numpy, which needs no compilation.
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


# ----------------------------------------------------------------------------- the reader

def _read_meta(manager, step: int) -> dict:
  """The metadata of ``step``, in the current schema. Raises what orbax raises when the
  item cannot be read, or ValueError when it is not a JSON object."""
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  if not isinstance(meta, dict):
    raise ValueError("its meta item is not a JSON object")
  return upgrade_meta(meta)


def _saved_tree(directory: str, step: int):
  """The stored state's tree of array metadata (shapes, dtypes), as nested dicts."""
  tree = ocp.StandardCheckpointer().metadata(os.path.join(directory, str(step), "state"))
  return getattr(getattr(tree, "item_metadata", tree), "tree", tree)


def _read_state(manager, directory: str, step: int, template=None, sharding=None):
  """``(state, dropped)``: the state stored at ``step``.

  ``template``: an abstract (or concrete) state whose structure, shapes and shardings the
  result takes (a resume); stored top-level entries it does not have (the RNG key that
  older versions saved and never read) are returned apart in ``dropped``. Without one, the
  stored structure as nested dicts, every array placed with ``sharding`` (a read for
  inference), and ``dropped`` empty."""
  saved = _saved_tree(directory, step)
  if template is None:
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), saved)
    return manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"], {}
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  fields = {f: getattr(abstract, f) for f in abstract.__dataclass_fields__}
  extra = sorted(set(saved) - set(fields)) if isinstance(saved, dict) else []
  if not extra:
    return manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"], {}
  placement = jax.tree.leaves(abstract)[0].sharding
  item = {**fields, **{k: jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=placement), saved[k])
      for k in extra}}
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(item)))["state"]
  state = template.replace(**{f: restored[f] for f in fields})
  return state, {k: restored[k] for k in extra}


def read_checkpoint(workdir: str, step: Optional[int] = None, *, sharding=None):
  """``(step, meta, state)`` of the checkpoint at ``step`` (default: the latest) in
  ``workdir``, read-only; ``state`` as nested dicts, placed with ``sharding`` (e.g.
  replicated on a mesh; None: the default device), whatever the devices that saved it.

  Raises ``RunNotFoundError`` (no checkpoint / no such step) or
  ``IncompatibleCheckpointError`` (unreadable, or written by an incompatible version), each
  one line.
  """
  from absl import logging as absl_logging

  ckpt_dir = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
  if not os.path.isdir(ckpt_dir) or not any(n.isdigit() for n in os.listdir(ckpt_dir)):
    raise RunNotFoundError(f"no checkpoint in {ckpt_dir}; train first with python -m "
                           f"experiments.main --config=... --workdir={workdir}.")
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax warns about read-only mode
  try:
    manager = ocp.CheckpointManager(
        ckpt_dir, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
        item_names=("state", "meta"))
    try:
      steps = sorted(manager.all_steps())
      if not steps:
        raise RunNotFoundError(f"no complete checkpoint in {ckpt_dir}.")
      if step is None:
        step = steps[-1]
      elif step not in steps:
        raise RunNotFoundError(f"no checkpoint for step {step} in {ckpt_dir}; available "
                               f"steps: {steps}.")
      try:
        with _quiet():
          meta = _read_meta(manager, step)
      except Exception as e:  # noqa: BLE001 - any failure here means "not our format"
        raise IncompatibleCheckpointError(
            f"checkpoint {ckpt_dir}/{step} has no readable metadata ({type(e).__name__}); "
            "it was written by an incompatible version of flowgmm_jax.") from e
      missing = [k for k in MODEL_META_KEYS if k not in meta]
      if missing:
        raise IncompatibleCheckpointError(
            f"checkpoint {ckpt_dir}/{step} lacks {missing} in its metadata; it was written "
            "by an incompatible version of flowgmm_jax.")
      try:
        with _quiet():
          state, _ = _read_state(manager, ckpt_dir, step, sharding=sharding)
      except Exception as e:  # noqa: BLE001 - unreadable state: not our format
        raise IncompatibleCheckpointError(
            f"checkpoint {ckpt_dir}/{step} could not be read ({type(e).__name__}); it was "
            "written by an incompatible version of flowgmm_jax.") from e
    finally:
      manager.close()
  finally:
    absl_logging.set_verbosity(verbosity)
  return step, meta, state


# ----------------------------------------------------------------------------- the writer

class Checkpointer:
  """Saves training states in ``workdir/checkpoints`` and restores the newest good one.

  ``meta`` (``make_meta``) must match on resume (else IncompatibleCheckpointError, naming
  the key); ``soft_meta`` (the optimiser settings) may change between runs: a change is
  reported in one line, except ``optimizer`` itself, whose state cannot be carried over.
  """

  def __init__(self, workdir: str, *, max_to_keep: int = 3, meta: Optional[dict] = None,
               soft_meta: Optional[dict] = None):
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    self.damaged_directory = os.path.abspath(os.path.join(workdir, DAMAGED_DIR))
    self.meta = json.loads(json.dumps(meta or {}))  # plain JSON types only
    self.soft_meta = json.loads(json.dumps(soft_meta or {}))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_names=("state", "meta"))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, state, *, force: bool = False) -> None:
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
    try:
      check_layout_version(saved.get("param_layout"),
                           where=f"The checkpoint at {self.directory} (step {step})")
    except LayoutVersionError as e:
      raise IncompatibleCheckpointError(str(e)) from None
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
          f"written with a different model/data configuration ({mismatch}). Resume with "
          f"the same config, or start a new run with another --workdir (or delete "
          f"{self.directory}).")
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

  def restore(self, template):
    """Restores the newest good checkpoint onto ``template``'s structure/sharding, or None
    when there is none. Damaged ones (unreadable, or not finite) are skipped with a one-line
    warning and moved aside; when none is readable, raises DamagedCheckpointError."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      return None
    damaged = []
    restored = None
    for step in steps:
      try:
        with _quiet():
          saved_meta = _read_meta(self.manager, step)
      except Exception as e:  # any failure to read is damage
        damaged.append((step, _one_line(e)))
        continue
      self._check_meta(step, saved_meta)
      try:
        with _quiet():
          candidate, dropped = _read_state(self.manager, self.directory, step,
                                           template=template)
      except Exception as e:
        damaged.append((step, _one_line(e)))
        continue
      if not is_finite(candidate):
        damaged.append((step, "it holds non-finite numbers"))
        continue
      # The checksum covers what was written, entries dropped on reading included (they
      # were the last fields of the state that older versions saved).
      if ("_checksum" in saved_meta
          and checksum((candidate, dropped)) != saved_meta["_checksum"]):
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
