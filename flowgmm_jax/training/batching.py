"""The batch of each step: which rows, in which order, on which device.

A step's batch is a pure function of (seed, step) (``data.SemiSupervisedBatches`` draws the
rows), so a resumed run continues with the batches an uninterrupted run would have used.
Each part (labelled, unlabelled) has a fixed padded size (``BatchLayout``), so the step
compiles once; padding rows carry ``mask`` False and count for nothing.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from flowgmm_jax import data as data_lib
from flowgmm_jax import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class BatchLayout:
  """Rows per step: ``labeled`` and ``unlabeled`` real rows, each part padded to
  ``labeled_padded`` / ``unlabeled_padded`` rows (a multiple of the device count). Padding
  rows repeat a real row and carry ``mask`` False, so they count for nothing."""
  labeled: int
  unlabeled: int
  labeled_padded: int
  unlabeled_padded: int

  @property
  def size(self) -> int:
    return self.labeled_padded + self.unlabeled_padded


def batch_layout(config: ml_collections.ConfigDict, num_labeled: int, num_unlabeled: int,
                 num_devices: int) -> BatchLayout:
  """``config.data``'s batch sizes, each capped at its pool (a larger batch would only
  repeat rows): a pool at least as large as its batch gives the batch size itself, rounded
  up to the device count; a smaller pool gives each of its rows once, padded by the one
  rule (``mesh.padded_rows``), so that pools of near sizes share one compiled step. No
  unlabelled rows without a pool."""
  def part(configured: int, pool: int) -> tuple[int, int]:
    if pool == 0 or configured == 0:
      return 0, 0
    cap = mesh_lib.round_up(configured, num_devices)
    if pool >= configured:
      return configured, cap
    return pool, mesh_lib.padded_rows(pool, cap, num_devices)
  bl, bl_padded = part(config.data.labeled_batch_size, num_labeled)
  bu, bu_padded = part(config.data.unlabeled_batch_size, num_unlabeled)
  return BatchLayout(bl, bu, bl_padded, bu_padded)


def _pad(rows: np.ndarray, size: int) -> np.ndarray:
  return np.concatenate([rows, np.repeat(rows[-1:], size - len(rows), axis=0)]) if (
      len(rows) and size > len(rows)) else rows


def batch_rows(batches: data_lib.SemiSupervisedBatches, layout: BatchLayout, step: int,
               num_devices: int) -> dict:
  """Step ``step``'s global batch without its inputs: ``row`` (each row's index into
  ``batches.x``), ``y``, ``position`` (each real row's index in the batch as sampled,
  [labelled | unlabelled]; it seeds the row's noise) and ``mask``, each ``[layout.size]``,
  each part padded, reordered so that every device gets rows of both parts. Cheap (indices
  only), so every host computes it whole and then reads the inputs of its own rows."""
  lab, unl = batches.indices(step)
  y = batches.y
  parts = []
  offset = 0
  for rows, real, padded, labels in ((lab, layout.labeled, layout.labeled_padded, y[lab]),
                                     (unl, layout.unlabeled, layout.unlabeled_padded,
                                      np.full(len(unl), -1))):
    if not padded:
      continue
    position = np.arange(offset, offset + real)
    pad_position = layout.labeled + layout.unlabeled + np.arange(offset, offset + padded - real)
    parts.append({"row": _pad(np.asarray(rows, np.int64), padded),
                  "y": _pad(np.asarray(labels), padded),
                  "position": np.concatenate([position, pad_position]),
                  "mask": np.arange(padded) < real})
    offset += real
  batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  batch["y"] = np.where(batch["mask"], batch["y"], -1).astype(np.int32)
  batch["position"] = batch["position"].astype(np.int32)
  return _interleave(batch, layout.labeled_padded, layout.unlabeled_padded, num_devices)


def _interleave(batch: dict, labeled: int, unlabeled: int, num_devices: int) -> dict:
  """Reorders [labelled | unlabelled] rows so every device gets both parts."""
  if num_devices == 1 or not labeled or not unlabeled:
    return batch
  def mix(a):
    la = a[:labeled].reshape((num_devices, labeled // num_devices) + a.shape[1:])
    ua = a[labeled:].reshape((num_devices, unlabeled // num_devices) + a.shape[1:])
    return np.concatenate([la, ua], axis=1).reshape(a.shape)
  return {k: mix(v) for k, v in batch.items()}


class Batches:
  """The batches of a fit of ``config`` on ``dataset``'s ``rows`` (``data.rows.Rows``), on
  ``mesh``: ``on_devices(step)`` is step ``step``'s batch, sharded over the mesh."""

  def __init__(self, config: ml_collections.ConfigDict, dataset, rows, mesh):
    self.mesh = mesh
    self.num_devices = mesh_lib.num_devices(mesh)
    self.layout = batch_layout(config, len(rows.labeled), len(rows.unlabeled),
                               self.num_devices)
    self.rows = rows
    self.sampler = data_lib.SemiSupervisedBatches(
        dataset.x_train, dataset.y_train, rows.labeled, rows.unlabeled,
        labeled_batch_size=self.layout.labeled, unlabeled_batch_size=self.layout.unlabeled,
        seed=config.seed)
    self.process_rows = mesh_lib.process_rows(mesh, self.layout.size)
    self._cached = None  # (step, batch_rows of that step)

  def init_rows(self) -> np.ndarray:
    """The rows ``model.init`` sees: the first rows of each pool, padded like a batch (at
    least 2)."""
    layout = self.layout
    rows = np.concatenate([_pad(self.rows.labeled[:layout.labeled], layout.labeled_padded),
                           _pad(self.rows.unlabeled[:layout.unlabeled],
                                layout.unlabeled_padded)])
    return _pad(rows, 2) if len(rows) < 2 else rows

  def host(self, step: int, rows=None) -> dict:
    """Step ``step``'s batch on the host, for the batch rows ``rows`` (default: those this
    process's devices hold, ``mesh.process_rows``): ``x``, ``y``, ``position``, ``mask``.
    The indices of the whole batch are computed (cheap), the inputs of only these rows
    are read; an ``x`` that can prefetch (``data.RecordImages``) is asked for the next
    step's rows."""
    rows = self.process_rows if rows is None else np.asarray(rows)
    batch = {k: v[rows] for k, v in self._indices(step).items()}
    x = self.sampler.x
    batch["x"] = x[batch.pop("row")]
    if hasattr(x, "prefetch"):
      x.prefetch(self._indices(step + 1)["row"][rows])
    return batch

  def _indices(self, step: int) -> dict:
    """``batch_rows`` of ``step``, kept for one step: prefetching computes the next step's
    indices, which that step then reuses."""
    if self._cached is None or self._cached[0] != step:
      self._cached = (step, batch_rows(self.sampler, self.layout, step, self.num_devices))
    return self._cached[1]

  def on_devices(self, step: int) -> dict:
    """Step ``step``'s batch on the mesh, built from this process's rows only."""
    return mesh_lib.shard_process_rows(self.mesh, self.host(step), self.layout.size)
