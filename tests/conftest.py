"""Fixtures and settings shared by the test files."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import jax
import pytest

from flowgmm_jax.data.dataset import DATA_DIR_VARIABLE, default_data_dir, use_data_dir_if_unset

# The offline datasets: ../shared/data next to the repository unless FLOWGMM_DATA_DIR says
# otherwise (the subprocesses the tests start inherit it).
use_data_dir_if_unset(Path(__file__).resolve().parents[1].parent / "shared" / "data")

# CI has the offline data, so there a test that cannot find it is a broken setup, not an
# optional extra: it fails instead of skipping (a skipped data test would pass CI unseen).
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")


def missing_shared_data(what: str) -> None:
  """Skips the calling test because offline data is missing, or fails it under CI=true."""
  how = (f"set {DATA_DIR_VARIABLE} to the offline data directory "
         "(../shared/data next to the repository)")
  if IN_CI:
    pytest.fail(f"{what}; CI=true needs the offline data: {how}", pytrace=False)
  pytest.skip(f"{what} ({how})")


def shared_data_path(*parts: str) -> Path:
  """The path `parts` under the offline data directory; `missing_shared_data` when absent."""
  path = default_data_dir().joinpath(*parts)
  if not path.exists():
    missing_shared_data(f"offline data not found at {path}")
  return path


def pytest_runtest_setup(item):
  # @pytest.mark.shared_data: the test reads the offline data directory.
  if item.get_closest_marker("shared_data") is not None:
    shared_data_path()

# One XLA compilation cache for the session, shared with the subprocesses the tests start
# (CLI runs and their resumes, SIGTERM reruns, two-process runs): a rerun of the same
# program loads its executable instead of compiling it again, which is most of the suite's
# time on a 2-core CI machine. The cache holds the same executables, so no result changes.
_OWN_CACHE_DIR = "JAX_COMPILATION_CACHE_DIR" not in os.environ
_CACHE_DIR = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                                   tempfile.mkdtemp(prefix="flowgmm-test-xla-cache-"))


def pytest_sessionfinish(session, exitstatus):
  # The session's own cache goes with it (one given in the environment is the caller's).
  if _OWN_CACHE_DIR:
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)
# Every compile is cached, however short: the suite's many sub-second compiles of the same
# tiny programs add up (estimator and trained-model tests: 9% faster than caching only
# compiles of 1 s or more).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))

# The suite's models are tiny, so compiling them, not running them, is most of its time:
# XLA's backend at optimisation level 0 compiles faster. It changes how fast the code runs,
# not what it computes to the tolerances asserted; FLOWGMM_TEST_XLA_OPT=default keeps XLA's
# own level. Subprocesses inherit it (the 8-device test adds it to the XLA_FLAGS it sets).
TEST_XLA_FLAGS = ("" if os.environ.get("FLOWGMM_TEST_XLA_OPT") == "default"
                  else "--xla_backend_optimization_level=0")
if TEST_XLA_FLAGS and TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + TEST_XLA_FLAGS).strip()


@pytest.fixture
def x64():
  """Enables float64 for one test and restores the previous setting afterwards."""
  with jax.enable_x64(True):
    yield


@pytest.fixture(autouse=True, scope="module")
def _clear_jax_caches_after_each_file():
  """Drops JAX's in-memory caches (traced and compiled functions) after each test file.
  Kept for the whole session they make every later compile slower (the CIFAR smoke run
  took 25 s after the bijector and model tests against 18 s alone); what a later file
  compiles again comes from the persistent cache above."""
  yield
  jax.clear_caches()
