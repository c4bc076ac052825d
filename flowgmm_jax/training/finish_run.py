"""After a run's last step: calibration and figures; and figures of a run at any step.

* ``finish_run``: called by ``train_and_evaluate`` once the final checkpoint is written.
  Reloads the run with ``trained.load`` (so every run also checks the load path), fits the
  temperature (``config.calibration``), writes ``calibration.json`` and
  the figures in ``plots/`` (also added to TensorBoard), and returns the entries it adds to
  ``results.json``.
* ``write_plots``: ``python -m experiments.plot``, the figures of any saved step.
"""

from __future__ import annotations

import os
import sys

import jax
import ml_collections

from flowgmm_jax import data as data_lib
from flowgmm_jax import run_files, trained
from flowgmm_jax.data.rows import split_rows
from flowgmm_jax.training.temperature import fit_temperature


def write_plots(config: ml_collections.ConfigDict, workdir: str, step: int | None = None,
                tensorboard: bool = False) -> list:
  """Rebuilds the run's data and split from ``config`` and writes ``workdir/plots/``."""
  from flowgmm_jax import plots
  model = trained.load(workdir, step)
  dataset = data_lib.load_dataset(config)
  labeled_idx = split_rows(config, dataset).labeled
  record = None
  if model.temperature != 1.0:
    record = {"temperature": model.temperature}
  paths = plots.write_run_plots(model, dataset, workdir, labeled_idx=labeled_idx,
                                calibration=record)
  if tensorboard:
    plots.add_to_tensorboard(paths, workdir, model.step)
  return paths


def _flat(prefix: str, d: dict) -> dict:
  return {f"{prefix}{k}": float(v) for k, v in d.items()}


def finish_run(config: ml_collections.ConfigDict, workdir: str, dataset, rows) -> dict:
  """The temperature and plots of the finished run in ``workdir`` on ``dataset``'s ``rows``
  (``data.rows.Rows``); returns its results entries."""
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
  results = {}
  record = fit_temperature(config, dataset, rows, model)
  if record is not None:
    record = {k: v for k, v in record.items() if not k.startswith("out_of_fold_l")}
    record["step"] = model.step
    run_files.write_calibration(workdir, record)
    results["calibration/temperature"] = record["temperature"]
    for when in ("before", "after"):
      if f"test_{when}" in record:
        results.update(_flat(f"calibration/{when}/", record[f"test_{when}"]))
  if config.plots:
    try:
      from flowgmm_jax import plots
      os.makedirs(os.path.join(workdir, run_files.PLOTS_DIR), exist_ok=True)
      model.temperature = record["temperature"] if record else 1.0
      paths = plots.write_run_plots(model, dataset, workdir, labeled_idx=rows.labeled,
                                    calibration=record)
      plots.add_to_tensorboard(paths, workdir, model.step)
    except Exception as e:  # noqa: BLE001 - a figure must never cost the run its results
      print(f"warning: plots not written ({type(e).__name__}: {e}); retry with "
            f"python -m experiments.plot --workdir={workdir}", file=sys.stderr)
  return results
