"""Helpers shared by the config files: parsing ``--config=configs/X.py:ARG`` strings."""

from __future__ import annotations

import ml_collections

from flowgmm_jax.training.config import base_config, model_config


def parse_args(arg: str | None, allowed: tuple[str, ...]) -> set[str]:
  """Splits 'a,b' into {'a', 'b'} and rejects unknown words with a clear message."""
  words = {w.strip() for w in (arg or "").split(",") if w.strip()}
  unknown = words - set(allowed)
  if unknown:
    raise ValueError(f"Unknown config argument(s) {sorted(unknown)}; allowed: {allowed} "
                     "(e.g. --config=configs/toy.py:smoke).")
  return words


def apply_smoke(c: ml_collections.ConfigDict, *, image: bool) -> None:
  """Tiny model, few steps, small eval: runs in seconds on a laptop CPU."""
  c.num_train_steps = 20
  c.log_every_steps = 10
  c.eval_every_steps = 20
  c.checkpoint_every_steps = 20
  c.progress_bar = False
  if c.data.num_labeled_per_class > 0:  # keep an unlabelled pool in the small subset
    c.data.num_labeled_per_class = min(c.data.num_labeled_per_class, 5)
  if image:
    for key, value in (("num_blocks", 1), ("mid_channels", 8), ("steps_per_scale", 2)):
      if key in c.model:  # each image model has its own fields
        c.model[key] = value
    c.data.max_train_examples = 512
    c.data.max_test_examples = 256
    c.data.labeled_batch_size = 8
    c.data.unlabeled_batch_size = 8
    c.eval_batch_size = 128
  else:
    c.model.hidden_dim = 32
    c.model.num_coupling_layers = 2
    c.data.max_train_examples = 2000
    c.data.max_test_examples = 500
    c.eval_batch_size = 500


def apply_paper_table_recipe(c: ml_collections.ConfigDict, *, num_coupling_layers: int,
                             hidden_dim: int, labeled_batch_size: int,
                             unlabeled_weight: float, num_train_steps: int,
                             learning_rate: float = 3e-4,
                             unlabeled_batch_size: int = 5000) -> None:
  """The paper's tabular/text recipe (``:paper``; docs/recipes.md gives each value's
  source in the original and every difference): RealNVP-tabular with ``num_coupling_layers``
  couplings whose conditioners have two hidden ``hidden_dim`` layers (the original's
  ``num_layers=1``) and dropout 0.5 after the first; the fixed prior (two classes: means
  7.5 apart; more: 0.56 N(0, I)); the "joint" objective with ``unlabeled_weight``; AdamW
  (``learning_rate``, weight decay 1e-5) with a cosine schedule over ``num_train_steps``,
  clipping 100; ``labeled_batch_size`` (all labelled rows, in the original) +
  ``unlabeled_batch_size`` (5000) rows per step; no early stopping or input noise."""
  c.model = model_config("realnvp_tabular", num_coupling_layers=num_coupling_layers,
                         hidden_dim=hidden_dim, hidden_layers=2, dropout_rate=0.5,
                         zero_init_last=False)
  c.prior.covariance = "isotropic"
  c.prior.means_init = "auto"
  c.prior.means_scale = None
  c.prior.learn_means = False
  c.prior.learn_scales = False
  c.prior.learn_weights = False
  c.loss.objective = "joint"
  c.loss.label_weight = 1.0
  c.loss.label_weight_per_feature = 0.0
  c.loss.unlabeled_weight = unlabeled_weight
  c.loss.consistency_weight = 0.0
  c.augment.noise_std = 0.0
  c.augment.dequantize = "off"  # the original models the raw values
  c.optim.optimizer = "adamw"
  c.optim.learning_rate = learning_rate
  c.optim.lr_schedule = "cosine"
  c.optim.warmup_steps = 0
  c.optim.weight_decay = 1e-5
  c.optim.grad_clip_norm = 100.0
  c.data.labeled_batch_size = labeled_batch_size
  c.data.unlabeled_batch_size = unlabeled_batch_size
  c.early_stopping.holdout_fraction = 0.0
  c.num_train_steps = num_train_steps


def paper_steps(num_epochs: int, num_train_rows: int, batch_size: int = 5000) -> int:
  """The original's training length in steps: ``num_epochs`` passes over ``num_train_rows``
  unlabelled rows in batches of ``batch_size`` (the last one partial)."""
  return num_epochs * -(-num_train_rows // batch_size)


def image_config(name: str, *, num_labeled_per_class: int, flip: bool, learning_rate: float,
                 label_weight: float, consistency_rampup_steps: int, num_train_steps: int,
                 arg: str | None, extra_args: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  """The original image recipe (docs/recipes.md): RealNVP (2 scales, 8 blocks, 64 channels)
  with the original's random initialisation; 32 labelled + 32 unlabelled images per step;
  objective 'marginal_and_cross_entropy' with ``label_weight``; consistency weight 1 ramped
  over ``consistency_rampup_steps``; Adam, clipping 100, decay 5e-5 on weight-norm gains;
  crop 4. The word 'glow' gives Glow (2 scales, 8 steps per scale, 64 channels) instead of
  RealNVP. ``extra_args`` are further words the calling config handles itself (e.g. mnist's
  'cpu')."""
  words = parse_args(arg, ("smoke", "glow") + tuple(extra_args))
  c = base_config()
  c.data.kind = "image"
  c.data.name = name
  c.data.num_labeled_per_class = num_labeled_per_class
  c.data.labeled_batch_size = 32
  c.data.unlabeled_batch_size = 32
  # The original's random initialisation: zero init learns the density far more slowly at
  # the original's settings (docs/recipes.md, "Measured side by side").
  if "glow" in words:
    c.model = model_config("glow", num_scales=2, steps_per_scale=8, mid_channels=64,
                           zero_init_last=False)
  else:
    c.model = model_config("realnvp", num_scales=2, num_blocks=8, mid_channels=64,
                           zero_init_last=False)
  # sync_batch_norm=True (every image config): BatchNorm sees the whole global batch, the
  # original's one-device semantics; False on many devices: 4 collectives per step, not one
  # per norm and pass (training/step.py), each device normalising its own rows.
  c.model.sync_batch_norm = True
  c.prior.means_init = "image"
  c.prior.means_scale = 1.0
  c.loss.objective = "marginal_and_cross_entropy"
  c.loss.label_weight = label_weight
  c.loss.unlabeled_weight = 1.0
  c.loss.consistency_weight = 1.0
  c.loss.consistency_rampup_steps = consistency_rampup_steps
  c.optim.optimizer = "adam"
  c.optim.learning_rate = learning_rate
  c.optim.lr_schedule = "constant"
  c.optim.weight_decay = 5e-5
  c.optim.grad_clip_norm = 100.0
  c.augment.crop_padding = 4
  c.augment.flip = flip
  c.num_train_steps = num_train_steps
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2000
  c.eval_batch_size = 500
  if "smoke" in words:
    apply_smoke(c, image=True)
  return c
