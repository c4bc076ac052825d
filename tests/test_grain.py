"""config.data.loader="grain": images read row by row from ArrayRecord files, each host only
the rows its own devices train on (flowgmm_jax/data/records.py, training/batching.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny import wait_all

from flowgmm_jax import data as fdata
from flowgmm_jax.data.rows import split_rows
from flowgmm_jax.mesh import make_mesh
from flowgmm_jax.training.batching import Batches

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "multihost_fit.py"


def write_records(folder: Path, num_train: int = 256, num_test: int = 32) -> dict:
  """A 4-class set of 8x8x1 images whose brightness follows the class."""
  rng = np.random.default_rng(0)
  out = {}
  for split, n in (("train", num_train), ("test", num_test)):
    y = np.arange(n) % 4
    x = (rng.integers(0, 64, (n, 8, 8, 1)) + 48 * y[:, None, None, None]).astype(np.uint8)
    fdata.write_image_records(folder, split, x, y, num_classes=4)
    out[split] = (x, y)
  return out


def test_record_images_read_only_the_rows_asked_for(tmp_path):
  written = write_records(tmp_path, num_train=64, num_test=8)
  ds = fdata.load_image_records(tmp_path, num_threads=3)
  x = ds.x_train
  assert isinstance(x, fdata.RecordImages)
  assert x.shape == (64, 8, 8, 1)
  assert x.rows_read == 0
  np.testing.assert_array_equal(ds.y_train, written["train"][1])
  rows = np.array([5, 63, 5, 0, 17])
  np.testing.assert_array_equal(x[rows], written["train"][0][rows])
  assert x.rows_read == 4  # a row asked for twice is read once
  np.testing.assert_array_equal(x.rows_touched(), [0, 5, 17, 63])
  x.prefetch([1, 2, 3])
  np.testing.assert_array_equal(x[np.array([1, 2, 3])], written["train"][0][1:4])
  assert x.rows_read == 7  # the prefetched rows were not read again
  sub = x.take(np.array([10, 20, 30]))  # lazy: nothing read
  assert x.rows_read == 7
  assert sub.shape == (3, 8, 8, 1)
  np.testing.assert_array_equal(sub[1], written["train"][0][20])
  np.testing.assert_array_equal(x[-1], written["train"][0][-1])
  # The labels sidecar is rebuilt from the records when it is missing.
  os.remove(tmp_path / "train_labels.npy")
  np.testing.assert_array_equal(fdata.load_image_records(tmp_path).y_train,
                                written["train"][1])
  assert (tmp_path / "train_labels.npy").is_file()


def test_grain_config_loads_lazily_and_gives_the_memory_loaders_batches(tmp_path):
  write_records(tmp_path, num_train=64, num_test=8)
  sys.path.insert(0, str(REPO / "tests"))
  from multihost_fit import tiny_config
  grain, memory = (fdata.load_dataset(tiny_config(str(tmp_path), loader))
                   for loader in ("grain", "memory"))
  assert isinstance(grain.x_train, fdata.RecordImages)
  assert isinstance(memory.x_train,
                                                                      np.ndarray)
  c = tiny_config(str(tmp_path), "grain")
  split = split_rows(c, grain)
  mesh = make_mesh()
  rows = np.array([1, 3, 4, 6])
  for step in (0, 7):
    a = Batches(c, grain, split, mesh).host(step, rows=rows)
    whole = Batches(c, memory, split, mesh)
    b = whole.host(step, rows=np.arange(whole.layout.size))
    assert sorted(a) == sorted(b) == ["mask", "position", "x", "y"]
    for key in b:
      np.testing.assert_array_equal(a[key], b[key][rows])
  # A training-set limit keeps the records lazy; tables have no grain loader.
  c.data.max_train_examples = 16
  assert len(fdata.load_dataset(c).x_train) == 16
  c.data.kind, c.data.name = "tabular", "letter"
  from flowgmm_jax.training import validate_config
  with pytest.raises(ValueError, match="reads image records only"):
    validate_config(c)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run(args: list, devices: int) -> subprocess.Popen:
  flags = os.environ.get("XLA_FLAGS", "")  # keeps the suite's compile settings (conftest)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
         "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}"}
  return subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_hosts_on_an_interleaved_mesh_read_their_own_rows_and_train_like_one(tmp_path):
  records = tmp_path / "records"
  write_records(records)
  port = _free_port()
  # Two processes of 2 CPU devices each, on the mesh [p0d0, p1d0, p0d1, p1d1], with the
  # grain loader, stopped after 4 steps and resumed to 10; one process of 4 devices with the
  # memory loader, uninterrupted.
  two = [_run(["--records", records, "--out", tmp_path / f"two_{i}.json", "--loader=grain",
               "--num_processes=2", f"--process_id={i}", f"--port={port}", "--interleave",
               "--resume_at=4", "--workdir", tmp_path / "workdir"], devices=2)
         for i in range(2)]
  one = _run(["--records", records, "--out", tmp_path / "one.json"], devices=4)
  wait_all(two + [one])
  ref = json.loads((tmp_path / "one.json").read_text())
  runs = [json.loads((tmp_path / f"two_{i}.json").read_text()) for i in range(2)]
  assert runs[0]["mesh"] == [0, 1, 0, 1]
  assert runs[0]["process_rows"] == [*range(0, 8), *range(16, 24)]  # by the mesh, not rank
  losses = np.array([float(v) for _, v in sorted(ref["losses"].items(), key=lambda kv:
                                                 int(kv[0]))])
  assert len(losses) == 10
  for run in runs:
    assert run["batches_equal"]  # each host's rows are the memory loader's, step by step
    got = np.array([float(v) for _, v in sorted(run["losses"].items(), key=lambda kv:
                                                int(kv[0]))])
    # The same batches on 4 devices: equal up to the order of the cross-process float32
    # sums (BatchNorm statistics and the loss are averaged over the devices).
    np.testing.assert_allclose(got, losses, rtol=2e-6)
  # Each host read about half the training rows: its own rows of 10 steps (and of the
  # next step, prefetched), besides the first batch that every host reads to initialise.
  n = runs[0]["num_train"]
  read = [set(run["rows_read"]) for run in runs]
  for rows in read:
    assert len(rows) <= n // 2 + 16, (len(rows), n)
  assert len(read[0] | read[1]) >= 0.8 * (n - 32)  # together they read what was trained on
