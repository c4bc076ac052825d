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

With several processes, process 0 alone lists and judges the checkpoints and chooses the
step; every host restores that step and reports whether it could, through the distributed
runtime's key-value store with a timeout (``_Hosts``), so hosts that see different files
(a stale NFS listing, a half-synced bucket) stop together with one line naming the host and
the step instead of waiting for each other forever.

Orbax writes asynchronously: a save that fails (a full disk) fails in a background thread.
``Checkpointer.check`` (called after every step) raises it as one ``CheckpointSaveError``
line; orbax's own error reports go to ``workdir/checkpoint_errors.log``, not the terminal.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import socket
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from flowgmm_jax import run_files
from flowgmm_jax.models import (
  MODEL_FIELDS,
  PARAM_LAYOUT_VERSION,
  LayoutVersionError,
  check_layout_version,
)

CHECKPOINT_DIR = "checkpoints"
# With several processes, how often the hosts compare their save-failure flags (check).
AGREE_EVERY_STEPS = 10
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
#   split         row counts {"labeled", "unlabeled", "early_stopping", "calibration"} and
#                 "fingerprint" of them all (data.rows.Rows)
#   param_layout  models.PARAM_LAYOUT_VERSION, the one parameter layout read (identical
#                 layers stacked); older checkpoints (no key) hold layout 1, refused
# Checkpointer adds "_soft" (config.optim: may change on resume), "_checksum", and
# "params_step": the step whose parameters the checkpoint holds (early stopping's best step
# may be earlier than the checkpoint's own).
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


class HostCheckpointError(DamagedCheckpointError):
  """With several processes: a host cannot read the step that process 0 chose, or did not
  answer in time. Every host raises the same one line."""


class CheckpointSaveError(ValueError):
  """A checkpoint could not be written (e.g. the disk is full); the run stops. One line:
  the step, the directory, the cause, the last good step and what to do."""


def make_meta(config, *, input_shape: Sequence[int], num_classes: int, rows=None) -> dict:
  """The metadata of a run of ``config`` on examples of ``input_shape`` with
  ``num_classes`` classes (and, for a training run, its rows: ``data.rows.Rows``)."""
  meta = {"meta_version": META_VERSION, "model": config.model.to_dict(),
          "prior": config.prior.to_dict(),
          "data": {k: config.data[k] for k in ("kind", "name", "path")},
          "input_shape": [int(s) for s in input_shape], "num_classes": int(num_classes),
          "param_layout": PARAM_LAYOUT_VERSION}
  if rows is not None:
    meta["seed"] = int(config.seed)
    meta["split"] = {**rows.counts(), "fingerprint": rows.fingerprint()}
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

def _describe_mismatch(saved: Any, expected: Any, path: str = "") -> str | None:
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
    for lg, level in zip(loggers, levels, strict=False):
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


class _HandlerReader:
  """Reads items of a step with orbax's handlers directly, with ``CheckpointManager.restore``'s
  call signature. The manager's restore ends in a barrier of every process: process 0 judging
  steps alone, or a host whose read failed, would leave the others waiting there."""

  def __init__(self, directory: str):
    self.directory = epath.Path(directory)

  def restore(self, step: int, args) -> dict:
    out = {}
    for name, item_args in args.items():
      handler = (ocp.JsonCheckpointHandler() if isinstance(item_args, ocp.args.JsonRestore)
                 else ocp.StandardCheckpointHandler())
      try:
        out[name] = handler.restore(self.directory / str(step) / name, args=item_args)
      finally:
        if hasattr(handler, "close"):
          handler.close()
    return out


def read_checkpoint(workdir: str, step: int | None = None, *, sharding=None):
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


# ----------------------------------------------------------------------------- save errors

# Where orbax's background threads report: its modules log through absl, asyncio logs a
# callback that outlives its event loop ("Event loop is closed"), tensorstore raises in
# its threads.
_CHECKPOINTING_PATHS = tuple(f"{os.sep}{name}" for name in ("orbax", "tensorstore", "asyncio"))


def _from_checkpointing(filenames) -> bool:
  return any(marker in (f or "") for f in filenames for marker in _CHECKPOINTING_PATHS)


class _ErrorLog:
  """While installed, sends orbax's background error reports (absl ERROR records with their
  tracebacks, asyncio's "Event loop is closed" callbacks, exceptions of orbax/tensorstore
  threads) to ``path`` instead of the terminal, where a failed save printed ~140 lines of
  them before the actual error. Other records and exceptions pass through unchanged. The
  file is created at the first report, so a healthy run has none."""

  def __init__(self, path: str):
    self.path = path
    self.lock = threading.Lock()
    self.formatter = logging.Formatter("%(levelname)s %(pathname)s:%(lineno)d %(message)s")
    self.installed = False
    self.previous_excepthook = self.previous_unraisablehook = None

  def write(self, text: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    header = f"[{stamp} process {jax.process_index()} host {socket.gethostname()}]"
    try:
      with self.lock, open(self.path, "a") as f:
        f.write(f"{header} {text.rstrip()}\n")
    except OSError:
      pass  # a full disk may refuse the log too; the one-line error still says what happened

  # logging.Filter protocol, on the 'absl' and 'asyncio' loggers.
  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR or not _from_checkpointing([record.pathname]):
      return True
    self.write(self.formatter.format(record))
    return False

  def _divert(self, exc_type, exc, tb) -> bool:
    if not _from_checkpointing(f.filename for f in traceback.extract_tb(tb)):
      return False
    self.write("".join(traceback.format_exception(exc_type, exc, tb)))
    return True

  def excepthook(self, args) -> None:
    if not self._divert(args.exc_type, args.exc_value, args.exc_traceback):
      self.previous_excepthook(args)

  def unraisablehook(self, unraisable) -> None:
    if not self._divert(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback):
      self.previous_unraisablehook(unraisable)

  def install(self) -> None:
    if self.installed:
      return
    for name in ("absl", "asyncio"):
      logging.getLogger(name).addFilter(self)
    self.previous_excepthook, threading.excepthook = threading.excepthook, self.excepthook
    self.previous_unraisablehook, sys.unraisablehook = sys.unraisablehook, self.unraisablehook
    self.installed = True

  def uninstall(self) -> None:
    if not self.installed:
      return
    for name in ("absl", "asyncio"):
      logging.getLogger(name).removeFilter(self)
    if threading.excepthook == self.excepthook:
      threading.excepthook = self.previous_excepthook
    if sys.unraisablehook == self.unraisablehook:
      sys.unraisablehook = self.previous_unraisablehook
    self.installed = False


def _exception_chain(e: BaseException | None):
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


def save_failure_cause(e: BaseException) -> str:
  """What went wrong in a failed save, for a person: the operating system's words for its
  error code (``No space left on device``) when the exception or the text that tensorstore
  wraps it in carries one, else the exception's first line."""
  for x in _exception_chain(e):
    if isinstance(x, OSError) and x.errno:
      return os.strerror(x.errno)
    code = re.search(r"os_error_code='?(\d+)", str(x))
    if code:
      return os.strerror(int(code.group(1)))
  return _one_line(e)


# ----------------------------------------------------------------------------- the hosts

# Seconds a host waits for another at a restore (for process 0's choice, or the others'
# reports): process 0 may read several large checkpoints before it chooses; past this a
# missing host is named in one line instead of waited for.
HOST_TIMEOUT_SECONDS = 600


class _Hosts:
  """The processes of one restore, talking through the distributed runtime's key-value
  store: every wait has a timeout. Keys are unique per restore (every process restores the
  same number of times, so the counter agrees)."""

  _restores = 0

  def __init__(self, timeout_s: float):
    from jax._src import distributed  # the client that jax.distributed.initialize started
    self.client = distributed.global_state.client
    if self.client is None:
      raise RuntimeError("several JAX processes without jax.distributed.initialize")
    _Hosts._restores += 1
    self.prefix = f"flowgmm_jax/restore/{_Hosts._restores}"
    self.timeout_ms = int(timeout_s * 1000)
    self.me, self.count = jax.process_index(), jax.process_count()

  def publish(self, name: str, value: dict) -> None:
    self.client.key_value_set(f"{self.prefix}/{name}", json.dumps(value))

  def receive(self, name: str) -> dict | None:
    """The value published under ``name``, or None when none came within the timeout."""
    try:
      return json.loads(self.client.blocking_key_value_get(f"{self.prefix}/{name}",
                                                           self.timeout_ms))
    except Exception:  # noqa: BLE001 - the runtime raises its own error type on timeout
      return None


# ----------------------------------------------------------------------------- the writer

class Checkpointer:
  """Saves training states in ``workdir/checkpoints`` and restores the newest good one.

  ``meta`` (``make_meta``) must match on resume (else IncompatibleCheckpointError, naming
  the key); ``soft_meta`` (the optimiser settings) may change between runs: a change is
  reported in one line, except ``optimizer`` itself, whose state cannot be carried over.
  """

  def __init__(self, workdir: str, *, max_to_keep: int = 3, meta: dict | None = None,
               soft_meta: dict | None = None,
               host_timeout_s: float = HOST_TIMEOUT_SECONDS):
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    self.damaged_directory = os.path.abspath(os.path.join(workdir, DAMAGED_DIR))
    self.error_log = os.path.abspath(os.path.join(workdir, run_files.CHECKPOINT_ERRORS_FILE))
    self.meta = json.loads(json.dumps(meta or {}))  # plain JSON types only
    self.soft_meta = json.loads(json.dumps(soft_meta or {}))
    self.host_timeout_s = host_timeout_s
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_names=("state", "meta"))
    self._errors = _ErrorLog(self.error_log)
    self._errors.install()
    # A failed background save, (step, exception): set by the thread that waits for it,
    # raised by check() on the training thread.
    self._failure: tuple[int, BaseException] | None = None
    self._last_good: int | None = self.manager.latest_step()
    self._pending: int | None = None  # the step of the newest save started

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, exc_type, exc, tb) -> bool:
    """Waits for pending writes and closes; when an error is already on its way out, an
    error from closing is dropped so that the first one is reported."""
    try:
      self.close()
    except Exception:  # noqa: BLE001 - the original error is the one to report
      if exc_type is None:
        raise
    return False

  def save(self, state, *, params_step: int | None = None, force: bool = False) -> None:
    """Starts writing ``state`` at its step (orbax finishes it in the background).
    ``params_step``: the step whose parameters the state holds when that is not its own
    (early stopping's best step), written to the metadata. Raises CheckpointSaveError for
    an earlier save that failed, or when this one cannot start."""
    self.check()
    step = int(jax.device_get(state.step))
    # One host copy for both checks (each would otherwise fetch the whole state again).
    host = jax.tree.unflatten(jax.tree.structure(state), _host_leaves(state))
    if not is_finite(host):
      raise FloatingPointError(
          f"Not saving a checkpoint at step {step}: the training state is not finite.")
    if step == self.manager.latest_step():
      return
    self._pending = step
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          meta=ocp.args.JsonSave({**self.meta, "_soft": self.soft_meta,
                                  "_checksum": checksum(host),
                                  "params_step": step if params_step is None
                                  else int(params_step)})), force=force)
    except Exception as e:  # noqa: BLE001 - the previous save's failure surfaces here too
      self._record_failure(step, e)
      self._raise_if_failed()
    threading.Thread(target=self._watch, args=(step,), daemon=True,
                     name=f"flowgmm_checkpoint_watch_{step}").start()

  def _record_failure(self, step: int, e: BaseException) -> None:
    self._errors.write(f"saving step {step} failed:\n" + "".join(
        traceback.format_exception(type(e), e, e.__traceback__)))
    if self._failure is None:
      # The save that fails first is the one to report; orbax's own message names it.
      failed = re.search(re.escape(self.directory) + r"/(\d+)\b", str(e))
      self._failure = (int(failed.group(1)) if failed else step, e)

  def _watch(self, step: int) -> None:
    """Waits for the background write of ``step``; records a failure for ``check``."""
    try:
      self.manager.wait_until_finished()
    except BaseException as e:  # noqa: BLE001 - reported by check() on the training thread
      self._record_failure(step, e)
    else:
      if self._failure is None:
        self._last_good = max(step, self._last_good or 0)

  def check(self, step: int | None = None) -> None:
    """Raises CheckpointSaveError when a background save has failed. Cheap enough for every
    step: it reads one attribute (no device sync, no directory listing).

    With several processes a host whose save failed must not stop alone (the others would
    wait for it in their next collective), so after step ``step`` the hosts compare their
    flags every ``AGREE_EVERY_STEPS`` steps (a host all-gather) and all stop together,
    each with the one line; ``step`` None compares at once (before a save, which every
    host starts at the same step)."""
    if jax.process_count() > 1:
      if step is not None and step % AGREE_EVERY_STEPS:
        return
      from jax.experimental import multihost_utils
      failed = np.flatnonzero(multihost_utils.process_allgather(
          np.int32(self._failure is not None)))
      if len(failed) and self._failure is None:
        raise CheckpointSaveError(
            f"process(es) {', '.join(map(str, failed))} could not write a checkpoint to "
            f"{self.directory}; the run stopped on every host. The failing host's error "
            f"log (checkpoint_errors.log in its workdir) says why; fix it (e.g. free "
            "space), then rerun the same command to resume.")
    self._raise_if_failed()

  def _raise_if_failed(self) -> None:
    if self._failure is not None:
      raise self._save_error(*self._failure)

  def _save_error(self, step: int, e: BaseException) -> CheckpointSaveError:
    if self._last_good is None:
      kept = ("no checkpoint of this run was written (a rerun starts afresh); config.json "
              "and metrics.jsonl are kept")
      resume = ""
    else:
      kept = (f"the last good checkpoint is step {self._last_good}, kept with config.json "
              "and metrics.jsonl")
      resume = f" from step {self._last_good}"
    return CheckpointSaveError(
        f"could not write the checkpoint of step {step} to {self.directory} "
        f"({save_failure_cause(e)}); the run stopped; {kept}. Free space there (or move "
        f"the workdir to a disk with room), then rerun the same command to resume{resume}. "
        f"Full error: {self.error_log}")

  def _check_meta(self, step: int, saved: dict) -> None:
    """Raises IncompatibleCheckpointError for a real config mismatch; warns for a changed
    optimiser setting."""
    saved = dict(saved)
    saved_soft = saved.pop("_soft", None)
    saved.pop("_checksum", None)
    saved.pop("params_step", None)
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

  def _judge(self, reader, step: int, template):
    """``(state, None)`` when ``step`` is good, ``(None, reason)`` when it is damaged.
    Raises IncompatibleCheckpointError when it was written by another model/data setup."""
    try:
      with _quiet():
        saved_meta = _read_meta(reader, step)
    except Exception as e:  # any failure to read is damage
      return None, _one_line(e)
    self._check_meta(step, saved_meta)
    try:
      with _quiet():
        candidate, dropped = _read_state(reader, self.directory, step, template=template)
    except Exception as e:
      return None, _one_line(e)
    if not is_finite(candidate):
      return None, "it holds non-finite numbers"
    # The checksum covers what was written, entries dropped on reading included (they
    # were the last fields of the state that older versions saved).
    if "_checksum" in saved_meta and checksum((candidate, dropped)) != saved_meta["_checksum"]:
      return None, "its arrays do not match the checksum written with them"
    return candidate, None

  def _choose(self, reader, template):
    """``(step, state, damaged)``: the newest good step and its state (None, None when
    there is no checkpoint), and ``[(step, reason)]`` of the damaged newer ones. Raises
    DamagedCheckpointError when none is readable."""
    damaged = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      state, reason = self._judge(reader, step, template)
      if state is not None:
        return step, state, damaged
      damaged.append((step, reason))
    if damaged:
      reasons = "; ".join(f"step {s}: {r}" for s, r in damaged)
      raise DamagedCheckpointError(
          f"No checkpoint in {self.directory} can be read ({reasons}). To start afresh, "
          f"delete {self.directory} or use another --workdir.")
    return None, None, []

  def _report_damage(self, good_step: int, damaged) -> None:
    for step, reason in damaged:
      _warn(f"checkpoint step {step} in {self.directory} is damaged ({reason}); resuming "
            f"from step {good_step} (the damaged one is moved to {self.damaged_directory}).")

  def restore(self, template):
    """Restores the newest good checkpoint onto ``template``'s structure/sharding, or None
    when there is none. Damaged ones (unreadable, or not finite) are skipped with a one-line
    warning and moved aside; when none is readable, raises DamagedCheckpointError.

    With several processes, process 0 chooses the step and every host restores it (see
    ``_restore_on_every_host``)."""
    if jax.process_count() > 1:
      return self._restore_on_every_host(template)
    step, restored, damaged = self._choose(self.manager, template)
    if restored is None:
      return None
    self._report_damage(step, damaged)
    if damaged:
      self._move_aside([s for s, _ in damaged])
      self.manager.reload()
    return restored

  def _restore_on_every_host(self, template):
    """The multi-process restore: one decision, one barrier, one line on failure.

    1. Process 0 lists and judges the checkpoints (reading through ``_HandlerReader``: no
       barrier that the others would wait at) and publishes its choice: a step, none, or
       the error (an incompatible config, nothing readable) that every host then raises.
    2. Process 0 moves the damaged steps aside; every other host reads the chosen step and
       checks it (finite, the checksum process 0 verified).
    3. Every host publishes whether it could and waits for all the others' reports (the
       one barrier: process 0 reports after moving the damaged steps aside). A host that
       could not read the step, or did not report within ``host_timeout_s``, is named in
       the one line every host raises: the hosts see different files.
    """
    hosts = _Hosts(self.host_timeout_s)
    here = f"process {hosts.me} (host {socket.gethostname()})"
    reader = _HandlerReader(self.directory)
    restored, damaged = None, []
    if hosts.me == 0:
      try:
        step, restored, damaged = self._choose(reader, template)
      except Exception as e:
        # Every host stops with this line; the others would otherwise wait for the choice.
        message = (str(e) if isinstance(e, (IncompatibleCheckpointError, DamagedCheckpointError))
                   else f"process 0 could not choose the checkpoint step in {self.directory} "
                        f"({_one_line(e)}).")
        hosts.publish("decision", {"error": type(e).__name__, "message": message})
        raise
      decision = {"step": step, "damaged": damaged}
      hosts.publish("decision", decision)
    else:
      decision = hosts.receive("decision")
      if decision is None:
        raise HostCheckpointError(
            f"{here} waited {self.host_timeout_s:.0f} s for process 0 to choose the "
            f"checkpoint step in {self.directory}; process 0 did not answer (stopped, or "
            "still reading). Check process 0's log, then rerun every process.")
    if "error" in decision:
      raise {"IncompatibleCheckpointError": IncompatibleCheckpointError,
             "DamagedCheckpointError": DamagedCheckpointError}.get(
                 decision["error"], HostCheckpointError)(decision["message"])
    step = decision["step"]
    if step is None:
      return None
    report = {"ok": True, "host": socket.gethostname()}
    if hosts.me == 0:
      self._report_damage(step, damaged)
      if damaged:
        try:
          self._move_aside([s for s, _ in damaged])
        except OSError as e:
          report = {**report, "ok": False, "reason": f"moving damaged steps aside: {e}"}
    else:
      restored, reason = self._judge_chosen(reader, step, template)
      if restored is None:
        report = {**report, "ok": False, "reason": reason}
    hosts.publish(f"report/{hosts.me}", report)
    failed = []
    for other in range(hosts.count):
      got = report if other == hosts.me else hosts.receive(f"report/{other}")
      if got is None:
        failed.append(f"process {other} did not report within {self.host_timeout_s:.0f} s")
      elif not got["ok"]:
        failed.append(f"process {other} (host {got['host']}) cannot read it ({got['reason']})")
    if failed:
      raise HostCheckpointError(
          f"checkpoint step {step} in {self.directory}, chosen by process 0, is not readable "
          f"on every host: {'; '.join(failed)}. The hosts see different files (a stale "
          f"network-filesystem view, a half-synced bucket): make {self.directory} the same "
          f"on every host, or move {self.directory}/{step} to {self.damaged_directory} to "
          "resume from an earlier step, then rerun every process.")
    self.manager.reload()
    return restored

  def _judge_chosen(self, reader, step: int, template):
    """A host other than 0 reading the step process 0 chose: ``(state, None)`` or
    ``(None, reason)``; a config mismatch here means this host sees other files."""
    try:
      return self._judge(reader, step, template)
    except IncompatibleCheckpointError as e:
      return None, _one_line(e)

  def _move_aside(self, steps) -> None:
    """Moves damaged step folders out of the way, so that later saves at those steps (and
    later resumes) do not meet them again. Process 0 alone moves them (the hosts share the
    directory); ``_restore_on_every_host`` holds the others until it has."""
    if jax.process_index() != 0:
      return
    os.makedirs(self.damaged_directory, exist_ok=True)
    for step in steps:
      src = os.path.join(self.directory, str(step))
      dst = os.path.join(self.damaged_directory, str(step))
      if os.path.exists(dst):
        shutil.rmtree(dst, ignore_errors=True)
      if os.path.exists(src):
        shutil.move(src, dst)

  def wait(self) -> None:
    """Waits for the pending write; raises CheckpointSaveError when a save failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - a failed background save
      self._record_failure(self._pending, e)
    self._raise_if_failed()

  def close(self) -> None:
    """Waits for the pending write (raising CheckpointSaveError when a save failed) and
    releases orbax's threads. After a failure, orbax's background reports keep going to
    the error log until the process ends (they arrive late, from its threads)."""
    try:
      self.wait()
    finally:
      try:
        self.manager.close()
      except Exception as e:  # noqa: BLE001 - the failure wait() reports
        self._record_failure(self._pending, e)
      if self._failure is None:
        self._errors.uninstall()
