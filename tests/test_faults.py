"""Runs that survive faults: non-finite steps, SIGTERM, damaged checkpoints, changed configs,
multi-process runs on one machine, and bad command-line inputs (README, "Reliability")."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import tabular_config, toy_cli_config, wait_all

from flowgmm_jax import checkpoint as ckpt_lib
from flowgmm_jax import losses
from flowgmm_jax import mesh as mesh_lib
from flowgmm_jax.data import Dataset
from flowgmm_jax.data.rows import split_rows
from flowgmm_jax.data.tabular import load_csv_table
from flowgmm_jax.estimator import FlowGMMClassifier
from flowgmm_jax.flowgmm import FlowGMM
from flowgmm_jax.training import base_config, fit, optim, train_and_evaluate
from flowgmm_jax.training import step as step_lib
from flowgmm_jax.training.lock import STALE_SECONDS, WorkdirBusyError
from flowgmm_jax.training.state import create_train_state

REPO = Path(__file__).resolve().parents[1]


def blobs(n=120, dim=4, seed=0, nan_rows=()):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, n)
  x = rng.normal(size=(n, dim)).astype(np.float32) + 3.0 * y[:, None]
  ds = Dataset(name="blobs", kind="tabular", x_train=x[:80], y_train=y[:80],
               x_test=x[80:], y_test=y[80:], num_classes=2)
  ds.x_train[list(nan_rows)] = np.nan  # after the Dataset's own input check, as a fault
  return ds


LAB, UNLAB = np.arange(8), np.arange(8, 80)


def vec(tree):
  return np.concatenate([np.zeros(0)] + [np.ravel(np.asarray(a, np.float64))
                                         for a in jax.tree.leaves(tree)])


def logged_steps(workdir):
  lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(row)["step"] for row in lines if "train/loss" in row]


# ----------------------------------------------------------------------------- non-finite

def test_non_finite_step_changes_nothing_but_the_step():
  ds = blobs()
  c = tabular_config()
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  model = FlowGMM.from_config(c, (4,), 2, image=False, bn_axis_name=mesh_lib.DATA_AXIS)
  variables = FlowGMM.from_config(c, (4,), 2, image=False).init(jax.random.PRNGKey(0),
                                                         jnp.asarray(ds.x_train[:24]))
  tx = optim.make_optimizer("adam", 1e-2, 10)
  state = mesh_lib.replicate(mesh, create_train_state(variables, tx))
  train_step = step_lib.make_train_step(model, tx, mesh, loss=losses.FlowGMMLoss())
  rng = jnp.asarray(jax.random.PRNGKey(2), jnp.uint32)
  good = {"x": ds.x_train[:24], "y": np.where(np.arange(24) < 8, ds.y_train[:24], -1),
          "position": np.arange(24, dtype=np.int32)}
  bad = dict(good, x=good["x"].copy())
  bad["x"][20, 1] = np.nan
  before = jax.device_get(state)
  state, metrics = train_step(state, mesh_lib.shard_batch(mesh, bad), rng)
  after = jax.device_get(state)
  assert float(metrics["train/skipped_steps"]) == 1.0
  assert int(after.step) == 1
  for part in ("params", "opt_state", "batch_stats"):
    np.testing.assert_array_equal(vec(getattr(after, part)), vec(getattr(before, part)))
  state, metrics = train_step(state, mesh_lib.shard_batch(mesh, good), rng)
  assert float(metrics["train/skipped_steps"]) == 0.0
  assert not np.array_equal(vec(jax.device_get(state.params)), vec(before.params))


def test_nan_rows_are_skipped_counted_and_never_checkpointed(tmp_path):
  ds = blobs(nan_rows=[30])  # one unlabelled row is NaN: the batches holding it are skipped
  result = fit(tabular_config(steps=12, checkpoint_every=1), ds, (LAB, UNLAB),
               workdir=str(tmp_path / "run"))
  skipped = sum(h.get("train/skipped_steps", 0) for h in result.history)
  assert 1 <= skipped < 12
  assert np.all(np.isfinite(vec(result.variables)))
  assert result.metrics["eval/accuracy"] > 0.5
  # A non-finite state is refused, and nothing is written for it.
  nan_state = jax.tree.map(lambda a: a * np.nan if jnp.issubdtype(a.dtype, jnp.floating)
                           else a + 100, result.state)
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "run"))
  with pytest.raises(FloatingPointError, match="not finite"):
    checkpointer.save(nan_state)
  checkpointer.close()
  assert checkpointer.latest_step() == 12


def test_too_many_skips_in_a_row_stop_with_one_line(tmp_path):
  ds = blobs(nan_rows=range(8, 80))  # every unlabelled row is NaN
  c = tabular_config(steps=50, checkpoint_every=100)
  c.max_consecutive_skips = 3
  workdir = tmp_path / "new"
  with pytest.raises(FloatingPointError, match=r"3 steps in a row") as e:
    fit(c, ds, (LAB, UNLAB), workdir=str(workdir))
  assert "\n" not in str(e.value)
  assert "learning rate" in str(e.value)


# ----------------------------------------------------------------------------- preemption

def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _cli(*args, env=None):
  return subprocess.Popen([sys.executable, "-m", "experiments.main", *args], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})})


@pytest.mark.slow
def test_sigterm_saves_and_the_rerun_matches_an_uninterrupted_run(tmp_path):
  workdir = tmp_path / "preempted"
  proc = _cli("--config=configs/toy.py:smoke", f"--workdir={workdir}",
              "--config.optim.lr_schedule=constant", "--config.num_train_steps=100000",
              "--config.log_every_steps=1", "--config.eval_every_steps=100000",
              "--config.checkpoint_every_steps=100000")
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
      break
    time.sleep(0.2)
  # A second run of the same command on the busy workdir stops at once, in one line that
  # names the first run's host and pid, and touches nothing.
  second = _cli("--config=configs/toy.py:smoke", f"--workdir={workdir}")
  _, second_err = second.communicate(timeout=300)
  assert second.returncode == 1, second_err[-2000:]
  lines = second_err.strip().splitlines()
  assert len(lines) == 1, second_err[-2000:]
  assert "is in use by another run" in lines[0], second_err[-2000:]
  assert f"pid {proc.pid} on host {socket.gethostname()}" in lines[0]
  assert proc.poll() is None  # the first run goes on
  proc.send_signal(signal.SIGTERM)
  time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)  # a second signal during the save
  try:
    _, err = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith("preempted at step "), err[-2000:]
  assert last.endswith("; checkpoint saved; rerun the same command to resume"), err[-2000:]
  stopped = int(last.split()[3].rstrip(";"))
  assert sorted(int(n) for n in os.listdir(workdir / "checkpoints")) == [stopped]
  # Rerunning (here in-process, the same config) resumes there and matches a run that was
  # never interrupted, to the bit.
  resumed = train_and_evaluate(toy_cli_config(stopped + 2), str(workdir))
  straight = train_and_evaluate(toy_cli_config(stopped + 2), str(tmp_path / "straight"))
  assert resumed == straight
  assert logged_steps(workdir) == list(range(1, stopped + 3))
  def loss(w):
    return [json.loads(row)["train/loss"] for row in (w / "metrics.jsonl").open()
            if "train/loss" in row]
  assert loss(workdir) == loss(tmp_path / "straight")


# ----------------------------------------------------------------------------- checkpoints

def _damage_truncate(step_dir):
  # Every data file: the largest alone is a tie among equal-sized files in an order the
  # filesystem picks, and some of them hold nothing the restore reads.
  for f in glob.glob(f"{step_dir}/state/**/d/*", recursive=True):
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) // 2)


def _damage_manifest(step_dir):
  open(f"{step_dir}/state/manifest.ocdbt", "w").close()


def test_damaged_latest_checkpoints_fall_back_to_the_newest_good_one(tmp_path, capfd):
  ds = blobs()
  straight = fit(tabular_config(steps=8), ds, (LAB, UNLAB), workdir=str(tmp_path / "straight"))
  workdir = tmp_path / "damaged"
  fit(tabular_config(steps=6), ds, (LAB, UNLAB), workdir=str(workdir))
  _damage_truncate(workdir / "checkpoints" / "6")
  _damage_manifest(workdir / "checkpoints" / "4")
  capfd.readouterr()
  resumed = fit(tabular_config(steps=8), ds, (LAB, UNLAB), workdir=str(workdir))
  err = capfd.readouterr().err
  warnings = [row for row in err.splitlines() if row.strip()]
  assert len(warnings) == 2, err  # one line per damaged checkpoint, no orbax noise
  assert "step 6" in warnings[0]
  assert "step 4" in warnings[1]
  assert all("resuming from step 2" in w for w in warnings)
  np.testing.assert_array_equal(vec(resumed.variables), vec(straight.variables))
  # metrics.jsonl was cut back to step 2 and holds every step once.
  assert logged_steps(workdir) == list(range(1, 9))
  assert sorted(os.listdir(workdir / "checkpoints_damaged")) == ["4", "6"]


def _checksum_as_first_written(tree) -> int:
  """The checksum's first (jitted jnp) form, which older checkpoints were written with."""
  total = jnp.zeros((), jnp.uint32)
  for i, leaf in enumerate(jax.tree.leaves(tree)):
    x = jnp.ravel(jnp.asarray(leaf))
    if x.dtype.itemsize == 4:
      bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    else:
      bits = x.astype(jnp.float32 if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.int32)
      bits = jax.lax.bitcast_convert_type(bits, jnp.uint32)
    weights = (jnp.arange(x.size, dtype=jnp.uint32) % jnp.uint32(65521)) + jnp.uint32(i + 1)
    total = total + jnp.sum(bits * weights, dtype=jnp.uint32)
  return int(total)


def test_checksum_matches_older_checkpoints_and_sees_one_flipped_bit():
  rng = np.random.default_rng(0)
  tree = {"a": jnp.asarray(rng.normal(size=(300, 500)), jnp.float32),  # > 65521 elements
          "b": jnp.asarray(rng.normal(size=(7,)), jnp.bfloat16),
          "c": jnp.asarray(rng.integers(0, 2**31, size=(5,)), jnp.uint32),
          "d": jnp.asarray([True, False]), "e": jnp.asarray(3, jnp.int32)}
  value = ckpt_lib.checksum(tree)
  assert value == _checksum_as_first_written(tree)
  flipped = np.asarray(tree["a"]).copy()
  flipped.view(np.uint32)[123, 45] ^= 1 << 7
  assert ckpt_lib.checksum({**tree, "a": jnp.asarray(flipped)}) != value
  assert ckpt_lib.is_finite(tree)
  assert not ckpt_lib.is_finite({**tree, "b": tree["b"].at[3].set(jnp.inf)})


def test_no_readable_checkpoint_is_one_line_naming_the_directory(tmp_path, capfd):
  ds = blobs()
  workdir = tmp_path / "run"
  fit(tabular_config(steps=2), ds, (LAB, UNLAB), workdir=str(workdir))
  (workdir / "checkpoints" / "2" / "state" / "_METADATA").write_text("garbage{")
  capfd.readouterr()
  with pytest.raises(ckpt_lib.DamagedCheckpointError) as e:
    fit(tabular_config(steps=4), ds, (LAB, UNLAB), workdir=str(workdir))
  assert "\n" not in str(e.value)
  assert str(workdir / "checkpoints") in str(e.value)
  assert "afresh" in str(e.value)
  assert capfd.readouterr().err.strip() == ""


def test_changed_seed_split_or_optimiser_on_an_existing_workdir(tmp_path, capfd):
  ds = blobs()
  workdir = str(tmp_path / "run")
  fit(tabular_config(steps=2), ds, (LAB, UNLAB), workdir=workdir)
  c = tabular_config(steps=4)
  c.seed = 1
  with pytest.raises(ckpt_lib.IncompatibleCheckpointError, match="different seed") as e:
    fit(c, ds, (LAB, UNLAB), workdir=workdir)
  assert "/seed" in str(e.value)
  with pytest.raises(ckpt_lib.IncompatibleCheckpointError, match="split"):
    fit(tabular_config(steps=4), ds, (LAB[:6], np.arange(6, 80)), workdir=workdir)
  c = tabular_config(steps=4)
  c.model.num_coupling_layers = 3
  with pytest.raises(ckpt_lib.IncompatibleCheckpointError, match="does not fit this model.*"
                     "num_coupling_layers"):
    fit(c, ds, (LAB, UNLAB), workdir=workdir)
  c = tabular_config(steps=4)
  c.optim.optimizer = "sgd"
  with pytest.raises(ckpt_lib.IncompatibleCheckpointError, match="optim.optimizer='adam'"):
    fit(c, ds, (LAB, UNLAB), workdir=workdir)
  # A lower learning rate (the advice after divergence) resumes, and says so in one line.
  capfd.readouterr()
  c = tabular_config(steps=4)
  c.optim.learning_rate = 1e-3
  result = fit(c, ds, (LAB, UNLAB), workdir=workdir)
  assert int(result.state.step) == 4
  err = [row for row in capfd.readouterr().err.splitlines() if row.strip()]
  assert len(err) == 1
  assert "optim.learning_rate: 0.01 -> 0.001" in err[0]


# ----------------------------------------------------------------------------- one writer

def _foreign_lock(workdir, *, host="another-host", pid=4242, age=0.0):
  path = Path(workdir) / ".lock"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"host": host, "pid": pid, "token": "theirs"}))
  t = time.time() - age
  os.utime(path, (t, t))
  return path


def test_a_busy_workdir_is_refused_and_a_stale_lock_taken_over(tmp_path, capfd):
  ds = blobs()
  workdir = tmp_path / "run"
  lock = _foreign_lock(workdir)  # a live holder elsewhere: fresh heartbeat
  with pytest.raises(WorkdirBusyError) as e:
    fit(tabular_config(steps=2), ds, (LAB, UNLAB), workdir=str(workdir))
  assert "\n" not in str(e.value)
  assert "pid 4242 on host another-host" in str(e.value)
  assert os.listdir(workdir) == [".lock"]
  assert json.loads(lock.read_text())["pid"] == 4242
  # No heartbeat for longer than the timeout: the holder is gone; the run takes over.
  _foreign_lock(workdir, age=STALE_SECONDS + 5)
  capfd.readouterr()
  assert int(fit(tabular_config(steps=2), ds, (LAB, UNLAB), workdir=str(workdir)).state.step) == 2
  err = capfd.readouterr().err.strip().splitlines()
  assert len(err) == 1
  assert "took over the lock" in err[0]
  assert "another-host" in err[0]
  assert not lock.exists()  # released at the end
  # A holder on this host whose process has ended is taken over at once.
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  _foreign_lock(workdir, host=socket.gethostname(), pid=dead.pid)
  assert int(fit(tabular_config(steps=4), ds, (LAB, UNLAB), workdir=str(workdir)).state.step) == 4
  assert not lock.exists()


def test_a_checkpoint_of_the_previous_format_is_refused_in_one_line(tmp_path):
  """Checkpoints written before the metadata schema had a version stored the flows unrolled
  (parameter layout 1), which this version does not read: loading one and resuming from
  one are each refused in one line that says what to do."""
  from flowgmm_jax import trained

  ds = blobs()
  first = fit(tabular_config(steps=2), ds, (LAB, UNLAB))
  c = tabular_config(steps=2)
  meta = ckpt_lib.make_meta(c, input_shape=(4,), num_classes=2,
                            rows=split_rows(c, ds, (LAB, UNLAB)))
  assert meta["param_layout"] == 2
  del meta["meta_version"], meta["param_layout"]
  workdir = tmp_path / "old"
  writer = ckpt_lib.Checkpointer(str(workdir), meta=meta, soft_meta=c.optim.to_dict())
  writer.save(first.state)
  writer.close()
  for attempt in (lambda: trained.load(str(workdir)),
                  lambda: fit(tabular_config(steps=4), ds, (LAB, UNLAB), workdir=str(workdir))):
    with pytest.raises(ckpt_lib.IncompatibleCheckpointError) as e:
      attempt()
    message = str(e.value)
    assert "\n" not in message
    assert "parameter layout 1" in message
    assert "retrain" in message


def test_an_unknown_or_newer_parameter_layout_is_refused_in_one_line():
  from flowgmm_jax import trained
  from flowgmm_jax.models import LayoutVersionError
  c = tabular_config(steps=2)
  ds = blobs()
  first = fit(c, ds, (LAB, UNLAB))
  for layout, words in ((3, "newer than this flowgmm_jax knows"), ("x", "unknown")):
    meta = ckpt_lib.make_meta(c, input_shape=(4,), num_classes=2)
    meta["param_layout"] = layout
    with pytest.raises(LayoutVersionError, match=words) as e:
      trained.from_variables(meta, first.variables)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- multi-process

@pytest.mark.slow
def test_two_processes_on_localhost_equal_one_process_with_two_devices(tmp_path):
  # No figures: they are the same code after either run (tested in test_trained.py).
  common = ["--config=configs/toy.py:smoke", "--config.num_train_steps=3",
            "--config.log_every_steps=1", "--config.plots=False"]
  port = _free_port()
  flags = os.environ.get("XLA_FLAGS", "")  # keeps the suite's compile settings (conftest)
  procs = [_cli(*common, f"--workdir={tmp_path / 'two'}", f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2", f"--process_id={i}",
                env={"XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=1"})
           for i in range(2)]
  one = _cli(*common, f"--workdir={tmp_path / 'one'}",
             env={"XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=2"})
  wait_all(procs + [one])

  def records(name):
    out = [json.loads(row) for row in (tmp_path / name / "metrics.jsonl").open()]
    for r in out:
      r.pop("train/steps_per_sec", None)
    return out
  assert records("two") == records("one")
  assert (json.loads((tmp_path / "two" / "results.json").read_text())
          == json.loads((tmp_path / "one" / "results.json").read_text()))


def test_incomplete_distributed_flags_are_one_line():
  c = toy_cli_config(2)
  c.distributed.coordinator_address = "127.0.0.1:1234"
  with pytest.raises(ValueError, match="must be given together") as e:
    train_and_evaluate(c, "/nonexistent/never/created")
  assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- inputs

def _csv_config(path):
  c = base_config()
  c.data.kind = "tabular"
  c.data.name = "file"
  c.data.path = str(path)
  c.data.num_labeled_per_class = 2
  c.data.test_fraction = 0.25
  c.model.hidden_dim = 8
  c.model.num_coupling_layers = 2
  c.data.labeled_batch_size = 4
  c.data.unlabeled_batch_size = 4
  c.num_train_steps = 2
  c.progress_bar = False
  return c


def _rows(n=16, seed=0):
  rng = np.random.default_rng(seed)
  return [f"{rng.normal():.3f},{rng.normal():.3f},{i % 2}" for i in range(n)]


BAD_CSVS = {
    # name: (file text, part of the expected one-line message)
    "header_only": ("a,b,label\n", "header but no data rows"),
    "no_labels": ("a,b,label\n" + "\n".join(f"{i},{i * 2},-1" for i in range(10)) + "\n",
                  "no labelled rows"),
    "label_minus_two": ("a,b,label\n" + "\n".join(_rows()[:2]) + "\n0.1,0.2,-2\n"
                        + "\n".join(_rows()[2:]) + "\n", "label '-2' in line 4"),
    "single_class": ("a,b,label\n" + "\n".join(f"{i},{i * 3 % 7},1" for i in range(10)) + "\n",
                     "at least 2 classes"),
    "nan": ("a,b,label\n" + "\n".join(_rows()[:4]) + "\n0.5,nan,1\n" + "\n".join(_rows()[4:])
            + "\n", "'nan' in line 6, column 2"),
    "inf": ("a,b,label\n" + "\n".join(_rows()[:6]) + "\ninf,0.5,0\n" + "\n".join(_rows()[6:])
            + "\n", "'inf' in line 8, column 1"),
}


@pytest.mark.parametrize("name", sorted(BAD_CSVS))
def test_bad_csv_is_one_line_and_leaves_nothing(tmp_path, name):
  text, expected = BAD_CSVS[name]
  path = tmp_path / "data.csv"
  path.write_text(text)
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=re.escape(expected)) as e:
    train_and_evaluate(_csv_config(path), str(workdir))
  assert "\n" not in str(e.value)
  assert not workdir.exists()


def test_outlier_row_is_named_by_csv_loader_and_estimator(tmp_path, capsys):
  rows = _rows(40)
  rows[5] = "0.1,1e30,1"  # line 7 of the file (after the header)
  path = tmp_path / "data.csv"
  path.write_text("a,b,label\n" + "\n".join(rows) + "\n")
  load_csv_table(path)
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert "line 7, column 2 (b) holds 1e+30" in err
  x = np.random.default_rng(0).normal(size=(40, 2))
  x[5, 1] = 1e30
  y = np.where(np.arange(40) < 10, np.arange(40) % 2, -1)
  with pytest.warns(UserWarning, match="row 5, column 1 holds 1e\\+30"):
    FlowGMMClassifier(num_train_steps=2, hidden_dim=8, num_coupling_layers=2, labeled_batch_size=4,
                      unlabeled_batch_size=4).fit(x, y)


def test_bad_workdir_is_one_line(tmp_path):
  a_file = tmp_path / "file"
  a_file.write_text("x")
  with pytest.raises(ValueError, match="is a file") as e:
    train_and_evaluate(toy_cli_config(2), str(a_file))
  assert "\n" not in str(e.value)
  locked = tmp_path / "locked"
  locked.mkdir(mode=0o500)
  if os.access(locked, os.W_OK):
    pytest.skip("running as a user who can write anywhere")
  with pytest.raises(ValueError, match="not writable"):
    train_and_evaluate(toy_cli_config(2), str(locked / "run"))
  assert os.listdir(locked) == []


def test_misspelt_config_key_is_one_line(tmp_path):
  proc = _cli("--config=configs/toy.py:smoke", f"--workdir={tmp_path / 'run'}",
              "--config.data.pth=x.csv")
  _, err = proc.communicate(timeout=120)
  assert proc.returncode != 0
  assert len(err.strip().splitlines()) == 1
  assert '"path"' in err
  assert "pth" in err
  assert not (tmp_path / "run").exists()


def test_error_cleanup_removes_only_what_this_run_created(tmp_path):
  workdir = tmp_path / "mine"
  workdir.mkdir()
  (workdir / "notes.txt").write_text("the user's own file")
  c = toy_cli_config(50)
  c.max_consecutive_skips = 1
  c.optim.learning_rate = 1e30  # diverges at once
  c.optim.grad_clip_norm = 1e30
  with pytest.raises(FloatingPointError):
    train_and_evaluate(c, str(workdir))
  assert os.listdir(workdir) == ["notes.txt"]
