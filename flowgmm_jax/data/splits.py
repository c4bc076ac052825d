"""Deterministic splits and stateless batch sampling (pure NumPy).

Everything here is a function of its arguments and an integer seed: no global RNG
state, no iterator state. In particular the batch for training step `s` depends only
on `(seed, s)`, so a run resumed from a checkpoint at step `s` sees exactly the
batches an uninterrupted run would have seen.

Index conventions: all returned index arrays are `int64` into the given label array.
Label `-1` marks an unlabelled example.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import numpy as np

from flowgmm_jax.labels import UNLABELED, validate_labels

SeedLike = int | Sequence[int]


def _seed_tuple(seed: SeedLike) -> tuple[int, ...]:
  """Normalises an int or a sequence of ints into SeedSequence entropy."""
  entries = (seed,) if isinstance(seed, (int, np.integer)) else tuple(seed)
  out = []
  for s in entries:
    if not isinstance(s, (int, np.integer)) or s < 0:
      raise ValueError(f"seeds must be non-negative ints, got {seed!r}.")
    out.append(int(s))
  return tuple(out)


def _largest_remainder(quotas: np.ndarray, total: int) -> np.ndarray:
  """Integer counts summing to `total`, each floor(quota) or ceil(quota).

  The leftover units go to the largest fractional parts; ties go to the lower index
  (a stable sort), so the result is deterministic.
  """
  counts = np.floor(quotas).astype(np.int64)
  leftover = int(total - counts.sum())
  if leftover > 0:
    order = np.argsort(-(quotas - counts), kind="stable")
    counts[order[:leftover]] += 1
  return counts


def stratified_train_test_split(y, test_fraction: float, seed: SeedLike = 0
                                ) -> tuple[np.ndarray, np.ndarray]:
  """Splits examples into train and test with the class proportions preserved.

  The test set has `round(test_fraction * N)` examples; class c contributes
  `floor` or `ceil` of `test_fraction * N_c` (largest-remainder rounding), never all
  of a class's examples when it has at least two. Within each class the test
  examples are a uniformly random subset (seeded). Both outputs are in a seeded
  random order (not sorted), so prefixes of a split are not ordered by class.

  Args:
    y: labels `[N]`, ints in `[0, K)`.
    test_fraction: in `[0, 1)`.
    seed: int (or tuple of ints).

  Returns:
    `(train_idx, test_idx)`, disjoint, covering `range(N)`.
  """
  y = validate_labels(y, allow_unlabeled=False, where="stratified_train_test_split")
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}.")
  rng = np.random.default_rng(_seed_tuple(seed))
  classes, inverse = np.unique(y, return_inverse=True)
  class_counts = np.bincount(inverse, minlength=classes.size)
  n_test = _largest_remainder(class_counts * test_fraction, int(round(test_fraction * y.size)))
  # Keep at least one training example per class that has two or more.
  n_test = np.minimum(n_test, np.maximum(class_counts - 1, 0))
  train_parts, test_parts = [], []
  for k in range(classes.size):
    members = rng.permutation(np.nonzero(inverse == k)[0])
    test_parts.append(members[:n_test[k]])
    train_parts.append(members[n_test[k]:])
  train_idx = rng.permutation(np.concatenate(train_parts)) if train_parts else np.zeros(0, np.int64)
  test_idx = rng.permutation(np.concatenate(test_parts)) if test_parts else np.zeros(0, np.int64)
  return train_idx.astype(np.int64), test_idx.astype(np.int64)


def stratified_prefix(y, n: int) -> np.ndarray:
  """The first `n` examples of a round-robin over classes (no randomness).

  Examples are ordered by (rank of the example within its class in the given order,
  class), i.e. class 0's first, class 1's first, ..., class 0's second, ...; the first
  `n` of that order are returned (as indices into `y`, in that order). Class counts
  in the result differ by at most one while every class still has examples left.
  Used to take small, balanced, reproducible subsets for quick runs.
  """
  y = validate_labels(y)
  n = int(min(max(n, 0), y.size))
  order = np.argsort(y, kind="stable")  # grouped by class, original order within
  sorted_y = y[order]
  starts = np.searchsorted(sorted_y, sorted_y, side="left")
  rank_within_class = np.arange(y.size) - starts
  # lexsort: last key is primary -> sort by rank, then by class.
  round_robin = order[np.lexsort((sorted_y, rank_within_class))]
  return round_robin[:n].astype(np.int64)


def labeled_unlabeled_split(y, *, num_labeled: int | None = None,
                            num_labeled_per_class: int | None = None,
                            seed: SeedLike = 0,
                            num_classes: int | None = None,
                            allow_fewer: bool = False
                            ) -> tuple[np.ndarray, np.ndarray]:
  """Chooses a class-balanced labelled subset; everything else is unlabelled.

  Give exactly one of `num_labeled_per_class` (m labels for each of the K classes)
  or `num_labeled` (total L: every class gets `L // K`, and `L mod K` classes,
  chosen at random with the seed, get one more). Within each class the labelled
  examples are a uniformly random subset. Examples whose label is already -1 are
  never chosen and always end up in the unlabelled pool.

  Args:
    y: labels `[N]` in `[0, K)` or -1.
    num_labeled: total number of labelled examples L.
    num_labeled_per_class: labelled examples per class m.
    seed: int (or tuple of ints); same seed, same split.
    num_classes: K; defaults to `max(y) + 1`.
    allow_fewer: if a class has fewer examples than requested, label all of them (with a
      warning) instead of raising; for very imbalanced data such as UCI Shuttle, whose
      rarest classes have about ten rows.

  Returns:
    `(labeled_idx, unlabeled_idx)`: sorted, disjoint, together `range(N)`.
  """
  y = validate_labels(y, num_classes)
  if (num_labeled is None) == (num_labeled_per_class is None):
    raise ValueError("Pass exactly one of num_labeled or num_labeled_per_class.")
  k = int(num_classes if num_classes is not None else (y.max() + 1 if y.size else 0))
  if k < 1:
    raise ValueError("no labelled examples to choose from (all labels are -1).")
  rng = np.random.default_rng(_seed_tuple(seed))
  if num_labeled_per_class is not None:
    if num_labeled_per_class < 0:
      raise ValueError(f"num_labeled_per_class must be >= 0, got {num_labeled_per_class}.")
    per_class = np.full(k, int(num_labeled_per_class), np.int64)
  else:
    if num_labeled < 0:
      raise ValueError(f"num_labeled must be >= 0, got {num_labeled}.")
    per_class = np.full(k, int(num_labeled) // k, np.int64)
    per_class[rng.permutation(k)[:int(num_labeled) % k]] += 1
  chosen = []
  for c in range(k):
    members = np.nonzero(y == c)[0]
    if members.size < per_class[c] and allow_fewer:
      warnings.warn(f"class {c} has only {members.size} example(s); labelling all of them "
                    f"instead of the {per_class[c]} requested.", stacklevel=2)
    elif members.size < per_class[c]:
      raise ValueError(
          f"class {c} has only {members.size} labelled example(s) but "
          f"{per_class[c]} were requested; lower num_labeled(_per_class).")
    chosen.append(rng.permutation(members)[:per_class[c]])
  labeled_idx = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
  is_labeled = np.zeros(y.size, bool)
  is_labeled[labeled_idx] = True
  return labeled_idx.astype(np.int64), np.nonzero(~is_labeled)[0].astype(np.int64)


def split_with_given_unlabeled(y) -> tuple[np.ndarray, np.ndarray]:
  """Splits by the labels themselves: `y >= 0` is labelled, `y == -1` unlabelled.

  For data that arrives with its unlabelled part already marked (e.g. a CSV whose
  label column holds -1 for unlabelled rows, or the original toy datasets).

  Returns:
    `(labeled_idx, unlabeled_idx)`, sorted.
  """
  y = validate_labels(y)
  return (np.nonzero(y != UNLABELED)[0].astype(np.int64),
          np.nonzero(y == UNLABELED)[0].astype(np.int64))


@functools.lru_cache(maxsize=32)
def _epoch_permutation(num_items: int, seed: tuple[int, ...], epoch: int) -> np.ndarray:
  perm = np.random.default_rng(seed + (epoch,)).permutation(num_items)
  perm.setflags(write=False)  # shared by the cache: must not be mutated
  return perm


def batch_indices(num_items: int, batch_size: int, seed: SeedLike, step: int) -> np.ndarray:
  """Indices of the batch for training step `step`, with no sampler state.

  The infinite stream `perm_0, perm_1, ...` of per-epoch permutations of
  `range(num_items)` (epoch e's permutation is seeded by `(seed, e)`) is cut into
  consecutive chunks of `batch_size`; step s gets chunk s, i.e. stream positions
  `s*B, ..., s*B + B - 1` where position q is `perm_{q // N}[q % N]`. So every epoch
  visits each item exactly once, a batch that crosses an epoch boundary takes the
  tail of one permutation and the head of the next, and when `num_items < batch_size`
  a batch spans several permutations (sampling with replacement, but balanced).

  Args:
    num_items: N > 0.
    batch_size: B > 0.
    seed: int or tuple of non-negative ints.
    step: s >= 0.

  Returns:
    `int64 [B]` indices in `[0, N)`.
  """
  if num_items <= 0 or batch_size <= 0:
    raise ValueError(f"num_items and batch_size must be positive, got {num_items}, {batch_size}.")
  if step < 0:
    raise ValueError(f"step must be >= 0, got {step}.")
  seed = _seed_tuple(seed)
  num_items, batch_size = int(num_items), int(batch_size)
  start = int(step) * batch_size
  first_epoch, first_offset = divmod(start, num_items)
  last_epoch = (start + batch_size - 1) // num_items
  if first_epoch == last_epoch:  # common case: the batch lies inside one epoch
    return _epoch_permutation(num_items, seed, first_epoch)[
        first_offset:first_offset + batch_size].astype(np.int64)
  pieces = []
  remaining, offset = batch_size, first_offset
  for epoch in range(first_epoch, last_epoch + 1):
    take = min(num_items - offset, remaining)
    pieces.append(_epoch_permutation(num_items, seed, epoch)[offset:offset + take])
    remaining -= take
    offset = 0
  return np.concatenate(pieces).astype(np.int64)


class SemiSupervisedBatches:
  """Stateless batches with a labelled part and an unlabelled part (as in the paper).

  Step s's batch is `B_l` labelled examples followed by `B_u` unlabelled ones:
  `x = x[concat(labeled_idx[a_s], unlabeled_idx[b_s])]`, `y = concat(y[...], -1 * ones)`,
  where `a_s = batch_indices(len(labeled_idx), B_l, (seed, 0), s)` and
  `b_s = batch_indices(len(unlabeled_idx), B_u, (seed, 1), s)`. The labelled pool is
  small, so it cycles through many epochs while the unlabelled pool is traversed once.

  Args:
    x: all training features `[N, ...]` (NumPy; indexed with one fancy-index gather).
    y: their labels `[N]`; `y[labeled_idx]` must be real labels (>= 0).
    labeled_idx, unlabeled_idx: index arrays into x (e.g. from
      `labeled_unlabeled_split`). Either may be empty if its batch size is 0.
    labeled_batch_size, unlabeled_batch_size: B_l, B_u >= 0, not both 0.
    seed: int or tuple of non-negative ints.
  """

  def __init__(self, x, y, labeled_idx, unlabeled_idx, labeled_batch_size: int,
               unlabeled_batch_size: int, seed: SeedLike = 0):
    self.x = x
    self.y = validate_labels(y)
    if len(self.x) != self.y.size:
      raise ValueError(f"x has {len(self.x)} rows but y has {self.y.size} labels.")
    self.labeled_idx = np.asarray(labeled_idx, np.int64).reshape(-1)
    self.unlabeled_idx = np.asarray(unlabeled_idx, np.int64).reshape(-1)
    self.labeled_batch_size = int(labeled_batch_size)
    self.unlabeled_batch_size = int(unlabeled_batch_size)
    self.seed = _seed_tuple(seed)
    if self.labeled_batch_size < 0 or self.unlabeled_batch_size < 0:
      raise ValueError("batch sizes must be >= 0.")
    if self.labeled_batch_size + self.unlabeled_batch_size == 0:
      raise ValueError("labeled_batch_size + unlabeled_batch_size must be > 0.")
    for name, idx, bs in (("labeled_idx", self.labeled_idx, self.labeled_batch_size),
                          ("unlabeled_idx", self.unlabeled_idx, self.unlabeled_batch_size)):
      if bs > 0 and idx.size == 0:
        raise ValueError(f"{name} is empty but its batch size is {bs}.")
      if idx.size and (idx.min() < 0 or idx.max() >= self.y.size):
        raise ValueError(f"{name} has entries outside [0, {self.y.size}).")
    if self.labeled_idx.size and (self.y[self.labeled_idx] < 0).any():
      raise ValueError("some labeled_idx point at examples with label -1.")

  @property
  def batch_size(self) -> int:
    return self.labeled_batch_size + self.unlabeled_batch_size

  @property
  def labeled_steps_per_epoch(self) -> int:
    """Steps for one pass over the labelled pool (ceil)."""
    return -(-self.labeled_idx.size // max(self.labeled_batch_size, 1))

  @property
  def unlabeled_steps_per_epoch(self) -> int:
    """Steps for one pass over the unlabelled pool (ceil)."""
    return -(-self.unlabeled_idx.size // max(self.unlabeled_batch_size, 1))

  def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """`(labeled_rows, unlabeled_rows)` of step `step`, as indices into x."""
    lab = np.zeros(0, np.int64)
    unl = np.zeros(0, np.int64)
    if self.labeled_batch_size:
      lab = self.labeled_idx[batch_indices(
          self.labeled_idx.size, self.labeled_batch_size, self.seed + (0,), step)]
    if self.unlabeled_batch_size:
      unl = self.unlabeled_idx[batch_indices(
          self.unlabeled_idx.size, self.unlabeled_batch_size, self.seed + (1,), step)]
    return lab, unl

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """`{"x": [B_l + B_u, ...], "y": int32 [B_l + B_u]}`; y is -1 on the unlabelled part."""
    lab, unl = self.indices(step)
    rows = np.concatenate([lab, unl])
    y = np.concatenate([self.y[lab], np.full(unl.size, UNLABELED, np.int64)])
    return {"x": self.x[rows], "y": y.astype(np.int32)}

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    return self.batch(step)

  def iterate(self, start_step: int = 0):
    """Yields `(step, batch)` forever from `start_step` (resume = pass the saved step)."""
    step = int(start_step)
    while True:
      yield step, self.batch(step)
      step += 1
