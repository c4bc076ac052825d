"""What ``fit`` compiles (its programs and its random keys) and the state before its first step.

The models, the optimiser, the jitted train step and the jitted ``model.init`` depend only
on the config sections that shape them and on the data's shape (``program_key``, an
immutable, hashable ``FrozenConfigDict``), and are cached on that key: a second fit with the
same key in the same process compiles nothing. What changes between such fits (the seed,
the data, the rows) are arguments of the programs, never constants in them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowgmm_jax import data as data_lib
from flowgmm_jax import mesh as mesh_lib
from flowgmm_jax.flowgmm import FlowGMM
from flowgmm_jax.losses import FlowGMMLoss
from flowgmm_jax.prior import place_means_at_centroids
from flowgmm_jax.training import optim
from flowgmm_jax.training import step as step_lib
from flowgmm_jax.training.state import TrainState, create_train_state

# Relative tolerance of the lattice test on a dataset's rows: they are float32 and usually
# standardised, so integer codes sit on a lattice only up to float32 rounding.
_LATTICE_TOL = 1e-4
# The config sections (and top-level fields) that the programs are built from.
_SECTIONS = ("model", "prior", "optim", "loss", "augment")
_FIELDS = ("compute_dtype", "num_train_steps")


def dequantize_widths(config: ml_collections.ConfigDict, dataset) -> tuple:
  """The uniform-noise width of each feature for ``config.augment.dequantize="auto"``: the
  resolution of each discrete column of ``dataset.x_train [N, D]`` (``features.
  dequantization_widths``, in the rows' own units: standardised ones for tables and text),
  0 elsewhere; () when nothing is discrete, for images, or with "off". The widths come
  from the training rows only; they are constants of the train step, so a table whose
  discrete columns differ compiles its own step."""
  if dataset.kind == "image" or config.augment.get("dequantize", "off") != "auto":
    return ()
  from flowgmm_jax import features
  widths = features.dequantization_widths(dataset.x_train, tol=_LATTICE_TOL)
  return tuple(float(w) for w in widths) if np.any(widths > 0) else ()


def program_key(config: ml_collections.ConfigDict, dataset) -> ml_collections.FrozenConfigDict:
  """Everything the programs of a fit of ``config`` on ``dataset`` depend on."""
  key = {s: config[s].to_dict() for s in _SECTIONS}
  key.update({f: config.get(f) for f in _FIELDS})
  key.update(input_shape=tuple(int(s) for s in dataset.x_train.shape[1:]),
             num_classes=int(dataset.num_classes), image=dataset.kind == "image",
             dequantize_widths=dequantize_widths(config, dataset))
  return ml_collections.FrozenConfigDict(key)


@dataclasses.dataclass(frozen=True)
class Programs:
  """The models and compiled functions of one ``program_key`` on one mesh."""
  train_model: FlowGMM   # BatchNorm over the mesh's data axis (as model.sync_batch_norm says)
  eval_model: FlowGMM
  tx: Any
  train_step: Callable   # (state, batch, rng) -> (state, metrics)
  init: Callable         # (rng, x [B, ...]) -> variables; jitted model.init
  new_state: Callable    # variables -> TrainState (optimiser state initialised)
  dequantize_widths: tuple


def _augmentation(key) -> Callable | None:
  a = key.augment
  if key.image and (a.crop_padding > 0 or a.flip):
    return functools.partial(data_lib.augment_images, crop_padding=a.crop_padding,
                             flip=a.flip)
  if not key.image and (a.noise_std > 0 or key.dequantize_widths):
    return functools.partial(data_lib.add_feature_noise, std=a.noise_std,
                             dequantize_widths=key.dequantize_widths)
  return None


@functools.lru_cache(maxsize=16)
def programs(key: ml_collections.FrozenConfigDict, mesh) -> Programs:
  """The programs of ``key`` (``program_key``) on ``mesh``, built once per process."""
  config = ml_collections.ConfigDict({"model": key.model.as_configdict(),
                                      "prior": key.prior.as_configdict(),
                                      "compute_dtype": key.compute_dtype})
  shape, k = tuple(key.input_shape), key.num_classes
  num_dims = int(np.prod(shape))
  train_model = FlowGMM.from_config(config, shape, k, image=key.image,
                                    bn_axis_name=mesh_lib.DATA_AXIS)
  eval_model = FlowGMM.from_config(config, shape, k, image=key.image)
  o = key.optim
  tx = optim.make_optimizer(
      o.optimizer, o.learning_rate, key.num_train_steps, schedule=o.lr_schedule,
      warmup_steps=o.warmup_steps, weight_decay=o.weight_decay,
      grad_clip_norm=o.grad_clip_norm)
  train_step = step_lib.make_train_step(
      train_model, tx, mesh, loss=FlowGMMLoss.from_config(key.loss, num_dims),
      augment=_augmentation(key), dequantize=key.image, num_dims=num_dims)
  init = jax.jit(lambda rng, x: eval_model.init({"params": rng, "dropout": rng}, x))
  new_state = jax.jit(lambda variables: create_train_state(variables, tx))
  return Programs(train_model=train_model, eval_model=eval_model, tx=tx,
                  train_step=train_step, init=init, new_state=new_state,
                  dequantize_widths=tuple(key.dequantize_widths))


def _split_seed(seed):
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  return init_rng, train_rng


_split_seed_compiled = jax.jit(_split_seed)


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(init_rng, train_rng) = ``split(PRNGKey(seed))``, as one compiled program: run op by
  op, the seeding, the split and the unpacking each compile a program of their own. A seed
  in [0, 2**32) enters as uint32, for which ``PRNGKey`` gives the same key as for the
  Python int; any other seed takes the op-by-op path."""
  if 0 <= seed < 2**32:
    return _split_seed_compiled(np.uint32(seed))
  return _split_seed(seed)


def initial_state(config: ml_collections.ConfigDict, progs: Programs, dataset, rows,
                  init_rows: np.ndarray, init_rng, encode: Callable) -> TrainState:
  """The state before step 0 (on the host): ``model.init`` on ``dataset.x_train[init_rows]``
  (the first batch's rows: data-dependent initialisation such as ActNorm's sees real rows),
  the prior's means at the labelled rows' latent centroids when ``prior.means_init`` is
  "labeled" (``encode(variables, x) -> z``), and the optimiser state."""
  variables = progs.init(init_rng, jnp.asarray(dataset.x_train[init_rows], jnp.float32))
  if config.prior.means_init == "labeled":
    variables = place_means_at_centroids(variables, encode(variables,
                                                           dataset.x_train[rows.labeled]),
                                         dataset.y_train[rows.labeled])
  return progs.new_state(variables)
