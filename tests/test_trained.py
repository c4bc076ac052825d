"""After training: load(workdir), --mode=eval, calibration and the figures."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowgmm_jax import calibration, plots, run_files, trained
from flowgmm_jax import data as data_lib
from flowgmm_jax.checkpoint import (
  META_KEYS,
  MODEL_META_KEYS,
  IncompatibleCheckpointError,
  make_meta,
)
from flowgmm_jax.data import load_dataset
from flowgmm_jax.flowgmm import FlowGMM
from flowgmm_jax.training import evaluate_run, train_and_evaluate
from flowgmm_jax.training.config import base_config, model_config


def toy_config(steps=4):
  c = base_config()
  c.data.kind, c.data.name = "toy", "moons"
  c.data.num_points = 400
  c.data.num_labeled_per_class = 6
  c.data.labeled_batch_size, c.data.unlabeled_batch_size = 8, 32
  c.prior.means_init, c.prior.means_scale = "circle", 3.5
  c.model.num_coupling_layers, c.model.hidden_dim = 2, 16
  c.calibration.method = "holdout"
  c.calibration.calibration_fraction = 0.34
  c.num_train_steps = steps
  c.log_every_steps = c.eval_every_steps = 2
  c.checkpoint_every_steps = 2
  c.progress_bar = False
  return c


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("toy_run"))
  config = toy_config()
  results = train_and_evaluate(config, workdir)
  return config, workdir, results


def _is_png(path, min_side=100):
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
  size = os.path.getsize(path)
  assert 2_000 < size < 3_000_000, (path, size)
  import matplotlib.image as mpimg
  h, w = mpimg.imread(path).shape[:2]
  assert min(h, w) >= min_side, (path, h, w)
  assert max(h, w) < 4000, (path, h, w)


# ----------------------------------------------------------------------------- load

def test_load_reproduces_the_runs_own_results(toy_run):
  config, workdir, results = toy_run
  model = trained.load(workdir, calibrated=False)
  assert model.step == results["step"] == 4
  dataset = load_dataset(config)
  logits = model.logits(dataset.x_test, preprocessed=True)
  acc = float(np.mean(logits.argmax(1) == dataset.y_test))
  assert acc == pytest.approx(results["eval/accuracy"], abs=1e-9)
  nll = -float(np.mean(model.log_prob(dataset.x_test, preprocessed=True)))
  assert nll == pytest.approx(results["eval/nll"], rel=1e-5)
  # Toy rows are raw rows: no transform, so preprocessed or not gives the same answer.
  np.testing.assert_allclose(model.logits(dataset.x_test), logits, rtol=1e-6)


def test_load_methods_round_trip_and_sample(toy_run):
  _, workdir, _ = toy_run
  model = trained.load(workdir)
  x = np.random.default_rng(0).normal(size=(10_000, 2)).astype(np.float32)
  z = model.encode(x)
  assert z.shape == (10_000, 2)
  np.testing.assert_allclose(model.decode(z), x, atol=1e-4)
  probs = model.predict_proba(x)
  np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(model.predict(x), probs.argmax(1))
  # outputs(keys=...) returns only the parts asked for, equal to the full pass's.
  full = model.outputs(x)
  part = model.outputs(x, keys=("logits", "log_det"))
  assert set(part) == {"logits", "log_det"}
  np.testing.assert_array_equal(part["logits"], full["logits"])
  np.testing.assert_array_equal(part["log_det"], full["log_det"])
  np.testing.assert_array_equal(full["z"], z)
  with pytest.raises(ValueError, match="unknown output"):
    model.outputs(x, keys=("latent",))
  # Temperature 0 decodes the class means exactly.
  np.testing.assert_allclose(model.sample(4, y=[0, 1, 1, 0], temperature=0.0),
                             model.decode(model.means()[[0, 1, 1, 0]]), atol=1e-6)
  assert model.sample(7).shape == (7, 2)


def test_load_applies_the_stored_calibration_and_predict_is_unchanged(toy_run):
  _, workdir, results = toy_run
  cal = json.load(open(os.path.join(workdir, "calibration.json")))
  assert cal["step"] == 4
  assert cal["num_validation"] == results["num_calibration"] > 0
  model, raw = trained.load(workdir), trained.load(workdir, calibrated=False)
  assert model.temperature == pytest.approx(cal["temperature"])
  assert raw.temperature == 1.0
  x = np.random.default_rng(1).normal(size=(200, 2)).astype(np.float32)
  np.testing.assert_array_equal(model.predict(x), raw.predict(x))
  np.testing.assert_array_equal(model.predict_proba(x).argmax(1), raw.predict_proba(x).argmax(1))
  for key in ("ece", "nll_y_given_x", "accuracy"):
    assert f"calibration/before/{key}" in results
    assert f"calibration/after/{key}" in results
  assert results["calibration/after/accuracy"] == results["calibration/before/accuracy"]
  # The calibration rows were held out of the labelled pool: 6 per class - 2 per class.
  assert results["num_labeled"] == 8
  assert results["num_calibration"] == 4


def test_load_fails_in_one_line(toy_run, tmp_path):
  _, workdir, _ = toy_run
  with pytest.raises(trained.RunNotFoundError, match="no checkpoint"):
    trained.load(str(tmp_path))
  with pytest.raises(trained.RunNotFoundError, match="does not exist"):
    trained.load(str(tmp_path / "nope"))
  with pytest.raises(trained.RunNotFoundError, match=r"step 3 .*available steps: \[2, 4\]"):
    trained.load(workdir, step=3)
  assert trained.load(workdir, step=2).step == 2
  # A checkpoint whose metadata describes another model: its variables do not fit.
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  meta_file = os.path.join(copy, "checkpoints", "4", "meta", "metadata")
  meta = json.load(open(meta_file))
  meta["model"]["hidden_dim"] = 32
  json.dump(meta, open(meta_file, "w"))
  with pytest.raises(IncompatibleCheckpointError, match="incompatible version"):
    trained.load(copy)
  del meta["input_shape"]
  json.dump(meta, open(meta_file, "w"))
  with pytest.raises(IncompatibleCheckpointError, match=r"lacks \['input_shape'\]"):
    trained.load(copy)
  # A run writes the schema's keys (and the optimiser settings, checksum and the step whose
  # parameters it holds: its own, without early stopping); load needs its model part.
  saved = json.load(open(os.path.join(workdir, "checkpoints", "4", "meta", "metadata")))
  assert set(saved) - {"_soft", "_checksum", "params_step"} == set(META_KEYS) > set(
      MODEL_META_KEYS)
  assert saved["params_step"] == 4


# ----------------------------------------------------------------------------- --mode=eval

def _snapshot(directory):
  return {os.path.join(r, f): os.path.getmtime(os.path.join(r, f))
          for r, _, fs in os.walk(directory) for f in fs}


def test_eval_mode_writes_metrics_and_predictions_without_touching_the_run(toy_run, tmp_path):
  config, workdir, results = toy_run
  before = _snapshot(os.path.join(workdir, "checkpoints"))
  # Read-only: it needs no lock, so a run training in the workdir does not stop it.
  lock = os.path.join(workdir, run_files.LOCK_FILE)
  with open(lock, "w") as f:
    json.dump({"host": "another-host", "pid": 1, "token": "theirs"}, f)
  try:
    metrics = evaluate_run.evaluate_saved_run(config, workdir)
  finally:
    os.remove(lock)
  assert _snapshot(os.path.join(workdir, "checkpoints")) == before
  assert metrics["accuracy"] == pytest.approx(results["eval/accuracy"])
  assert metrics["nll"] == pytest.approx(results["eval/nll"], rel=1e-5)
  assert metrics["ece_calibrated"] == pytest.approx(results["calibration/after/ece"], abs=1e-6)
  saved = json.load(open(os.path.join(workdir, "eval", "metrics.json")))
  assert saved["accuracy"] == metrics["accuracy"]
  assert saved["step"] == 4
  with np.load(os.path.join(workdir, "eval", "predictions.npz")) as f:
    n = results["num_test"]
    assert f["probs"].shape == (n, 2)
    assert f["labels"].shape == (n,)
    assert np.mean(f["predicted"] == f["labels"]) == pytest.approx(results["eval/accuracy"])
    assert -f["log_px"].mean() == pytest.approx(results["eval/nll"], rel=1e-5)
  # A user's file (no labels): predictions only.
  user = str(tmp_path / "rows.npz")
  np.savez(user, x=np.zeros((5, 2), np.float32))
  config = toy_config()
  config.data.path = user
  metrics = evaluate_run.evaluate_saved_run(config, workdir, step=2)
  assert metrics["num_examples"] == 5
  assert metrics["step"] == 2
  assert "accuracy" not in metrics
  with np.load(os.path.join(workdir, "eval", "predictions.npz")) as f:
    assert f["probs"].shape == (5, 2)
    assert "labels" not in f.files


# ----------------------------------------------------------------------------- calibration

def test_temperature_fit_fixes_a_constructed_over_confident_model():
  rng = np.random.default_rng(0)
  true_logits = rng.normal(size=(4000, 4)) * 1.5
  p = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
  labels = np.array([rng.choice(4, p=row) for row in p])
  over = 4.0 * true_logits                     # the same ranking, 4x too confident
  val, test = slice(0, 2000), slice(2000, None)
  t = calibration.fit_temperature(over[val], labels[val], max_temperature=10.0)
  assert t == pytest.approx(4.0, rel=0.15)
  before = calibration.metrics(over[test], labels[test], 1.0)
  after = calibration.metrics(over[test], labels[test], t)
  assert after["nll_y_given_x"] < 0.8 * before["nll_y_given_x"]
  assert after["ece"] < 0.5 * before["ece"]
  assert after["accuracy"] == before["accuracy"]
  # A validation set the model gets all right carries no evidence for a finite T: keep 1.
  right = over[val][over[val].argmax(1) == labels[val]][:5]
  assert calibration.calibrate(right, right.argmax(1), max_temperature=10.0)["temperature"] == 1.0
  # An under-confident model gets T < 1.
  assert calibration.fit_temperature(0.25 * true_logits[val], labels[val],
                                      max_temperature=10.0) < 0.4


# ----------------------------------------------------------------------------- figures

def test_toy_run_writes_every_figure(toy_run):
  _, workdir, _ = toy_run
  names = ["reliability", "confusion", "training_curves", "data_plane", "latent_plane",
           "class_samples"]
  for name in names:
    _is_png(os.path.join(workdir, "plots", f"{name}.png"))
  # The same images in TensorBoard: the cheap ones at the evaluation step 2, all at step 4.
  import glob
  import struct

  from tensorboardX.proto import event_pb2
  steps = {}
  for path in glob.glob(os.path.join(workdir, "tensorboard", "events*")):
    data, i = open(path, "rb").read(), 0
    while i < len(data):  # TFRecord framing: length, crc, payload, crc
      n = struct.unpack("<Q", data[i:i + 8])[0]
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += n + 16
      for v in event.summary.value:
        if v.HasField("image"):
          steps.setdefault(v.tag, set()).add(event.step)
  assert {f"plots/{n}" for n in names} == set(steps)
  assert steps["plots/data_plane"] == {2, 4}
  assert steps["plots/confusion"] == {4}


@pytest.fixture(scope="module")
def tiny_image_model():
  """An untrained smoke-size RealNVP FlowGMM on 8x8x1 images (figures need no training)."""
  c = base_config()
  c.model = model_config("realnvp", num_scales=1, num_blocks=1, mid_channels=4)
  c.prior.means_init = "image"
  c.data.kind, c.data.name = "image", "tiny"
  meta = make_meta(c, input_shape=(8, 8, 1), num_classes=3)
  model = FlowGMM.from_config(c, (8, 8, 1), 3, image=True)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, size=(30, 8, 8, 1)).astype(np.uint8)
  variables = model.init({"params": jax.random.PRNGKey(0)}, jnp.asarray(x[:4], jnp.float32))
  m = trained.TrainedFlowGMM(model, variables, meta=meta, step=0)
  y = np.arange(30) % 3
  ds = data_lib.Dataset(name="tiny", kind="image", x_train=x, y_train=y, x_test=x[:12],
                        y_test=y[:12], num_classes=3)
  return m, ds


def test_image_figures_are_written(tiny_image_model, tmp_path):
  model, ds = tiny_image_model
  paths = plots.write_run_plots(model, ds, str(tmp_path), calibration={"temperature": 2.0})
  names = {os.path.basename(p) for p in paths}
  assert names == {"reliability.png", "confusion.png", "samples.png", "class_means.png",
                   "interpolations.png", "feature_vis.png"}
  for p in paths:
    _is_png(p)


def test_feature_visualisation_centre_is_the_input(tiny_image_model):
  model, ds = tiny_image_model
  x = ds.x_test[0]
  images, coords, effects, offsets = plots.feature_visualisation(model, x, num_top=2, steps=5)
  assert images.shape == (3, 5, 8, 8, 1)
  assert offsets[2] == 0.0
  assert effects[0] >= effects[1] >= effects[2]
  for row in images:  # the unchanged latent decodes to the input (pixel scale 0..1)
    np.testing.assert_allclose(row[2] / 255.0, x / 255.0, atol=1e-4)
  # Moving a coordinate does change the image.
  assert np.abs(images[0, 0] - images[0, 2]).max() > 1e-3


def test_image_samples_at_temperature_zero_are_the_decoded_means(tiny_image_model):
  model, _ = tiny_image_model
  np.testing.assert_allclose(model.sample(3, y=[2, 0, 1], temperature=0.0),
                             model.decode(model.means()[[2, 0, 1]]), atol=1e-5)
  x = tiny_image_model[1].x_test
  assert model.bits_per_dim(x).shape == (12,)


@pytest.mark.slow
def test_command_lines_plot_and_eval(toy_run, tmp_path):
  import subprocess
  import sys
  _, workdir, _ = toy_run
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  os.remove(os.path.join(workdir, "plots", "latent_plane.png"))
  # Both commands at once: each is mostly starting Python and importing.
  procs = [subprocess.Popen([sys.executable, "-m", *args], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
           for args in (["experiments.plot", f"--workdir={workdir}"],
                        ["experiments.main", "--config=configs/toy.py", f"--workdir={tmp_path}",
                         "--mode=eval"])]
  try:
    (_, plot_err), (_, eval_err) = [p.communicate(timeout=300) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert procs[0].returncode == 0, plot_err
  _is_png(os.path.join(workdir, "plots", "latent_plane.png"))
  assert procs[1].returncode == 1
  assert eval_err.strip().startswith("error: no checkpoint")
  assert eval_err.count("\n") == 1


def test_raw_feature_rows_get_the_runs_transform(tmp_path):
  """A tabular run's dropped constant column and standardisation are applied to raw rows."""
  c = base_config()
  c.model.num_coupling_layers, c.model.hidden_dim = 2, 8
  c.prior.means_init = "multiclass"
  c.data.kind, c.data.name = "tabular", "file"
  meta = make_meta(c, input_shape=(2,), num_classes=3)
  info = {"kept_feature_columns": np.array([0, 2]), "dropped_feature_columns": np.array([1]),
          "feature_mean": np.array([10.0, -5.0], np.float32),
          "feature_std": np.array([2.0, 0.5], np.float32)}
  run_files.write_data_transform(str(tmp_path), info)
  with np.load(tmp_path / run_files.DATA_TRANSFORM_FILE) as f:
    transform = {k: f[k] for k in f.files}
  model = FlowGMM.from_config(c, (2,), 3, image=False)
  variables = model.init({"params": jax.random.PRNGKey(1)}, jnp.zeros((4, 2)))
  m = trained.TrainedFlowGMM(model, variables, meta=meta, step=0, data_transform=transform)
  assert m.num_raw_features == 3
  raw = np.random.default_rng(0).normal(size=(50, 3)) * [2.0, 0.0, 0.5] + [10.0, 7.0, -5.0]
  standardised = (raw[:, [0, 2]] - [10.0, -5.0]) / [2.0, 0.5]
  np.testing.assert_allclose(m.logits(raw), m.logits(standardised, preprocessed=True),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(m.decode(m.encode(raw)), raw[:, [0, 2]], atol=1e-4)
  # --mode=eval on a user's csv: raw columns, an optional last label column, a header row.
  rows = np.column_stack([raw, np.arange(50) % 3])
  np.savetxt(tmp_path / "with_y.csv", rows, delimiter=",", header="a,b,c,label", comments="")
  np.savetxt(tmp_path / "no_y.csv", raw, delimiter=",")
  np.savetxt(tmp_path / "bad.csv", raw[:, :2], delimiter=",")
  x, y = evaluate_run.read_user_file(str(tmp_path / "with_y.csv"), m)
  np.testing.assert_allclose(x, raw, rtol=1e-5)
  np.testing.assert_array_equal(y, rows[:, 3])
  x, y = evaluate_run.read_user_file(str(tmp_path / "no_y.csv"), m)
  assert x.shape == (50, 3)
  assert y is None
  with pytest.raises(ValueError, match="needs 3 features"):
    evaluate_run.read_user_file(str(tmp_path / "bad.csv"), m)
