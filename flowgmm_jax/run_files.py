"""What a run leaves in its workdir, and the readers and writers of its small files.

    workdir/
      checkpoints/<step>/     orbax checkpoints (flowgmm_jax/checkpoint.py)
      checkpoints_damaged/    damaged checkpoints moved aside on resume
      checkpoint_errors.log   only after a checkpoint could not be written: the full errors
      config.json             the run's config (experiments.plot rebuilds the data from it)
      data_transform.npz      tables/text: kept feature columns, standardisation statistics
      metrics.jsonl           one JSON object per logged step
      tensorboard/            TensorBoard events (scalars and figures)
      results.json            the final metrics
      calibration.json        the temperature fitted after training (if any)
      plots/                  the figures of the finished run
      eval/                   --mode=eval: metrics.json, predictions.npz
      .lock                   while a run trains: its host, pid and heartbeat

Every file is written whole to a temporary name and renamed, so a reader never sees half of
one. The training code writes these files; ``trained.load`` only reads them.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

CONFIG_FILE = "config.json"
DATA_TRANSFORM_FILE = "data_transform.npz"
CALIBRATION_FILE = "calibration.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
TENSORBOARD_DIR = "tensorboard"
PLOTS_DIR = "plots"
EVAL_DIR = "eval"
LOCK_FILE = ".lock"
CHECKPOINT_ERRORS_FILE = "checkpoint_errors.log"


def write_json(path: str, obj: Any) -> None:
  """``obj`` as indented JSON at ``path``, atomically."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def write_npz(path: str, **arrays: np.ndarray) -> None:
  """``arrays`` as an .npz at ``path``, atomically."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def write_config(workdir: str, config) -> None:
  """The run's config as ``config.json``."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(config.to_json(indent=2, sort_keys=True))
  os.replace(tmp, path)


def read_config(workdir: str):
  """The run's config (``config.json``) as a ConfigDict."""
  import ml_collections
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found; the run was made by an older version, so "
                            "pass its config: --config=configs/X.py.")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def write_data_transform(workdir: str, info: dict) -> None:
  """The feature transform of a tabular/text run (from ``Dataset.info``): the kept columns
  and the standardisation statistics, so raw rows can be mapped like the training rows.
  Nothing is written for runs without one (images, toy data)."""
  arrays = {k: np.asarray(info[k]) for k in ("kept_feature_columns", "feature_mean",
                                             "feature_std") if k in info}
  if not arrays:
    return
  if "kept_feature_columns" in arrays:
    arrays["num_raw_features"] = np.asarray(
        len(arrays["kept_feature_columns"]) + len(info.get("dropped_feature_columns", ())))
  write_npz(os.path.join(workdir, DATA_TRANSFORM_FILE), **arrays)


def read_data_transform(workdir: str) -> dict:
  """The run's feature transform (``write_data_transform``), or {} when it has none."""
  path = os.path.join(workdir, DATA_TRANSFORM_FILE)
  if not os.path.isfile(path):
    return {}
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def write_calibration(workdir: str, record: dict) -> None:
  """``calibration.json``: {'step', 'temperature', ...} (``calibration.calibrate``)."""
  write_json(os.path.join(workdir, CALIBRATION_FILE), record)


def read_calibration(workdir: str) -> dict | None:
  """The run's ``calibration.json``, or None."""
  path = os.path.join(workdir, CALIBRATION_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)
