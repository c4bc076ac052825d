"""The tests' shared tiny configs: a two-coupling tabular flow, the toy CLI's smoke run and
the estimator's tiny flow with its two-class table.

Imported by the test files (pytest puts tests/ on sys.path); not a test module itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from flowgmm_jax.training import base_config

REPO = Path(__file__).resolve().parents[1]


def tabular_config(steps: int = 6, *, checkpoint_every: int = 2, log_every: int = 1,
                   eval_batch_size: int = 40):
  """A two-coupling, 16-wide tabular flow on ``data.name="arrays"`` (the caller's Dataset),
  8 labelled + 16 unlabelled rows per step, evaluated at the last step."""
  c = base_config()
  c.data.kind, c.data.name = "tabular", "arrays"
  c.data.labeled_batch_size, c.data.unlabeled_batch_size = 8, 16
  c.model.num_coupling_layers, c.model.hidden_dim = 2, 16
  c.optim.learning_rate = 1e-2
  c.num_train_steps = steps
  c.log_every_steps = log_every
  c.eval_every_steps = steps
  c.checkpoint_every_steps = checkpoint_every
  c.keep_checkpoints = 3
  c.eval_batch_size = eval_batch_size
  c.progress_bar = False
  return c


def toy_cli_config(steps: int, checkpoint_every: int = 100_000):
  """``configs/toy.py:smoke`` for ``steps`` steps at a constant rate (the default schedule
  depends on num_train_steps), logged every step, never evaluated before the end, no
  figures (test_trained.py tests them)."""
  sys.path.insert(0, str(REPO))
  from configs.toy import get_config
  c = get_config("smoke")
  c.optim.lr_schedule = "constant"
  c.num_train_steps = steps
  c.log_every_steps = 1
  c.eval_every_steps = 100_000
  c.checkpoint_every_steps = checkpoint_every
  c.plots = False
  return c


def wait_all(procs, timeout: float = 600) -> None:
  """Waits for the subprocesses ``procs`` (``text=True`` pipes) and asserts each exited 0,
  showing the end of a failure's stderr; kills whatever still runs afterwards (a process
  whose partner failed would wait for it forever)."""
  try:
    for p in procs:
      _, err = p.communicate(timeout=timeout)
      assert p.returncode == 0, err[-3000:]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


# FlowGMMClassifier's tiny flow: each fit compiles in a few seconds and trains in well under
# one. labeled_batch_size 4 keeps batch shapes equal across cross-validation folds.
TINY = dict(num_coupling_layers=2, hidden_dim=16, hidden_layers=1, num_train_steps=80,
            labeled_batch_size=4, unlabeled_batch_size=32, learning_rate=3e-3)
OFFSET = np.array([5.0, -3.0, 100.0])
UNITS = np.array([10.0, 0.1, 3.0])


def gaussian_table(n=240, seed=0):
  """Two Gaussian classes in 3 features with very different units; 5 labels per class.

  Returns (X [n, 3], y_semi [n] with -1 on all but 10 rows, y_true [n]).
  """
  rng = np.random.default_rng(seed)
  y_true = np.arange(n) % 2
  x = rng.normal(size=(n, 3)) + 3.0 * y_true[:, None]
  y_semi = np.full(n, -1)
  y_semi[:10] = y_true[:10]
  return x * UNITS + OFFSET, y_semi, y_true
