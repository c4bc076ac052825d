"""What every benchmark shares: where a results file came from (the command, commit, date and
machine, stored under ``"provenance"``), the one way a results file is written, and the
parsing of comma-separated flags."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_commit(root=REPO) -> str:
  """HEAD's short hash of the checkout at ``root``, with ``+dirty`` when tracked files have
  uncommitted changes; '' outside a git checkout."""
  def git(*args):
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          timeout=10)
  try:
    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return ""
  return "" if head.returncode else head.stdout.strip() + ("+dirty" if dirty else "")


def cpu_model() -> str:
  """The processor's model name (Linux: /proc/cpuinfo), else ``platform.processor()``."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def usable_cores() -> int:
  """The cores this process may run on (fewer than the machine's when pinned with taskset):
  XLA:CPU sizes its thread pool by them."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def machine() -> dict:
  """The machine a run used: CPU, cores (and ``cores_used`` when the process was pinned to
  fewer), load at the start, JAX version and devices."""
  info = {"platform": platform.platform(), "cpu": cpu_model(), "cores": os.cpu_count(),
          "python": platform.python_version()}
  if usable_cores() != os.cpu_count():
    info["cores_used"] = usable_cores()
  info["load_average_1min"] = round(os.getloadavg()[0], 2)
  if "jax" in sys.modules:
    import jax
    info["jax"] = jax.__version__
    info["devices"] = [str(d.device_kind) for d in jax.devices()]
  return info


def provenance(argv=None) -> dict:
  """``{"command", "commit", "date", "machine"}`` for a run started as
  ``python -m <module> <argv>`` (``argv`` defaults to ``sys.argv[1:]``)."""
  argv = sys.argv[1:] if argv is None else list(argv)
  main = sys.modules.get("__main__")
  module = getattr(getattr(main, "__spec__", None), "name", None) or os.path.basename(sys.argv[0])
  return {"command": " ".join(["python -m", module, *argv]).strip(),
          "commit": git_commit(),
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "machine": machine()}


def write_json(path, results: dict, **dump_kwargs) -> None:
  """``results`` to ``path`` (its folder made), replaced atomically: a run stopped while
  writing leaves the previous file whole."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
  tmp.write_text(json.dumps(results, **{"indent": 1, **dump_kwargs}) + "\n")
  os.replace(tmp, path)


def int_list(text: str) -> list[int]:
  """argparse type: ``"0,1,2"`` -> ``[0, 1, 2]`` (non-negative integers)."""
  items = [s.strip() for s in text.split(",") if s.strip()]
  if not items or not all(s.isdigit() for s in items):
    raise argparse.ArgumentTypeError(f"{text!r}: give non-negative integers, e.g. 0,1,2")
  return [int(s) for s in items]


def name_list(allowed=None):
  """argparse type: ``"a,b"`` -> ``["a", "b"]``, each name one of ``allowed`` (if given)."""
  def parse(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if allowed is not None and n not in allowed]
    if unknown:
      raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(allowed)}")
    return names
  return parse
