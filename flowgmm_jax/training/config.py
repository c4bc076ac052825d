"""The configuration schema shared by every experiment, and its validation.

Each file in ``configs/`` starts from ``base_config()`` and overrides fields. The returned
ConfigDict is locked, so a misspelt override (``--config.num_labled=...``) is rejected by
ml_collections with the list of valid keys, and ``validate_config`` checks values once,
before anything is written to the workdir.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from flowgmm_jax.data import names_by_kind
from flowgmm_jax.losses import OBJECTIVES
from flowgmm_jax.models import COMPUTE_DTYPES, IMAGE_MODELS, MODELS
from flowgmm_jax.prior import COVARIANCE_TYPES

# {data.kind: data.name values}, from the one dataset registry (flowgmm_jax.data.REGISTRY).
DATASETS = names_by_kind()


def base_config() -> ml_collections.ConfigDict:
  """All keys with neutral defaults; experiment configs override them."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # The conditioner networks' compute dtype: "float32" | "bfloat16" (GPU/TPU speed);
  # parameters, the prior and every log-det stay float32 either way.
  c.compute_dtype = "float32"

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
  # > 0: evaluate on this many TRAINING examples held out (class-stratified, fixed seed),
  # instead of the test split: for choosing hyper-parameters without the test labels.
  # The held-out rows are removed from the training pool.
  c.data.validation_examples = 0
  c.data.unlabeled_batch_size = 256

  c.model = ml_collections.ConfigDict()
  c.model.name = "realnvp_tabular"    # see flowgmm_jax.models.MODELS
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
  # Zero each coupling's last conditioner layer, so every coupling starts as the identity.
  # False: PyTorch's default random init there, as the original (image and tabular code).
  c.model.zero_init_last = False

  c.prior = ml_collections.ConfigDict()
  c.prior.covariance = "isotropic"    # isotropic | diagonal
  c.prior.means_init = "auto"         # auto | image | tabular_two_class | multiclass | circle
                                      # | labeled (the labelled rows' latent centroids)
  # None: the paper's value for means_init (image r=1, two-class distance 7.5, multiclass
  # 0.56; see prior.py); a float (> 0) replaces it.
  c.prior.means_scale = config_dict.placeholder(float)
  c.prior.learn_means = False
  c.prior.learn_scales = False
  c.prior.learn_weights = False

  c.loss = ml_collections.ConfigDict()
  # losses.flowgmm_objective: "joint" = label_weight * labelled -log p(x, y)
  #   + unlabeled_weight * unlabelled -log p(x); "original" (the original image code) =
  #   label_weight * cross-entropy + unlabeled_weight * -log p(x) over ALL rows.
  c.loss.objective = "joint"
  c.loss.label_weight = 1.0
  c.loss.label_weight_per_feature = 0.0  # > 0: label_weight = this * D (D = features/pixels),
                                         # so the class term keeps its share of a density
                                         # term that is a sum over D dimensions
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
  c.augment.noise_std = 0.0           # tables/text: Gaussian input noise, in standardised
                                      # feature units (0 = off)

  # Early stopping on the marginal NLL of unlabelled rows held out from training.
  c.early_stopping = ml_collections.ConfigDict()
  c.early_stopping.holdout_fraction = 0.0  # of the unlabelled pool (0 = off)
  c.early_stopping.every_steps = 50
  c.early_stopping.patience = 5            # checks without improvement (0 = run to the end,
                                           # then keep the best)
  c.early_stopping.min_delta = 0.0         # relative improvement that counts

  c.calibration = ml_collections.ConfigDict()
  c.calibration.validation_fraction = 0.0  # > 0: hold out this fraction of the labelled
                                           # pool to fit a temperature (flowgmm_jax/calibration.py)
  c.plots = True                      # figures: workdir/plots/*.png at the end, TensorBoard images

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


# The recipe for tables and sentence embeddings, in FlowGMMClassifier's parameter names: the
# estimator's defaults AND the default of configs/tabular.py and configs/text.py, so whatever
# is settled here reaches both (README "Tables"; benchmarks/ssl_suite.py measures it).
TABLE_RECIPE = dict(
    flow="realnvp", num_coupling_layers=6, hidden_dim=64, hidden_layers=1, dropout_rate=0.0,
    num_bins=8, bound=4.0,
    covariance="isotropic", means_init="labeled", means_scale=0.01, learn_means=True,
    learn_scales=False, learn_weights=True,
    objective="original", label_weight=None, label_weight_per_feature=10.0,
    unlabeled_weight=1.0, noise_std=0.1,
    learning_rate=1e-2, lr_schedule="cosine", weight_decay=0.0, num_steps=3000,
    labeled_batch_size=64, unlabeled_batch_size=256,
    holdout_fraction=0.1, check_every=25, patience=5,
)
TABLE_FLOWS = {"realnvp": "realnvp_tabular", "spline": "spline_tabular"}


def apply_table_recipe(c: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
  """Sets ``c``'s model, prior, loss, optimiser, early-stopping, batch and step fields from
  ``TABLE_RECIPE`` (with ``overrides``, in FlowGMMClassifier's parameter names).

  Returns ``c``. Unknown names raise ValueError.
  """
  unknown = set(overrides) - set(TABLE_RECIPE)
  if unknown:
    raise ValueError(f"unknown table-recipe parameter(s) {sorted(unknown)}; choose from "
                     f"{sorted(TABLE_RECIPE)}.")
  r = {**TABLE_RECIPE, **overrides}
  if r["flow"] not in TABLE_FLOWS:
    raise ValueError(f"flow={r['flow']!r}; choose one of {tuple(TABLE_FLOWS)}.")
  if r["means_init"] not in ("labeled", "random"):
    raise ValueError(f"means_init={r['means_init']!r}; choose 'labeled' or 'random'.")
  c.model.name = TABLE_FLOWS[r["flow"]]
  c.model.num_coupling_layers = int(r["num_coupling_layers"])
  c.model.hidden_dim = int(r["hidden_dim"])
  c.model.num_layers = int(r["hidden_layers"]) - 1  # k hidden layers: k-1 after the first
  c.model.dropout_rate = float(r["dropout_rate"])
  c.model.num_bins = int(r["num_bins"])
  c.model.bound = float(r["bound"])
  c.prior.covariance = r["covariance"]
  c.prior.means_init = "labeled" if r["means_init"] == "labeled" else "auto"
  c.prior.means_scale = None if r["means_scale"] is None else float(r["means_scale"])
  c.prior.learn_means = bool(r["learn_means"])
  c.prior.learn_scales = bool(r["learn_scales"])
  c.prior.learn_weights = bool(r["learn_weights"])
  c.loss.objective = r["objective"]
  # label_weight=None: scale with the number of features (label_weight_per_feature * D).
  c.loss.label_weight = 1.0 if r["label_weight"] is None else float(r["label_weight"])
  c.loss.label_weight_per_feature = (float(r["label_weight_per_feature"])
                                     if r["label_weight"] is None else 0.0)
  c.loss.unlabeled_weight = float(r["unlabeled_weight"])
  c.augment.noise_std = float(r["noise_std"])
  c.optim.optimizer = "adam"
  c.optim.learning_rate = float(r["learning_rate"])
  c.optim.schedule = r["lr_schedule"]
  c.optim.weight_decay = float(r["weight_decay"])
  c.num_train_steps = int(r["num_steps"])
  c.data.labeled_batch_size = int(r["labeled_batch_size"])
  c.data.unlabeled_batch_size = int(r["unlabeled_batch_size"])
  c.early_stopping.holdout_fraction = float(r["holdout_fraction"])
  c.early_stopping.every_steps = int(r["check_every"])
  c.early_stopping.patience = int(r["patience"])
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
  if c.get("compute_dtype", "float32") not in COMPUTE_DTYPES:
    _fail(f"compute_dtype={c.compute_dtype!r}; choose one of {tuple(COMPUTE_DTYPES)}.")
  image_model = c.model.name in IMAGE_MODELS
  if image_model != (c.data.kind == "image"):
    flat_models = [name for name in MODELS if name not in IMAGE_MODELS]
    _fail(f"model.name={c.model.name!r} does not fit data.kind={c.data.kind!r}: use "
          f"{'/'.join(IMAGE_MODELS)} for images and {'/'.join(flat_models)} otherwise.")
  if c.data.num_labeled_per_class <= 0 and c.data.num_labeled <= 0:
    _fail("set data.num_labeled_per_class > 0 or data.num_labeled > 0.")
  if c.data.labeled_batch_size < 1 or c.data.unlabeled_batch_size < 0:
    _fail("data.labeled_batch_size must be >= 1 and data.unlabeled_batch_size >= 0.")
  if c.data.validation_examples < 0:
    _fail(f"data.validation_examples={c.data.validation_examples} must be >= 0.")
  if not 0.0 < c.data.test_fraction < 1.0:
    _fail(f"data.test_fraction={c.data.test_fraction} must be in (0, 1).")
  for key in ("num_train_steps", "log_every_steps", "eval_every_steps",
              "checkpoint_every_steps", "eval_batch_size", "keep_checkpoints"):
    if c[key] < 1:
      _fail(f"{key}={c[key]} must be >= 1.")
  if c.optim.learning_rate <= 0:
    _fail(f"optim.learning_rate={c.optim.learning_rate} must be > 0.")
  if c.loss.objective not in OBJECTIVES:
    _fail(f"loss.objective={c.loss.objective!r}; choose one of {OBJECTIVES}.")
  if c.loss.label_weight_per_feature < 0:
    _fail("loss.label_weight_per_feature must be >= 0.")
  if c.loss.label_weight < 0 or c.loss.unlabeled_weight < 0 or c.loss.consistency_weight < 0:
    _fail("loss weights (label_weight, unlabeled_weight, consistency_weight) must be >= 0.")
  if c.prior.covariance not in COVARIANCE_TYPES:
    _fail(f"prior.covariance={c.prior.covariance!r}; choose one of {COVARIANCE_TYPES}.")
  if c.prior.means_scale is not None and not c.prior.means_scale > 0:
    _fail(f"prior.means_scale={c.prior.means_scale} must be > 0; leave it unset (None) for "
          "the paper's value.")
  if c.augment.noise_std < 0:
    _fail("augment.noise_std must be >= 0.")
  if not 0.0 <= c.calibration.validation_fraction < 1.0:
    _fail(f"calibration.validation_fraction={c.calibration.validation_fraction} must be in "
          "[0, 1).")
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
