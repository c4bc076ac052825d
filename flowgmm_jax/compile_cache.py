"""JAX's persistent compilation cache: where it lives and when the library turns it on.

A process that compiles a program JAX has compiled before (the same model, shapes, settings,
JAX version and device) loads the executable from the cache instead of compiling it again.
One setting, ``config.compilation_cache_dir`` (``FlowGMMClassifier(compilation_cache_dir=)``):

- ``"auto"`` (the configs' default): on for accelerators (GPU, TPU), in ``default_cache_dir()``;
  off on a CPU, where command-line runs compile in seconds and their test processes share a
  cache of their own.
- ``"on"`` (the estimator's default, ``compilation_cache_dir=None``): on for every backend,
  CPU included: a scikit-learn user's first fit in a new process is mostly compiling.
- ``"off"`` or ``""``: the library does not turn the cache on.
- anything else: that directory (``~`` expanded), on every backend.

``"auto"`` and ``"on"`` leave a cache directory that is already set alone (JAX's own
``jax_compilation_cache_dir`` or ``$JAX_COMPILATION_CACHE_DIR``): the user's choice wins, and
``"off"`` does not turn it off. ``$FLOWGMM_COMPILATION_CACHE`` changes what ``"auto"`` and
``"on"`` mean for the whole process: ``off`` (or 0, false, no) turns them off, a path replaces
the default directory.

``default_cache_dir()`` is ``$XDG_CACHE_HOME/flowgmm_jax/xla``, or
``~/.cache/flowgmm_jax/xla`` when XDG_CACHE_HOME is unset. It is created readable by its owner
only: JAX runs what it finds there, so no one else may write to it
(https://docs.jax.dev/en/latest/persistent_compilation_cache.html). It grows without a bound;
delete it at any time, or cap it with ``$JAX_COMPILATION_CACHE_MAX_SIZE``.

Several processes may share the directory. JAX writes an entry in place and never rewrites an
existing one; a reader that finds an entry it cannot decompress or load (another process half
way through writing it, a disk that filled up) warns "Error reading persistent compilation
cache entry" and compiles the program itself (jax/_src/compiler.py, ``_cache_read``). So a
damaged entry costs a compile, not an error (tests/test_compile_cache.py damages every entry
and fits again); it stays damaged until the directory is deleted.
"""

from __future__ import annotations

import os
import warnings

ENV_VAR = "FLOWGMM_COMPILATION_CACHE"
AUTO, ON, OFF = "auto", "on", "off"
_OFF_WORDS = frozenset({"", "off", "0", "false", "no"})
# The library's own cache keeps every program, however fast it compiled: a fit compiles about
# ten programs of well under a second each, which together are most of a first fit's time.
# JAX's default (1 s) would keep none of them.
MIN_COMPILE_TIME_S = 0.0


def default_cache_dir() -> str:
  """The per-user directory of ``"auto"`` and ``"on"``: ``$FLOWGMM_COMPILATION_CACHE`` if it
  names a path, else ``$XDG_CACHE_HOME/flowgmm_jax/xla`` (``~/.cache`` without it)."""
  env = os.environ.get(ENV_VAR, "").strip()
  if env and env.lower() not in _OFF_WORDS | {AUTO, ON}:
    return os.path.abspath(os.path.expanduser(env))
  base = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join("~", ".cache")
  return os.path.abspath(os.path.join(os.path.expanduser(base), "flowgmm_jax", "xla"))


def check_setting(setting) -> str:
  """``setting`` as a string, or a one-line ValueError saying what it may be."""
  if setting is None:
    return ""
  if not isinstance(setting, (str, os.PathLike)):
    raise ValueError(f"compilation_cache_dir={setting!r} must be 'auto', 'on', 'off' or a "
                     "directory.")
  return os.fspath(setting).strip()


def resolve_cache_dir(setting: str | None, platform: str) -> str | None:
  """The directory ``setting`` asks for on ``platform`` (``jax.default_backend()``), or None
  for off; ignores a directory already set in JAX (``enable_compilation_cache`` does not)."""
  setting = check_setting(setting)
  word = setting.lower()
  if word in (OFF, ""):
    return None
  if word in (AUTO, ON):
    if os.environ.get(ENV_VAR, "").strip().lower() in _OFF_WORDS - {""}:
      return None
    if word == AUTO and platform == "cpu":
      return None
    return default_cache_dir()
  return os.path.abspath(os.path.expanduser(setting))


def enable_compilation_cache(setting: str | None) -> str | None:
  """Turns JAX's persistent compilation cache on as ``setting`` asks (module docstring);
  returns the directory JAX uses after the call (None: no cache). Process-wide; never raises
  for a directory it cannot create (it warns, and leaves the cache as it was)."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache as jax_cache
  setting = check_setting(setting)
  current = jax.config.jax_compilation_cache_dir or None
  if setting.lower() in (AUTO, ON, OFF, "") and current:
    return current  # the user's own cache directory
  target = resolve_cache_dir(setting, jax.default_backend())
  if target is None or target == current:
    return current
  try:
    os.makedirs(target, mode=0o700, exist_ok=True)
  except OSError as e:
    warnings.warn(f"compilation cache off: cannot create {target} ({e}); set "
                  f"{ENV_VAR}=off or a writable directory.", RuntimeWarning, stacklevel=2)
    return current
  jax.config.update("jax_compilation_cache_dir", target)
  if setting.lower() in (AUTO, ON) and "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in (
      os.environ):
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
  # JAX decides once per process whether to use a cache, at its first compile: a process that
  # compiled something before this call would otherwise keep running without one.
  jax_cache.reset_cache()
  return target
