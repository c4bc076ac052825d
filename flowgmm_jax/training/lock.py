"""One writer per workdir: a lock file with a heartbeat.

A run that writes a workdir (``train_and_evaluate``, ``fit(workdir=...)``) holds
``workdir/.lock`` while it runs: a JSON file naming the holder's host and pid, whose
modification time the holder refreshes every ``HEARTBEAT_SECONDS``. A second run on the same
workdir stops at once with one line naming the holder (``WorkdirBusyError``), before it
touches anything. A lock whose holder has stopped refreshing it for ``STALE_SECONDS`` (the
holder was killed, its machine went away), or whose holder is a process of this host that
no longer exists, is taken over with a one-line note.

With several processes on one workdir, process 0 holds the lock for all of them.
``--mode=eval`` only reads a workdir and takes no lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid

import jax
import numpy as np

from flowgmm_jax import run_files

HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0


class WorkdirBusyError(RuntimeError):
  """Another run holds the workdir's lock and is alive."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  return True


class WorkdirLock:
  """The lock of one workdir; ``WorkdirLock.hold(workdir)`` holds it for a ``with`` block
  (nested holds in the same process share the one lock)."""

  _held: dict = {}  # absolute workdir -> (lock, depth), this process's locks

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, run_files.LOCK_FILE)
    self.record = {"host": socket.gethostname(), "pid": os.getpid(),
                   "token": uuid.uuid4().hex, "started": time.time()}
    self._stop = threading.Event()
    self._thread = None

  @classmethod
  @contextlib.contextmanager
  def hold(cls, workdir: str):
    key = os.path.abspath(workdir)
    if key in cls._held:
      lock, depth = cls._held[key]
      cls._held[key] = (lock, depth + 1)
      try:
        yield lock
      finally:
        lock, depth = cls._held[key]
        cls._held[key] = (lock, depth - 1)
      return
    lock = cls(workdir)
    lock.acquire()
    cls._held[key] = (lock, 1)
    try:
      yield lock
    finally:
      del cls._held[key]
      lock.release()

  # -- acquire / release ---------------------------------------------------------------

  def acquire(self) -> None:
    """Takes the lock (process 0 of a multi-process run, for all of them); raises
    WorkdirBusyError in one line when a live run holds it."""
    error = None
    if jax.process_index() == 0:
      try:
        self._acquire_here()
      except WorkdirBusyError as e:
        error = e
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      busy = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
      if busy and error is None:
        error = WorkdirBusyError(f"--workdir={self.workdir} is in use by another run (see "
                                 "process 0's message).")
    if error is not None:
      raise error
    if jax.process_index() == 0:
      self._thread = threading.Thread(target=self._heartbeat, daemon=True,
                                      name="flowgmm-workdir-lock")
      self._thread.start()

  def _acquire_here(self) -> None:
    os.makedirs(self.workdir, exist_ok=True)
    for _ in range(5):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder, age = self._read()
        if holder is None and age is None:
          continue  # released meanwhile
        if not self._stale(holder, age):
          raise WorkdirBusyError(self._busy_message(holder, age)) from None
        self._take_over(holder, age)
        continue
      with os.fdopen(fd, "w") as f:
        json.dump(self.record, f)
      return
    holder, age = self._read()
    raise WorkdirBusyError(self._busy_message(holder, age))

  def _read(self):
    """(the holder's record or {} if unreadable, seconds since its heartbeat), or
    (None, None) when there is no lock file."""
    try:
      age = time.time() - os.path.getmtime(self.path)
      with open(self.path) as f:
        holder = json.load(f)
      return (holder if isinstance(holder, dict) else {}), age
    except FileNotFoundError:
      return None, None
    except (OSError, ValueError):  # half-written by a holder that died while writing
      return {}, age

  def _stale(self, holder: dict, age: float) -> bool:
    if age > STALE_SECONDS:
      return True
    same_host = holder.get("host") == self.record["host"]
    return same_host and isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"])

  def _take_over(self, holder: dict, age: float) -> None:
    """Moves a stale lock out of the way; of several racing takers one wins the rename,
    and all then race for the new lock (O_EXCL)."""
    aside = f"{self.path}.stale-{self.record['token']}"
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return
    os.remove(aside)
    print(f"warning: took over the lock of --workdir={self.workdir} from "
          f"{self._describe(holder)}, which stopped updating it {age:.0f} s ago.",
          file=sys.stderr, flush=True)

  def _describe(self, holder: dict) -> str:
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"

  def _busy_message(self, holder, age) -> str:
    holder = holder or {}
    return (f"--workdir={self.workdir} is in use by another run ({self._describe(holder)}, "
            f"heartbeat {age or 0:.0f} s ago); wait for it to finish, stop it, or choose "
            f"another --workdir (a lock not updated for {STALE_SECONDS:.0f} s is taken over).")

  def _owned(self) -> bool:
    holder, _ = self._read()
    return bool(holder) and holder.get("token") == self.record["token"]

  def _heartbeat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      try:
        if not self._owned():
          return  # removed (the workdir was cleaned up) or taken over
        os.utime(self.path)
      except OSError:
        return

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
    if jax.process_index() == 0 and self._owned():
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
