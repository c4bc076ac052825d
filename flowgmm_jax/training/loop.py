"""The one training loop: ``train_and_evaluate(config, workdir)``.

config -> data source -> labelled/unlabelled split -> batches -> train step -> evaluation ->
metrics.jsonl / TensorBoard / checkpoints -> results.json. Every entry point (the command
line, ``FlowGMMClassifier``, a notebook) runs ``fit`` below; none has a loop of its own.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import signal
import threading
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import scipy.special

from flowgmm_jax import data as data_lib
from flowgmm_jax import evaluation
from flowgmm_jax import losses
from flowgmm_jax.flowgmm import FlowGMM
from flowgmm_jax.training import after_run
from flowgmm_jax.training import checkpoint as ckpt_lib
from flowgmm_jax.training import optim
from flowgmm_jax.training import step as step_lib
from flowgmm_jax.training.config import validate_config
from flowgmm_jax.training.state import TrainState, create_train_state
from flowgmm_jax.training.writer import MetricWriter


# ----------------------------------------------------------------------------- building

def place_means_at_labeled_centroids(model: FlowGMM, variables: dict, x_labeled: np.ndarray,
                                     y_labeled: np.ndarray) -> dict:
  """``variables`` with each prior mean mu_k moved to the centroid of f(x) over the
  labelled rows of class k (``x_labeled: [N, ...]``, ``y_labeled: [N]``), f as initialised.

  At the start of training the classifier is then the nearest-class-mean rule in the
  latent space, the strongest simple rule with a handful of labels, instead of a random
  assignment that the few labelled rows must first undo. A class without labelled rows
  keeps its initial mean.
  """
  z = np.asarray(model.apply(variables, jnp.asarray(x_labeled, jnp.float32))[0], np.float64)
  collection = "params" if "means" in variables.get("params", {}).get("prior", {}) else "prior"
  means = np.array(variables[collection]["prior"]["means"], np.float64)
  for k in range(means.shape[0]):
    rows = z[np.asarray(y_labeled) == k]
    if len(rows):
      means[k] = rows.mean(axis=0)
  prior_vars = dict(variables[collection]["prior"])
  prior_vars["means"] = jnp.asarray(means, variables[collection]["prior"]["means"].dtype)
  return {**variables, collection: {**variables[collection], "prior": prior_vars}}


# ----------------------------------------------------------------------------- evaluation

def forward_all(eval_step, variables, x: np.ndarray, mesh, batch_size: int):
  """(class_log_joint [N, K], log_det [N]) of the eval-mode model over all rows of ``x``,
  in padded chunks of a static shape."""
  n_dev = mesh.shape[step_lib.DATA_AXIS]
  batch_size = max(n_dev, (batch_size // n_dev) * n_dev)
  def forward(xb):
    clj, ld = eval_step(variables, step_lib.shard_batch(mesh, xb))
    return step_lib.to_host(clj), step_lib.to_host(ld)
  return evaluation.map_in_chunks(forward, x, batch_size)


def evaluate(eval_step, variables, x: np.ndarray, y: np.ndarray, mesh, batch_size: int, *,
             num_dims: int, log_weights: np.ndarray) -> dict:
  """Test metrics over the whole set: accuracy, ECE (15 bins), NLL and bits/dim.

  ``eval/nll`` is the marginal -log p(x) and ``eval/nll_given_label`` is -log p(x | y_true)
  (nats per example); the ``bpd`` versions divide by D log 2.
  """
  clj, log_det = forward_all(eval_step, variables, x, mesh, batch_size)
  sums = evaluation.batch_metric_sums(clj, y, log_det, log_weights=log_weights)
  metrics = evaluation.aggregate_metric_sums([sums], num_dims=num_dims, num_bins=15)
  return {f"eval/{k}": float(v) for k, v in metrics.items()}


def batch_sizes(config: ml_collections.ConfigDict, num_labeled: int, num_unlabeled: int,
                num_devices: int) -> tuple[int, int]:
  """(labelled, unlabelled) rows per step: ``config.data``'s sizes, each capped at its pool
  (a larger batch would only repeat rows) rounded up to a multiple of the device count, so
  that the global batch still splits evenly; 0 unlabelled rows without a pool."""
  round_up = lambda n: -(-n // num_devices) * num_devices
  bl, bu = config.data.labeled_batch_size, config.data.unlabeled_batch_size
  if bl > num_labeled:
    bl = round_up(num_labeled)
  if num_unlabeled == 0:
    bu = 0
  elif bu > num_unlabeled:
    bu = round_up(num_unlabeled)
  return bl, bu


def heldout_rows(unlabeled_idx: np.ndarray, fraction: float, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Splits the unlabelled pool into (rows to train on, rows held out for early stopping).

  ``round(fraction * N_u)`` rows, at least 16 (never more than half the pool) and at most
  4096, chosen with ``seed``; no held-out rows when ``fraction`` is 0 or the pool has
  fewer than 32 rows.
  """
  n = len(unlabeled_idx)
  if fraction <= 0 or n < 32:
    return unlabeled_idx, unlabeled_idx[:0]
  count = int(min(max(round(fraction * n), 16), n // 2, 4096))
  perm = np.random.default_rng([seed, 7]).permutation(n)
  return np.sort(unlabeled_idx[perm[count:]]), np.sort(unlabeled_idx[perm[:count]])


# ----------------------------------------------------------------------------- training

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


def split_fingerprint(labeled_idx: np.ndarray, unlabeled_idx: np.ndarray) -> str:
  """A short hash of the labelled/unlabelled split, stored in checkpoints so that a resume
  on another split (a changed seed, data file or label count) is caught."""
  h = hashlib.sha256()
  for a in (labeled_idx, unlabeled_idx):
    h.update(np.asarray(a, np.int64).tobytes())
    h.update(b"|")
  return h.hexdigest()[:16]


@dataclasses.dataclass
class FitResult:
  """What ``fit`` returns: the model, its trained variables and the final metrics."""
  model: FlowGMM            # eval-mode model (BatchNorm without a device axis)
  variables: dict           # {'params', 'batch_stats', 'prior', ...} for model.apply
  state: TrainState
  metrics: dict             # final eval metrics (empty when no test set was given)
  history: list             # all logged metric dicts


def _interleave(batch: dict, labeled: int, unlabeled: int, num_devices: int) -> dict:
  """Reorders [labelled | unlabelled] rows so every device gets both parts."""
  if num_devices == 1 or labeled % num_devices or unlabeled % num_devices:
    return batch
  def mix(a):
    la = a[:labeled].reshape((num_devices, labeled // num_devices) + a.shape[1:])
    ua = a[labeled:].reshape((num_devices, unlabeled // num_devices) + a.shape[1:])
    return np.concatenate([la, ua], axis=1).reshape(a.shape)
  return {k: mix(v) for k, v in batch.items()}


def _summarise(fetched: list) -> dict:
  """Means of the per-step metrics over the steps that were not skipped; the number of
  skipped steps is summed."""
  skipped = np.asarray([m["train/skipped_steps"] for m in fetched]) > 0
  kept = [m for m, s in zip(fetched, skipped) if not s] or fetched
  summary = {k: float(np.mean([m[k] for m in kept])) for k in fetched[0]}
  summary["train/skipped_steps"] = float(np.sum(skipped))
  return summary


def fit(config: ml_collections.ConfigDict, dataset: data_lib.Dataset,
        labeled_idx: np.ndarray, unlabeled_idx: np.ndarray, *,
        workdir: Optional[str] = None, mesh=None,
        log_fn: Optional[Callable[[int, dict], None]] = None) -> FitResult:
  """Trains FlowGMM on ``dataset.x_train[labeled_idx]`` (with labels) and
  ``dataset.x_train[unlabeled_idx]`` (labels hidden); evaluates on the test split.

  With a ``workdir``, writes metrics.jsonl, TensorBoard events, checkpoints (and resumes
  from the latest one) and results.json; without one, nothing is written.
  """
  validate_config(config)
  mesh = step_lib.make_mesh() if mesh is None else mesh
  num_devices = mesh.shape[step_lib.DATA_AXIS]
  image = dataset.kind == "image"
  input_shape = tuple(dataset.x_train.shape[1:])
  num_dims = int(np.prod(input_shape))
  es = config.early_stopping
  unlabeled_idx, heldout_idx = heldout_rows(unlabeled_idx, es.holdout_fraction, config.seed)
  bl, bu = batch_sizes(config, len(labeled_idx), len(unlabeled_idx), num_devices)
  global_batch = bl + bu
  if global_batch % num_devices:
    raise ValueError(
        f"labeled_batch_size + unlabeled_batch_size = {global_batch} must be divisible by the "
        f"number of devices ({num_devices}); change config.data.*_batch_size.")

  rng = jax.random.PRNGKey(config.seed)
  init_rng, train_rng = jax.random.split(rng)
  train_model = FlowGMM.from_config(config, input_shape, dataset.num_classes, image=image,
                                    bn_axis_name=step_lib.DATA_AXIS)
  eval_model = FlowGMM.from_config(config, input_shape, dataset.num_classes, image=image)
  # Data-dependent initialisation (ActNorm) sees a real labelled+unlabelled batch.
  init_rows = np.concatenate([labeled_idx[:bl], unlabeled_idx[:max(bu, 1)]])[:max(global_batch, 2)]
  x_init = jnp.asarray(dataset.x_train[init_rows], jnp.float32)
  variables = eval_model.init({"params": init_rng, "dropout": init_rng}, x_init)
  if config.prior.means_init == "labeled":
    variables = place_means_at_labeled_centroids(
        eval_model, variables, dataset.x_train[labeled_idx], dataset.y_train[labeled_idx])
  tx = optim.make_optimizer(
      config.optim.optimizer, config.optim.learning_rate, config.num_train_steps,
      schedule=config.optim.schedule, warmup_steps=config.optim.warmup_steps,
      weight_decay=config.optim.weight_decay, grad_clip_norm=config.optim.grad_clip_norm)
  state = step_lib.replicate(mesh, create_train_state(variables, tx, train_rng))

  checkpointer = writer = None
  if workdir is not None:
    os.makedirs(workdir, exist_ok=True)
    meta = {"model": config.model.to_dict(), "prior": config.prior.to_dict(),
            "data": {k: config.data[k] for k in ("kind", "name", "path")},
            "input_shape": list(input_shape), "num_classes": int(dataset.num_classes),
            "seed": int(config.seed),
            "split": {"labeled": int(len(labeled_idx)), "unlabeled": int(len(unlabeled_idx)),
                      "fingerprint": split_fingerprint(labeled_idx, unlabeled_idx)}}
    checkpointer = ckpt_lib.Checkpointer(workdir, max_to_keep=config.keep_checkpoints, meta=meta,
                                         soft_meta=config.optim.to_dict())
    restored = checkpointer.restore(state)
    if restored is not None:
      state = restored
    writer = MetricWriter(workdir, resume_step=int(jax.device_get(state.step)))

  augment = None
  if image and (config.augment.crop_padding > 0 or config.augment.flip):
    augment = lambda k, x: data_lib.augment_images(
        k, x, crop_padding=config.augment.crop_padding, flip=config.augment.flip)
  elif not image and config.augment.noise_std > 0:
    augment = functools.partial(data_lib.add_feature_noise, std=config.augment.noise_std)
  cons_weight = 0.0
  if config.loss.consistency_weight > 0:
    cons_weight = functools.partial(
        losses.consistency_weight_ramp, max_weight=config.loss.consistency_weight,
        rampup_steps=config.loss.consistency_rampup_steps)
  label_weight = config.loss.label_weight
  if config.loss.label_weight_per_feature > 0:
    label_weight = config.loss.label_weight_per_feature * num_dims
  train_step = step_lib.make_train_step(
      train_model, tx, mesh, global_batch_size=global_batch,
      objective=config.loss.objective, label_weight=label_weight,
      unlabeled_weight=config.loss.unlabeled_weight, consistency_weight=cons_weight,
      augment=augment, dequantize=image, num_dims=num_dims)
  eval_step = step_lib.make_eval_step(eval_model, mesh)
  batches = data_lib.SemiSupervisedBatches(
      dataset.x_train, dataset.y_train, labeled_idx, unlabeled_idx,
      labeled_batch_size=bl, unlabeled_batch_size=bu, seed=config.seed)
  rng_arg = step_lib.replicate(mesh, jnp.asarray(train_rng, jnp.uint32))

  def run_eval():
    prior_lw = np.asarray(jax.device_get(
        eval_model.apply(state.variables(), method=lambda m: m.prior.log_weights())))
    return evaluate(eval_step, state.variables(), dataset.x_test, dataset.y_test, mesh,
                    config.eval_batch_size, num_dims=num_dims, log_weights=prior_lw)

  # Early stopping: the marginal NLL of held-out unlabelled rows, measured every
  # `es.every_steps`; the best parameters are kept and are what training returns.
  best = {"nll": math.inf, "step": None, "variables": None, "bad": 0}

  def check_heldout(done: int) -> bool:
    """Scores the held-out rows; returns True when training should stop."""
    variables = state.variables()
    clj, log_det = forward_all(eval_step, variables, dataset.x_train[heldout_idx], mesh,
                               config.eval_batch_size)
    nll = float(-np.mean(scipy.special.logsumexp(clj, axis=-1) + log_det))
    entry = {"step": done, "early_stopping/heldout_nll": nll}
    history.append(entry)
    if writer:
      writer.write(done, {k: v for k, v in entry.items() if k != "step"})
    if nll < best["nll"] - es.min_delta * abs(best["nll"]) or best["step"] is None:
      best.update(nll=nll, step=done, variables=jax.device_get(variables), bad=0)
    else:  # no better (a NaN counts as worse)
      best["bad"] += 1
    return es.patience > 0 and best["bad"] >= es.patience

  history = []
  start_step = int(jax.device_get(state.step))
  total = config.num_train_steps
  pbar = None
  if config.progress_bar and jax.process_index() == 0:
    from tqdm.auto import tqdm
    pbar = tqdm(total=total, initial=start_step, desc="train", dynamic_ncols=True)
  t0, steps_since = time.perf_counter(), 0
  metrics_acc = []
  unfinished = collections.deque()  # train/loss of dispatched steps not yet counted
  eval_metrics = {}
  # Non-finite steps are skipped inside the step; the host reads each step's flag one step
  # late (so the device always has the next step queued) and stops after too many in a row.
  consecutive_skips, previous_skipped = 0, None
  signals = _SignalFlag()
  # Handlers stay until fit returns: a signal during the final save or the error cleanup
  # is absorbed too.
  restore_signals = signals.install() if checkpointer else (lambda: None)
  try:
    for step in range(start_step, total):
      host_batch = batches.batch(step)
      host_batch["position"] = np.arange(global_batch, dtype=np.int32)
      host_batch = _interleave(host_batch, bl, bu, num_devices)
      state, metrics = train_step(state, step_lib.shard_batch(mesh, host_batch), rng_arg)
      metrics_acc.append(metrics)  # stays on device; fetched only at log time
      steps_since += 1
      done = step + 1
      if previous_skipped is not None:
        consecutive_skips = consecutive_skips + 1 if float(previous_skipped) else 0
        if consecutive_skips >= config.max_consecutive_skips:
          raise FloatingPointError(
              f"Training stopped at step {step}: {consecutive_skips} steps in a row had a "
              "non-finite loss or gradients and were skipped. Likely causes: a learning "
              "rate too high (config.optim.learning_rate), no gradient clipping "
              "(config.optim.grad_clip_norm), or extreme values in the data."
              + (f" This run resumed from the checkpoint at step {start_step}; if that "
                 "state is the problem, start afresh with another --workdir."
                 if start_step > 0 else ""))
      previous_skipped = metrics["train/skipped_steps"]
      if pbar is not None:
        # The bar counts FINISHED steps: dispatch runs ahead of the device, so count the
        # queued steps whose results are ready (a non-blocking check, no host sync).
        unfinished.append(metrics["train/loss"])
        while unfinished and unfinished[0].is_ready():
          unfinished.popleft()
          pbar.update(1)
      if done % config.log_every_steps == 0 or done == total:
        fetched = jax.device_get(metrics_acc)
        if pbar is not None:  # everything dispatched so far has now finished
          pbar.update(len(unfinished))
          unfinished.clear()
        summary = _summarise(fetched)
        summary["train/steps_per_sec"] = steps_since / (time.perf_counter() - t0)
        t0, steps_since, metrics_acc = time.perf_counter(), 0, []
        history.append({"step": done, **summary})
        if writer:
          writer.write(done, summary)
        if log_fn:
          log_fn(done, summary)
        if pbar is not None:
          pbar.set_postfix(loss=f"{summary['train/loss']:.3f}")
      if done % config.eval_every_steps == 0 or done == total:
        if len(dataset.x_test):
          eval_metrics = run_eval()
          history.append({"step": done, **eval_metrics})
          if writer:
            writer.write(done, eval_metrics)
            if config.plots and done != total:  # the final step's figures: finish_run
              after_run.figures_to_tensorboard(meta, state.variables(), dataset, workdir, done)
          if log_fn:
            log_fn(done, eval_metrics)
      stop = False
      if len(heldout_idx) and (done % es.every_steps == 0 or done == total):
        stop = check_heldout(done)
      if stop or (len(heldout_idx) and done == total):
        # Continue from the best held-out NLL: its parameters become the final state.
        v = best["variables"]
        state = state.replace(params=step_lib.replicate(mesh, v["params"]),
                              batch_stats=step_lib.replicate(mesh, v.get("batch_stats", {})))
        history.append({"step": done, "early_stopping/best_step": best["step"],
                        "early_stopping/stopped": float(stop)})
        eval_metrics = {}
      if checkpointer and (stop or done % config.checkpoint_every_steps == 0 or done == total):
        # Not in the middle of a run of skipped steps: the state that keeps producing
        # non-finite steps (say after one huge update) is not one to resume from.
        if consecutive_skips == 0 and not float(metrics["train/skipped_steps"]):
          checkpointer.save(state, force=stop)
      if stop:
        break
      if checkpointer and done < total and signals.agreed(done):
        checkpointer.save(state, force=True)
        checkpointer.wait()
        raise Preempted(done, signals.signum)
  except BaseException:
    # Whatever stopped the run, pending checkpoint writes finish before anyone (the error
    # cleanup, the user) looks at the workdir.
    if pbar is not None:
      pbar.close()
    if checkpointer:
      try:
        checkpointer.close()
      except Exception:  # the original error is the one to report
        pass
    if writer:
      writer.close()
    restore_signals()
    raise
  if pbar is not None:
    pbar.close()
  if not eval_metrics and len(dataset.x_test):
    eval_metrics = run_eval()
  if checkpointer:
    if int(jax.device_get(state.step)) != checkpointer.latest_step():
      checkpointer.save(state, force=True)
    checkpointer.close()
  if writer:
    writer.close()
  restore_signals()
  return FitResult(model=eval_model, variables=jax.device_get(state.variables()),
                   state=state, metrics=eval_metrics, history=history)


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
  labeled_idx, unlabeled_idx = data_lib.make_split(config, dataset)
  labeled_idx, unlabeled_idx, validation_idx = after_run.split_validation(
      config, dataset, labeled_idx, unlabeled_idx)
  created = not os.path.exists(workdir)
  existing = set() if created else set(os.listdir(workdir))
  try:
    after_run.start_run(config, workdir, dataset)
    result = fit(config, dataset, labeled_idx, unlabeled_idx, workdir=workdir)
  except BaseException:
    # A run that fails before its first checkpoint (bad model config, divergence at step 3,
    # Ctrl-C during compilation) leaves nothing half-written; one with checkpoints is kept
    # so that rerunning the command resumes it. ``fit`` has waited for pending checkpoint
    # writes, and only what this run created is removed.
    ckpt_dir = os.path.join(workdir, "checkpoints")
    has_ckpt = os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))
    if not has_ckpt and jax.process_index() == 0:
      if created:
        shutil.rmtree(workdir, ignore_errors=True)
      elif os.path.isdir(workdir):
        for name in set(os.listdir(workdir)) - existing:
          path = os.path.join(workdir, name)
          if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
          else:
            os.remove(path)
    raise
  results = {
      "step": int(jax.device_get(result.state.step)),
      "dataset": dataset.name,
      "num_labeled": int(len(labeled_idx)),
      "num_unlabeled": int(len(unlabeled_idx)),
      "num_test": int(len(dataset.x_test)),
      "num_validation": int(len(validation_idx)),
      **result.metrics,
  }
  results.update(after_run.finish_run(config, workdir, dataset, labeled_idx, validation_idx))
  if jax.process_index() == 0:
    tmp = os.path.join(workdir, "results.json.tmp")
    with open(tmp, "w") as f:
      json.dump(results, f, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(workdir, "results.json"))
  return results
