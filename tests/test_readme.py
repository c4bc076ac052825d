"""The README's library example runs and does what it says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TEST_XLA_FLAGS

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


@pytest.mark.slow
def test_readme_library_example_runs():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  example = next(b for b in blocks if "flowgmm_jax.FlowGMM(" in b)
  # As a reader runs it: a fresh Python at XLA's own optimisation level. The suite's level 0
  # compiles faster but runs this example's 1000 full-batch steps about twice as slowly.
  flags = os.environ.get("XLA_FLAGS", "")
  if TEST_XLA_FLAGS:
    flags = flags.replace(TEST_XLA_FLAGS, "").strip()
  proc = subprocess.run([sys.executable, "-c", example], cwd=REPO, capture_output=True,
                        text=True, timeout=600, env={**os.environ, "XLA_FLAGS": flags})
  assert proc.returncode == 0, proc.stderr[-3000:]
  accuracy = float(re.search(r"test accuracy: ([0-9.]+)", proc.stdout).group(1))
  round_trip = float(re.search(r"round trip error: ([0-9.e+-]+)", proc.stdout).group(1))
  assert accuracy >= 0.97
  assert round_trip < 1e-4
