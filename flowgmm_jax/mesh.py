"""The 1-D ``data`` mesh every computation runs on, and moving rows on and off it.

Training and inference share it: the train step (``training/step.py``) and the chunked
inference of ``trained.py`` split their rows over the same mesh of every device of every
host, and pad them by the one rule here (``padded_rows``).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

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


def shard_batch(mesh: Mesh, batch):
  """Puts the global host batch (every host builds the same one: batches are a pure function
  of (seed, step)) on the devices, split along the batch axis. On several hosts each host
  contributes only the contiguous slice that its own devices hold."""
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  n, i = jax.process_count(), jax.process_index()
  def local(a):
    per_host = a.shape[0] // n
    return jax.make_array_from_process_local_data(sharding, a[i * per_host:(i + 1) * per_host],
                                                  a.shape)
  return jax.tree.map(local, batch)


def to_host(array) -> np.ndarray:
  """A (possibly multi-host) sharded array as one numpy array on every host."""
  if jax.process_count() == 1:
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
  """Whether every leaf of ``tree`` is a jax.Array replicated on ``mesh``'s devices."""
  target = NamedSharding(mesh, P())
  return all(isinstance(leaf, jax.Array) and leaf.sharding.is_equivalent_to(target, leaf.ndim)
             for leaf in jax.tree.leaves(tree))
