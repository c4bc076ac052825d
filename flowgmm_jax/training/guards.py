"""What stops a fit between two steps: a preemption signal, or too many non-finite steps."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import jax
import numpy as np


class Preempted(Exception):
  """SIGTERM or SIGINT arrived: the run stopped after a step and saved a checkpoint there."""

  def __init__(self, step: int, signum: int):
    self.step, self.signum = step, signum
    super().__init__(f"preempted at step {step}; checkpoint saved; rerun the same command "
                     "to resume")


class SignalFlag:
  """Turns SIGTERM/SIGINT into a flag that the loop reads between steps, so a signal never
  interrupts a step or a checkpoint write (a second signal during the save is absorbed)."""

  def __init__(self):
    self.signum = None

  def __call__(self, signum, frame):
    self.signum = signum

  def install(self) -> Callable[[], None]:
    """Sets the handlers; returns the function that puts the previous ones back."""
    if threading.current_thread() is not threading.main_thread():
      return lambda: None  # signal handlers can only be set from the main thread
    previous = {s: signal.signal(s, self) for s in (signal.SIGTERM, signal.SIGINT)}
    def restore():
      for s, handler in previous.items():
        signal.signal(s, handler)
    return restore

  def agreed(self, step: int, every: int = 10) -> bool:
    """Whether any process got a signal. Every process must stop at the same step, so with
    several processes they compare flags (a host all-gather) every ``every`` steps."""
    if jax.process_count() == 1:
      return self.signum is not None
    if step % every:
      return False
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
    if self.signum is None and np.any(flags):
      self.signum = int(np.max(flags))
    return bool(np.any(flags))


class SkipStreak:
  """Non-finite steps are skipped inside the step; the host reads each step's flag one step
  late (so the device always has the next step queued) and stops after ``limit`` in a row."""

  def __init__(self, limit: int, start_step: int):
    self.limit, self.start_step = limit, start_step
    self.count, self.previous = 0, None

  def observe(self, step: int, metrics: dict) -> None:
    if self.previous is not None:
      self.count = self.count + 1 if float(self.previous) else 0
      if self.count >= self.limit:
        raise FloatingPointError(
            f"Training stopped at step {step}: {self.count} steps in a row had a "
            "non-finite loss or gradients and were skipped. Likely causes: a learning "
            "rate too high (config.optim.learning_rate), no gradient clipping "
            "(config.optim.grad_clip_norm), or extreme values in the data."
            + (f" This run resumed from the checkpoint at step {self.start_step}; if that "
               "state is the problem, start afresh with another --workdir."
               if self.start_step > 0 else ""))
    self.previous = metrics["train/skipped_steps"]

  def in_streak(self) -> bool:
    """Whether the last steps are skipping (not a state to checkpoint); reads the newest
    step's flag, so it waits for that step."""
    return self.count > 0 or (self.previous is not None and bool(float(self.previous)))
