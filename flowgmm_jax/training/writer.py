"""Metric output: ``workdir/metrics.jsonl`` (one JSON object per line) and TensorBoard."""

from __future__ import annotations

import json
import os

import jax


class MetricWriter:
  """Appends ``{"step": s, name: value, ...}`` lines to metrics.jsonl and writes TensorBoard
  scalars (via tensorboardX, which needs no TensorFlow). Only process 0 writes."""

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self._tb = None
    if not self.active:
      return
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._file = open(self.path, "a")
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:  # TensorBoard output is optional; metrics.jsonl is always written
      self._tb = None

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
