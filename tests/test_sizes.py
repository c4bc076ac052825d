"""The size limits the project keeps, so that a newcomer reads the training loop in one pass
and ``benchmarks/`` stays the measurements rather than a second library (retired one-off
studies live in the history; benchmarks/README.md lists them)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMITS = {"flowgmm_jax/training/loop.py": 250, "configs/common.py": 150, "benchmarks": 2500}


def _lines(path: Path) -> int:
  files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
  return sum(len(f.read_text().splitlines()) for f in files)


def test_the_loop_the_shared_config_and_the_benchmarks_stay_within_their_lines():
  over = {name: _lines(REPO / name) for name, limit in LIMITS.items()
          if _lines(REPO / name) > limit}
  assert not over, f"{over}: lines over the limits {LIMITS}; move or retire code"
