"""Normalizing flows (Flax Linen). Forward is ALWAYS data -> latent.

Every model: ``z, log_det = model.apply(variables, x, train=False)`` with ``z: [B, D]``
(flat) and ``log_det: [B]`` = log|det dz/dx|, and
``x = model.apply(variables, z, method=model.inverse)`` (latent -> data, no forward call
needed). BatchNorm (image models) uses running statistics unless ``train=True`` with
``mutable=["batch_stats"]``; dropout (tabular models) needs ``rngs={"dropout": key}`` when
``train=True``.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from flowgmm_jax.models.glow import Glow
from flowgmm_jax.models.realnvp import RealNVP
from flowgmm_jax.models.tabular import RealNVPTabular, SplineTabular

__all__ = ["Glow", "RealNVP", "RealNVPTabular", "SplineTabular", "count_params",
           "weight_norm_gain_mask"]


def count_params(variables: Mapping[str, Any]) -> int:
  """Number of trainable parameters: the sizes of all leaves of ``variables['params']``
  (``batch_stats`` and other collections are not counted). A bare params tree (no
  'params' key) is counted as is. Works on ``jax.eval_shape`` outputs too."""
  params = variables["params"] if "params" in variables else variables
  return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params)))


def weight_norm_gain_mask(params: Any) -> Any:
  """Pytree of bools like ``params``: True for the weight-norm gains (leaves named
  ``g``: the conv gains and the coupling ``Rescale`` gains), False elsewhere.

  The original FlowGMM applies weight decay (5e-5) ONLY to these gains (its
  ``get_param_groups(net, wd, norm_suffix='weight_g')``); use this as the ``mask`` of
  ``optax.add_decayed_weights``. It also keeps decay off ``Rescale``'s sign-only ``v``.
  """
  def is_gain(path, _leaf) -> bool:
    last = path[-1]
    return getattr(last, "key", getattr(last, "name", None)) == "g"

  return jax.tree_util.tree_map_with_path(is_gain, params)
