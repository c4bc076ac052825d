"""The temperature of a trained run, by ``config.calibration.method``: one function for the
command line (``run.py``) and ``FlowGMMClassifier``, so the two cannot drift apart.

The maths (the search for T, the cross-fitting) is ``flowgmm_jax.calibration``'s; this
module trains what "cross_fit" needs, through the one loop.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np

from flowgmm_jax import calibration as calibration_lib
from flowgmm_jax import trained
from flowgmm_jax.data import rows as rows_lib


def fit_temperature(config: ml_collections.ConfigDict, dataset, rows: rows_lib.Rows,
                    model: trained.TrainedFlowGMM, *, mesh=None, x_eval=None
                    ) -> dict | None:
  """The calibration record of a run of ``config`` on ``dataset``'s ``rows`` whose final
  model is ``model``, or None for method "none".

  "holdout": T fitted on ``model``'s logits of ``rows.calibration`` (rows whose labels the
  run never trained on). "cross_fit": ``calibration_folds`` more fits of the same config,
  each with one fold of the labelled rows' labels hidden, and T fitted on their pooled
  out-of-fold logits (``calibration.cross_fitted_temperature``). The record has
  "temperature", "method" and the fit's own entries; for "holdout" with a test split,
  "test_before"/"test_after" metrics. ``x_eval``: the training rows as predicted (default
  ``dataset.x_train``; the estimator's simplex encoding trains on noisy rows and predicts
  on clean ones).
  """
  c = config.calibration
  x_eval = dataset.x_train if x_eval is None else x_eval
  if c.method == "none":
    return None
  if c.method == "holdout":
    if not len(rows.calibration):
      return None
    logits = model.logits(x_eval[rows.calibration], preprocessed=True)
    test = model.logits(dataset.x_test, preprocessed=True) if len(dataset.x_test) else None
    record = calibration_lib.calibrate(logits, dataset.y_train[rows.calibration], test,
                                       dataset.y_test, max_temperature=c.max_temperature)
    return {"method": "holdout", **record,
            "calibration_rows": [int(i) for i in rows.calibration]}
  from flowgmm_jax.training.loop import fit  # the loop imports nothing of this module
  labels = np.full(len(dataset.y_train), -1, np.int64)
  labels[rows.labeled] = dataset.y_train[rows.labeled]

  def fold_logits(train_labels: np.ndarray, fold: np.ndarray) -> np.ndarray:
    hidden = rows_lib.Rows(labeled=np.flatnonzero(train_labels >= 0),
                           unlabeled=np.union1d(rows.unlabeled, fold),
                           early_stopping=rows.early_stopping, calibration=fold[:0])
    fold_data = dataclasses.replace(dataset, x_test=dataset.x_test[:0],
                                    y_test=dataset.y_test[:0])
    result = fit(config, fold_data, hidden, mesh=mesh)
    fold_model = trained.from_variables(model.meta, jax.device_get(result.variables),
                                        mesh=mesh, batch_size=model.batch_size)
    return fold_model.logits(x_eval[fold], preprocessed=True)

  record = calibration_lib.cross_fitted_temperature(
      fold_logits, labels, num_folds=c.calibration_folds, seed=config.seed,
      max_temperature=c.max_temperature)
  return {"method": "cross_fit", **record}
