"""Configs and the command line: every config's smoke run on real data, and clear errors."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flowgmm_jax.data.rows import split_rows
from flowgmm_jax.training import train_and_evaluate, validate_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["toy", "tabular", "text", "mnist", "svhn", "cifar10"]


def get_config(name: str, arg: str | None = None):
  return importlib.import_module(f"configs.{name}").get_config(arg)


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_validate_and_document_their_command(name):
  module = importlib.import_module(f"configs.{name}")
  assert f"--config=configs/{name}.py" in module.__doc__
  for arg in (None, "smoke"):
    validate_config(module.get_config(arg))


def test_model_sections_hold_only_their_models_fields():
  c = get_config("tabular", "letter")
  assert set(c.model) == {"name", "num_coupling_layers", "hidden_dim", "hidden_layers",
                          "dropout_rate", "zero_init_last"}
  assert set(get_config("tabular", "letter,spline").model) == set(c.model) | {"num_bins",
                                                                              "bound"}
  c.lock()  # as the command line locks it: a field the model lacks is an unknown key
  with pytest.raises(AttributeError, match="num_bins"):
    c.model.num_bins = 4
  c.model.name = "spline_tabular"
  with pytest.raises(ValueError, match=r"holds the fields of model 'realnvp_tabular'.*"
                     r"--config=configs/tabular.py:spline\), not by --config.model.name") as e:
    validate_config(c)
  assert "\n" not in str(e.value)
  cifar = get_config("cifar10", "glow")
  assert cifar.model.name == "glow"
  assert "num_blocks" not in cifar.model
  validate_config(cifar)


def test_config_paper_defaults():
  assert get_config("text", "agnews,paper").model.hidden_dim == 1024
  assert get_config("text", "agnews,paper").model.num_coupling_layers == 7
  cifar = get_config("cifar10")
  assert cifar.augment.flip
  assert cifar.augment.crop_padding == 4
  assert not get_config("svhn").augment.flip
  assert not get_config("mnist").augment.flip
  assert get_config("cifar10").data.num_labeled_per_class == 400


def shrink(c):
  """Even smaller than the smoke setting: 2 steps, tiny eval, for the test suite."""
  c.num_train_steps = 2
  c.log_every_steps = 1
  c.eval_every_steps = 2
  c.checkpoint_every_steps = 2
  c.progress_bar = False
  c.plots = False  # the figures are tested in test_trained.py; here they would only cost time
  if c.data.kind == "image":
    c.model.num_blocks, c.model.mid_channels = 1, 4
    if c.data.name != "cifar10":  # one multi-scale run is enough; compiling it costs ~20 s
      c.model.num_scales = 1
    else:  # the multi-scale path, with one forward pass (mnist runs FlowGMM-cons)
      c.loss.consistency_weight = 0.0
    c.data.max_train_examples, c.data.max_test_examples = 200, 64
    c.eval_batch_size = 64
  return c


def check_results(workdir, num_test):
  results = json.loads((workdir / "results.json").read_text())
  assert results["step"] == 2
  assert results["num_test"] == num_test
  assert results["evaluated_on"] == "test"
  for key in ("eval/accuracy", "eval/ece", "eval/nll", "eval/bpd", "eval/nll_given_label"):
    assert np.isfinite(results[key]), key
  assert 0.0 <= results["eval/accuracy"] <= 1.0
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "train/loss" in r] == [1, 2]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
  return results


@pytest.mark.shared_data
@pytest.mark.parametrize(("name", "arg"), [("tabular", "letter,smoke"), ("tabular", "shuttle,smoke"),
                                      ("text", "smoke"), ("mnist", "smoke"), ("cifar10", "smoke")])
@pytest.mark.slow
def test_smoke_run_on_real_data(tmp_path, name, arg):
  c = shrink(get_config(name, arg))
  results = train_and_evaluate(c, str(tmp_path))
  check_results(tmp_path, c.data.max_test_examples)
  assert results["num_labeled"] > 0
  assert results["num_unlabeled"] > 0


def test_smoke_run_toy(tmp_path):
  c = shrink(get_config("toy", "pinwheel,smoke"))
  train_and_evaluate(c, str(tmp_path))
  check_results(tmp_path, c.data.max_test_examples)


@pytest.mark.slow
def test_smoke_run_svhn_on_generated_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  c = shrink(get_config("svhn", "smoke"))
  c.data.data_dir = str(tmp_path / "tfds")
  c.data.num_labeled_per_class = 2
  with tfds.testing.mock_data(num_examples=64):
    train_and_evaluate(c, str(tmp_path / "run"))
  check_results(tmp_path / "run", 64)


def start_cli(*args, cwd=REPO):
  return subprocess.Popen([sys.executable, "-m", "experiments.main", *args], cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_cli(proc):
  try:
    out, err = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_cli(*args, cwd=REPO):
  return finish_cli(start_cli(*args, cwd=cwd))


def run_clis(*arg_lists):
  """Runs independent commands at the same time (most of a failing command's time is
  starting Python and importing; two cores run two of those at once)."""
  procs = [start_cli(*args) for args in arg_lists]
  return [finish_cli(p) for p in procs]


@pytest.mark.slow
def test_cli_runs_resumes_and_reports_bad_input(tmp_path):
  # Bad input, started first so that these processes overlap the training run below.
  bad = {name: tmp_path / name for name in ("bad_key", "bad_value", "bad_path", "bad_arg")}
  bad_runs = [start_cli(*args) for args in (
      # A misspelt config key: rejected before anything runs.
      ["--config=configs/toy.py:smoke", f"--workdir={bad['bad_key']}", "--config.data.nmae=x"],
      # A bad value and a missing file: one line, no traceback, nothing written.
      ["--config=configs/toy.py:smoke", f"--workdir={bad['bad_value']}",
       "--config.data.name=moon"],
      ["--config=configs/tabular.py:file", f"--workdir={bad['bad_path']}",
       "--config.data.path=/nonexistent/table.npz"],
      ["--config=configs/toy.py:smok", f"--workdir={bad['bad_arg']}"])]

  workdir = tmp_path / "toy"
  # No figures: this test is about the checkpoints (figures: test_trained.py).
  common = ["--config=configs/toy.py:smoke", f"--workdir={workdir}", "--config.plots=False",
            "--config.log_every_steps=1", "--config.num_train_steps=4"]
  proc = run_cli(*common)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads((workdir / "results.json").read_text())["step"] == 4
  # The same command with more steps resumes from the checkpoint at step 4.
  proc = run_cli(*common[:-1], "--config.num_train_steps=6")
  assert proc.returncode == 0, proc.stderr[-3000:]
  steps = [json.loads(line)["step"]
           for line in (workdir / "metrics.jsonl").read_text().splitlines()
           if "train/loss" in line]
  assert steps == [1, 2, 3, 4, 5, 6]  # a restart from scratch would log 1..6 again
  assert sorted(os.listdir(workdir / "checkpoints"))[-1] == "6"
  # The same workdir with a different model: refused in one line, the checkpoints kept.
  proc = run_cli(*common[:-1], "--config.model.hidden_dim=16", "--config.num_train_steps=8")
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  assert "different model/data configuration" in proc.stderr
  assert "hidden_dim" in proc.stderr
  assert sorted(os.listdir(workdir / "checkpoints"))[-1] == "6"

  key, value, path, arg = [finish_cli(p) for p in bad_runs]
  assert key.returncode != 0
  assert "nmae" in key.stderr
  assert not bad["bad_key"].exists()
  assert value.returncode == 1
  assert "Traceback" not in value.stderr
  assert "data.name='moon'" in value.stderr
  assert not bad["bad_value"].exists()
  assert path.returncode == 1
  assert "Traceback" not in path.stderr
  assert "/nonexistent/table.npz" in path.stderr
  assert "does not exist" in path.stderr
  assert not bad["bad_path"].exists()
  assert arg.returncode != 0
  assert "smok" in arg.stderr


def _blobs(n=240, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 3, n)
  x = rng.normal(size=(n, 4)) + 4.0 * np.eye(3, 4)[y]
  return x.astype(np.float32), y


def _user_table(tmp_path, fmt, with_unlabeled):
  """A 240-row, 3-class table as a user would save it; returns (path, extra flags)."""
  x, y = _blobs()
  if with_unlabeled:
    y = y.copy()
    y[60:] = -1  # rows 60.. are the unlabelled pool; the test split comes from rows 0..59
  path = tmp_path / f"table_{with_unlabeled}.{fmt}"
  if fmt == "npz":
    np.savez(path, x=x, y=y)
    return path, []
  header = "f0,f1,label,f2,f3"  # label column in the middle, chosen by name
  rows = np.column_stack([x[:, :2], y, x[:, 2:]])
  np.savetxt(path, rows, delimiter=",", header=header, comments="", fmt="%.6g")
  return path, ["--config.data.label_column=label"]


def _check_user_table_split(results, with_unlabeled):
  if with_unlabeled:
    # Every labelled training row is used; the test split is 20 % of the 60 labelled rows.
    assert results["num_test"] == 12
    unlabeled = 180
  else:
    assert results["num_test"] == 48
    unlabeled = 240 - 48 - 15
  assert results["num_labeled"] == (48 if with_unlabeled else 15)
  # The table recipe holds 10% of the unlabelled pool out of training for early stopping.
  assert results["num_early_stopping"] == round(0.1 * unlabeled)
  assert results["num_unlabeled"] + results["num_early_stopping"] == unlabeled


@pytest.mark.slow
def test_cli_on_user_files(tmp_path):
  """Both formats and both kinds of table (all rows labelled; an unlabelled pool marked -1)
  through the whole command line, the two runs at the same time (a CLI run costs ~11 s on
  the CI machine, most of it starting Python and compiling)."""
  cases = [("npz", True), ("csv", False)]
  tables = [_user_table(tmp_path, fmt, with_unlabeled) for fmt, with_unlabeled in cases]
  procs = run_clis(*[["--config=configs/tabular.py:file,smoke", f"--workdir={tmp_path / fmt}",
                      f"--config.data.path={path}", "--config.data.num_labeled_per_class=5",
                      "--config.num_train_steps=2", "--config.plots=False", *extra]
                     for (fmt, _), (path, extra) in zip(cases, tables, strict=False)])
  for (fmt, with_unlabeled), proc in zip(cases, procs, strict=False):
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / fmt / "results.json").read_text())
    assert results["step"] == 2
    _check_user_table_split(results, with_unlabeled)


@pytest.mark.parametrize(("fmt", "with_unlabeled"), [("npz", False), ("csv", True)])
def test_user_files_load_and_split(tmp_path, fmt, with_unlabeled):
  """The other two combinations through the loader and split the command line calls."""
  from flowgmm_jax import data as data_lib
  path, extra = _user_table(tmp_path, fmt, with_unlabeled)
  c = get_config("tabular", "file,smoke")
  c.data.path, c.data.num_labeled_per_class = str(path), 5
  if extra:
    c.data.label_column = "label"
  validate_config(c)
  ds = data_lib.load_dataset(c)
  rows = split_rows(c, ds)
  _check_user_table_split({"num_test": len(ds.x_test),
                           **{f"num_{k}": n for k, n in rows.counts().items()}},
                          with_unlabeled)


@pytest.mark.slow
def test_cli_user_file_errors_write_nothing(tmp_path):
  x, y = _blobs()
  np.savez(tmp_path / "no_y.npz", x=x)
  np.savetxt(tmp_path / "t.csv", np.column_stack([x, y]), delimiter=",",
             header="a,b,c,d,label", comments="")
  cases = [("no_y.npz", [], "y"), ("t.csv", ["--config.data.label_column=target"], "target"),
           ("missing.npz", [], "does not exist")]
  procs = run_clis(*[["--config=configs/tabular.py:file,smoke", f"--workdir={tmp_path / f'run_{name}'}",
                       f"--config.data.path={tmp_path / name}", *extra]
                      for name, extra, _ in cases])
  for (name, _, needle), proc in zip(cases, procs, strict=False):
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert needle in proc.stderr
    assert not (tmp_path / f"run_{name}").exists()
