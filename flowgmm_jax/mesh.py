"""The 1-D ``data`` mesh every computation runs on, and moving rows on and off it.

Training and inference share it: the train step (``training/step.py``) and the chunked
inference of ``trained.py`` split their rows over the same mesh of every device of every
host, and pad them by the one rule here (``padded_rows``).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
# The smallest padded row count: calls with 1..8 rows share one compiled program.
MIN_PADDED_ROWS = 8


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named ``data`` over every device of every host (or the given ones)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def num_devices(mesh: Mesh) -> int:
  return int(mesh.shape[DATA_AXIS])


def round_up(n: int, multiple: int) -> int:
  """The smallest multiple of ``multiple`` that is >= n."""
  return -(-int(n) // int(multiple)) * int(multiple)


def padded_rows(n: int, cap: int, multiple: int = 1) -> int:
  """The row count that ``n`` real rows (``1 <= n <= cap``) are padded to: the next power
  of two (at least ``MIN_PADDED_ROWS``), at most ``cap``, rounded up to a multiple of
  ``multiple`` (the device count). Near sizes share one shape, so one compiled program;
  every chunk of inference and every batch of a pool smaller than its batch size uses it."""
  if not 1 <= n <= cap:
    raise ValueError(f"padded_rows needs 1 <= n <= cap, got n={n}, cap={cap}.")
  bucket = max(MIN_PADDED_ROWS, 1 << (int(n) - 1).bit_length())
  return round_up(min(bucket, cap), multiple)


def is_local(mesh: Mesh) -> bool:
  """Whether every device of ``mesh`` belongs to this process (then nothing crosses hosts,
  even inside a multi-process job: trained.py's mesh of local devices, one host's figures)."""
  me = jax.process_index()
  return all(d.process_index == me for d in mesh.devices.flat)


def _row_ranges(mesh: Mesh, n: int) -> list[tuple[int, int, Any]]:
  """``(start, stop, device)`` of this process's devices for ``n`` rows split along the
  ``data`` axis, in ascending ``start``: each device's own index range in the mesh, so a
  mesh that interleaves the processes' devices is placed right."""
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  ranges = []
  for device, index in sharding.addressable_devices_indices_map((int(n),)).items():
    start, stop, _ = index[0].indices(int(n))
    ranges.append((start, stop, device))
  return sorted(ranges, key=lambda r: r[0])


def process_rows(mesh: Mesh, n: int) -> np.ndarray:
  """``int64 [n_local]``: the global row indices (of ``0..n-1``, split along the ``data``
  axis of ``mesh``) that this process's devices hold, ascending. ``arange(n)`` on a mesh of
  this process's devices only. ``n`` must be a multiple of the mesh size."""
  if n % num_devices(mesh):
    raise ValueError(f"{n} rows do not split evenly over {num_devices(mesh)} devices; pad "
                     "them to a multiple of the device count (mesh.padded_rows).")
  if is_local(mesh):
    return np.arange(int(n), dtype=np.int64)
  return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b, _ in _row_ranges(mesh, n)])


def shard_process_rows(mesh: Mesh, batch, n: int):
  """The global batch of ``n`` rows, split along the ``data`` axis, built from only this
  process's rows: ``batch``'s leaves hold the rows ``process_rows(mesh, n)`` in that order
  (``[n_local, ...]``). No host needs the others' rows (a host reads only its own)."""
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  if is_local(mesh):
    return jax.device_put(batch, sharding)
  ranges = _row_ranges(mesh, n)
  def place(a):
    a = np.asarray(a)
    pieces, offset = [], 0
    for start, stop, device in ranges:
      pieces.append(jax.device_put(a[offset:offset + stop - start], device))
      offset += stop - start
    if offset != a.shape[0]:
      raise ValueError(f"shard_process_rows: {a.shape[0]} local rows given, this "
                       f"process's devices hold {offset} of the {n}.")
    return jax.make_array_from_single_device_arrays((int(n),) + a.shape[1:], sharding, pieces)
  return jax.tree.map(place, batch)


def shard_batch(mesh: Mesh, batch):
  """Puts the global host batch (every host builds the same one: batches are a pure function
  of (seed, step)) on the devices, split along the batch axis. Each host contributes only
  the rows its own devices hold (``process_rows``), whatever their place in the mesh."""
  if is_local(mesh):
    return jax.device_put(batch, NamedSharding(mesh, P(DATA_AXIS)))
  n = int(jax.tree.leaves(batch)[0].shape[0])
  rows = process_rows(mesh, n)
  return shard_process_rows(mesh, jax.tree.map(lambda a: np.asarray(a)[rows], batch), n)


def to_host(array) -> np.ndarray:
  """A sharded array as one numpy array on every host: read locally when this process holds
  all of it (any mesh of its own devices), gathered from every host otherwise."""
  if getattr(array, "is_fully_addressable", True):
    return np.asarray(array)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def replicate(mesh: Mesh, tree):
  """Replicates a pytree on every device of the mesh.

  Every leaf gets its own buffers (via a host copy): ``model.init`` may return one array
  object at two places of the tree, and a donated state must not alias itself.
  """
  return jax.device_put(jax.tree.map(np.array, tree), NamedSharding(mesh, P()))


def is_replicated_on(tree, mesh: Mesh) -> bool:
  """Whether every leaf of ``tree`` is a jax.Array replicated on ``mesh`` by a
  ``NamedSharding`` of that mesh. An equivalent placement of another kind (a one-device
  array on a one-device mesh) does not count: jit compiles a program per kind of sharding."""
  target = NamedSharding(mesh, P())
  return all(isinstance(leaf, jax.Array) and isinstance(leaf.sharding, NamedSharding)
             and leaf.sharding.mesh == mesh and leaf.sharding.is_equivalent_to(target, leaf.ndim)
             for leaf in jax.tree.leaves(tree))
