"""The one training loop, ``fit``: every entry point (the command line's ``run.py``,
``FlowGMMClassifier``, a notebook) trains through it; none has a loop of its own.

    build (programs.py) -> for each step: the step's batch -> train step -> periodic work
    -> the best parameters (early stopping) -> final evaluation and checkpoint

The periodic work after a step runs in a fixed order (log, evaluation, early stopping,
checkpoint, preemption), each part due by one rule (``itstime``), and every record goes to
one sink (``Records``: the returned history, metrics.jsonl and TensorBoard, ``log_fn``).
Every resource a fit opens (the workdir lock, signal handlers, the checkpoint writer, the
metric files, the progress bar) is closed by one ``contextlib.ExitStack``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowgmm_jax import checkpoint as ckpt_lib
from flowgmm_jax import data as data_lib
from flowgmm_jax import evaluation, trained
from flowgmm_jax import mesh as mesh_lib
from flowgmm_jax.data.rows import Rows, split_rows
from flowgmm_jax.flowgmm import FlowGMM
from flowgmm_jax.training import batching
from flowgmm_jax.training import programs as programs_lib
from flowgmm_jax.training.config import enable_compilation_cache, scaled_for_batch, validate_config
from flowgmm_jax.training.guards import Preempted, SignalFlag, SkipStreak
from flowgmm_jax.training.lock import WorkdirLock
from flowgmm_jax.training.state import TrainState
from flowgmm_jax.training.writer import MetricWriter

__all__ = ["FitResult", "Preempted", "evaluate", "fit", "itstime"]


def itstime(step: int, every: int, total: int) -> bool:
  """Whether work done every ``every`` steps is due after ``step`` steps: at multiples of
  ``every`` and at the last step, ``total`` (the one rule of every periodic part)."""
  return step == total or (every > 0 and step % every == 0)


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


class EarlyStopping:
  """Early stopping on the marginal NLL of the unlabelled rows held out from training
  (``config.early_stopping``, rows: ``Rows.early_stopping``): after ``patience`` checks
  without a relative improvement of ``min_delta``, and not before step ``min_steps``,
  training stops; the best check's parameters become the final state either way."""

  def __init__(self, settings: ml_collections.ConfigDict, x_heldout: np.ndarray):
    self.settings, self.x = settings, x_heldout
    self.best_nll, self.best_step, self.best_variables, self.bad = math.inf, None, None, 0

  def check(self, done: int, model: trained.TrainedFlowGMM) -> tuple[float, bool]:
    """Scores the held-out rows with ``model``; returns (nll, whether to stop)."""
    nll = float(-np.mean(np.asarray(model.log_prob(self.x, preprocessed=True), np.float64)))
    s = self.settings
    if self.best_step is None or nll < self.best_nll - s.min_delta * abs(self.best_nll):
      self.best_nll, self.best_step, self.bad = nll, done, 0
      self.best_variables = jax.device_get(model.variables)
    else:  # no better (a NaN counts as worse)
      self.bad += 1
    return nll, s.patience > 0 and self.bad >= s.patience and done >= s.min_steps

  def best_state(self, state: TrainState, mesh) -> TrainState:
    """``state`` with the best check's parameters and BatchNorm statistics."""
    v = self.best_variables
    return state.replace(params=mesh_lib.replicate(mesh, v["params"]),
                         batch_stats=mesh_lib.replicate(mesh, v.get("batch_stats", {})))


class Records:
  """The one sink of every record: ``history`` (returned by ``fit``), the workdir's
  metrics.jsonl and TensorBoard (``writer``, process 0 only), and ``log_fn``."""

  def __init__(self, writer: MetricWriter | None, log_fn, progress):
    self.history, self.writer, self.log_fn, self.progress = [], writer, log_fn, progress

  def write(self, step: int, metrics: dict) -> None:
    self.history.append({"step": int(step), **metrics})
    if self.writer is not None:
      self.writer.write(step, metrics)
    if self.log_fn is not None:
      self.log_fn(step, metrics)
    if self.progress is not None and "train/loss" in metrics:
      self.progress.set_postfix(loss=f"{metrics['train/loss']:.3f}")


def summarise(fetched: list, seconds: float) -> dict:
  """Means of the per-step metrics over the steps that were not skipped (the number of
  skipped steps is summed) and the steps per second since the last log."""
  skipped = np.asarray([m["train/skipped_steps"] for m in fetched]) > 0
  kept = [m for m, s in zip(fetched, skipped, strict=False) if not s] or fetched
  summary = {k: float(np.mean([m[k] for m in kept])) for k in fetched[0]}
  summary["train/skipped_steps"] = float(np.sum(skipped))
  summary["train/steps_per_sec"] = len(fetched) / max(seconds, 1e-9)
  return summary


@dataclasses.dataclass
class FitResult:
  """What ``fit`` returns: the model, its trained variables and the final metrics."""
  model: FlowGMM            # eval-mode model (BatchNorm without a device axis)
  variables: dict           # {'params', 'batch_stats', 'prior', ...} for model.apply
  state: TrainState
  metrics: dict             # final eval metrics (empty when no test set was given)
  history: list             # every record, in order: {'step': s, name: value, ...}
  best_step: int | None = None  # the step whose parameters these are (early stopping)
  dequantize_widths: tuple = ()  # per-feature uniform-noise widths of training


def fit(config: ml_collections.ConfigDict, dataset: data_lib.Dataset,
        rows: Rows | tuple[np.ndarray, np.ndarray], *,
        workdir: str | None = None, mesh=None,
        log_fn: Callable[[int, dict], None] | None = None) -> FitResult:
  """Trains FlowGMM on ``dataset.x_train[rows.labeled]`` (with labels) and
  ``dataset.x_train[rows.unlabeled]`` (labels hidden), early-stopping on
  ``rows.early_stopping``; evaluates on the test split. ``rows``: a ``data.rows.Rows``, or
  the pools ``(labeled_idx, unlabeled_idx)``, from which ``split_rows`` takes the held-out
  rows as the config says.

  With a ``workdir``, writes metrics.jsonl, TensorBoard events and checkpoints (and resumes
  from the latest one) under the workdir's lock; without one, nothing is written.
  """
  validate_config(config)
  # After the multi-process runtime has started (run.py): the cache's choice of backend
  # would otherwise start XLA.
  enable_compilation_cache(config.get("compilation_cache_dir", ""))
  config = scaled_for_batch(config)
  if not isinstance(rows, Rows):
    rows = split_rows(config, dataset, pools=rows)
  mesh = mesh_lib.make_mesh() if mesh is None else mesh
  progs = programs_lib.programs(programs_lib.program_key(config, dataset), mesh)
  meta = ckpt_lib.make_meta(config, input_shape=dataset.x_train.shape[1:],
                            num_classes=dataset.num_classes, rows=rows)
  batches = batching.Batches(config, dataset, rows, mesh)

  def inference(variables: dict, step: int = 0) -> trained.TrainedFlowGMM:
    """The one inference path, on the training mesh."""
    return trained.TrainedFlowGMM(progs.eval_model, variables, meta=meta, step=step,
                                  mesh=mesh, batch_size=config.eval_batch_size)

  init_rng, train_rng = programs_lib.run_keys(config.seed)
  state = mesh_lib.replicate(mesh, programs_lib.initial_state(
      config, progs, dataset, rows, batches.init_rows(), init_rng,
      encode=lambda v, x: inference(v).encode(x, preprocessed=True)))
  rng = mesh_lib.replicate(mesh, jnp.asarray(train_rng, jnp.uint32))
  total, es = config.num_train_steps, config.early_stopping
  stopper = EarlyStopping(es, dataset.x_train[rows.early_stopping]) if len(
      rows.early_stopping) else None
  has_test = len(dataset.x_test) > 0
  checkpointer, writer, progress, signals = None, None, None, SignalFlag()

  with contextlib.ExitStack() as cleanup:  # closes in reverse order of opening
    if workdir is not None:
      os.makedirs(workdir, exist_ok=True)
      cleanup.enter_context(WorkdirLock.hold(workdir))
      # Until the checkpoint writer has closed, a signal (even during the final save) only
      # sets the flag that the loop reads between steps.
      cleanup.callback(signals.install())
      checkpointer = cleanup.enter_context(ckpt_lib.Checkpointer(
          workdir, max_to_keep=config.keep_checkpoints, meta=meta,
          soft_meta=config.optim.to_dict()))
      state = checkpointer.restore(state) or state
      writer = cleanup.enter_context(MetricWriter(workdir, resume_step=int(
          jax.device_get(state.step))))
    start = int(jax.device_get(state.step))
    if workdir is not None and start >= total and jax.process_index() == 0:
      print(f"note: {workdir} already holds a run trained for {start} steps "
            f"(config.num_train_steps={total}); evaluating it without training. Use "
            "another --workdir for a new run.", file=sys.stderr, flush=True)
    if config.progress_bar and jax.process_index() == 0:
      from tqdm.auto import tqdm
      progress = cleanup.enter_context(tqdm(total=total, initial=start, desc="train"))
    records = Records(writer, log_fn, progress)
    skips = SkipStreak(config.max_consecutive_skips, start)
    pending, clock, eval_metrics = [], time.perf_counter(), {}
    for step in range(start, total):
      state, metrics = progs.train_step(state, batches.on_devices(step), rng)
      done = step + 1
      pending.append(metrics)
      skips.observe(done, metrics)  # raises after too many non-finite steps in a row
      if checkpointer is not None:
        checkpointer.check(done)  # a failed background save stops the run here, in one line
      if itstime(done, config.log_every_steps, total):
        records.write(done, summarise(jax.device_get(pending), time.perf_counter() - clock))
        if progress is not None:
          progress.update(len(pending))
        pending, clock = [], time.perf_counter()
      if has_test and itstime(done, config.eval_every_steps, total):
        eval_metrics = evaluate(inference(state.variables(), done), dataset.x_test,
                                dataset.y_test)
        records.write(done, eval_metrics)
        if writer is not None and config.plots and done != total:  # the last: finish_run
          from flowgmm_jax import plots  # matplotlib only for runs that draw
          plots.figures_to_tensorboard(meta, state.variables(), dataset, workdir, done)
      stop = False
      if stopper is not None and itstime(done, es.check_every_steps, total):
        nll, stop = stopper.check(done, inference(state.variables(), done))
        records.write(done, {"early_stopping/heldout_nll": nll})
      if stopper is not None and (stop or done == total):
        state, eval_metrics = stopper.best_state(state, mesh), {}  # evaluated again below
        records.write(done, {"early_stopping/best_step": stopper.best_step,
                             "early_stopping/stopped": float(stop)})
      if checkpointer is not None and (stop or itstime(done, config.checkpoint_every_steps,
                                                       total)) and not skips.in_streak():
        checkpointer.save(state, params_step=stopper and stopper.best_step, force=stop)
      if stop:
        break
      if checkpointer is not None and done < total and signals.agreed(done):
        checkpointer.save(state, force=True)
        checkpointer.wait()
        raise Preempted(done, signals.signum)

    final_step = int(jax.device_get(state.step))
    if not eval_metrics and has_test:
      eval_metrics = evaluate(inference(state.variables(), final_step), dataset.x_test,
                              dataset.y_test)
    if checkpointer is not None and final_step != checkpointer.latest_step():
      checkpointer.save(state, params_step=stopper and stopper.best_step, force=True)
  return FitResult(model=progs.eval_model, variables=jax.device_get(state.variables()),
                   state=state, metrics=eval_metrics, history=records.history,
                   best_step=stopper.best_step if stopper else None,
                   dequantize_widths=progs.dequantize_widths)
