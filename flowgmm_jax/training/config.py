"""The configuration schema shared by every experiment, the table recipe, and the one validator.

Each file in ``configs/`` starts from ``base_config()`` and overrides fields. The command
line locks the ConfigDict, so a misspelt override (``--config.data.num_labled=...``) is
rejected by ml_collections with the list of valid keys; ``validate_config`` checks the
values once, before anything is written to the workdir.

``config.model`` holds ``name`` and exactly the fields of that model
(``models.MODEL_FIELDS``), so a field that a model does not read cannot be set: a config
file chooses its model with ``model_config(name)`` (its ARG picks it: ``:spline``,
``:glow``).

The words are the same everywhere: ``FlowGMMClassifier``'s parameters are these fields'
names (``model`` is ``config.model.name``), and ``TABLE_RECIPE`` is written in them.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from flowgmm_jax.calibration import CALIBRATION_METHODS

# Re-exported: the training loop turns the cache on from here.
from flowgmm_jax.compile_cache import enable_compilation_cache  # noqa: F401
from flowgmm_jax.data import names_by_kind
from flowgmm_jax.losses import OBJECTIVES, RENAMED_OBJECTIVES
from flowgmm_jax.models import COMPUTE_DTYPES, IMAGE_MODELS, MODEL_FIELDS, MODELS
from flowgmm_jax.prior import COVARIANCE_TYPES, MEANS_INIT_CHOICES
from flowgmm_jax.training.optim import OPTIMIZERS, RENAMED_SCHEDULES, SCHEDULES

# {data.kind: data.name values}, from the one dataset registry (flowgmm_jax.data.REGISTRY).
DATASETS = names_by_kind()
# The config ARG that builds each model's section (the message for a model chosen by
# --config.model.name names it).
MODEL_ARGS = {"realnvp_tabular": "configs/tabular.py (the default)",
              "spline_tabular": "configs/tabular.py:spline",
              "realnvp": "configs/cifar10.py (the default)",
              "glow": "configs/cifar10.py:glow"}


def model_config(name: str, **fields) -> ml_collections.ConfigDict:
  """``config.model`` for model ``name``: ``name`` and that model's fields, at their
  defaults (``models.MODEL_FIELDS``) unless given in ``fields``."""
  if name not in MODEL_FIELDS:
    raise ValueError(f"model {name!r}; choose one of {MODELS}.")
  unknown = sorted(set(fields) - set(MODEL_FIELDS[name]))
  if unknown:
    raise ValueError(f"{unknown} are not fields of model {name!r}; its fields are "
                     f"{sorted(MODEL_FIELDS[name])}.")
  return ml_collections.ConfigDict({"name": name, **MODEL_FIELDS[name], **fields})


def base_config() -> ml_collections.ConfigDict:
  """All keys with neutral defaults; experiment configs override them."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # The conditioner networks' compute dtype: "float32" | "bfloat16" (GPU/TPU speed);
  # parameters, the prior and every log-det stay float32 either way.
  c.compute_dtype = "float32"
  # JAX's persistent compilation cache (flowgmm_jax/compile_cache.py): "auto" = on for GPU
  # and TPU in the per-user directory, off on CPU; "on" = on everywhere; "off"; or a directory.
  # A later process that runs the same programs loads them instead of compiling them.
  c.compilation_cache_dir = "auto"

  c.data = ml_collections.ConfigDict()
  c.data.kind = "toy"                 # toy | tabular | text | image
  c.data.name = "moons"               # see DATASETS
  c.data.path = ""                    # user file (npz or csv) for name='file', or a data dir
  c.data.label_column = ""            # csv: label column name ('' = last column)
  c.data.data_dir = ""                # tfds data_dir / offline data dir ('' = default)
  c.data.source = "auto"              # images: auto | files | tfds
  # images: "memory" reads the whole training split into every host's memory; "grain"
  # reads each step's rows from ArrayRecord files (a tfds source, or data.name="records"
  # with data.path=FOLDER), each host only its own devices' rows (data/records.py).
  c.data.loader = "memory"
  c.data.num_labeled_per_class = 10   # labels kept per class (-1: use num_labeled)
  c.data.num_labeled = -1             # total labels (used when num_labeled_per_class = -1)
  c.data.test_fraction = 0.2          # tabular/text: held-out test fraction
  c.data.max_train_examples = -1      # >0: subsample the training pool (smoke runs)
  c.data.max_test_examples = -1       # >0: subsample the test set (smoke runs)
  c.data.num_points = 1000            # toy: training points, and as many test points
  # Rows per step; a pool smaller than its batch gives one row per pool row (the rest of
  # the batch is padding that counts for nothing).
  c.data.labeled_batch_size = 16
  c.data.unlabeled_batch_size = 256
  # Multiplies both batch parts and the learning rate (the linear scaling rule, with a
  # warm-up; ``scaled_for_batch``), for more devices at the same rows per device. The step
  # counts stay as given: divide num_train_steps by it to keep the number of epochs.
  c.data.batch_scale = 1
  # > 0: evaluate on this many training examples held out (class-stratified, fixed seed),
  # instead of the test split: for choosing hyper-parameters without the test labels.
  # The held-out rows are removed from the training pool.
  c.data.validation_examples = 0

  c.model = model_config("realnvp_tabular")  # fields: models.MODEL_FIELDS

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
  #   + unlabeled_weight * unlabelled -log p(x); "marginal_and_cross_entropy" (the original
  #   image code) = label_weight * cross-entropy + unlabeled_weight * -log p(x) over all rows.
  c.loss.objective = "joint"
  # None: label_weight_per_feature * D (D = features or pixels), so the class term keeps
  # its share of a density term that is a sum over D dimensions (losses.FlowGMMLoss).
  c.loss.label_weight = config_dict.placeholder(float)
  c.loss.label_weight = 1.0
  c.loss.label_weight_per_feature = 10.0
  c.loss.unlabeled_weight = 1.0
  c.loss.consistency_weight = 0.0     # > 0: FlowGMM-cons
  c.loss.consistency_rampup_steps = 0

  c.optim = ml_collections.ConfigDict()
  c.optim.optimizer = "adam"          # adam | adamw | sgd
  c.optim.learning_rate = 1e-3
  c.optim.lr_schedule = "constant"    # constant | cosine | hold_then_linear
  c.optim.warmup_steps = 0
  c.optim.weight_decay = 0.0          # on weight-norm gains only, as in the original
  c.optim.grad_clip_norm = 100.0

  c.augment = ml_collections.ConfigDict()
  c.augment.crop_padding = 0          # images: random crop with this padding (0 = off)
  c.augment.flip = False              # images: random horizontal flip
  c.augment.noise_std = 0.0           # tables/text: Gaussian input noise, in standardised
                                      # feature units (0 = off)
  c.augment.dequantize = "off"        # tables/text: "auto" adds U(-r/2, r/2) to each discrete
                                      # column (resolution r, flowgmm_jax/features.py) in
                                      # place of the Gaussian noise; "off"

  # Early stopping on the marginal NLL of unlabelled rows held out from training.
  c.early_stopping = ml_collections.ConfigDict()
  c.early_stopping.holdout_fraction = 0.0  # of the unlabelled pool, in [0, 0.5] (0 = off)
  c.early_stopping.check_every_steps = 50
  c.early_stopping.patience = 5            # checks without improvement (0 = run to the end,
                                           # then keep the best)
  c.early_stopping.min_delta = 0.0         # relative improvement that counts
  c.early_stopping.min_steps = 0           # never stop before this many steps (the best
                                           # check is still kept)

  # A temperature T for p(y | x) = softmax(logits / T), fitted on held-back labels
  # (flowgmm_jax/calibration.py): "none"; "holdout": calibration_fraction of each class's
  # labels lose their labels in training and T is fitted on them; "cross_fit": every label
  # trains the final model, and T is fitted on the out-of-fold logits of calibration_folds
  # extra fits. T is searched in [0.1, max_temperature].
  c.calibration = ml_collections.ConfigDict()
  c.calibration.method = "none"
  c.calibration.calibration_fraction = 0.2
  c.calibration.calibration_folds = 3
  c.calibration.max_temperature = 10.0
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


# ----------------------------------------------------------------------------- the recipe

# The recipe for tables and sentence embeddings, in the config's own fields: the default of
# FlowGMMClassifier() and of configs/tabular.py and configs/text.py, so whatever is settled
# here reaches both (benchmarks/ssl_suite.py measures it).
TABLE_RECIPE = {
    # dropout_rate None: the paper's 0.5 where every conditioner sees at least 2 features
    # (D >= 4), else 0 (models.tabular_dropout_rate): it helped the suite's validation mean
    # and hurt two moons, whose conditioners see one feature (docs/tables.md).
    "model": dict(name="realnvp_tabular", num_coupling_layers=6, hidden_dim=64,
                  hidden_layers=1, dropout_rate=None),
    "prior": dict(covariance="isotropic", means_init="labeled", means_scale=0.01,
                  learn_means=True, learn_scales=False, learn_weights=True),
    "loss": dict(objective="marginal_and_cross_entropy", label_weight=None,
                 label_weight_per_feature=10.0, unlabeled_weight=1.0),
    "augment": dict(noise_std=0.1, dequantize="auto"),
    "optim": dict(optimizer="adam", learning_rate=1e-2, lr_schedule="cosine",
                  weight_decay=0.0),
    "data": dict(labeled_batch_size=64, unlabeled_batch_size=256),
    # patience 5 checks (125 steps), but no stop before step 1000 (a third of the cosine
    # schedule, while the rate is still above 75% of its peak and the held-out NLL is
    # noisy): patience alone stopped two moons too early, a longer patience made large
    # fits several times longer (docs/tables.md).
    "early_stopping": dict(holdout_fraction=0.1, check_every_steps=25, patience=5,
                           min_steps=1000),
    # No temperature by default: at 10 labels per class it helps only where the model is
    # very over-confident, and "cross_fit" costs calibration_folds more fits (docs/tables.md).
    "calibration": dict(method="none", calibration_fraction=0.2, calibration_folds=3,
                        max_temperature=10.0),
    "": dict(num_train_steps=3000),
}
# The recipe's fields that only some of its models have.
TABLE_RECIPE_MODEL_FIELDS = {"spline_tabular": dict(num_bins=8, bound=4.0)}


def _parameter_paths() -> dict:
  """{parameter name: config path} for every field of the table recipe's models and
  sections: the field's own name, and ``model`` for ``model.name``."""
  # A section's selector is named after the section: ``model`` and ``calibration``.
  paths = {"model": "model.name", "calibration": "calibration.method"}
  for section, fields in TABLE_RECIPE.items():
    for key in fields:
      if section != "model" and f"{section}.{key}" not in paths.values():
        paths[key] = f"{section}.{key}" if section else key
  for name in TABLE_RECIPE_MODEL_FIELDS.keys() | {TABLE_RECIPE["model"]["name"]}:
    for key in MODEL_FIELDS[name]:
      paths[key] = f"model.{key}"
  return paths


# FlowGMMClassifier's recipe parameters -> the config field each one is.
RECIPE_PARAMETERS = _parameter_paths()


def recipe_defaults() -> dict:
  """{parameter: default}: the table recipe, flat (fields of a model other than the
  recipe's own take the recipe's value for that model, else the model's default)."""
  recipe = table_recipe()
  out = {}
  for key, path in RECIPE_PARAMETERS.items():
    section, _, leaf = path.rpartition(".")
    if section == "model" and leaf not in recipe["model"]:
      owner = next(m for m in TABLE_RECIPE_MODEL_FIELDS if leaf in MODEL_FIELDS[m])
      out[key] = TABLE_RECIPE_MODEL_FIELDS[owner].get(leaf, MODEL_FIELDS[owner][leaf])
    else:
      out[key] = recipe[section][leaf]
  return out


def table_recipe(**overrides) -> dict:
  """The table recipe with ``overrides`` (parameter names, see ``RECIPE_PARAMETERS``) as
  ``{section: {field: value}}`` (top-level fields under ""). The model section holds the
  chosen model's fields plus any override given for it; ``validate_config`` then rejects an
  override the model does not take. Raises ValueError for a name that is no parameter."""
  unknown = sorted(set(overrides) - set(RECIPE_PARAMETERS))
  if unknown:
    raise ValueError(f"unknown table-recipe parameter(s) {unknown}; choose from "
                     f"{sorted(RECIPE_PARAMETERS)}.")
  name = overrides.get("model", TABLE_RECIPE["model"]["name"])
  sections = {s: dict(f) for s, f in TABLE_RECIPE.items() if s != "model"}
  model = dict(MODEL_FIELDS.get(name, {}))
  model.update({k: v for k, v in TABLE_RECIPE["model"].items() if k in model})
  model.update(TABLE_RECIPE_MODEL_FIELDS.get(name, {}))
  for key, value in overrides.items():
    section, _, leaf = RECIPE_PARAMETERS[key].rpartition(".")
    if section == "model":
      model[leaf] = value
    else:
      sections[section][leaf] = value
  model["name"] = name
  return {"model": model, **sections}


def apply_table_recipe(c: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
  """Sets ``c``'s model, prior, loss, optimiser, augmentation, early-stopping, batch and
  step fields from ``TABLE_RECIPE`` with ``overrides`` (see ``table_recipe``); returns c."""
  recipe = table_recipe(**overrides)
  model = recipe.pop("model")
  if model.get("dropout_rate", 0.0) is None:  # a float field still, for command-line overrides
    model["dropout_rate"] = config_dict.placeholder(float)
  c.model = ml_collections.ConfigDict(model)
  for section, fields in recipe.items():
    target = c[section] if section else c
    for key, value in fields.items():
      target[key] = value
  return c


# ----------------------------------------------------------------------------- validation

def config_field_name(path: str) -> str:
  """How a config field is named in messages: ``config.model.hidden_dim``."""
  return f"config.{path}"


def _get(c: Mapping, path: str) -> Any:
  for key in path.split("."):
    c = c[key]
  return c


def validate_config(c: Mapping, *, field_name: Callable[[str], str] = config_field_name
                    ) -> None:
  """Checks the values of a config (a ConfigDict or the same nested dict); raises one
  ValueError naming the field by ``field_name(path)`` and saying what would be valid.

  Keys are checked by the locked ConfigDict, except the model section's, which must be
  exactly those of ``model.name`` (``models.MODEL_FIELDS``). ``FlowGMMClassifier`` calls
  this with its own parameter names.
  """
  def fail(msg: str):
    prefix = "Invalid config: " if field_name is config_field_name else ""
    raise ValueError(prefix + msg)

  def shown(path):
    return f"{field_name(path)}={_get(c, path)!r}"

  def integer(path, minimum):
    v = _get(c, path)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
      fail(f"{shown(path)} must be an integer >= {minimum}.")

  def number(path, low=0.0, high=math.inf, *, strict_low=False, strict_high=False,
             allow_none=False):
    v = _get(c, path)
    if v is None and allow_none:
      return
    ok = (not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v)
          and (v > low if strict_low else v >= low)
          and (v < high if strict_high else v <= high))
    if not ok:
      lo, hi = "(" if strict_low else "[", ")" if strict_high else "]"
      where = (f"> {low}" if strict_low else f">= {low}") if high == math.inf else (
          f"in {lo}{low}, {high}{hi}")
      fail(f"{shown(path)} must be a finite number {where}"
           + (" or None" if allow_none else "") + ".")

  def boolean(path):
    if not isinstance(_get(c, path), bool):
      fail(f"{shown(path)} must be True or False.")

  def choice(path, choices, renamed=None):
    value = _get(c, path)
    if value in (renamed or {}):
      fail(f"{shown(path)} is now called {renamed[value]!r} (the same setting); use that "
           "name.")
    if value not in choices:
      fail(f"{shown(path)}; choose one of {tuple(choices)}.")

  if c["data"]["kind"] not in DATASETS:
    fail(f"{shown('data.kind')}; choose one of {tuple(DATASETS)}.")
  if c["data"]["name"] not in DATASETS[c["data"]["kind"]]:
    fail(f"{shown('data.name')} is not a {c['data']['kind']} dataset; choose one of "
         f"{DATASETS[c['data']['kind']]}.")
  loader = c["data"].get("loader", "memory")
  if loader not in ("memory", "grain"):
    fail(f"{shown('data.loader')}; choose one of ('memory', 'grain').")
  if loader == "grain" and c["data"]["kind"] != "image":
    fail(f"{shown('data.loader')} reads image records only; tables and text use "
         f"{field_name('data.loader')}='memory'.")
  if loader == "grain" and c["data"]["kind"] == "image" and c["data"]["source"] == "files":
    fail(f"{shown('data.loader')} reads ArrayRecord files (a prepared tfds source, or "
         f"data.name='records'); {shown('data.source')} is for the memory loader.")
  _validate_model(c, fail, field_name)
  model = c["model"]
  for key in model:
    path = f"model.{key}"
    if key in ("zero_init_last", "sync_batch_norm"):
      boolean(path)
    elif key == "dropout_rate":
      if model[key] is not None:  # None: sized by the data (models.tabular_dropout_rate)
        number(path, 0.0, 1.0, strict_high=True)
    elif key == "bound":
      number(path, strict_low=True)
    elif key == "num_bins":
      integer(path, 2)
    elif key != "name":
      integer(path, 1)
  choice("compute_dtype", COMPUTE_DTYPES)
  if not isinstance(c.get("compilation_cache_dir", ""), str):
    fail(f"{shown('compilation_cache_dir')} must be 'auto', 'on', 'off' or a directory "
         "(flowgmm_jax/compile_cache.py).")
  image_model = model["name"] in IMAGE_MODELS
  if image_model != (c["data"]["kind"] == "image"):
    flat_models = [name for name in MODELS if name not in IMAGE_MODELS]
    fail(f"{shown('model.name')} does not fit {shown('data.kind')}: use "
         f"{'/'.join(IMAGE_MODELS)} for images and {'/'.join(flat_models)} otherwise.")
  d = c["data"]
  if d["num_labeled_per_class"] <= 0 and d["num_labeled"] <= 0:
    fail(f"set {field_name('data.num_labeled_per_class')} > 0 or "
         f"{field_name('data.num_labeled')} > 0.")
  integer("data.labeled_batch_size", 1)
  integer("data.unlabeled_batch_size", 0)
  integer("data.validation_examples", 0)
  integer("data.batch_scale", 1)
  number("data.test_fraction", 0.0, 1.0, strict_low=True, strict_high=True)
  for key in ("num_train_steps", "log_every_steps", "eval_every_steps",
              "checkpoint_every_steps", "eval_batch_size", "keep_checkpoints",
              "max_consecutive_skips"):
    integer(key, 1)
  choice("optim.optimizer", OPTIMIZERS)
  number("optim.learning_rate", strict_low=True)
  choice("optim.lr_schedule", SCHEDULES, RENAMED_SCHEDULES)
  integer("optim.warmup_steps", 0)
  number("optim.weight_decay")
  number("optim.grad_clip_norm")
  choice("loss.objective", OBJECTIVES, RENAMED_OBJECTIVES)
  number("loss.label_weight", allow_none=True)
  number("loss.label_weight_per_feature", strict_low=c["loss"]["label_weight"] is None)
  number("loss.unlabeled_weight")
  number("loss.consistency_weight")
  integer("loss.consistency_rampup_steps", 0)
  choice("prior.covariance", COVARIANCE_TYPES)
  choice("prior.means_init", MEANS_INIT_CHOICES)
  if c["prior"]["means_scale"] is not None:
    v = c["prior"]["means_scale"]
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0:
      fail(f"{shown('prior.means_scale')} must be > 0; leave it unset (None) for the "
           "paper's value.")
  for key in ("learn_means", "learn_scales", "learn_weights"):
    boolean(f"prior.{key}")
  integer("augment.crop_padding", 0)
  boolean("augment.flip")
  number("augment.noise_std")
  choice("augment.dequantize", ("auto", "off"))
  number("early_stopping.holdout_fraction", 0.0, 0.5)
  integer("early_stopping.check_every_steps", 1)
  integer("early_stopping.patience", 0)
  number("early_stopping.min_delta")
  integer("early_stopping.min_steps", 0)
  choice("calibration.method", CALIBRATION_METHODS)
  number("calibration.calibration_fraction", 0.0, 1.0, strict_low=True, strict_high=True)
  integer("calibration.calibration_folds", 2)
  number("calibration.max_temperature", 1.0)
  dist = c["distributed"]
  given = [bool(dist["coordinator_address"]), dist["num_processes"] > 0,
           dist["process_id"] >= 0]
  if any(given) and not all(given):
    fail("distributed.coordinator_address, distributed.num_processes and "
         "distributed.process_id must be given together (or all left empty for automatic "
         f"cluster detection); got coordinator_address={dist['coordinator_address']!r}, "
         f"num_processes={dist['num_processes']}, process_id={dist['process_id']}.")
  if all(given) and dist["process_id"] >= dist["num_processes"]:
    fail(f"distributed.process_id={dist['process_id']} must be < "
         f"distributed.num_processes={dist['num_processes']}.")


def _validate_model(c: Mapping, fail, field_name) -> None:
  """The model section holds ``name`` and exactly that model's fields."""
  model = c["model"]
  name = model["name"]
  if name not in MODEL_FIELDS:
    fail(f"{field_name('model.name')}={name!r}; choose one of {MODELS}.")
  keys = set(model) - {"name"}
  expected = set(MODEL_FIELDS[name])
  if keys == expected:
    return
  extra, missing = sorted(keys - expected), sorted(expected - keys)
  if field_name is not config_field_name:  # the estimator: its parameters, by name
    fail(f"{', '.join(field_name('model.' + k) for k in extra)} "
         f"{'does' if len(extra) == 1 else 'do'} not apply to "
         f"{field_name('model.name')}={name!r}; leave "
         f"{'it' if len(extra) == 1 else 'them'} at the default.")
  owner = next((m for m, f in MODEL_FIELDS.items() if set(f) == keys), None)
  what = (f"the fields of model {owner!r}" if owner else
          f"fields that model {name!r} does not take ({', '.join(extra)})" if extra else
          f"not all of model {name!r}'s fields (missing {', '.join(missing)})")
  fail(f"config.model.name={name!r} but config.model holds {what}: a config's model is "
       f"chosen by its ARG, which builds the model's section (for {name!r}: "
       f"--config={MODEL_ARGS[name]}), not by --config.model.name.")


# The scaled recipe's warm-up, as a fraction of the run: Goyal et al. (2017, arXiv:1706.02677)
# warm up over 5 of 90 epochs, since the scaled rate is too large for the first updates.
BATCH_SCALE_WARMUP_FRACTION = 0.05


def scaled_for_batch(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``c`` with ``data.batch_scale`` = k applied, as a copy with ``batch_scale`` 1:

  * ``data.labeled_batch_size`` and ``data.unlabeled_batch_size`` times k;
  * ``optim.learning_rate`` times k (the linear scaling rule, Goyal et al. 2017);
  * ``optim.warmup_steps`` at least ``BATCH_SCALE_WARMUP_FRACTION`` of
    ``num_train_steps``, a linear warm-up from 0 to the scaled rate.

  k = 1 returns ``c`` itself. Step counts are not touched: the caller chooses whether k
  buys the same steps on more rows or the same epochs in fewer steps."""
  k = int(c.data.batch_scale)
  if k == 1:
    return c
  c = copy.deepcopy(c)
  c.data.labeled_batch_size *= k
  c.data.unlabeled_batch_size *= k
  c.data.batch_scale = 1
  c.optim.learning_rate = float(c.optim.learning_rate) * k
  c.optim.warmup_steps = max(int(c.optim.warmup_steps),
                             math.ceil(BATCH_SCALE_WARMUP_FRACTION * c.num_train_steps))
  return c
