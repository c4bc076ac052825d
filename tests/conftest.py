"""Fixtures shared by the test files."""

from __future__ import annotations

import jax
import pytest


@pytest.fixture
def x64():
  """Enables float64 for one test and restores the previous setting afterwards."""
  with jax.enable_x64(True):
    yield
