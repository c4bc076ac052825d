"""Normalizing flows (Flax Linen). Forward is data -> latent, in every model.

Every model: ``z, log_det = model.apply(variables, x, train=False)`` with ``z: [B, D]``
(flat) and ``log_det: [B]`` = log|det dz/dx|, and
``x = model.apply(variables, z, method=model.inverse)`` (latent -> data, no forward call
needed). BatchNorm (image models) uses running statistics unless ``train=True`` with
``mutable=["batch_stats"]``; dropout (tabular models) needs ``rngs={"dropout": key}`` when
``train=True``.

The flows store identical layers stacked and run them with ``nn.scan``: one parameter
layout, ``PARAM_LAYOUT_VERSION``, which checkpoints and pickles record; ``check_layout_version``
refuses any other in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flowgmm_jax.models.glow import Glow
from flowgmm_jax.models.realnvp import RealNVP
from flowgmm_jax.models.tabular import TabularFlow

__all__ = ["Glow", "RealNVP", "TabularFlow", "MODELS", "MODEL_FIELDS",
           "IMAGE_MODELS", "COMPUTE_DTYPES", "build", "tabular_dropout_rate", "count_params",
           "weight_norm_gain_mask", "PARAM_LAYOUT_VERSION", "LayoutVersionError",
           "check_layout_version"]

# The one parameter layout: identical layers stacked for nn.scan. Saved with checkpoints and
# pickles so that a file from another layout is refused in one line, not a shape error.
PARAM_LAYOUT_VERSION = 2


class LayoutVersionError(ValueError):
  """Saved variables in a parameter layout this version does not read."""


def check_layout_version(version: Any, where: str = "the saved model") -> None:
  """``LayoutVersionError`` (one line) unless ``version`` is ``PARAM_LAYOUT_VERSION``."""
  if version == PARAM_LAYOUT_VERSION:
    return
  if isinstance(version, int) and not isinstance(version, bool) and version > PARAM_LAYOUT_VERSION:
    why = "newer than this flowgmm_jax knows: upgrade flowgmm_jax to read it"
  elif version == 1:
    why = ("the unrolled layout of flowgmm_jax before 0.1.0, no longer read: retrain, or "
           "load it with that version and save it again")
  else:
    why = "unknown: it was not written by flowgmm_jax"
  raise LayoutVersionError(f"{where} stores parameter layout {version!r}, {why} (this "
                           f"version reads layout {PARAM_LAYOUT_VERSION}).")


class _Entry(NamedTuple):
  image: bool  # an image flow (inputs [H, W, C]) rather than one over flat rows [D]
  # (config.model, input_shape without the batch axis, bn_axis_name) -> the flow
  make: Callable[[Any, Sequence[int], str | None], nn.Module]


# The fields of each model's config section (config.model holds ``name`` and exactly these)
# with their defaults; ``training.config.model_config`` builds a section from this table.
#   hidden_layers: hidden layers of width hidden_dim in each coupling's MLP conditioner
#     (Dense(k) + ReLU each), so the MLP is hidden_layers + 1 dense layers. The original's
#     RealNVPTabular(num_layers=n) has n + 1 hidden layers: its toy, UCI and text runs
#     (num_layers=1) are hidden_layers=2.
#   zero_init_last: zero each coupling's last conditioner layer, so every coupling starts
#     as the identity (False: PyTorch's default init there, as the original).
_TABULAR_FIELDS = dict(num_coupling_layers=5, hidden_dim=512, hidden_layers=2,
                       dropout_rate=0.0, zero_init_last=False)
MODEL_FIELDS = {
    "realnvp_tabular": dict(_TABULAR_FIELDS),
    "spline_tabular": dict(_TABULAR_FIELDS, num_bins=8, bound=3.0),
    "realnvp": dict(num_scales=2, num_blocks=8, mid_channels=64, zero_init_last=False,
                    sync_batch_norm=True),
    "glow": dict(num_scales=2, steps_per_scale=8, mid_channels=64, zero_init_last=False,
                 sync_batch_norm=True),
}
#   sync_batch_norm (image flows): in the data-parallel train step BatchNorm averages its
#     batch moments over all devices in every layer (True: the one-device result, a
#     collective per norm per pass), or normalises each device's rows alone (False: the
#     running statistics are averaged across devices once per step, training/step.py).

# dropout_rate None (the table recipe's): the paper's 0.5 when every coupling's conditioner
# sees at least 2 features, else 0.
AUTO_DROPOUT_RATE = 0.5


def tabular_dropout_rate(rate: float | None, num_features: int) -> float:
  """The dropout rate a tabular flow over ``num_features`` = D features uses: ``rate``
  itself, or for ``rate`` None ``AUTO_DROPOUT_RATE`` when D >= 4 and 0 below. With halves
  masks a conditioner sees D // 2 features; one that sees a single feature is a 1-D map,
  which dropping its hidden units only blurs (two moons 99.8 -> 94.9% at 0.5), while from 4
  features up 0.5 regularises it (docs/tables.md)."""
  if rate is not None:
    return float(rate)
  return AUTO_DROPOUT_RATE if num_features // 2 >= 2 else 0.0


# The one model registry: config.model.name -> its flow, built from the section's fields.
# training/config.py takes the names it accepts from here.
_REGISTRY = {
    "realnvp_tabular": _Entry(False, lambda m, shape, bn_axis_name: TabularFlow(
        num_coupling_layers=m.num_coupling_layers, coupling="affine", hidden_dim=m.hidden_dim,
        hidden_layers=m.hidden_layers,
        dropout_rate=tabular_dropout_rate(m.dropout_rate, int(np.prod(shape))),
        zero_init_last=m.zero_init_last)),
    "spline_tabular": _Entry(False, lambda m, shape, bn_axis_name: TabularFlow(
        num_coupling_layers=m.num_coupling_layers, coupling="spline", hidden_dim=m.hidden_dim,
        hidden_layers=m.hidden_layers, num_bins=m.num_bins, bound=m.bound,
        dropout_rate=tabular_dropout_rate(m.dropout_rate, int(np.prod(shape))),
        zero_init_last=m.zero_init_last)),
    "realnvp": _Entry(True, lambda m, shape, bn_axis_name: RealNVP(
        num_scales=m.num_scales, num_blocks=m.num_blocks, mid_channels=m.mid_channels,
        image_shape=tuple(shape), bn_axis_name=bn_axis_name,
        zero_init_last=m.zero_init_last)),
    # bn_axis_name: Glow's conditioners have BatchNorm too, averaged over devices like RealNVP's.
    "glow": _Entry(True, lambda m, shape, bn_axis_name: Glow(
        num_scales=m.num_scales, steps_per_scale=m.steps_per_scale,
        mid_channels=m.mid_channels, image_shape=tuple(shape), bn_axis_name=bn_axis_name,
        zero_init_last=m.zero_init_last)),
}
MODELS = tuple(_REGISTRY)
IMAGE_MODELS = tuple(name for name, entry in _REGISTRY.items() if entry.image)
COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def build(model_config, input_shape: Sequence[int], *,
          bn_axis_name: str | None = None, compute_dtype: str = "float32") -> nn.Module:
  """The flow named by ``model_config.name`` (one of ``MODELS``; ``model_config`` is a
  config's ``model`` section) for inputs of ``input_shape`` (no batch axis).

  ``bn_axis_name``: the device axis over which BatchNorm averages batch statistics in the
  data-parallel train step (image flows); None for evaluation, and ignored when the section
  says ``sync_batch_norm=False``.
  ``compute_dtype``: "float32" or "bfloat16", the dtype the conditioner networks compute in
  (a config's ``compute_dtype``); parameters, couplings and log-dets stay float32.
  """
  if model_config.name not in _REGISTRY:
    raise ValueError(f"Unknown model {model_config.name!r} (config.model.name).")
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"Unknown compute_dtype {compute_dtype!r}; choose one of "
                     f"{tuple(COMPUTE_DTYPES)} (config.compute_dtype).")
  if not model_config.get("sync_batch_norm", True):
    bn_axis_name = None  # each device normalises its own rows (see MODEL_FIELDS)
  flow = _REGISTRY[model_config.name].make(model_config, input_shape, bn_axis_name)
  return flow.clone(compute_dtype=COMPUTE_DTYPES[compute_dtype])


def count_params(variables: Mapping[str, Any]) -> int:
  """Number of trainable parameters: the sizes of all leaves of ``variables['params']``
  (``batch_stats`` and other collections are not counted). A bare params tree (no
  'params' key) is counted as is. Works on ``jax.eval_shape`` outputs too."""
  params = variables["params"] if "params" in variables else variables
  return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params)))


def weight_norm_gain_mask(params: Any) -> Any:
  """Pytree of bools like ``params``: True for the weight-norm gains (leaves named
  ``g``: the conv gains and the coupling ``Rescale`` gains), False elsewhere.

  The original FlowGMM applies weight decay (5e-5) to these gains and nothing else (its
  ``get_param_groups(net, wd, norm_suffix='weight_g')``); use this as the ``mask`` of
  ``optax.add_decayed_weights``. It also keeps decay off ``Rescale``'s sign-only ``v``.
  """
  def is_gain(path, _leaf) -> bool:
    last = path[-1]
    return getattr(last, "key", getattr(last, "name", None)) == "g"

  return jax.tree_util.tree_map_with_path(is_gain, params)
