"""The README's library example runs and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_library_example_runs(capsys):
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  example = next(b for b in blocks if "flowgmm_jax.FlowGMM(" in b)
  exec(compile(example, "README.md", "exec"), {"__name__": "readme_example"})
  out = capsys.readouterr().out
  accuracy = float(re.search(r"test accuracy: ([0-9.]+)", out).group(1))
  round_trip = float(re.search(r"round trip error: ([0-9.e+-]+)", out).group(1))
  assert accuracy >= 0.97
  assert round_trip < 1e-4
