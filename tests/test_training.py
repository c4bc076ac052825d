"""Training system: data parallelism, resume, optimiser pieces, checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import tabular_config

from flowgmm_jax.checkpoint import IncompatibleCheckpointError
from flowgmm_jax.data import Dataset
from flowgmm_jax.training import base_config, fit, optim, validate_config

REPO = Path(__file__).resolve().parents[1]


def gaussian_blobs(n=120, dim=4, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, n)
  x = rng.normal(size=(n, dim)).astype(np.float32) + 3.0 * y[:, None]
  return Dataset(name="blobs", kind="tabular", x_train=x[:80], y_train=y[:80],
                 x_test=x[80:], y_test=y[80:], num_classes=2)


def split(ds, n_labeled=8):
  idx = np.arange(len(ds.y_train))
  return idx[:n_labeled], idx[n_labeled:]


def params_vector(variables):
  return np.concatenate([np.ravel(np.asarray(a)) for a in
                         jax.tree.leaves(variables["params"])])


def test_hold_then_linear_schedule_matches_original_shape():
  s = optim.hold_then_linear_schedule(1.0, 100)
  assert float(s(10)) == pytest.approx(1.0)
  assert float(s(70)) == pytest.approx(1.0 - 0.99 * 0.2 / 0.4)
  assert float(s(95)) == pytest.approx(0.01)


def test_old_schedule_name_is_refused_with_the_new_one():
  with pytest.raises(ValueError, match="now called 'hold_then_linear'"):
    optim.make_schedule("wilson", 1.0, 100)
  c = base_config()
  c.optim.lr_schedule = "wilson"
  with pytest.raises(ValueError, match=r"optim\.lr_schedule='wilson' is now called "
                                       "'hold_then_linear'"):
    validate_config(c)


def test_weight_decay_only_on_weight_norm_gains():
  params = {"conv": {"v": jnp.ones(3), "g": jnp.ones(3)}, "bias": jnp.ones(2)}
  tx = optim.make_optimizer("adam", 0.1, 10, weight_decay=1.0)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  # With zero gradients only the decayed leaves (the gains) move.
  assert np.all(np.asarray(updates["conv"]["g"]) < 0)
  assert np.all(np.asarray(updates["conv"]["v"]) == 0)
  assert np.all(np.asarray(updates["bias"]) == 0)


def test_fit_learns_and_is_deterministic():
  ds = gaussian_blobs()
  c = tabular_config(40)
  c.eval_every_steps = 40
  lab, unlab = split(ds)
  r1 = fit(c, ds, (lab, unlab))
  r2 = fit(c, ds, (lab, unlab))
  assert r1.metrics["eval/accuracy"] >= 0.9
  np.testing.assert_array_equal(params_vector(r1.variables), params_vector(r2.variables))
  losses = [h["train/loss"] for h in r1.history if "train/loss" in h]
  assert losses[-1] < losses[0]


def test_resume_gives_same_parameters_as_uninterrupted(tmp_path):
  ds = gaussian_blobs()
  lab, unlab = split(ds)
  full = fit(tabular_config(6), ds, (lab, unlab), workdir=str(tmp_path / "full"))
  # Interrupted run: 3 steps (checkpoint at 3), then the same command with 6 steps.
  fit(tabular_config(3), ds, (lab, unlab), workdir=str(tmp_path / "resumed"))
  resumed = fit(tabular_config(6), ds, (lab, unlab), workdir=str(tmp_path / "resumed"))
  assert int(resumed.state.step) == 6
  np.testing.assert_allclose(params_vector(resumed.variables), params_vector(full.variables),
                             rtol=0, atol=1e-6)
  lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
  records = [json.loads(row) for row in lines]
  assert {"step", "train/loss"} <= set(records[0])
  assert any("eval/accuracy" in r and "eval/ece" in r and "eval/bpd" in r for r in records)


def test_incompatible_checkpoint_is_a_clear_error(tmp_path):
  ds = gaussian_blobs()
  lab, unlab = split(ds)
  fit(tabular_config(3), ds, (lab, unlab), workdir=str(tmp_path))
  c = tabular_config(6)
  c.model.hidden_dim = 32
  with pytest.raises(IncompatibleCheckpointError, match="different model/data configuration"):
    fit(c, ds, (lab, unlab), workdir=str(tmp_path))


DATA_PARALLEL_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, {repo!r})
    from flowgmm_jax.data import Dataset
    from flowgmm_jax.training import base_config, fit
    from flowgmm_jax.training.config import model_config
    from flowgmm_jax.mesh import make_mesh
    assert jax.device_count() == 8, jax.devices()

    def vec(v):
      return np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree.leaves(v)])

    rng = np.random.default_rng(0)
    out = {{}}
    # Image flow: BatchNorm statistics, dequantisation noise and augmentation all cross devices.
    c = base_config()
    c.data.kind, c.data.name = "image", "mnist"
    c.model = model_config("realnvp", num_scales=1, num_blocks=1, mid_channels=4)
    c.data.labeled_batch_size, c.data.unlabeled_batch_size = 8, 8
    c.augment.crop_padding, c.augment.flip = 2, True
    c.loss.consistency_weight = 1.0
    # SGD with momentum, not Adam: Adam divides by sqrt(v), which turns roundoff-sized
    # gradients (parameters whose exact gradient is 0) into lr-sized steps, so parameter
    # agreement under Adam measures float noise, not data parallelism. The losses under
    # Adam are compared separately below.
    c.optim.optimizer = "sgd"
    c.optim.learning_rate = 1e-3
    c.num_train_steps, c.log_every_steps, c.eval_every_steps = 4, 1, 4
    c.eval_batch_size, c.progress_bar = 16, False
    y = rng.integers(0, 3, 64)
    x = rng.integers(0, 256, (64, 8, 8, 2)).astype(np.uint8)
    ds = Dataset(name="rand", kind="image", x_train=x[:48], y_train=y[:48], x_test=x[48:],
                 y_test=y[48:], num_classes=3)
    lab, unlab = np.arange(12), np.arange(12, 48)
    r8 = fit(c, ds, (lab, unlab), mesh=make_mesh(jax.devices()))
    r1 = fit(c, ds, (lab, unlab), mesh=make_mesh(jax.devices()[:1]))
    out["image_params"] = float(np.max(np.abs(vec(r8.variables["params"]) - vec(r1.variables["params"]))))
    out["image_bn"] = float(np.max(np.abs(vec(r8.variables["batch_stats"]) - vec(r1.variables["batch_stats"]))))
    out["grad_norm"] = min(h["train/grad_norm"] for h in r1.history if "train/grad_norm" in h)
    out["eval_acc_diff"] = abs(r8.metrics["eval/accuracy"] - r1.metrics["eval/accuracy"])
    out["eval_nll_diff"] = abs(r8.metrics["eval/nll"] - r1.metrics["eval/nll"]) / abs(r1.metrics["eval/nll"])
    c.optim.optimizer = "adam"
    a8 = fit(c, ds, (lab, unlab), mesh=make_mesh(jax.devices()))
    a1 = fit(c, ds, (lab, unlab), mesh=make_mesh(jax.devices()[:1]))
    l8 = np.array([h["train/loss"] for h in a8.history if "train/loss" in h])
    l1 = np.array([h["train/loss"] for h in a1.history if "train/loss" in h])
    out["adam_loss_rel_diff"] = float(np.max(np.abs(l8 - l1) / np.abs(l1)))
    # The estimator on all 8 devices, with pool sizes that 8 does not divide (5 labelled,
    # 40 unlabelled rows): padded to a multiple of the device count. In this process, not
    # one of its own, because starting an 8-device Python costs as much as the fit.
    from flowgmm_jax.estimator import FlowGMMClassifier
    y = np.full(45, -1)
    y[:5] = [0, 1, 0, 1, 0]
    X = rng.normal(size=(45, 2)) + 4.0 * (np.arange(45) % 2)[:, None]
    clf = FlowGMMClassifier(num_coupling_layers=2, hidden_dim=8, num_train_steps=3,
                            random_state=0).fit(X, y)
    out["estimator_predictions"] = int(clf.predict(X).shape[0])
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_data_parallel_8_devices_equals_1_device_and_the_estimator_fits_on_8():
  env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip(),
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", DATA_PARALLEL_SCRIPT.format(repo=str(REPO))],
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = next(row for row in proc.stdout.splitlines() if row.startswith("RESULT"))
  out = json.loads(line[len("RESULT"):])
  assert out["image_params"] < 1e-5, out
  assert out["image_bn"] < 1e-5, out
  assert out["eval_acc_diff"] == 0.0, out
  assert out["eval_nll_diff"] < 1e-5, out
  assert out["grad_norm"] > 1e-3, out  # the runs really trained: equality is not trivial
  assert out["adam_loss_rel_diff"] < 1e-5, out
  assert out["estimator_predictions"] == 45, out


def test_batch_scale_multiplies_both_batch_parts_and_the_rate_with_a_warm_up():
  from flowgmm_jax.training.config import scaled_for_batch, validate_config
  c = tabular_config(100)
  c.data.batch_scale = 4
  s = scaled_for_batch(c)
  assert (s.data.labeled_batch_size, s.data.unlabeled_batch_size) == (32, 64)
  assert s.optim.learning_rate == pytest.approx(4e-2)
  assert s.optim.warmup_steps == 5          # 5% of 100 steps
  assert s.data.batch_scale == 1
  assert c.data.batch_scale == 4
  c.optim.warmup_steps = 30                 # a longer configured warm-up is kept
  assert scaled_for_batch(c).optim.warmup_steps == 30
  c.data.batch_scale = 0
  with pytest.raises(ValueError, match="data.batch_scale=0 must be an integer >= 1"):
    validate_config(c)


def test_fit_with_batch_scale_equals_the_same_recipe_written_out():
  ds = gaussian_blobs()
  lab, unl = split(ds)
  scaled = tabular_config(4)
  scaled.data.batch_scale = 2
  by_hand = tabular_config(4)
  by_hand.data.labeled_batch_size, by_hand.data.unlabeled_batch_size = 16, 32
  by_hand.optim.learning_rate = 2e-2
  by_hand.optim.warmup_steps = 1            # ceil(0.05 * 4)
  a = params_vector(fit(scaled, ds, (lab, unl)).variables)
  b = params_vector(fit(by_hand, ds, (lab, unl)).variables)
  np.testing.assert_array_equal(a, b)
  c = params_vector(fit(tabular_config(4), ds, (lab, unl)).variables)
  assert not np.allclose(a, c)


def test_early_stoppings_best_step_reaches_metrics_and_the_checkpoint(tmp_path):
  """The state saved at the last step holds the best check's parameters: metrics.jsonl
  says which step that was, and the checkpoint's metadata names it as params_step."""
  ds = gaussian_blobs()
  lab, unl = split(ds)
  c = tabular_config(8)
  c.early_stopping.holdout_fraction = 0.3
  c.early_stopping.check_every_steps = 2
  c.early_stopping.patience = 0            # run to the end, then keep the best check
  c.optim.learning_rate = 0.3              # large enough that the last check is not the best
  result = fit(c, ds, (lab, unl), workdir=str(tmp_path))
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  best = [r["early_stopping/best_step"] for r in records if "early_stopping/best_step" in r]
  checks = {r["step"]: r["early_stopping/heldout_nll"] for r in records
            if "early_stopping/heldout_nll" in r}
  assert sorted(checks) == [2, 4, 6, 8]
  assert best == [result.best_step] == [min(checks, key=checks.get)]
  meta = json.load(open(tmp_path / "checkpoints" / "8" / "meta" / "metadata"))
  assert meta["params_step"] == result.best_step
