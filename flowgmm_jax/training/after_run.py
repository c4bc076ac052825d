"""What happens to a run after its last step, and evaluating a saved run without training.

* ``finish_run``: called by ``train_and_evaluate`` once the final checkpoint is written.
  Reloads the run with ``trained.load`` (so every run also checks the load path), fits the
  calibration temperature on the held-out labelled rows, writes ``calibration.json`` and
  the figures in ``plots/`` (also added to TensorBoard), and returns the entries it adds to
  ``results.json``.
* ``evaluate_saved_run``: ``python -m experiments.main --mode=eval``; restores a checkpoint
  read-only and writes ``eval/metrics.json`` and ``eval/predictions.npz``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

import jax
import ml_collections
import numpy as np

from flowgmm_jax import calibration as calibration_lib
from flowgmm_jax import data as data_lib
from flowgmm_jax import evaluation
from flowgmm_jax import trained


def split_validation(config: ml_collections.ConfigDict, dataset, labeled_idx, unlabeled_idx):
  """(labeled_idx, unlabeled_idx, validation_idx): ``config.calibration.validation_fraction``
  of the labelled pool is held out for calibration; those rows' inputs join the unlabelled
  pool (only their labels are withheld from training)."""
  labeled, validation = calibration_lib.hold_out_validation(
      labeled_idx, dataset.y_train, config.calibration.validation_fraction, config.seed)
  if len(validation):
    unlabeled_idx = np.concatenate([np.asarray(unlabeled_idx), validation])
  return labeled, unlabeled_idx, validation


CONFIG_FILE = "config.json"


def start_run(config: ml_collections.ConfigDict, workdir: str, dataset) -> None:
  """Writes what a later ``load`` / ``experiments.plot`` needs besides the checkpoint: the
  feature transform (raw rows -> model rows) and the run's config (``config.json``)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  trained.save_data_transform(workdir, dataset.info)
  tmp = os.path.join(workdir, CONFIG_FILE + ".tmp")
  with open(tmp, "w") as f:
    f.write(config.to_json(indent=2, sort_keys=True))
  os.replace(tmp, os.path.join(workdir, CONFIG_FILE))


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found; the run was made by an older version, so "
                            "pass its config: --config=configs/X.py.")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def write_plots(config: ml_collections.ConfigDict, workdir: str, step: Optional[int] = None,
                tensorboard: bool = False) -> list:
  """Rebuilds the run's data and split from ``config`` and writes ``workdir/plots/``."""
  from flowgmm_jax import plots
  model = trained.load(workdir, step)
  dataset = data_lib.load_dataset(config)
  labeled_idx, unlabeled_idx = data_lib.make_split(config, dataset)
  labeled_idx, _, _ = split_validation(config, dataset, labeled_idx, unlabeled_idx)
  record = None
  if model.temperature != 1.0:
    record = {"temperature": model.temperature}
  paths = plots.write_run_plots(model, dataset, workdir, labeled_idx=labeled_idx,
                                calibration=record)
  if tensorboard:
    plots.add_to_tensorboard(paths, workdir, model.step)
  return paths


def figures_to_tensorboard(meta: dict, variables, dataset, workdir: str, step: int) -> None:
  """The cheap figures of the model at an evaluation step, as TensorBoard images only (toy:
  data and latent planes; images: samples and class means). Never raises."""
  if jax.process_index() != 0:
    return
  import tempfile
  try:
    from flowgmm_jax import plots
    model = trained.from_variables(meta, jax.device_get(variables), step=step)
    with tempfile.TemporaryDirectory() as tmp:
      paths = []
      if model.image:
        paths.append(plots.sample_grid(model, os.path.join(tmp, "samples.png"),
                                       class_names=dataset.class_names))
        paths.append(plots.class_means(model, os.path.join(tmp, "class_means.png"),
                                       dataset.class_names))
      elif model.num_dims == 2 and dataset.kind == "toy" and len(dataset.x_test):
        # Decision regions with the test points (faint); the labels are in the final figure.
        paths.append(plots.data_plane(model, dataset.x_test[:0], dataset.y_test[:0],
                                      dataset.x_test, os.path.join(tmp, "data_plane.png")))
        paths.append(plots.latent_plane(model, dataset.x_test, dataset.y_test,
                                        os.path.join(tmp, "latent_plane.png")))
      plots.add_to_tensorboard(paths, workdir, step)
  except Exception as e:  # noqa: BLE001 - a figure must never stop training
    print(f"warning: step {step} figures not written to TensorBoard "
          f"({type(e).__name__}: {e})", file=sys.stderr)


def _flat(prefix: str, d: dict) -> dict:
  return {f"{prefix}{k}": float(v) for k, v in d.items()}


def finish_run(config: ml_collections.ConfigDict, workdir: str, dataset, labeled_idx,
               validation_idx) -> dict:
  """Calibration and plots for the finished run in ``workdir``; returns results entries."""
  if jax.process_index() != 0:
    return {}
  if jax.process_count() > 1:
    # Reading the checkpoint back goes through orbax's cross-process barriers, which the
    # other processes (already done) would never reach: draw and calibrate afterwards.
    print(f"note: multi-process run; for figures run python -m experiments.plot "
          f"--workdir={workdir} in one process", file=sys.stderr)
    return {}
  try:
    model = trained.load(workdir, calibrated=False)
  except (ValueError, OSError) as e:  # the run itself succeeded: keep its results
    print(f"warning: no calibration or figures; the saved run did not load back "
          f"({type(e).__name__}: {e})", file=sys.stderr)
    return {}
  results, record = {}, None
  if len(validation_idx):
    logits_val = model.logits(dataset.x_train[validation_idx], preprocessed=True)
    logits_test = model.logits(dataset.x_test, preprocessed=True) if len(dataset.x_test) else None
    record = calibration_lib.calibrate(logits_val, dataset.y_train[validation_idx],
                                       logits_test, dataset.y_test)
    record.update(step=model.step,
                  validation_fraction=float(config.calibration.validation_fraction),
                  validation_rows=[int(i) for i in validation_idx])
    trained.save_calibration(workdir, record)
    results["calibration/temperature"] = record["temperature"]
    results["calibration/num_validation"] = record["num_validation"]
    for when in ("before", "after"):
      if f"test_{when}" in record:
        results.update(_flat(f"calibration/{when}/", record[f"test_{when}"]))
  if config.plots:
    try:
      from flowgmm_jax import plots
      os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
      model.temperature = record["temperature"] if record else 1.0
      paths = plots.write_run_plots(model, dataset, workdir, labeled_idx=labeled_idx,
                                    calibration=record)
      plots.add_to_tensorboard(paths, workdir, model.step)
    except Exception as e:  # noqa: BLE001 - a figure must never cost the run its results
      print(f"warning: plots not written ({type(e).__name__}: {e}); retry with "
            f"python -m experiments.plot --workdir={workdir}", file=sys.stderr)
  return results


# ----------------------------------------------------------------------------- --mode=eval

def _read_user_file(path: str, model: trained.TrainedFlowGMM):
  """(x_raw, y or None) from a user's .npz (arrays 'x' and optional 'y') or .csv (numeric;
  a header row is skipped; one column more than the run's raw features is the label)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"data file {path!r} does not exist (config.data.path).")
  if path.endswith(".npz"):
    with np.load(path) as f:
      if "x" not in f.files:
        raise ValueError(f"{path}: needs an array 'x' (and optionally labels 'y'); has "
                         f"{f.files}.")
      return f["x"], (f["y"] if "y" in f.files else None)
  if path.endswith(".csv"):
    if model.image:
      raise ValueError("image runs evaluate .npz files (uint8 'x' [N, H, W, C]), not .csv.")
    with open(path) as f:
      first = f.readline()
    try:
      [float(v) for v in first.strip().split(",")]
      skip = 0
    except ValueError:
      skip = 1
    table = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
    width = model.num_raw_features
    if table.shape[1] == width + 1:
      return table[:, :-1], table[:, -1].astype(np.int64)
    if table.shape[1] == width:
      return table, None
    raise ValueError(f"{path}: {table.shape[1]} columns; this run needs {width} features "
                     f"(plus an optional last label column).")
  raise ValueError(f"data file {path!r}: unknown format; use .npz (arrays 'x', 'y') or .csv.")


def evaluate_saved_run(config: ml_collections.ConfigDict, workdir: str,
                       step: Optional[int] = None) -> dict:
  """Evaluates a saved checkpoint (read-only) on the config's test split, or on the user's
  file given as ``config.data.path`` when that is not the file the run was trained on.

  Writes ``workdir/eval/metrics.json`` and ``workdir/eval/predictions.npz`` (probs [N, K]
  (calibrated when the run was), predicted [N], labels [N] where known, log_px [N],
  bits_per_dim [N] for images). Returns the metrics.
  """
  model = trained.load(workdir, step)
  user_path = config.data.path
  if user_path and user_path != model.meta["data"].get("path", "") and os.path.isfile(user_path):
    x, y = _read_user_file(user_path, model)
    out = model.outputs(x)
    source = os.path.abspath(user_path)
  else:
    dataset = data_lib.load_dataset(config)
    if not len(dataset.x_test):
      raise ValueError("the config's dataset has an empty test split; give a file with "
                       "--config.data.path=FILE.npz")
    x, y = dataset.x_test, dataset.y_test
    out = model.outputs(x, preprocessed=True)
    source = f"{dataset.name} test split"
  logits, log_det = out["logits"], out["log_det"]
  log_px = np.asarray(jax.nn.logsumexp(logits, axis=-1)) + log_det
  probs = np.asarray(jax.nn.softmax(logits / model.temperature, axis=-1))
  metrics = {"step": model.step, "source": source, "num_examples": int(len(x)),
             "temperature": model.temperature,
             "nll": float(-log_px.mean()),
             "bpd": float(-log_px.mean() / (model.num_dims * np.log(2.0)))}
  if y is not None:
    y = np.asarray(y).astype(np.int64)
    sums = evaluation.batch_metric_sums(logits, y, log_det, log_weights=model.log_weights())
    metrics.update(evaluation.aggregate_metric_sums([sums], num_dims=model.num_dims))
    metrics["num_examples"] = int(metrics["num_examples"])
    if model.temperature != 1.0:
      cal = calibration_lib.metrics(logits, y, model.temperature)
      metrics.update({f"{k}_calibrated": v for k, v in cal.items()})
  arrays = {"probs": probs.astype(np.float32), "predicted": probs.argmax(1).astype(np.int32),
            "log_px": log_px.astype(np.float32)}
  if y is not None:
    arrays["labels"] = y.astype(np.int32)
  if model.image:
    arrays["bits_per_dim"] = (-log_px / (model.num_dims * np.log(2.0))).astype(np.float32)
  out_dir = os.path.join(workdir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  tmp = os.path.join(out_dir, "predictions.tmp.npz")
  np.savez(tmp, **arrays)
  os.replace(tmp, os.path.join(out_dir, "predictions.npz"))
  tmp = os.path.join(out_dir, "metrics.json.tmp")
  with open(tmp, "w") as f:
    json.dump(metrics, f, indent=2, sort_keys=True)
  os.replace(tmp, os.path.join(out_dir, "metrics.json"))
  return metrics
