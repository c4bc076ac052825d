"""The ``:paper`` table and text recipes against the original's README commands.

Each expected value below is read off the original repository
(github.com/izmailovpavel/flowgmm; paths relative to its root) and carries its source.
docs/recipes.md lists the differences that remain.

The parameter-count test needs PyTorch and a clone of the original named by the
environment variable FLOWGMM_ORIGINAL (as tests/test_benchmarks.py); it is skipped without
either.
"""

from __future__ import annotations

import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowgmm_jax import GaussianMixturePrior, models
from flowgmm_jax.models import TabularFlow, count_params

ORIGINAL = os.environ.get("FLOWGMM_ORIGINAL", "")
README = "README 'Tabular Datasets'"
TRAINER = "experiments/train_flows/flowgmm_tabular_new.py"
PRIOR = "experiments/train_flows/train_semisup_flowgmm_tabular.py"


def get_config(name: str, arg: str):
  return importlib.import_module(f"configs.{name}").get_config(arg)


def field(c, dotted: str):
  for key in dotted.split("."):
    c = c[key]
  return c


# What both commands share: the flow, the prior and the trainer.
SHARED = [
    ("model.name", "realnvp_tabular", f"--network RealNVPTabularWPrior: {PRIOR}:21"),
    ("model.hidden_layers", 2, f"RealNVPTabular(..., num_layers=1, ...): {PRIOR}:21"),
    ("model.dropout_rate", 0.5,
     f"dropout=True ({PRIOR}:21) -> nn.Dropout(.5): flow_ssl/realnvp/coupling_layer.py:174"),
    ("model.zero_init_last", False, "init_zeros=False: flow_ssl/realnvp/realnvp.py:207"),
    ("prior.covariance", "isotropic", "MultivariateNormal(mean, s^2 I): flow_ssl/distributions.py:23"),
    ("prior.means_init", "auto", f"get_means('random', ...): {PRIOR}:24, 36"),
    ("prior.means_scale", None, f"7.5 apart ({PRIOR}:27-28) / r = 0.8 * 0.7 ({PRIOR}:36)"),
    ("prior.learn_means", False, "means are tensors, not parameters of the optimised model"),
    ("prior.learn_weights", False, "weights = ones: flow_ssl/distributions.py:18"),
    ("loss.objective", "joint", f"SemiFlow.loss: nll(x_lab, y_lab) + a * nll(x_unlab): {PRIOR}:69"),
    ("loss.label_weight", 1.0, f"{PRIOR}:69 (label_weight=1. in log_prob)"),
    ("loss.consistency_weight", 0.0, f"the cons_loss is commented out: {PRIOR}:70-73"),
    ("augment.noise_std", 0.0, "no input noise in SemiFlow"),
    ("augment.dequantize", "off", "SemiFlow models the raw feature values"),
    ("optim.optimizer", "adamw", f"optim=AdamW: {TRAINER}:48"),
    ("optim.weight_decay", 1e-5, f"opt_config={{'weight_decay':1e-5}}: {TRAINER}:49"),
    ("optim.lr_schedule", "cosine", f"cosLr(num_epochs): {TRAINER}:66"),
    ("optim.grad_clip_norm", 100.0, f"utils.clip_grad_norm(self.optimizer, 100): {PRIOR}:78"),
    ("data.unlabeled_batch_size", 5000, f"bs=5000: {TRAINER}:48"),
    ("early_stopping.holdout_fraction", 0.0, "oil's Trainer keeps the last state"),
]

# python experiments/train_flows/flowgmm_tabular_new.py --trainer_config "{'unlab_weight':3.}"
#  --net_config "{'k':256,'coupling_layers':10,'nperlayer':1}" --network RealNVPTabularWPrior
#  --trainer SemiFlow --num_epochs 300 --dataset MINIBOONE --lr 3e-4
MINIBOONE = SHARED + [
    ("model.num_coupling_layers", 10, f"{README}: 'coupling_layers':10"),
    ("model.hidden_dim", 256, f"{README}: 'k':256"),
    ("loss.unlabeled_weight", 3.0, f"{README}: 'unlab_weight':3."),
    ("optim.learning_rate", 3e-4, f"{README}: --lr 3e-4"),
    ("data.num_labeled_per_class", 10, f"split {{'train':20}} ({TRAINER}:49), stratified, 2 classes"),
    ("data.labeled_batch_size", 20, f"min(bs, len(train)) = min(5000, 20): {TRAINER}:62"),
    ("data.test_fraction", 0.1, "train_test_split(test_size=.1): flow_ssl/data/miniboone.py:31"),
    # 36,499 rows per class (miniboone.py:60-63), 90% for training = 65,698 rows: 14 batches
    # of 5000 per epoch (oil's izip ends with the unlabelled loader).
    ("num_train_steps", 300 * 14, f"{README}: --num_epochs 300, 14 steps per epoch"),
]

# python experiments/train_flows/flowgmm_tabular_new.py --trainer_config "{'unlab_weight':.6}"
#  --net_config "{'k':1024,'coupling_layers':7,'nperlayer':1}" --network RealNVPTabularWPrior
#  --trainer SemiFlow --num_epochs 100 --dataset AG_News --lr 3e-4 --train 200
AGNEWS = SHARED + [
    ("model.num_coupling_layers", 7, f"{README}: 'coupling_layers':7"),
    ("model.hidden_dim", 1024, f"{README}: 'k':1024"),
    ("loss.unlabeled_weight", 0.6, f"{README}: 'unlab_weight':.6"),
    ("optim.learning_rate", 3e-4, f"{README}: --lr 3e-4"),
    ("data.num_labeled", 200, f"{README}: --train 200"),
    ("data.labeled_batch_size", 200, f"min(bs, len(train)) = min(5000, 200): {TRAINER}:62"),
    # The AG News train split, 120,000 rows: 24 batches of 5000 per epoch.
    ("num_train_steps", 100 * 24, f"{README}: --num_epochs 100, 24 steps per epoch"),
]


@pytest.mark.parametrize(("config", "arg", "expected"), [
    ("tabular", "miniboone,paper", MINIBOONE),
    ("text", "agnews,paper", AGNEWS),
], ids=["miniboone", "agnews"])
def test_paper_config_is_the_original_readme_command(config, arg, expected):
  c = get_config(config, arg)
  wrong = [(key, field(c, key), value, source) for key, value, source in expected
           if field(c, key) != value]
  assert not wrong, "\n".join(f"{k} = {got!r}, the original: {want!r} ({src})"
                              for k, got, want, src in wrong)


def test_paper_hepmass_and_yahoo_differ_only_where_their_commands_do():
  mini, hep = get_config("tabular", "miniboone,paper"), get_config("tabular", "hepmass,paper")
  assert hep.loss.unlabeled_weight == 10.0            # 'unlab_weight':10
  assert hep.optim.learning_rate == 1e-3              # no --lr: makeTrainer's lr=1e-3
  assert hep.num_train_steps == 15 * 280              # 15 epochs of 1,400,000 / 5000
  ag, yahoo = get_config("text", "agnews,paper"), get_config("text", "yahoo,paper")
  assert (yahoo.loss.unlabeled_weight, yahoo.data.num_labeled) == (0.2, 800)
  assert yahoo.data.labeled_batch_size == 800
  assert yahoo.num_train_steps == 200 * 280
  for a, b in ((mini, hep), (ag, yahoo)):
    for key in ("model", "prior", "optim.optimizer", "optim.weight_decay", "optim.lr_schedule",
                "data.unlabeled_batch_size"):
      assert field(a, key) == field(b, key), key


def test_paper_prior_means_are_the_originals():
  """Two classes: antipodal means 7.5 apart along a direction using every dimension;
  four classes (AG News): 0.56 N(0, I) entries."""
  c = get_config("tabular", "miniboone,paper")
  prior = GaussianMixturePrior.from_config(c.prior, 2, 50, image=False)
  v = prior.init(jax.random.PRNGKey(0), jnp.zeros((1, 50)))
  assert "params" not in v                                 # fixed, as the original's
  means = np.asarray(v["prior"]["means"])
  np.testing.assert_allclose(means[1], -means[0], atol=1e-6)
  assert np.linalg.norm(means[0] - means[1]) == pytest.approx(7.5, rel=1e-5)
  assert np.count_nonzero(np.abs(means[0]) > 1e-3) > 40
  c = get_config("text", "agnews,paper")
  prior = GaussianMixturePrior.from_config(c.prior, 4, 384, image=False)
  means = np.asarray(prior.init(jax.random.PRNGKey(0), jnp.zeros((1, 384)))["prior"]["means"])
  assert means.std() == pytest.approx(0.56, rel=0.05)
  assert abs(means.mean()) < 0.05


def test_paper_flow_has_dropout_while_training_only():
  c = get_config("tabular", "miniboone,paper")
  flow = models.build(c.model, (4,))  # the width does not matter here: 4 features is cheap
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 4)), jnp.float32)
  v = flow.init(jax.random.PRNGKey(0), x)
  z_a, _ = flow.apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
  z_b, _ = flow.apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  z_eval, _ = flow.apply(v, x)
  assert float(jnp.abs(z_a - z_b).max()) > 1e-3
  np.testing.assert_array_equal(z_eval, flow.apply(v, x)[0])


def _full_width_count(c, dim: int) -> int:
  flow = TabularFlow(num_coupling_layers=c.model.num_coupling_layers,
                        hidden_dim=c.model.hidden_dim, hidden_layers=c.model.hidden_layers,
                        dropout_rate=c.model.dropout_rate, full_width_conditioner=True)
  shapes = jax.eval_shape(flow.init, jax.random.PRNGKey(0), jnp.zeros((1, dim)))
  return count_params(shapes)


def _expected_count(couplings: int, dim: int, k: int) -> int:
  """Linear(D, k) + Linear(k, k) + Linear(k, 2D) + weight_norm(Rescale(D)) (g and v)."""
  return couplings * ((dim + 1) * k + (k + 1) * k + (k + 1) * 2 * dim + 2 * dim)


@pytest.mark.parametrize(("config", "arg", "dim"), [("tabular", "miniboone,paper", 50),
                                            ("text", "agnews,paper", 768)],
                         ids=["miniboone", "agnews"])
def test_paper_flow_in_the_originals_layout_has_its_parameter_count(config, arg, dim):
  """Ours in the original's full-width layout has the original's parameters (the formula;
  and, with torch and FLOWGMM_ORIGINAL, the original's own RealNVPTabular as
  RealNVPTabularWPrior builds it). D = 50 is MiniBooNE's, 768 the paper's BERT width."""
  c = get_config(config, arg)
  k, couplings = c.model.hidden_dim, c.model.num_coupling_layers
  ours = _full_width_count(c, dim)
  assert ours == _expected_count(couplings, dim, k)
  # The default (compact) layout drops the weights that only ever see zeros.
  compact = count_params(jax.eval_shape(models.build(c.model, (dim,)).init,
                                        jax.random.PRNGKey(0), jnp.zeros((1, dim))))
  dropped = 0
  for i in range(couplings):  # even couplings keep the first dim // 2 features
    kept = dim // 2 if i % 2 == 0 else dim - dim // 2
    dropped += (dim - kept) * k + 2 * kept * (k + 1)  # inputs that are zeros, outputs unused
  assert ours - compact == dropped
  if not ORIGINAL or not os.path.isdir(os.path.join(ORIGINAL, "flow_ssl")):
    pytest.skip("set FLOWGMM_ORIGINAL to a clone of github.com/izmailovpavel/flowgmm")
  pytest.importorskip("torch")
  from benchmarks.parity import original_step
  orig = original_step.load_original(ORIGINAL)
  # The original's num_layers counts the k -> k layers after the first: hidden_layers - 1.
  net = orig.RealNVPTabular(num_coupling_layers=couplings, in_dim=dim, hidden_dim=k,
                            num_layers=c.model.hidden_layers - 1, dropout=True)
  assert sum(p.numel() for p in net.parameters()) == ours
