"""The README's and docs' code examples run and do what they say; their links resolve."""

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
LIBRARY = REPO / "docs" / "library.md"


def _python_block(path: Path, marker: str) -> str:
  blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
  return next(b for b in blocks if marker in b)


def _run(example: str) -> str:
  """Runs ``example`` as a reader does: a fresh Python at XLA's own optimisation level (the
  suite's level 0 compiles faster but runs these examples' full-batch steps about twice as
  slowly). Returns its standard output."""
  flags = os.environ.get("XLA_FLAGS", "")
  if TEST_XLA_FLAGS:
    flags = flags.replace(TEST_XLA_FLAGS, "").strip()
  proc = subprocess.run([sys.executable, "-c", example], cwd=REPO, capture_output=True,
                        text=True, timeout=600, env={**os.environ, "XLA_FLAGS": flags})
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


@pytest.mark.slow
def test_readme_estimator_example_runs():
  out = _run(_python_block(README, "FlowGMMClassifier(") + _python_block(README, "reject_rate"))
  accuracy = float(re.search(r"accuracy: ([0-9.]+)", out).group(1))
  assert accuracy >= 0.97
  # The moons' own rows: about 5% are rejected (fewer, as most were trained on).
  assert float(re.search(r"rejected: ([0-9.]+)", out).group(1)) <= 0.08
  assert len(set(re.search(r"to label: \[([0-9 \n]+)\]", out).group(1).split())) == 10


@pytest.mark.slow
def test_library_example_runs():
  out = _run(_python_block(LIBRARY, "flowgmm_jax.FlowGMM("))
  accuracy = float(re.search(r"test accuracy: ([0-9.]+)", out).group(1))
  round_trip = float(re.search(r"round trip error: ([0-9.e+-]+)", out).group(1))
  assert accuracy >= 0.97
  assert round_trip < 1e-4


def _anchors(path: Path) -> set:
  """GitHub's anchors of the headings of ``path``: lower case, punctuation but '-' dropped,
  spaces as '-'."""
  text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
  return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
          for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}


def test_every_relative_link_in_the_readme_and_docs_resolves():
  broken = []
  for doc in [README, *sorted((REPO / "docs").glob("*.md"))]:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
      if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
        continue
      file, _, anchor = target.partition("#")
      path = (doc.parent / file).resolve() if file else doc
      if not path.exists():
        broken.append(f"{doc.name}: {target} (no such file)")
      elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
        broken.append(f"{doc.name}: {target} (no such heading)")
  assert not broken, broken
