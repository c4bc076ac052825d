"""The one FlowGMM objective in the train step, and the image configs that select its form."""

from __future__ import annotations

import importlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flowgmm_jax import mesh as mesh_lib
from flowgmm_jax.data import Dataset
from flowgmm_jax.flowgmm import FlowGMM
from flowgmm_jax.losses import FlowGMMLoss, flowgmm_objective
from flowgmm_jax.training import base_config, fit, train_and_evaluate, validate_config
from flowgmm_jax.training import step as step_lib
from flowgmm_jax.training.state import create_train_state


def get_config(name, arg=None):
  return importlib.import_module(f"configs.{name}").get_config(arg)


def tabular_config(objective):
  c = base_config()
  c.data.kind, c.data.name = "tabular", "arrays"
  c.model.name = "realnvp_tabular"
  c.model.num_coupling_layers, c.model.hidden_dim = 2, 16
  c.loss.objective = objective
  return c


@pytest.mark.parametrize("objective", ["marginal_and_cross_entropy", "joint"])
def test_train_step_loss_is_the_objective_function(objective):
  """One device: the step's train/loss and terms are flowgmm_objective on the same batch,
  padding rows counting for nothing."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(12, 3)).astype(np.float32)
  y = np.array([0, 2, 1, 0, -1, -1, -1, -1, -1, -1, -1, -1], np.int32)
  c = tabular_config(objective)
  train_model = FlowGMM.from_config(c, (3,), 3, image=False, bn_axis_name=mesh_lib.DATA_AXIS)
  model = FlowGMM.from_config(c, (3,), 3, image=False)
  key = jax.random.PRNGKey(0)
  variables = model.init({"params": key, "dropout": key}, jnp.asarray(x))
  # The value the step must report, from the function itself (no augmentation, no dropout:
  # both views are x, so the consistency teacher is the same forward pass).
  (_, log_det, clj), _ = model.apply(variables, jnp.asarray(x), None, train=True,
                                     mutable=["batch_stats"], rngs={"dropout": key})
  log_w = model.apply(variables, method=lambda m: m.prior.log_weights())
  expected, terms = flowgmm_objective(clj, log_det, y, objective=objective, label_weight=3.0,
                                      unlabeled_weight=0.7, consistency_weight=0.5,
                                      class_log_joint_teacher=clj, log_weights=log_w)
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  tx = optax.adam(1e-3)
  state = mesh_lib.replicate(mesh, create_train_state(variables, tx))
  train_step = step_lib.make_train_step(
      train_model, tx, mesh, loss=FlowGMMLoss(objective=objective, label_weight=3.0,
                                              unlabeled_weight=0.7, consistency_weight=0.5))
  # Four padding rows (as a pool smaller than its batch gets): copies of labelled rows with
  # other labels, masked out, so they change no term if they count for nothing.
  batch = {"x": np.concatenate([x, x[:4]]), "y": np.concatenate([y, [1, 1, 2, 2]]),
           "position": np.arange(16, dtype=np.int32),
           "mask": np.arange(16) < 12}
  _, metrics = train_step(state, mesh_lib.shard_batch(mesh, batch),
                          mesh_lib.replicate(mesh, np.asarray(key, np.uint32)))
  np.testing.assert_allclose(metrics["train/loss"], expected, rtol=2e-5)
  for name, value in terms.items():
    np.testing.assert_allclose(metrics[f"train/{name}"], value, rtol=2e-5, err_msg=name)
  assert float(terms["consistency"]) != 0.0


def blobs(n=120, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, n)
  x = rng.normal(size=(n, 4)).astype(np.float32) + 3.0 * y[:, None]
  return Dataset(name="blobs", kind="tabular", x_train=x[:80], y_train=y[:80],
                 x_test=x[80:], y_test=y[80:], num_classes=2)


def test_old_objective_name_is_refused_with_the_new_one():
  c = tabular_config("original")
  with pytest.raises(ValueError, match=r"loss\.objective='original' is now called "
                                       "'marginal_and_cross_entropy'"):
    validate_config(c)
  with pytest.raises(ValueError, match="now called 'marginal_and_cross_entropy'"):
    flowgmm_objective(np.zeros((2, 2)), np.zeros(2), np.array([0, -1]), objective="original")


def test_marginal_and_cross_entropy_objective_trains_a_classifier():
  ds = blobs()
  c = tabular_config("marginal_and_cross_entropy")
  c.loss.label_weight = 3.0
  c.data.labeled_batch_size, c.data.unlabeled_batch_size = 8, 16
  c.optim.learning_rate = 1e-2
  c.num_train_steps = c.eval_every_steps = 40
  c.log_every_steps = 10
  c.progress_bar = False
  idx = np.arange(80)
  result = fit(c, ds, (idx[:8], idx[8:]))
  assert result.metrics["eval/accuracy"] >= 0.9
  losses = [h["train/loss"] for h in result.history if "train/loss" in h]
  assert losses[-1] < losses[0]


def test_config_rejects_unknown_objective_and_negative_label_weight():
  c = base_config()
  c.loss.objective = "pi_model"
  with pytest.raises(ValueError, match="loss.objective"):
    validate_config(c)
  c = base_config()
  c.loss.label_weight = -1.0
  with pytest.raises(ValueError, match="label_weight"):
    validate_config(c)


def test_image_configs_follow_the_original_commands():
  """The original README's MNIST and CIFAR-10 commands, in steps (epoch = floor(labels/32))."""
  mnist, cifar, svhn = get_config("mnist"), get_config("cifar10"), get_config("svhn")
  assert (mnist.optim.learning_rate, cifar.optim.learning_rate) == (1e-5, 1e-4)
  assert (mnist.loss.consistency_rampup_steps, mnist.num_train_steps) == (1000 * 3, 30001 * 3)
  assert (cifar.loss.consistency_rampup_steps, cifar.num_train_steps) == (100 * 125, 1501 * 125)
  for c in (mnist, cifar, svhn):
    assert c.loss.objective == "marginal_and_cross_entropy"
    assert c.loss.label_weight == 3.0
    assert c.loss.consistency_weight == 1.0
    assert c.loss.unlabeled_weight == 1.0
    assert c.optim.optimizer == "adam"
    assert c.optim.lr_schedule == "constant"
    assert c.optim.weight_decay == 5e-5
    assert c.optim.grad_clip_norm == 100.0
    assert c.model.name == "realnvp"
    assert c.model.num_blocks == 8
    assert "dropout_rate" not in c.model  # the image RealNVP has no dropout
    assert (c.data.labeled_batch_size, c.data.unlabeled_batch_size) == (32, 32)
  # Toy and the paper's table/text recipes use the joint form; the table recipe (the
  # tabular/text default, README "Tables") uses the original image code's
  # marginal_and_cross_entropy.
  assert get_config("toy").loss.objective == "joint"
  for name in ("tabular", "text"):
    assert get_config(name, "paper").loss.objective == "joint"
    assert get_config(name).loss.objective == "marginal_and_cross_entropy"


def test_mnist_cpu_config_states_its_parameter_count():
  module = importlib.import_module("configs.mnist")
  c = module.get_config("cpu")
  validate_config(c)
  assert c.data.num_labeled_per_class == 100
  assert c.loss.objective == "marginal_and_cross_entropy"
  model = FlowGMM.from_config(c, (28, 28, 1), 10, image=True)
  key = jax.random.PRNGKey(0)
  shapes = jax.eval_shape(lambda: model.init({"params": key, "dropout": key},
                                             jnp.zeros((2, 28, 28, 1))))
  count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes["params"]))
  stated = re.search(r"([\d,]+)\s+parameters", module.__doc__).group(1)
  assert count == int(stated.replace(",", "")), (count, stated)


@pytest.mark.slow
def test_svhn_config_reads_mat_files_without_tensorflow(tmp_path):
  from test_data import write_svhn_mat  # the real .mat layout, written with scipy

  # The model and batches of test_experiments' svhn run on tfds-generated data, so that
  # this run loads the same compiled steps from the suite's compilation cache.
  from test_experiments import shrink
  write_svhn_mat(tmp_path / "svhn", num_train=60, num_test=20)
  c = shrink(get_config("svhn", "smoke"))
  c.data.path = str(tmp_path / "svhn")
  c.data.num_labeled_per_class = 2
  results = train_and_evaluate(c, str(tmp_path / "run"))
  assert results["num_test"] == 20
  assert results["num_labeled"] == 20
  assert np.isfinite(results["eval/bpd"])
