"""``python -m experiments.main --mode=eval``: evaluate a saved run without training.

Read-only for the run (no lock is taken; the checkpoints are only read): restores a
checkpoint with ``trained.load`` and writes ``eval/metrics.json`` and
``eval/predictions.npz``.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from flowgmm_jax import calibration as calibration_lib
from flowgmm_jax import data as data_lib
from flowgmm_jax import evaluation, flowgmm, run_files, trained


def read_user_file(path: str, model: trained.TrainedFlowGMM):
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
                       step: int | None = None) -> dict:
  """Evaluates a saved checkpoint (read-only) on the config's test split, or on the user's
  file given as ``config.data.path`` when that is not the file the run was trained on.

  Writes ``workdir/eval/metrics.json`` and ``workdir/eval/predictions.npz`` (probs [N, K]
  (calibrated when the run was), predicted [N], labels [N] where known, log_px [N],
  bits_per_dim [N] for images). Returns the metrics.
  """
  model = trained.load(workdir, step)
  user_path = config.data.path
  if user_path and user_path != model.meta["data"].get("path", "") and os.path.isfile(user_path):
    x, y = read_user_file(user_path, model)
    out = model.outputs(x, keys=("log_det", "logits"))
    source = os.path.abspath(user_path)
  else:
    dataset = data_lib.load_dataset(config)
    if not len(dataset.x_test):
      raise ValueError("the config's dataset has an empty test split; give a file with "
                       "--config.data.path=FILE.npz")
    x, y = dataset.x_test, dataset.y_test
    out = model.outputs(x, preprocessed=True, keys=("log_det", "logits"))
    source = f"{dataset.name} test split"
  logits, log_det = out["logits"], out["log_det"]
  log_px = flowgmm.log_px(logits, log_det)
  probs = np.asarray(jax.nn.softmax(logits / model.temperature, axis=-1))
  metrics = {"step": model.step, "source": source, "num_examples": int(len(x)),
             "temperature": model.temperature,
             "nll": float(-log_px.mean()),
             "bpd": float(flowgmm.bits_per_dim(-log_px.mean(), model.num_dims))}
  if y is not None:
    y = np.asarray(y).astype(np.int64)
    metrics.update(evaluation.metrics_from_outputs(
        logits, log_det, y, log_weights=model.log_weights(), num_dims=model.num_dims))
    metrics["num_examples"] = int(metrics["num_examples"])
    if model.temperature != 1.0:
      cal = calibration_lib.metrics(logits, y, model.temperature)
      metrics.update({f"{k}_calibrated": v for k, v in cal.items()})
  arrays = {"probs": probs.astype(np.float32), "predicted": probs.argmax(1).astype(np.int32),
            "log_px": log_px.astype(np.float32)}
  if y is not None:
    arrays["labels"] = y.astype(np.int32)
  if model.image:
    arrays["bits_per_dim"] = flowgmm.bits_per_dim(-log_px, model.num_dims).astype(np.float32)
  out_dir = os.path.join(workdir, run_files.EVAL_DIR)
  run_files.write_npz(os.path.join(out_dir, "predictions.npz"), **arrays)
  run_files.write_json(os.path.join(out_dir, "metrics.json"), metrics)
  return metrics
