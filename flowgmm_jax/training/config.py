"""The configuration schema shared by every experiment, and its validation.

Each file in ``configs/`` starts from ``base_config()`` and overrides fields. The returned
ConfigDict is locked, so a misspelt override (``--config.num_labled=...``) is rejected by
ml_collections with the list of valid keys, and ``validate_config`` checks values once,
before anything is written to the workdir.
"""

from __future__ import annotations

import ml_collections

DATASETS = {
    "toy": ("moons", "circles", "8gaussians", "pinwheel"),
    # "arrays": in-memory data handed to ``fit`` directly (FlowGMMClassifier).
    "tabular": ("letter", "shuttle", "miniboone", "hepmass", "file", "arrays"),
    "text": ("agnews", "yahoo", "file"),
    "image": ("mnist", "cifar10", "svhn"),
}
MODELS = ("realnvp_tabular", "spline_tabular", "realnvp", "glow")


def base_config() -> ml_collections.ConfigDict:
  """All keys with neutral defaults; experiment configs override them."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.kind = "toy"                 # toy | tabular | text | image
  c.data.name = "moons"               # see DATASETS
  c.data.path = ""                    # user file (npz or csv) for name='file', or a data dir
  c.data.label_column = ""            # csv: label column name ('' = last column)
  c.data.data_dir = ""                # tfds data_dir / shared data dir ('' = default)
  c.data.source = "auto"              # images: auto | files | tfds
  c.data.num_labeled_per_class = 10   # labels kept per class (-1: use num_labeled)
  c.data.num_labeled = -1             # total labels (used when num_labeled_per_class = -1)
  c.data.test_fraction = 0.2          # tabular/text: held-out test fraction
  c.data.max_train_examples = -1      # >0: subsample the training pool (smoke runs)
  c.data.max_test_examples = -1       # >0: subsample the test set (smoke runs)
  c.data.num_points = 1000            # toy: training points, and as many test points
  c.data.labeled_batch_size = 16
  c.data.unlabeled_batch_size = 256

  c.model = ml_collections.ConfigDict()
  c.model.name = "realnvp_tabular"    # see MODELS
  c.model.num_coupling_layers = 5     # tabular flows
  c.model.hidden_dim = 512            # tabular flows: MLP width k
  c.model.num_layers = 1              # tabular flows: hidden layers per conditioner
  c.model.dropout_rate = 0.0
  c.model.num_bins = 8                # spline flows
  c.model.bound = 3.0                 # spline flows
  c.model.num_scales = 2              # image flows
  c.model.num_blocks = 8              # image flows: ResNet blocks per conditioner
  c.model.mid_channels = 64           # image flows
  c.model.steps_per_scale = 8         # glow

  c.prior = ml_collections.ConfigDict()
  c.prior.covariance = "isotropic"    # isotropic | diagonal
  c.prior.means_init = "auto"         # auto | image | tabular_two_class | multiclass | circle
  c.prior.means_scale = -1.0          # <= 0: the paper's value for means_init (image r=1,
                                      # two-class distance 7.5, multiclass 0.56)
  c.prior.learn_means = False
  c.prior.learn_scales = False
  c.prior.learn_weights = False

  c.loss = ml_collections.ConfigDict()
  c.loss.unlabeled_weight = 1.0
  c.loss.consistency_weight = 0.0     # > 0: FlowGMM-cons
  c.loss.consistency_rampup_steps = 0

  c.optim = ml_collections.ConfigDict()
  c.optim.optimizer = "adam"          # adam | adamw | sgd
  c.optim.learning_rate = 1e-3
  c.optim.schedule = "constant"       # constant | cosine | wilson
  c.optim.warmup_steps = 0
  c.optim.weight_decay = 0.0          # on weight-norm gains only, as in the original
  c.optim.grad_clip_norm = 100.0

  c.augment = ml_collections.ConfigDict()
  c.augment.crop_padding = 0          # images: random crop with this padding (0 = off)
  c.augment.flip = False              # images: random horizontal flip

  c.num_train_steps = 1000
  c.log_every_steps = 100
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 2
  c.eval_batch_size = 1000
  c.progress_bar = True
  c.multihost = False                 # call jax.distributed.initialize() first
  # A step whose loss or gradients are not finite is skipped (nothing changes); this many
  # in a row stop the run.
  c.max_consecutive_skips = 10
  # Several processes (hosts): empty values keep JAX's automatic cluster detection (SLURM,
  # Open MPI, TPU pods); set all three to run anywhere else. Any set value implies multihost.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""   # "host:port" of process 0
  c.distributed.num_processes = 0          # 0 = detect
  c.distributed.process_id = -1            # -1 = detect
  return c


def _fail(msg: str):
  raise ValueError(f"Invalid config: {msg}")


def validate_config(c: ml_collections.ConfigDict) -> None:
  """Checks values (keys are checked by the locked ConfigDict). Raises ValueError."""
  if c.data.kind not in DATASETS:
    _fail(f"data.kind={c.data.kind!r}; choose one of {tuple(DATASETS)}.")
  if c.data.name not in DATASETS[c.data.kind]:
    _fail(f"data.name={c.data.name!r} is not a {c.data.kind} dataset; choose one of "
          f"{DATASETS[c.data.kind]}.")
  if c.model.name not in MODELS:
    _fail(f"model.name={c.model.name!r}; choose one of {MODELS}.")
  image_model = c.model.name in ("realnvp", "glow")
  if image_model != (c.data.kind == "image"):
    _fail(f"model.name={c.model.name!r} does not fit data.kind={c.data.kind!r}: use "
          "realnvp/glow for images and realnvp_tabular/spline_tabular otherwise.")
  if c.data.num_labeled_per_class <= 0 and c.data.num_labeled <= 0:
    _fail("set data.num_labeled_per_class > 0 or data.num_labeled > 0.")
  if c.data.labeled_batch_size < 1 or c.data.unlabeled_batch_size < 0:
    _fail("data.labeled_batch_size must be >= 1 and data.unlabeled_batch_size >= 0.")
  if not 0.0 < c.data.test_fraction < 1.0:
    _fail(f"data.test_fraction={c.data.test_fraction} must be in (0, 1).")
  for key in ("num_train_steps", "log_every_steps", "eval_every_steps",
              "checkpoint_every_steps", "eval_batch_size", "keep_checkpoints"):
    if c[key] < 1:
      _fail(f"{key}={c[key]} must be >= 1.")
  if c.optim.learning_rate <= 0:
    _fail(f"optim.learning_rate={c.optim.learning_rate} must be > 0.")
  if c.loss.unlabeled_weight < 0 or c.loss.consistency_weight < 0:
    _fail("loss weights must be >= 0.")
  if c.prior.covariance not in ("isotropic", "diagonal"):
    _fail(f"prior.covariance={c.prior.covariance!r}; choose 'isotropic' or 'diagonal'.")
  if c.augment.crop_padding < 0:
    _fail("augment.crop_padding must be >= 0.")
  if c.max_consecutive_skips < 1:
    _fail(f"max_consecutive_skips={c.max_consecutive_skips} must be >= 1.")
  dist = c.distributed
  given = [bool(dist.coordinator_address), dist.num_processes > 0, dist.process_id >= 0]
  if any(given) and not all(given):
    _fail("distributed.coordinator_address, distributed.num_processes and "
          "distributed.process_id must be given together (or all left empty for automatic "
          f"cluster detection); got coordinator_address={dist.coordinator_address!r}, "
          f"num_processes={dist.num_processes}, process_id={dist.process_id}.")
  if all(given) and dist.process_id >= dist.num_processes:
    _fail(f"distributed.process_id={dist.process_id} must be < "
          f"distributed.num_processes={dist.num_processes}.")
