"""Stacks of identical layers run as one ``nn.scan``: XLA compiles the layer once, not once
per copy.

A stack is a Linen module (the *body*) whose compact ``__call__(carry, xs, *, inverse,
train)`` applies one layer; ``scan_layers`` runs it ``length`` times, in order going forward
(data -> latent) and in reverse order going back (latent -> data). Every variable the body
creates (``params``, BatchNorm's ``batch_stats``) is stacked on a new leading axis of size
``length``, layer ``i`` at index ``i``; ``xs`` (per-layer constants such as masks, a pytree of
``[length, ...]`` arrays, or None) is sliced the same way. Init runs inside the scan too, so a
data-dependent initialiser (Glow's ActNorm) sees the activations that reach each layer.

The carry is ``(x, log_det)`` in both directions (``x: [B, ...]``, ``log_det: [B]``): a body
adds its layer's log|det| of the direction it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flowgmm_jax.bijectors.base import Bijector

Array = jax.Array

# Collections stacked on the leading (layer) axis. "dropout" keys are split per layer, so
# each layer draws its own mask, like the unrolled layers did (the draws themselves differ:
# the keys are derived differently).
_STACKED = {"params": 0, "batch_stats": 0}
_SPLIT_RNGS = {"params": True, "dropout": True}


def scan_layers(body: nn.Module, carry: Any, xs: Any, *, length: int, inverse: bool,
                train: bool, mask: Array | None = None) -> Any:
  """Runs ``body`` ``length`` times over ``carry`` (see the module docstring); layer order
  0 .. length-1 when going forward, length-1 .. 0 when ``inverse``. Returns the carry.
  ``mask: [B]`` (the rows BatchNorm's batch statistics count), when given, reaches every
  layer unsliced as ``body(..., mask=mask)``."""
  if mask is None:
    def fn(module, c, x):
      return (module(c, x, inverse=inverse, train=train), None)
    scanned = nn.scan(fn, variable_axes=_STACKED, split_rngs=_SPLIT_RNGS, length=length,
                      reverse=inverse, check_constancy_invariants=False)
    carry, _ = scanned(body, carry, xs)
    return carry

  def masked_fn(module, c, x, m):
    return (module(c, x, inverse=inverse, train=train, mask=m), None)
  scanned = nn.scan(masked_fn, variable_axes=_STACKED, split_rngs=_SPLIT_RNGS, length=length,
                    reverse=inverse, in_axes=(0, nn.broadcast),
                    check_constancy_invariants=False)
  carry, _ = scanned(body, carry, xs, mask)
  return carry


class ScannedStack(Bijector):
  """A stack of layers as one bijector (forward = data -> latent).

  ``forward_and_log_det(x)`` runs ``body`` forward from ``(x, zeros [B])``;
  ``inverse_and_log_det(y)`` runs it in reverse. ``after`` is an optional involution with
  log-det 0 (e.g. the swap of the channel halves) applied after the stack going forward,
  and so before it going back; ``mask: [B]`` or None, passed to every layer (see
  ``scan_layers``). Shapes are the body's.
  """

  def __init__(self, body: nn.Module, xs: Any, length: int, train: bool,
               after: Callable[[Array], Array] | None = None,
               mask: Array | None = None):
    self.body, self.xs, self.length, self.train = body, xs, length, train
    self.after, self.mask = after, mask

  def _run(self, x: Array, inverse: bool) -> tuple[Array, Array]:
    carry = (x, jnp.zeros(x.shape[:1], x.dtype))
    return scan_layers(self.body, carry, self.xs, length=self.length, inverse=inverse,
                       train=self.train, mask=self.mask)

  def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
    y, log_det = self._run(x, inverse=False)
    return (y if self.after is None else self.after(y)), log_det

  def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
    return self._run(y if self.after is None else self.after(y), inverse=True)
