"""Metric output: ``workdir/metrics.jsonl`` (one JSON object per line) and TensorBoard."""

from __future__ import annotations

import json
import os

import jax

from flowgmm_jax import run_files


def _truncate_after(path: str, step: int) -> None:
  """Keeps the lines of ``path`` whose step is <= ``step`` (a torn last line goes too);
  rewrites the file atomically."""
  kept = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(record, dict) and record.get("step", 0) <= step:
        kept.append(json.dumps(record) + "\n")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(kept)
  os.replace(tmp, path)


class MetricWriter:
  """Appends ``{"step": s, name: value, ...}`` lines to metrics.jsonl and writes TensorBoard
  scalars (via tensorboardX, which needs no TensorFlow). Only process 0 writes.

  ``resume_step``: the step the run resumes from; records of later steps (written by the
  interrupted run after its last checkpoint) are cut, so the replayed steps appear once.
  """

  def __init__(self, workdir: str, *, resume_step: int | None = None):
    self.active = jax.process_index() == 0
    self._tb = None
    if not self.active:
      return
    self.path = os.path.join(workdir, run_files.METRICS_FILE)
    if resume_step is not None and os.path.exists(self.path):
      _truncate_after(self.path, resume_step)
    self._file = open(self.path, "a")
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, run_files.TENSORBOARD_DIR))
    except ImportError:  # TensorBoard output is optional; metrics.jsonl is always written
      self._tb = None

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc) -> bool:
    self.close()
    return False

  def write(self, step: int, scalars: dict) -> None:
    if not self.active:
      return
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, float(v), int(step))

  def close(self) -> None:
    if not self.active:
      return
    self._file.close()
    if self._tb is not None:
      self._tb.close()
