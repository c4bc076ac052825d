"""What ``fit`` builds before its first step: the programs, the batch layout, the first state.

The models, the optimiser, the jitted train step and the jitted ``model.init`` are built
from ``Settings``, a hashable description of everything they depend on (model, prior,
optimiser, loss, augmentation, input shape, classes, mesh), and cached on it: a second fit
with the same settings in the same process compiles nothing. Values that change between
such fits (the seed, the data, the split) are arguments of the programs, never constants in
them. Batch shapes go through the one padding rule (``mesh.padded_rows``), so pools of
near sizes share one compiled step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowgmm_jax import data as data_lib
from flowgmm_jax import mesh as mesh_lib
from flowgmm_jax.flowgmm import FlowGMM
from flowgmm_jax.losses import FlowGMMLoss
from flowgmm_jax.training import optim
from flowgmm_jax.training import step as step_lib
from flowgmm_jax.training.state import TrainState, create_train_state


def _frozen(section) -> tuple:
  """A config section as a hashable, sorted tuple of (key, value) pairs."""
  items = section.to_dict() if hasattr(section, "to_dict") else dict(section)
  return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in items.items()))


def _thawed(frozen: tuple) -> dict:
  return {k: json.loads(v) for k, v in frozen}


# Relative tolerance of the lattice test on a dataset's rows: they are float32 and usually
# standardised, so integer codes sit on a lattice only up to float32 rounding.
_LATTICE_TOL = 1e-4


def dequantize_widths(config: ml_collections.ConfigDict, dataset) -> tuple:
  """The uniform-noise width of each feature for ``config.augment.dequantize="auto"``: the
  resolution of each discrete column of ``dataset.x_train [N, D]`` (``features.
  dequantization_widths``, in the rows' own units: standardised ones for tables and text),
  0 elsewhere; () when nothing is discrete, for images, or with "off". The widths come
  from the training rows only (the test split is never looked at); they are constants of
  the train step, so a table whose discrete columns differ compiles its own step."""
  if dataset.kind == "image" or config.augment.get("dequantize", "off") != "auto":
    return ()
  from flowgmm_jax import features
  widths = features.dequantization_widths(dataset.x_train, tol=_LATTICE_TOL)
  return tuple(float(w) for w in widths) if np.any(widths > 0) else ()


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything the programs of a fit depend on (hashable: the key of their cache)."""
  model: tuple
  prior: tuple
  compute_dtype: str
  optim: tuple
  num_train_steps: int
  loss: FlowGMMLoss
  augment: tuple
  input_shape: tuple
  num_classes: int
  image: bool
  # Per-feature dequantisation widths in the data's (standardised) units, () when no column
  # is discrete or ``augment.dequantize`` is "off" (``dequantize_widths``).
  dequantize_widths: tuple = ()

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, dataset) -> "Settings":
    input_shape = tuple(int(s) for s in dataset.x_train.shape[1:])
    return cls(model=_frozen(config.model), prior=_frozen(config.prior),
               compute_dtype=config.get("compute_dtype", "float32"),
               optim=_frozen(config.optim), num_train_steps=int(config.num_train_steps),
               loss=FlowGMMLoss.from_config(config.loss, int(np.prod(input_shape))),
               augment=_frozen(config.augment), input_shape=input_shape,
               num_classes=int(dataset.num_classes), image=dataset.kind == "image",
               dequantize_widths=dequantize_widths(config, dataset))

  @property
  def num_dims(self) -> int:
    return int(np.prod(self.input_shape))


@dataclasses.dataclass(frozen=True)
class Programs:
  """The models and compiled functions of one ``Settings`` on one mesh."""
  train_model: FlowGMM   # BatchNorm averaged over the mesh's data axis
  eval_model: FlowGMM
  tx: Any
  train_step: Callable   # (state, batch, rng) -> (state, metrics)
  init: Callable         # (rng, x [B, ...]) -> variables; jitted model.init
  new_state: Callable    # variables -> TrainState (optimiser state initialised)


def _augmentation(settings: Settings) -> Optional[Callable]:
  a = _thawed(settings.augment)
  if settings.image and (a["crop_padding"] > 0 or a["flip"]):
    return functools.partial(data_lib.augment_images, crop_padding=a["crop_padding"],
                             flip=a["flip"])
  if not settings.image and (a["noise_std"] > 0 or settings.dequantize_widths):
    return functools.partial(data_lib.add_feature_noise, std=a["noise_std"],
                             dequantize_widths=settings.dequantize_widths)
  return None


@functools.lru_cache(maxsize=16)
def programs(settings: Settings, mesh) -> Programs:
  """The programs of ``settings`` on ``mesh``, built once per process (cached)."""
  config = ml_collections.ConfigDict({"model": _thawed(settings.model),
                                      "prior": _thawed(settings.prior),
                                      "compute_dtype": settings.compute_dtype})
  shape, k = settings.input_shape, settings.num_classes
  train_model = FlowGMM.from_config(config, shape, k, image=settings.image,
                                    bn_axis_name=mesh_lib.DATA_AXIS)
  eval_model = FlowGMM.from_config(config, shape, k, image=settings.image)
  o = _thawed(settings.optim)
  tx = optim.make_optimizer(
      o["optimizer"], o["learning_rate"], settings.num_train_steps,
      schedule=o["lr_schedule"], warmup_steps=o["warmup_steps"],
      weight_decay=o["weight_decay"], grad_clip_norm=o["grad_clip_norm"])
  train_step = step_lib.make_train_step(
      train_model, tx, mesh, loss=settings.loss, augment=_augmentation(settings),
      dequantize=settings.image, num_dims=settings.num_dims)
  init = jax.jit(lambda rng, x: eval_model.init({"params": rng, "dropout": rng}, x))
  new_state = jax.jit(lambda variables: create_train_state(variables, tx))
  return Programs(train_model=train_model, eval_model=eval_model, tx=tx,
                  train_step=train_step, init=init, new_state=new_state)


# ----------------------------------------------------------------------------- batches

@dataclasses.dataclass(frozen=True)
class BatchLayout:
  """Rows per step: ``labeled`` and ``unlabeled`` real rows, each part padded to
  ``labeled_padded`` / ``unlabeled_padded`` rows (a multiple of the device count). Padding
  rows repeat a real row and carry ``mask`` False, so they count for nothing."""
  labeled: int
  unlabeled: int
  labeled_padded: int
  unlabeled_padded: int

  @property
  def size(self) -> int:
    return self.labeled_padded + self.unlabeled_padded


def batch_layout(config: ml_collections.ConfigDict, num_labeled: int, num_unlabeled: int,
                 num_devices: int) -> BatchLayout:
  """``config.data``'s batch sizes, each capped at its pool (a larger batch would only
  repeat rows): a pool at least as large as its batch gives the batch size itself, rounded
  up to the device count; a smaller pool gives each of its rows once, padded by the one
  rule (``mesh.padded_rows``), so that pools of near sizes share one compiled step. No
  unlabelled rows without a pool."""
  def part(configured: int, pool: int) -> tuple[int, int]:
    if pool == 0 or configured == 0:
      return 0, 0
    cap = mesh_lib.round_up(configured, num_devices)
    if pool >= configured:
      return configured, cap
    return pool, mesh_lib.padded_rows(pool, cap, num_devices)
  bl, bl_padded = part(config.data.labeled_batch_size, num_labeled)
  bu, bu_padded = part(config.data.unlabeled_batch_size, num_unlabeled)
  return BatchLayout(bl, bu, bl_padded, bu_padded)


def _pad(rows: np.ndarray, size: int) -> np.ndarray:
  return np.concatenate([rows, np.repeat(rows[-1:], size - len(rows), axis=0)]) if (
      len(rows) and size > len(rows)) else rows


def batch_rows(batches: data_lib.SemiSupervisedBatches, layout: BatchLayout, step: int,
               num_devices: int) -> dict:
  """Step ``step``'s global batch without its images: ``row`` (each row's index into
  ``batches.x``), ``y``, ``position`` (each real row's index in the batch as sampled,
  [labelled | unlabelled]; it seeds the row's noise) and ``mask``, each ``[layout.size]``,
  each part padded, reordered so that every device gets rows of both parts. Cheap (indices
  only), so every host computes it whole and then reads the images of its own rows."""
  lab, unl = batches.indices(step)
  y = batches.y
  parts = []
  offset = 0
  for rows, real, padded, labels in ((lab, layout.labeled, layout.labeled_padded, y[lab]),
                                     (unl, layout.unlabeled, layout.unlabeled_padded,
                                      np.full(len(unl), -1))):
    if not padded:
      continue
    position = np.arange(offset, offset + real)
    pad_position = layout.labeled + layout.unlabeled + np.arange(offset, offset + padded - real)
    parts.append({"row": _pad(np.asarray(rows, np.int64), padded),
                  "y": _pad(np.asarray(labels), padded),
                  "position": np.concatenate([position, pad_position]),
                  "mask": np.arange(padded) < real})
    offset += real
  batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  batch["y"] = np.where(batch["mask"], batch["y"], -1).astype(np.int32)
  batch["position"] = batch["position"].astype(np.int32)
  return _interleave(batch, layout.labeled_padded, layout.unlabeled_padded, num_devices)


def host_batch(batches: data_lib.SemiSupervisedBatches, layout: BatchLayout, step: int,
               num_devices: int, rows: Optional[np.ndarray] = None) -> dict:
  """Step ``step``'s batch on the host: ``x``, ``y``, ``position`` and ``mask`` of
  ``batch_rows``, for the batch rows ``rows`` only (``mesh.process_rows``: this process's
  share; None = all ``layout.size`` rows). Only those rows' images are read from
  ``batches.x``; an ``x`` that can prefetch (``data.RecordImages``) is asked for the next
  step's rows meanwhile."""
  batch = batch_rows(batches, layout, step, num_devices)
  if rows is not None:
    batch = {k: v[rows] for k, v in batch.items()}
  x = batches.x
  batch["x"] = x[batch.pop("row")]
  if hasattr(x, "prefetch"):
    following = batch_rows(batches, layout, step + 1, num_devices)["row"]
    x.prefetch(following if rows is None else following[rows])
  return batch


def _interleave(batch: dict, labeled: int, unlabeled: int, num_devices: int) -> dict:
  """Reorders [labelled | unlabelled] rows so every device gets both parts."""
  if num_devices == 1 or not labeled or not unlabeled:
    return batch
  def mix(a):
    la = a[:labeled].reshape((num_devices, labeled // num_devices) + a.shape[1:])
    ua = a[labeled:].reshape((num_devices, unlabeled // num_devices) + a.shape[1:])
    return np.concatenate([la, ua], axis=1).reshape(a.shape)
  return {k: mix(v) for k, v in batch.items()}


def heldout_rows(unlabeled_idx: np.ndarray, fraction: float, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Splits the unlabelled pool into (rows to train on, rows held out for early stopping).

  ``round(fraction * N_u)`` rows, at least 16 (never more than half the pool) and at most
  4096, chosen with ``seed``; no held-out rows when ``fraction`` is 0 or the pool has
  fewer than 32 rows.
  """
  n = len(unlabeled_idx)
  if fraction <= 0 or n < 32:
    return unlabeled_idx, unlabeled_idx[:0]
  count = int(min(max(round(fraction * n), 16), n // 2, 4096))
  perm = np.random.default_rng([seed, 7]).permutation(n)
  return np.sort(unlabeled_idx[perm[count:]]), np.sort(unlabeled_idx[perm[:count]])


# ----------------------------------------------------------------------------- the first state

def place_means_at_labeled_centroids(variables: dict, z_labeled: np.ndarray,
                                     y_labeled: np.ndarray) -> dict:
  """``variables`` with each prior mean mu_k moved to the centroid of ``z_labeled`` (the
  latents f(x) of the labelled rows ``[N, D]``, f as initialised) over the rows of class k
  (``y_labeled: [N]``).

  At the start of training the classifier is then the nearest-class-mean rule in the
  latent space, the strongest simple rule with a handful of labels, instead of a random
  assignment that the few labelled rows must first undo. A class without labelled rows
  keeps its initial mean.
  """
  z = np.asarray(z_labeled, np.float64)
  collection = "params" if "means" in variables.get("params", {}).get("prior", {}) else "prior"
  means = np.array(variables[collection]["prior"]["means"], np.float64)
  for k in range(means.shape[0]):
    rows = z[np.asarray(y_labeled) == k]
    if len(rows):
      means[k] = rows.mean(axis=0)
  prior_vars = dict(variables[collection]["prior"])
  prior_vars["means"] = jnp.asarray(means, variables[collection]["prior"]["means"].dtype)
  return {**variables, collection: {**variables[collection], "prior": prior_vars}}


def check_same_structure(given: dict, expected: dict) -> None:
  """Raises ValueError naming the first variable whose path, shape or dtype differs."""
  flat_given = dict(jax.tree_util.tree_flatten_with_path(given)[0])
  flat_expected = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
  def name(path):
    return "/".join(str(getattr(k, "key", k)) for k in path)
  missing = sorted(name(p) for p in flat_expected.keys() - flat_given.keys())
  extra = sorted(name(p) for p in flat_given.keys() - flat_expected.keys())
  if missing or extra:
    raise ValueError(f"initial_variables do not fit the config's model: missing "
                     f"{missing[:3]}, unexpected {extra[:3]}; build them with the same "
                     "config.model (and layout).")
  for path, want in flat_expected.items():
    got = flat_given[path]
    if tuple(np.shape(got)) != tuple(want.shape) or np.dtype(got.dtype) != want.dtype:
      raise ValueError(f"initial_variables[{name(path)!r}] is {np.dtype(got.dtype)}"
                       f"{list(np.shape(got))}; the config's model needs "
                       f"{want.dtype}{list(want.shape)}.")


def initial_state(config: ml_collections.ConfigDict, progs: Programs, dataset,
                  labeled_idx: np.ndarray, unlabeled_idx: np.ndarray, layout: BatchLayout,
                  init_rng, encode: Callable[[dict, np.ndarray], np.ndarray],
                  initial_variables: Optional[dict] = None) -> TrainState:
  """The state before step 0 (on the host): ``model.init`` on the first rows of each pool,
  padded like a batch (data-dependent initialisation such as ActNorm's sees real rows), the
  means at the labelled centroids when ``prior.means_init`` is "labeled" (``encode(variables,
  x) -> z`` maps the labelled rows), and the optimiser state.

  ``initial_variables``: start from these instead (a warm start, or another implementation's
  initial tensors); they must have the model's structure, shapes and dtypes, and are used as
  given (no means placement)."""
  rows = np.concatenate([_pad(labeled_idx[:layout.labeled], layout.labeled_padded),
                         _pad(unlabeled_idx[:layout.unlabeled], layout.unlabeled_padded)])
  if len(rows) < 2:
    rows = _pad(rows, 2)
  x_init = jnp.asarray(dataset.x_train[rows], jnp.float32)
  if initial_variables is not None:
    expected = jax.eval_shape(progs.init, init_rng, x_init)
    check_same_structure(initial_variables, expected)
    return progs.new_state(jax.tree_util.tree_map(jnp.asarray, initial_variables))
  variables = progs.init(init_rng, x_init)
  if config.prior.means_init == "labeled":
    variables = place_means_at_labeled_centroids(
        variables, encode(variables, dataset.x_train[labeled_idx]),
        dataset.y_train[labeled_idx])
  return progs.new_state(variables)
