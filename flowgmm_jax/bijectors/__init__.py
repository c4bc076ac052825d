"""Pure-maths bijectors for flowgmm_jax. Forward is always data -> latent.

See ``flowgmm_jax.bijectors.base`` for the contract (shapes, log-dets, purity).
"""

from __future__ import annotations

from flowgmm_jax.bijectors.actnorm import ActNorm, actnorm_init_params
from flowgmm_jax.bijectors.base import Bijector, Chain, Inverse, sum_except_batch
from flowgmm_jax.bijectors.conv1x1 import Conv1x1LU, conv1x1_lu_init
from flowgmm_jax.bijectors.coupling import (
                                            AffineCoupling,
                                            ChannelCoupling,
                                            checkerboard_mask,
                                            halves_mask,
)
from flowgmm_jax.bijectors.preprocess import Dequantize, Logit, dequantize_logit
from flowgmm_jax.bijectors.reshape import Squeeze, flatten_and_join, split_and_unflatten
from flowgmm_jax.bijectors.spline import RationalQuadraticSplineCoupling

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "Bijector",
    "Chain",
    "ChannelCoupling",
    "Conv1x1LU",
    "Dequantize",
    "Inverse",
    "Logit",
    "RationalQuadraticSplineCoupling",
    "Squeeze",
    "actnorm_init_params",
    "checkerboard_mask",
    "conv1x1_lu_init",
    "dequantize_logit",
    "flatten_and_join",
    "halves_mask",
    "split_and_unflatten",
    "sum_except_batch",
]
