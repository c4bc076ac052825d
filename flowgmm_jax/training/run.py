"""A whole run of the command line: ``train_and_evaluate(config, workdir)``.

config -> data -> the run's rows (``data.rows.split_rows``) -> ``loop.fit`` (checkpoints,
metrics) -> temperature (``temperature.fit_temperature``) and figures -> results.json.
"""

from __future__ import annotations

import os
import shutil

import jax
import ml_collections

from flowgmm_jax import checkpoint as ckpt_lib
from flowgmm_jax import data as data_lib
from flowgmm_jax import run_files
from flowgmm_jax.data.rows import split_rows
from flowgmm_jax.training import finish_run
from flowgmm_jax.training.config import validate_config
from flowgmm_jax.training.lock import WorkdirLock
from flowgmm_jax.training.loop import fit


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
  rows = split_rows(config, dataset)
  created = not os.path.exists(workdir)
  existing = set() if created else set(os.listdir(workdir))
  with WorkdirLock.hold(workdir):
    try:
      if jax.process_index() == 0:
        run_files.write_data_transform(workdir, dataset.info)
        run_files.write_config(workdir, config)
      result = fit(config, dataset, rows, workdir=workdir)
    except BaseException as e:
      # A run that fails before its first checkpoint (bad model config, divergence at
      # step 3, Ctrl-C during compilation) leaves nothing half-written; one with
      # checkpoints is kept so that rerunning the command resumes it, and so is one whose
      # checkpoint could not be written (a full disk): its config.json, metrics.jsonl and
      # checkpoint_errors.log are what the user needs. ``fit`` has waited for pending
      # checkpoint writes.
      if not isinstance(e, ckpt_lib.CheckpointSaveError):
        _remove_what_was_created(workdir, created, existing)
      raise
    results = {
        "step": int(jax.device_get(result.state.step)),
        "dataset": dataset.name,
        **{f"num_{name}": count for name, count in rows.counts().items()},
        "num_test": int(len(dataset.x_test)),
        "evaluated_on": dataset.evaluated_on,  # what eval/* and num_test counted
        **result.metrics,
    }
    if result.best_step is not None:
      results["early_stopping/best_step"] = int(result.best_step)
    results.update(finish_run.finish_run(config, workdir, dataset, rows))
    if jax.process_index() == 0:
      run_files.write_json(os.path.join(workdir, run_files.RESULTS_FILE), results)
  return results
