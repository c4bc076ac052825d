"""The one training loop: ``fit`` and ``train_and_evaluate(config, workdir)``.

config -> data source -> labelled/unlabelled split -> batches -> train step -> evaluation ->
metrics.jsonl / TensorBoard / checkpoints -> results.json. Every entry point (the command
line, ``FlowGMMClassifier``, a notebook) runs ``fit`` below; none has a loop of its own.

``fit`` is built from parts: ``build`` (the programs, the batch layout, the first state),
``EarlyStopping`` (held-out NLL, best parameters), and periodic work run after each step in
a fixed order (log, evaluation, early stopping, checkpoint, preemption). Every resource a
fit opens (progress bar, checkpoint writer, metric files, signal handlers, the workdir
lock) is closed by one ``contextlib.ExitStack``, whether the fit ends, stops early or fails.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import os
import shutil
import signal
import sys
import threading
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowgmm_jax import calibration
from flowgmm_jax import checkpoint as ckpt_lib
from flowgmm_jax import data as data_lib
from flowgmm_jax import evaluation
from flowgmm_jax import mesh as mesh_lib
from flowgmm_jax import run_files
from flowgmm_jax import trained
from flowgmm_jax.flowgmm import FlowGMM
from flowgmm_jax.training import build
from flowgmm_jax.training import finish_run
from flowgmm_jax.training.config import enable_compilation_cache, validate_config
from flowgmm_jax.training.lock import WorkdirLock
from flowgmm_jax.training.state import TrainState
from flowgmm_jax.training.writer import MetricWriter


def evaluate(model: trained.TrainedFlowGMM, x: np.ndarray, y: np.ndarray) -> dict:
  """Test metrics of ``model`` over the whole set: accuracy, ECE (15 bins), NLL and bits/dim.

  ``eval/nll`` is the marginal -log p(x) and ``eval/nll_given_label`` is -log p(x | y_true)
  (nats per example); the ``bpd`` versions divide by D log 2.
  """
  out = model.outputs(x, preprocessed=True, keys=("log_det", "logits"))
  metrics = evaluation.metrics_from_outputs(out["logits"], out["log_det"], y,
                                            log_weights=model.log_weights(),
                                            num_dims=model.num_dims)
  return {f"eval/{k}": float(v) for k, v in metrics.items()}


# ----------------------------------------------------------------------------- parts

class EarlyStopping:
  """Early stopping on the marginal NLL of unlabelled rows held out from training
  (``config.early_stopping``): measured every ``check_every_steps``; after ``patience``
  checks without a relative improvement of ``min_delta``, and not before step
  ``min_steps``, training stops, and the
  parameters of the best check become the final state (also when training runs to the
  end, or with ``patience`` 0)."""

  def __init__(self, settings: ml_collections.ConfigDict, x_heldout: np.ndarray,
               total_steps: int):
    self.settings = settings
    self.x = x_heldout
    self.total = total_steps
    self.best_nll, self.best_step, self.best_variables, self.bad = math.inf, None, None, 0

  def due(self, done: int) -> bool:
    return done % self.settings.check_every_steps == 0 or done == self.total

  def check(self, done: int, model: trained.TrainedFlowGMM) -> tuple[float, bool]:
    """Scores the held-out rows with ``model``; returns (nll, whether to stop)."""
    log_px = model.log_prob(self.x, preprocessed=True)
    nll = float(-np.mean(np.asarray(log_px, np.float64)))
    if self.best_step is None or nll < self.best_nll - self.settings.min_delta * abs(self.best_nll):
      self.best_nll, self.best_step, self.bad = nll, done, 0
      self.best_variables = jax.device_get(model.variables)
    else:  # no better (a NaN counts as worse)
      self.bad += 1
    stop = (self.settings.patience > 0 and self.bad >= self.settings.patience
            and done >= self.settings.min_steps)
    return nll, stop

  def best_state(self, state: TrainState, mesh) -> TrainState:
    """``state`` with the best check's parameters and BatchNorm statistics."""
    v = self.best_variables
    return state.replace(params=mesh_lib.replicate(mesh, v["params"]),
                         batch_stats=mesh_lib.replicate(mesh, v.get("batch_stats", {})))


class Preempted(Exception):
  """SIGTERM or SIGINT arrived: the run stopped after a step and saved a checkpoint there."""

  def __init__(self, step: int, signum: int):
    self.step, self.signum = step, signum
    super().__init__(f"preempted at step {step}; checkpoint saved; rerun the same command "
                     "to resume")


class _SignalFlag:
  """Turns SIGTERM/SIGINT into a flag that the loop polls between steps, so a signal never
  interrupts a step or a checkpoint write (a second signal during the save is absorbed)."""

  def __init__(self):
    self.signum = None

  def __call__(self, signum, frame):
    self.signum = signum

  def install(self) -> Callable[[], None]:
    """Sets the handlers; returns the function that puts the previous ones back."""
    if threading.current_thread() is not threading.main_thread():
      return lambda: None  # signal handlers can only be set from the main thread
    previous = {s: signal.signal(s, self) for s in (signal.SIGTERM, signal.SIGINT)}
    def restore():
      for s, handler in previous.items():
        signal.signal(s, handler)
    return restore

  def agreed(self, step: int, every: int = 10) -> bool:
    """Whether any process got a signal; every process must stop at the same step, so with
    several processes they compare flags (a host all-gather) every ``every`` steps."""
    if jax.process_count() == 1:
      return self.signum is not None
    if step % every:
      return False
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
    if self.signum is None and np.any(flags):
      self.signum = int(np.max(flags))
    return bool(np.any(flags))


class _SkipStreak:
  """Non-finite steps are skipped inside the step; the host reads each step's flag one step
  late (so the device always has the next step queued) and stops after too many in a row."""

  def __init__(self, limit: int, start_step: int):
    self.limit, self.start_step = limit, start_step
    self.count, self.previous = 0, None

  def observe(self, step: int, metrics: dict) -> None:
    if self.previous is not None:
      self.count = self.count + 1 if float(self.previous) else 0
      if self.count >= self.limit:
        raise FloatingPointError(
            f"Training stopped at step {step}: {self.count} steps in a row had a "
            "non-finite loss or gradients and were skipped. Likely causes: a learning "
            "rate too high (config.optim.learning_rate), no gradient clipping "
            "(config.optim.grad_clip_norm), or extreme values in the data."
            + (f" This run resumed from the checkpoint at step {self.start_step}; if that "
               "state is the problem, start afresh with another --workdir."
               if self.start_step > 0 else ""))
    self.previous = metrics["train/skipped_steps"]

  def in_streak(self, metrics: dict) -> bool:
    """Whether the last steps are skipping (not a state to checkpoint)."""
    return self.count > 0 or bool(float(metrics["train/skipped_steps"]))


class _Progress:
  """The tqdm bar, counting finished steps: dispatch runs ahead of the device, so it counts
  the queued steps whose results are ready (a non-blocking check, no host sync)."""

  def __init__(self, total: int, start: int):
    from tqdm.auto import tqdm
    self.bar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)
    self.unfinished = collections.deque()

  def dispatched(self, metrics: dict) -> None:
    self.unfinished.append(metrics["train/loss"])
    while self.unfinished and self.unfinished[0].is_ready():
      self.unfinished.popleft()
      self.bar.update(1)

  def synced(self, summary: dict) -> None:
    """After a host fetch everything dispatched so far has finished."""
    self.bar.update(len(self.unfinished))
    self.unfinished.clear()
    self.bar.set_postfix(loss=f"{summary['train/loss']:.3f}")

  def close(self) -> None:
    self.bar.close()


def _summarise(fetched: list) -> dict:
  """Means of the per-step metrics over the steps that were not skipped; the number of
  skipped steps is summed."""
  skipped = np.asarray([m["train/skipped_steps"] for m in fetched]) > 0
  kept = [m for m, s in zip(fetched, skipped) if not s] or fetched
  summary = {k: float(np.mean([m[k] for m in kept])) for k in fetched[0]}
  summary["train/skipped_steps"] = float(np.sum(skipped))
  return summary


class _Log:
  """Periodic logging: the step metrics stay on the device until a log step fetches them."""

  def __init__(self, every: int, total: int, emit: Callable[[int, dict], None], progress):
    self.every, self.total, self.emit, self.progress = every, total, emit, progress
    self.pending, self.t0, self.steps = [], time.perf_counter(), 0

  def __call__(self, done: int, metrics: dict) -> None:
    self.pending.append(metrics)
    self.steps += 1
    if done % self.every and done != self.total:
      return
    summary = _summarise(jax.device_get(self.pending))
    summary["train/steps_per_sec"] = self.steps / (time.perf_counter() - self.t0)
    self.pending, self.t0, self.steps = [], time.perf_counter(), 0
    if self.progress is not None:
      self.progress.synced(summary)
    self.emit(done, summary)


@dataclasses.dataclass
class FitResult:
  """What ``fit`` returns: the model, its trained variables and the final metrics."""
  model: FlowGMM            # eval-mode model (BatchNorm without a device axis)
  variables: dict           # {'params', 'batch_stats', 'prior', ...} for model.apply
  state: TrainState
  metrics: dict             # final eval metrics (empty when no test set was given)
  history: list             # all logged metric dicts
  dequantize_widths: tuple = ()  # per-feature uniform-noise widths of training (build.py)


# ----------------------------------------------------------------------------- fit

def fit(config: ml_collections.ConfigDict, dataset: data_lib.Dataset,
        labeled_idx: np.ndarray, unlabeled_idx: np.ndarray, *,
        workdir: Optional[str] = None, mesh=None,
        log_fn: Optional[Callable[[int, dict], None]] = None,
        initial_variables: Optional[dict] = None) -> FitResult:
  """Trains FlowGMM on ``dataset.x_train[labeled_idx]`` (with labels) and
  ``dataset.x_train[unlabeled_idx]`` (labels hidden); evaluates on the test split.

  With a ``workdir``, writes metrics.jsonl, TensorBoard events, checkpoints (and resumes
  from the latest one) under the workdir's lock (``training/lock.py``); without one,
  nothing is written. ``initial_variables``: start from these instead of the model's own
  initialisation (``build.initial_state``); a checkpoint in the workdir still wins.
  """
  validate_config(config)
  enable_compilation_cache(config.get("compilation_cache_dir", ""))
  mesh = mesh_lib.make_mesh() if mesh is None else mesh
  num_devices = mesh_lib.num_devices(mesh)
  es = config.early_stopping
  unlabeled_idx, heldout_idx = build.heldout_rows(unlabeled_idx, es.holdout_fraction,
                                                  config.seed)
  layout = build.batch_layout(config, len(labeled_idx), len(unlabeled_idx), num_devices)
  settings = build.Settings.from_config(config, dataset)
  progs = build.programs(settings, mesh)
  meta = ckpt_lib.make_meta(config, input_shape=settings.input_shape,
                            num_classes=settings.num_classes, labeled_idx=labeled_idx,
                            unlabeled_idx=unlabeled_idx)

  def inference(variables, step: int = 0) -> trained.TrainedFlowGMM:
    """The one inference path, on the training mesh, for the current variables."""
    return trained.TrainedFlowGMM(progs.eval_model, variables, meta=meta, step=step,
                                  mesh=mesh, batch_size=config.eval_batch_size)

  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  state = build.initial_state(
      config, progs, dataset, labeled_idx, unlabeled_idx, layout, init_rng,
      encode=lambda v, x: inference(v).encode(x, preprocessed=True),
      initial_variables=initial_variables)
  state = mesh_lib.replicate(mesh, state)
  rng = mesh_lib.replicate(mesh, jnp.asarray(train_rng, jnp.uint32))
  batches = data_lib.SemiSupervisedBatches(
      dataset.x_train, dataset.y_train, labeled_idx, unlabeled_idx,
      labeled_batch_size=layout.labeled, unlabeled_batch_size=layout.unlabeled,
      seed=config.seed)
  total = config.num_train_steps
  history: list = []
  early_stopping = (EarlyStopping(es, dataset.x_train[heldout_idx], total)
                    if len(heldout_idx) else None)

  # Closed in reverse order: the progress bar, the metric files, the checkpoint writer
  # (waiting for pending writes), the signal handlers, the lock.
  with contextlib.ExitStack() as cleanup:
    checkpointer = writer = None
    if workdir is not None:
      os.makedirs(workdir, exist_ok=True)
      cleanup.enter_context(WorkdirLock.hold(workdir))
      # The handlers stay until the checkpoint writer is closed: a signal during the final
      # save or the error cleanup is absorbed too.
      signals = _SignalFlag()
      cleanup.callback(signals.install())
      checkpointer = ckpt_lib.Checkpointer(workdir, max_to_keep=config.keep_checkpoints,
                                           meta=meta, soft_meta=config.optim.to_dict())
      # Pending checkpoint writes finish before anyone (the error cleanup, the user) looks
      # at the workdir; after an error, the original error is the one reported.
      cleanup.push(_closing_quietly_on_error(checkpointer.close))
      restored = checkpointer.restore(state)
      if restored is not None:
        state = restored
      writer = MetricWriter(workdir, resume_step=int(jax.device_get(state.step)))
      cleanup.callback(writer.close)
    start_step = int(jax.device_get(state.step))
    if workdir is not None and start_step >= total and jax.process_index() == 0:
      print(f"note: {workdir} already holds a run trained for {start_step} steps "
            f"(config.num_train_steps={total}); evaluating it without training. Use "
            "another --workdir for a new run.", file=sys.stderr, flush=True)
    progress = None
    if config.progress_bar and jax.process_index() == 0:
      progress = _Progress(total, start_step)
      cleanup.callback(progress.close)

    def emit(done: int, metrics: dict) -> None:
      history.append({"step": done, **metrics})
      if writer:
        writer.write(done, metrics)
      if log_fn:
        log_fn(done, metrics)

    log = _Log(config.log_every_steps, total, emit, progress)
    skips = _SkipStreak(config.max_consecutive_skips, start_step)
    eval_metrics = {}
    # hostdata: each process builds and reads only the batch rows its devices hold.
    local_rows = mesh_lib.process_rows(mesh, layout.size)
    for step in range(start_step, total):
      batch = build.host_batch(batches, layout, step, num_devices, rows=local_rows)
      state, metrics = progs.train_step(
          state, mesh_lib.shard_process_rows(mesh, batch, layout.size), rng)
      done = step + 1
      skips.observe(step, metrics)
      if progress is not None:
        progress.dispatched(metrics)
      log(done, metrics)
      if len(dataset.x_test) and (done % config.eval_every_steps == 0 or done == total):
        eval_metrics = evaluate(inference(state.variables(), done), dataset.x_test,
                                dataset.y_test)
        emit(done, eval_metrics)
        if writer and config.plots and done != total:  # the final figures: finish_run
          finish_run.figures_to_tensorboard(meta, state.variables(), dataset, workdir, done)
      stop = False
      if early_stopping and early_stopping.due(done):
        nll, stop = early_stopping.check(done, inference(state.variables(), done))
        history.append({"step": done, "early_stopping/heldout_nll": nll})
        if writer:
          writer.write(done, {"early_stopping/heldout_nll": nll})
      if early_stopping and (stop or done == total):
        # Continue from the best held-out NLL: its parameters become the final state.
        state = early_stopping.best_state(state, mesh)
        history.append({"step": done, "early_stopping/best_step": early_stopping.best_step,
                        "early_stopping/stopped": float(stop)})
        eval_metrics = {}
      if checkpointer and (stop or done % config.checkpoint_every_steps == 0 or done == total):
        # Not in the middle of a run of skipped steps: the state that keeps producing
        # non-finite steps (say after one huge update) is not one to resume from.
        if not skips.in_streak(metrics):
          checkpointer.save(state, force=stop)
      if stop:
        break
      if checkpointer and done < total and signals.agreed(done):
        checkpointer.save(state, force=True)
        checkpointer.wait()
        raise Preempted(done, signals.signum)

    if not eval_metrics and len(dataset.x_test):
      eval_metrics = evaluate(inference(state.variables(), int(jax.device_get(state.step))),
                              dataset.x_test, dataset.y_test)
    if checkpointer and int(jax.device_get(state.step)) != checkpointer.latest_step():
      checkpointer.save(state, force=True)
  return FitResult(model=progs.eval_model, variables=jax.device_get(state.variables()),
                   state=state, metrics=eval_metrics, history=history,
                   dequantize_widths=settings.dequantize_widths)


def _closing_quietly_on_error(close: Callable[[], None]):
  """An ExitStack exit function: ``close()``; when an error is already on its way out, a
  second one from closing is dropped so that the first is the one reported."""
  def exit_fn(exc_type, exc, tb):
    if exc_type is None:
      close()
    else:
      try:
        close()
      except Exception:  # noqa: BLE001 - the original error is the one to report
        pass
    return False
  return exit_fn


# ----------------------------------------------------------------------------- a whole run

def initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """Starts JAX's multi-process runtime when the config asks for it: with
  ``config.distributed.*`` set, on any machines; with only ``config.multihost``, by JAX's
  automatic cluster detection (SLURM, Open MPI, TPU pods). Raises ValueError in one line."""
  d = config.distributed
  if not (d.coordinator_address or config.multihost):
    return
  if jax.distributed.is_initialized():
    return  # already started (e.g. by the caller); process_count() here would start XLA
  kw = {}
  if d.coordinator_address:
    kw = dict(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
              process_id=d.process_id)
  try:
    jax.distributed.initialize(**kw)
  except (ValueError, RuntimeError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(
        f"Could not start the multi-process runtime ({first}). Outside SLURM, Open MPI and "
        "TPU pods give --coordinator_address=HOST:PORT, --num_processes=N and "
        "--process_id=I (or config.distributed.*) on every process.") from None


def check_workdir(workdir: str) -> None:
  """Rejects a workdir that is a file or cannot be written, before anything is created."""
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"--workdir={workdir} is a file, not a directory; give a directory path.")
  probe = path
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise ValueError(f"--workdir={workdir}: {probe} is a file, not a directory.")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise ValueError(f"--workdir={workdir}: {probe} is not writable; choose a directory you "
                     "can write to.")


def split_for_run(config: ml_collections.ConfigDict, dataset
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(labeled_idx, unlabeled_idx, validation_idx) of a run: the config's split
  (``data.make_split``), with ``config.calibration.validation_fraction`` of the labelled
  pool held out for calibration (``calibration.split_validation``)."""
  labeled_idx, unlabeled_idx = data_lib.make_split(config, dataset)
  return calibration.split_validation(labeled_idx, unlabeled_idx, dataset.y_train,
                                      config.calibration.validation_fraction, config.seed)


def _remove_what_was_created(workdir: str, created: bool, existing: set) -> None:
  """After a failure before the first checkpoint: removes what this run created in
  ``workdir`` (all of it when the run created the workdir)."""
  ckpt_dir = os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR)
  has_ckpt = os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))
  if has_ckpt or jax.process_index() != 0:
    return
  if created:
    shutil.rmtree(workdir, ignore_errors=True)
  elif os.path.isdir(workdir):
    for name in set(os.listdir(workdir)) - existing - {run_files.LOCK_FILE}:
      path = os.path.join(workdir, name)
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
      else:
        os.remove(path)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the experiment described by ``config``; writes everything under ``workdir``.

  Returns the final results (also written to ``workdir/results.json``).
  """
  validate_config(config)
  initialize_distributed(config)
  check_workdir(workdir)
  # Load (and validate) the data before creating anything in the workdir, so a bad path or a
  # bad file leaves nothing half-written behind.
  dataset = data_lib.load_dataset(config)
  labeled_idx, unlabeled_idx, validation_idx = split_for_run(config, dataset)
  created = not os.path.exists(workdir)
  existing = set() if created else set(os.listdir(workdir))
  with WorkdirLock.hold(workdir):
    try:
      if jax.process_index() == 0:
        run_files.write_data_transform(workdir, dataset.info)
        run_files.write_config(workdir, config)
      result = fit(config, dataset, labeled_idx, unlabeled_idx, workdir=workdir)
    except BaseException:
      # A run that fails before its first checkpoint (bad model config, divergence at
      # step 3, Ctrl-C during compilation) leaves nothing half-written; one with
      # checkpoints is kept so that rerunning the command resumes it. ``fit`` has waited
      # for pending checkpoint writes.
      _remove_what_was_created(workdir, created, existing)
      raise
    results = {
        "step": int(jax.device_get(result.state.step)),
        "dataset": dataset.name,
        "num_labeled": int(len(labeled_idx)),
        "num_unlabeled": int(len(unlabeled_idx)),
        "num_test": int(len(dataset.x_test)),
        "evaluated_on": dataset.evaluated_on,  # what eval/* and num_test counted
        "num_validation": int(len(validation_idx)),
        **result.metrics,
    }
    results.update(finish_run.finish_run(config, workdir, dataset, labeled_idx,
                                         validation_idx))
    if jax.process_index() == 0:
      run_files.write_json(os.path.join(workdir, run_files.RESULTS_FILE), results)
  return results
