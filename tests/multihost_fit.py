"""One process of a localhost training job, run by tests/test_mesh.py and test_grain.py.

    python tests/multihost_fit.py --records=DIR --out=OUT.json [--loader=grain]
        [--num_processes=2 --process_id=I --port=P --interleave] [--resume_at=K]
        [--workdir=DIR]

Trains a tiny image flow on the records folder DIR (data/records.py) for STEPS steps on a
mesh of every device of every process (``--interleave``: the processes' devices alternate
in the mesh, [p0d0, p1d0, p0d1, p1d1]) and writes the per-step losses, the final metrics,
which training rows this process read and whether its batches equal the memory loader's.
The caller sets XLA_FLAGS (the devices per process).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STEPS = 10


def tiny_config(records: str, loader: str):
  from flowgmm_jax.training import base_config
  from flowgmm_jax.training.config import model_config
  c = base_config()
  c.data.kind, c.data.name, c.data.path, c.data.loader = "image", "records", records, loader
  c.data.num_labeled_per_class = 2
  c.data.labeled_batch_size, c.data.unlabeled_batch_size = 8, 24
  c.model = model_config("realnvp", num_scales=1, num_blocks=1, mid_channels=4)
  c.optim.lr_schedule = "constant"  # a resumed run's schedule must not depend on its length
  c.optim.learning_rate = 1e-3
  c.num_train_steps, c.log_every_steps, c.eval_every_steps = STEPS, 1, STEPS
  c.checkpoint_every_steps = 1000
  c.early_stopping.holdout_fraction = 0.0
  c.eval_batch_size, c.progress_bar, c.plots = 16, False, False
  return c


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--records", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--loader", default="memory")
  p.add_argument("--num_processes", type=int, default=1)
  p.add_argument("--process_id", type=int, default=0)
  p.add_argument("--port", type=int, default=0)
  p.add_argument("--interleave", action="store_true")
  p.add_argument("--resume_at", type=int, default=0)
  p.add_argument("--workdir", default="")
  a = p.parse_args()

  import jax
  if a.num_processes > 1:
    jax.distributed.initialize(f"127.0.0.1:{a.port}", a.num_processes, a.process_id)
  import numpy as np

  from flowgmm_jax import data as data_lib
  from flowgmm_jax import mesh as mesh_lib
  from flowgmm_jax.data.rows import split_rows
  from flowgmm_jax.training import fit
  from flowgmm_jax.training.batching import Batches

  devices = sorted(jax.devices(), key=lambda d: d.id)
  if a.interleave:  # [p0d0, p1d0, p0d1, p1d1, ...]
    by_process = [[d for d in devices if d.process_index == i] for i in range(a.num_processes)]
    devices = [d for group in zip(*by_process, strict=False) for d in group]
  mesh = mesh_lib.make_mesh(devices)
  c = tiny_config(a.records, a.loader)
  ds = data_lib.load_dataset(c)
  split = split_rows(c, ds)
  history = []
  if a.resume_at:
    c.num_train_steps = a.resume_at
    history += fit(c, ds, split, mesh=mesh, workdir=a.workdir).history
    c.num_train_steps = STEPS
  result = fit(c, ds, split, mesh=mesh, workdir=a.workdir or None)
  history += result.history

  # The rows this process read, without the first batch's rows that every process reads
  # for the model's initialisation (Batches.init_rows).
  batches = Batches(c, ds, split, mesh)
  layout = batches.layout
  read = None
  if isinstance(ds.x_train, data_lib.RecordImages):
    read = sorted(set(ds.x_train.rows_touched().tolist()) - set(batches.init_rows().tolist()))

  # The batches, against the memory loader's whole batch for the same (seed, step).
  memory = Batches(c, data_lib.load_dataset(tiny_config(a.records, "memory")), split, mesh)
  rows = mesh_lib.process_rows(mesh, layout.size)
  equal = True
  for step in range(STEPS):
    mine = batches.host(step)
    whole = memory.host(step, rows=np.arange(layout.size))
    equal &= all(np.array_equal(mine[k], whole[k][rows]) for k in whole)
  out = {"losses": {h["step"]: h["train/loss"] for h in history if "train/loss" in h},
         "metrics": result.metrics, "rows_read": read, "num_train": len(ds.x_train),
         "process_rows": rows.tolist(), "batches_equal": bool(equal),
         "mesh": [d.process_index for d in mesh.devices.flat]}
  with open(a.out, "w") as f:
    json.dump(out, f)


if __name__ == "__main__":
  main()
