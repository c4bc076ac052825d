"""The bijector contract, stated once.

A bijector is an invertible map f between the data space and the latent space.

    Direction:  ``forward`` is always data -> latent (the normalising direction used
                for training), ``inverse`` is always latent -> data (the generative
                direction used for sampling). This is the opposite of the convention in
                some flow libraries (e.g. distrax, where forward is latent -> data).

    Log-det:    ``forward_and_log_det(x)`` returns ``(y, log|det df/dx|)`` and
                ``inverse_and_log_det(y)`` returns ``(x, log|det df^{-1}/dy|)``, so for
                a round trip the two log-dets are negatives of each other.

    Shapes:     every input has one leading batch axis, ``x: [B, *event_shape]``; the
                remaining axes are the event axes. The log-det is per example and summed
                over all event axes: ``log_det: [B]``. A bijector may change the event
                shape (``Squeeze`` maps [B, H, W, C] to [B, H/2, W/2, 4C]) but never the
                batch size, and example i's output never depends on example j.

    Purity:     a bijector is a pure function of its input and of the values it was
                constructed with (parameters, conditioner callables, masks, noise). It
                draws no random numbers and caches nothing between calls: a log-det is
                returned, never stored. Anything random, such as dequantisation noise, is
                passed in by the caller.

Subclasses implement the two required methods ``forward_and_log_det`` and
``inverse_and_log_det``; ``forward``, ``inverse``, ``forward_log_det`` and
``inverse_log_det`` are derived. ``Chain`` composes bijectors and ``Inverse`` swaps
the two directions.

Conditioner networks (Flax Linen modules) live in ``flowgmm_jax.nets``; a Linen flow
binds them and hands a plain callable to the bijector, e.g.
``AffineCoupling(mask, conditioner=lambda h: net(h, train), scale=scale)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def sum_except_batch(x: Array) -> Array:
  """Sums ``x: [B, ...]`` over all axes but the first; returns ``[B]``."""
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


class Bijector:
  """Base class: an invertible map, forward = data -> latent.

  Required:
    forward_and_log_det(x) -> (y, log_det)   data -> latent, log_det: [B]
    inverse_and_log_det(y) -> (x, log_det)   latent -> data, log_det: [B]
  """

  def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
    """Data -> latent. Returns ``(y, log|det dy/dx|)`` with ``log_det: [B]``."""
    raise NotImplementedError(
        f"{type(self).__name__} must implement forward_and_log_det.")

  def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
    """Latent -> data. Returns ``(x, log|det dx/dy|)`` with ``log_det: [B]``."""
    raise NotImplementedError(
        f"{type(self).__name__} must implement inverse_and_log_det.")

  # Derived methods.
  def forward(self, x: Array) -> Array:
    """Data -> latent, output only."""
    return self.forward_and_log_det(x)[0]

  def inverse(self, y: Array) -> Array:
    """Latent -> data, output only."""
    return self.inverse_and_log_det(y)[0]

  def forward_log_det(self, x: Array) -> Array:
    """log|det J_forward(x)|, shape [B]."""
    return self.forward_and_log_det(x)[1]

  def inverse_log_det(self, y: Array) -> Array:
    """log|det J_inverse(y)|, shape [B]."""
    return self.inverse_and_log_det(y)[1]


class Chain(Bijector):
  """Composition of bijectors, applied in list order in the forward direction.

  ``Chain([f1, f2, f3]).forward(x) == f3(f2(f1(x)))``: the first bijector in the list
  is the one nearest the data. The inverse runs the list backwards. Log-dets add.
  """

  def __init__(self, bijectors: Sequence[Bijector]):
    self.bijectors = tuple(bijectors)

  def forward_and_log_det(self, x):
    log_det = jnp.zeros(x.shape[:1], x.dtype)
    for b in self.bijectors:
      x, ld = b.forward_and_log_det(x)
      log_det = log_det + ld
    return x, log_det

  def inverse_and_log_det(self, y):
    log_det = jnp.zeros(y.shape[:1], y.dtype)
    for b in reversed(self.bijectors):
      y, ld = b.inverse_and_log_det(y)
      log_det = log_det + ld
    return y, log_det


class Inverse(Bijector):
  """Swaps the directions of a bijector: forward becomes inverse and vice versa."""

  def __init__(self, bijector: Bijector):
    self.bijector = bijector

  def forward_and_log_det(self, x):
    return self.bijector.inverse_and_log_det(x)

  def inverse_and_log_det(self, y):
    return self.bijector.forward_and_log_det(y)
