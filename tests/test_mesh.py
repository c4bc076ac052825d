"""The mesh decides how rows are placed: by each device's own index range, locally when all
its devices are this process's (flowgmm_jax/mesh.py). The two-process case, on a mesh that
interleaves the processes' devices, is tests/test_grain.py's localhost job."""

from __future__ import annotations

import jax
import numpy as np

from flowgmm_jax import mesh as mesh_lib


def test_a_local_mesh_holds_every_row_and_reads_back_locally():
  devices = jax.devices()
  mesh = mesh_lib.make_mesh(devices[::-1])  # any order of this process's devices
  assert mesh_lib.is_local(mesh)
  n = 4 * len(devices)
  np.testing.assert_array_equal(mesh_lib.process_rows(mesh, n), np.arange(n))
  batch = {"x": np.arange(n * 3, dtype=np.float32).reshape(n, 3), "y": np.arange(n)}
  placed = mesh_lib.shard_process_rows(mesh, batch, n)
  for key in batch:
    assert placed[key].is_fully_addressable
    np.testing.assert_array_equal(mesh_lib.to_host(placed[key]), batch[key])
  # Each device holds its own index range: device i of the mesh rows [4i, 4i + 4).
  for shard in placed["y"].addressable_shards:
    position = list(mesh.devices.flat).index(shard.device)
    np.testing.assert_array_equal(np.asarray(shard.data), np.arange(4 * position,
                                                                    4 * position + 4))
  np.testing.assert_array_equal(mesh_lib.to_host(mesh_lib.shard_batch(mesh, batch)["x"]),
                                batch["x"])

