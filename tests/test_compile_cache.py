"""flowgmm_jax/compile_cache.py: where JAX's persistent compilation cache goes, when the
library turns it on, and that a damaged entry costs a compile, not an error."""

import os
import stat

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from flowgmm_jax import FlowGMMClassifier, compile_cache
from flowgmm_jax.training import programs
from flowgmm_jax.training.config import base_config, validate_config


@pytest.fixture
def jax_cache_state(monkeypatch):
  """No cache directory in JAX for the test (the suite sets its own in conftest.py), and
  the suite's settings back afterwards."""
  for name in (compile_cache.ENV_VAR, "XDG_CACHE_HOME"):
    monkeypatch.delenv(name, raising=False)
  saved = (jax.config.jax_compilation_cache_dir,
           jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", None)
  jax_cache.reset_cache()
  yield
  jax.config.update("jax_compilation_cache_dir", saved[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])
  jax_cache.reset_cache()


def test_settings_resolve_to_the_documented_directories(monkeypatch, tmp_path):
  monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  default = str(tmp_path / "xdg" / "flowgmm_jax" / "xla")
  assert compile_cache.default_cache_dir() == default
  resolve = compile_cache.resolve_cache_dir
  assert resolve("auto", "cpu") is None
  assert resolve("auto", "gpu") == default
  assert resolve("auto", "tpu") == resolve("on", "cpu") == resolve(" ON ", "gpu") == default
  assert resolve("off", "gpu") is resolve("", "gpu") is resolve(None, "tpu") is None
  assert resolve(str(tmp_path / "mine"), "cpu") == str(tmp_path / "mine")
  monkeypatch.delenv("XDG_CACHE_HOME")
  assert compile_cache.default_cache_dir() == os.path.expanduser("~/.cache/flowgmm_jax/xla")
  monkeypatch.setenv(compile_cache.ENV_VAR, "off")
  assert resolve("on", "cpu") is resolve("auto", "gpu") is None
  assert resolve(str(tmp_path / "mine"), "cpu") == str(tmp_path / "mine")  # explicit wins
  monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "env"))
  assert resolve("on", "cpu") == resolve("auto", "gpu") == str(tmp_path / "env")
  assert base_config().compilation_cache_dir == "auto"
  bad = base_config().to_dict()  # a plain dict: the estimator's path to the validator
  bad["compilation_cache_dir"] = 3
  with pytest.raises(ValueError, match="compilation_cache_dir=3 must be 'auto', 'on'"):
    validate_config(bad)


def test_enable_respects_a_directory_already_set_and_creates_a_private_one(
    jax_cache_state, monkeypatch, tmp_path):
  assert compile_cache.enable_compilation_cache("auto") is None  # CPU: off
  assert jax.config.jax_compilation_cache_dir is None
  monkeypatch.setenv(compile_cache.ENV_VAR, "off")
  assert compile_cache.enable_compilation_cache("on") is None
  monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "env"))
  assert compile_cache.enable_compilation_cache("on") == str(tmp_path / "env")
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "env")
  assert stat.S_IMODE(os.stat(tmp_path / "env").st_mode) == 0o700
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
  # Set now (as a user's own directory would be): "on", "auto" and "off" leave it alone.
  for setting in ("on", "auto", "off", ""):
    assert compile_cache.enable_compilation_cache(setting) == str(tmp_path / "env")
  # A directory it cannot create: a warning, and the cache as it was.
  with pytest.warns(RuntimeWarning, match="compilation cache off: cannot create"):
    assert compile_cache.enable_compilation_cache("/proc/no/such/dir") == str(tmp_path / "env")
  with pytest.raises(ValueError, match="compilation_cache_dir=3 must be"):
    FlowGMMClassifier(compilation_cache_dir=3).fit(np.zeros((4, 2)), np.array([0, 1, -1, -1]))


def test_a_damaged_cache_entry_costs_a_compile_not_an_error(jax_cache_state, tmp_path):
  """Every entry of a fit's cache damaged (random bytes, cut in half, emptied): the same fit
  in a fresh state warns, compiles, and gives the same model."""
  rng = np.random.default_rng(0)
  y_true = np.arange(120) % 2
  X = rng.normal(size=(120, 2)) + 3.0 * y_true[:, None]
  y = np.where(np.arange(120) < 6, y_true, -1)
  params = dict(num_coupling_layers=2, hidden_dim=8, hidden_layers=1, num_train_steps=20,
                labeled_batch_size=4, unlabeled_batch_size=16, random_state=0,
                compilation_cache_dir=str(tmp_path / "xla"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  first = FlowGMMClassifier(**params).fit(X, y)
  entries = sorted((tmp_path / "xla").glob("*-cache"))
  assert len(entries) >= 3, entries
  for i, path in enumerate(entries):
    data = path.read_bytes()
    path.write_bytes([os.urandom(len(data)), data[:len(data) // 2], b""][i % 3])
  programs.programs.cache_clear()
  jax.clear_caches()
  with pytest.warns(UserWarning, match="Error reading persistent compilation cache entry"):
    again = FlowGMMClassifier(**params).fit(X, y)
  np.testing.assert_array_equal(again.predict_proba(X), first.predict_proba(X))
