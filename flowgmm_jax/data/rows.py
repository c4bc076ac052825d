"""Which training rows a run uses for what: the one split of a run, by one seed rule.

A run's rows, all indices into ``dataset.x_train``:

    labeled         rows whose labels train the model
    unlabeled       rows trained on without their labels (the calibration rows' inputs too)
    early_stopping  unlabelled rows held out of training, scored for early stopping
    calibration     labelled rows whose labels are held back to fit the temperature

The evaluation rows are the dataset's test split, or, with ``data.validation_examples``,
training rows moved there when the data are loaded (``data.hold_out_validation_set``).

Every random choice here, and of every held-out row of the library, draws from
``rng(seed, PURPOSE)``: a NumPy generator seeded with the pair, so that changing how many
rows one purpose takes never moves the rows of another, and the same seed gives the same
rows in every entry point (the command line, ``FlowGMMClassifier``, the benchmarks).
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from flowgmm_jax.data.splits import labeled_unlabeled_split, split_with_given_unlabeled

# The purposes of random row choices; each is the second entry of its generator's seed. The
# codes are arbitrary constants; early stopping's 7 keeps the held-out rows (and so the
# fitted models) of the versions before this rule.
LABELS, CALIBRATION, CALIBRATION_FOLDS, EVALUATION, EARLY_STOPPING = 0, 2, 3, 4, 7
OUTLIER_REFERENCE = 8  # the estimator's reject-option rows when none are held out
# The evaluation rows of data.validation_examples do not move with config.seed, so that
# runs of several seeds are compared on the same rows.
EVALUATION_SEED = 0

# Early stopping's held-out rows: at least this many (when the pool allows) and at most
# this many, since scoring them is part of every check.
MIN_EARLY_STOPPING_ROWS, MAX_EARLY_STOPPING_ROWS = 16, 4096


def rng(seed: int, purpose: int) -> np.random.Generator:
  """The generator of every random row choice: seeded by ``(seed, purpose)``."""
  return np.random.default_rng((int(seed), int(purpose)))


@dataclasses.dataclass(frozen=True)
class Rows:
  """A run's rows into ``dataset.x_train`` (sorted int64 arrays, see the module docstring).
  ``labeled``, ``unlabeled`` and ``early_stopping`` are disjoint; ``calibration`` rows are
  inside ``unlabeled`` (only their labels are held back)."""
  labeled: np.ndarray
  unlabeled: np.ndarray
  early_stopping: np.ndarray
  calibration: np.ndarray

  def fingerprint(self) -> str:
    """A short hash of every part, stored in checkpoints so that a resume on other rows (a
    changed seed, data file, label count or held-out fraction) is caught."""
    h = hashlib.sha256()
    for part in (self.labeled, self.unlabeled, self.early_stopping, self.calibration):
      h.update(np.asarray(part, np.int64).tobytes())
      h.update(b"|")
    return h.hexdigest()[:16]

  def counts(self) -> dict:
    return {name: int(len(getattr(self, name))) for name in
            ("labeled", "unlabeled", "early_stopping", "calibration")}


def split_rows(config, dataset, pools=None) -> Rows:
  """The rows of a run of ``config`` on ``dataset`` (its ``y_train [N]``, -1: unlabelled).

  The labelled/unlabelled pools are, in this order of precedence: ``pools`` =
  ``(labeled_idx, unlabeled_idx)`` given by the caller; the rows ``y_train`` marks -1 as
  unlabelled (every other row labelled); else ``config.data.num_labeled_per_class`` (or
  ``num_labeled``) labels per class. Then ``config.calibration.calibration_fraction`` of the
  labelled pool loses its labels for calibration (when ``calibration.method`` is
  "holdout"), and ``config.early_stopping.holdout_fraction`` of the unlabelled pool is held
  out for early stopping.
  """
  seed = int(config.seed)
  y_train = np.asarray(dataset.y_train)
  if pools is not None:
    labeled, unlabeled = (np.sort(np.asarray(p, np.int64)) for p in pools)
  elif np.any(y_train < 0):
    labeled, unlabeled = split_with_given_unlabeled(y_train)
  else:
    d = config.data
    kw = ({"num_labeled_per_class": d.num_labeled_per_class} if d.num_labeled_per_class > 0
          else {"num_labeled": d.num_labeled})
    labeled, unlabeled = labeled_unlabeled_split(
        y_train, seed=(seed, LABELS), num_classes=dataset.num_classes, allow_fewer=True, **kw)
  fraction = (config.calibration.calibration_fraction
              if config.calibration.method == "holdout" else 0.0)
  labeled, calibration = calibration_rows(labeled, y_train, fraction, seed)
  unlabeled = np.union1d(unlabeled, calibration)
  unlabeled, early_stopping = early_stopping_rows(
      unlabeled, config.early_stopping.holdout_fraction, seed)
  return Rows(labeled=labeled, unlabeled=unlabeled, early_stopping=early_stopping,
              calibration=calibration)


def calibration_rows(labeled_idx: np.ndarray, y_train: np.ndarray, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(labelled rows kept, calibration rows): per class ``round(fraction * n_k)`` rows, at
  least 1 when ``fraction > 0`` and the class has 2 or more labels, never the class's last
  label. Both sorted."""
  labeled_idx = np.asarray(labeled_idx, np.int64)
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"calibration.calibration_fraction={fraction} must be in [0, 1).")
  if fraction == 0.0 or labeled_idx.size == 0:
    return labeled_idx, labeled_idx[:0]
  gen = rng(seed, CALIBRATION)
  y = np.asarray(y_train)[labeled_idx]
  held = []
  for k in np.unique(y):
    members = labeled_idx[y == k]
    if members.size < 2:
      continue
    take = min(max(1, int(round(fraction * members.size))), members.size - 1)
    held.append(gen.choice(members, size=take, replace=False))
  held = np.sort(np.concatenate(held)) if held else labeled_idx[:0]
  return np.setdiff1d(labeled_idx, held), held


def early_stopping_rows(unlabeled_idx: np.ndarray, fraction: float, seed: int
                        ) -> tuple[np.ndarray, np.ndarray]:
  """(unlabelled rows to train on, rows held out for early stopping): ``round(fraction *
  N_u)`` rows, at least ``MIN_EARLY_STOPPING_ROWS`` and never more than half the pool, at
  most ``MAX_EARLY_STOPPING_ROWS``; none when ``fraction`` is 0 or the pool has fewer than
  twice the minimum. Both sorted."""
  unlabeled_idx = np.asarray(unlabeled_idx, np.int64)
  n = len(unlabeled_idx)
  if fraction <= 0 or n < 2 * MIN_EARLY_STOPPING_ROWS:
    return unlabeled_idx, unlabeled_idx[:0]
  count = int(min(max(round(fraction * n), MIN_EARLY_STOPPING_ROWS), n // 2,
                  MAX_EARLY_STOPPING_ROWS))
  perm = rng(seed, EARLY_STOPPING).permutation(n)
  return np.sort(unlabeled_idx[perm[count:]]), np.sort(unlabeled_idx[perm[:count]])


def calibration_folds(labels: np.ndarray, num_folds: int, seed: int) -> list[np.ndarray]:
  """Folds of the labelled rows for a cross-fitted temperature, stratified by class.

  ``labels: [N]`` ints, -1 for unlabelled rows (never in a fold). Within each class the
  labelled rows are shuffled and dealt to the folds in turn from a random first fold, so a
  fold holds at most ``ceil(n_k / num_folds)`` rows of a class with ``n_k`` labels and every
  class keeps a label outside every fold; a class with one label is never held out. Folds
  that receive no row are dropped. Sorted, disjoint arrays.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D [N], got shape {labels.shape}.")
  if num_folds < 2:
    raise ValueError(f"calibration_folds={num_folds} must be >= 2.")
  gen = rng(seed, CALIBRATION_FOLDS)
  folds = [[] for _ in range(num_folds)]
  for k in np.unique(labels[labels >= 0]):
    members = gen.permutation(np.flatnonzero(labels == k))
    if members.size < 2:
      continue
    offset = int(gen.integers(num_folds))  # small classes do not all pile into fold 0
    for i, row in enumerate(members):
      folds[(i + offset) % num_folds].append(row)
  return [np.sort(np.asarray(f, np.int64)) for f in folds if f]
