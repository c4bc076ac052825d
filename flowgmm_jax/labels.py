"""Class labels, checked in one place: integers in [0, K), or -1 for an unlabelled example.

Datasets, splits, batches and the prior all check labels with ``validate_labels``; it lives
here, on its own, because the prior (maths) and ``data/`` (NumPy) should not import each
other. ``FlowGMMClassifier`` first turns its users' ``y`` (any class values, -1 for
unlabelled, as in ``sklearn.semi_supervised``) into this form.
"""

from __future__ import annotations

from typing import Any

import numpy as np

UNLABELED = -1  # the label of an unlabelled example


def validate_labels(labels: Any, num_classes: int | None = None,
                    allow_unlabeled: bool = True, *, where: str = "",
                    integer_dtype: bool = False) -> np.ndarray:
  """``labels`` as ``int64 [N]``, or one ValueError saying what is wrong.

  Host-side only (needs concrete values); call it on data before it enters jit.

  Args:
    labels: ``[N]`` integers, or floats holding whole numbers (labels read from a CSV).
    num_classes: K; labels must be below it (None: no upper bound).
    allow_unlabeled: whether -1 (unlabelled) is allowed besides 0..K-1.
    where: what the labels belong to, to start the messages with (e.g. "mnist train split").
    integer_dtype: refuse floats even when they hold whole numbers.
  """
  prefix = f"{where}: " if where else ""
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"{prefix}labels must be 1-D [N], got shape {labels.shape}; flatten them.")
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    floating = np.issubdtype(labels.dtype, np.floating)
    if (integer_dtype or not floating or not np.all(np.isfinite(labels))
        or not np.all(labels == np.round(labels))):
      how = ""
      if floating:
        how = "; cast with .astype(np.int32)" if integer_dtype else " with non-integral values"
      raise ValueError(f"{prefix}labels must be integers, got dtype {labels.dtype}{how}.")
  labels = labels.astype(np.int64, copy=False)
  bad = labels < (UNLABELED if allow_unlabeled else 0)
  if num_classes is not None:
    bad |= labels >= num_classes
  if bad.any():
    first = int(np.nonzero(bad)[0][0])
    allowed = f"in [0, {num_classes})" if num_classes is not None else ">= 0"
    if allow_unlabeled:
      allowed += ", or -1 for unlabelled"
    raise ValueError(
        f"{prefix}{int(bad.sum())} label(s) out of range (first: y[{first}] = "
        f"{labels[first]}); labels must be {allowed}.")
  return labels
