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


# What every image config shares with the original image command (train_semisup_cons.py and
# the commands in the original README), and where it differs, with the reason. Each config's
# docstring points here and lists its own values.
IMAGE_RECIPE_NOTES = """
Faithful to the original (train_semisup_cons.py and its README commands):
  objective "original": label_weight * CE(labelled) + mixture NLL over ALL rows
    + consistency_weight * consistency NLL (losses.flowgmm_objective);
  RealNVP, 2 scales, 8 ResNet blocks, 64 channels, no dropout (the original image RealNVP has
    none); 32 labelled + 32 unlabelled images per step (its --batch_size 64);
  Adam (0.9, 0.999), constant learning rate; L2 weight decay 5e-5 on the weight-norm gains
    only (its get_param_groups 'weight_g'); gradient-norm clipping at 100;
  consistency weight 1, ramped up linearly; random crop with zero padding 4;
  a fixed GMM prior (means r * N(0, I) with r = 1, unit covariances, uniform weights);
  uniform dequantisation noise, bits/dim including the D log 256 term.
Differences, and why:
  - the consistency ramp counts steps, not epochs: the original raises the weight once per
    epoch (one pass over the labelled set, floor(num_labels / 32) steps); we give the same
    length in steps and raise it every step (a smooth version of the same staircase);
  - training length is in steps: the original's epochs times floor(num_labels / 32);
  - clipping: the original clips each of its two parameter groups (weight-norm gains; the
    rest) to norm 100 separately; we clip the global norm of all gradients to 100, which
    clips at least as often. Under Adam a rescaled gradient changes the update only through
    the moment averages.
"""


def apply_paper_table_recipe(c: ml_collections.ConfigDict, *, num_coupling_layers: int,
                             hidden_dim: int, labeled_batch_size: int,
                             unlabeled_batch_size: int, unlabeled_weight: float,
                             num_train_steps: int) -> None:
  """The paper's tabular/text recipe (``:paper``): RealNVP-tabular with two hidden layers per
  conditioner (the original's ``num_layers=1``), fixed prior, the "joint" objective, AdamW
  3e-4 with a cosine schedule."""
  c.data.labeled_batch_size = labeled_batch_size
  c.data.unlabeled_batch_size = unlabeled_batch_size
  c.model = model_config("realnvp_tabular", num_coupling_layers=num_coupling_layers,
                         hidden_dim=hidden_dim, hidden_layers=2)
  c.loss.objective = "joint"
  c.loss.unlabeled_weight = unlabeled_weight
  c.optim.optimizer = "adamw"
  c.optim.learning_rate = 3e-4
  c.optim.lr_schedule = "cosine"
  c.num_train_steps = num_train_steps


def image_config(name: str, *, num_labeled_per_class: int, flip: bool, learning_rate: float,
                 label_weight: float, consistency_rampup_steps: int, num_train_steps: int,
                 arg: str | None, extra_args: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  """The original image recipe (see IMAGE_RECIPE_NOTES): RealNVP (2 scales, 8 blocks, 64
  channels); 32 labelled + 32 unlabelled images per step; objective 'original' with
  ``label_weight``; consistency weight 1 ramped over ``consistency_rampup_steps``; Adam,
  clipping 100, decay 5e-5 on weight-norm gains; crop 4. The word 'glow' gives Glow (2
  scales, 8 steps per scale, 64 channels) instead of RealNVP. ``extra_args`` are further
  words the calling config handles itself (e.g. mnist's 'cpu')."""
  words = parse_args(arg, ("smoke", "glow") + tuple(extra_args))
  c = base_config()
  c.data.kind = "image"
  c.data.name = name
  c.data.num_labeled_per_class = num_labeled_per_class
  c.data.labeled_batch_size = 32
  c.data.unlabeled_batch_size = 32
  if "glow" in words:
    c.model = model_config("glow", num_scales=2, steps_per_scale=8, mid_channels=64,
                           zero_init_last=True)
  else:
    c.model = model_config("realnvp", num_scales=2, num_blocks=8, mid_channels=64,
                           zero_init_last=True)
  c.prior.means_init = "image"
  c.prior.means_scale = 1.0
  c.loss.objective = "original"
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
