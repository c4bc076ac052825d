"""The one train step, data-parallel over the 1-D ``data`` mesh (``flowgmm_jax.mesh``).

``train_step(state, batch, rng) -> (state, metrics)`` is a single jitted function: inside
``jax.shard_map`` each device takes its slice of the global batch, computes the FlowGMM loss,
and gradients and BatchNorm statistics are averaged with ``lax.pmean`` over the ``data``
axis. The state is replicated and donated, shapes are static, and nothing syncs with the
host, so the step runs back to back without recompiling.

Exactness across device counts: the loss is normalised by global counts of labelled and
unlabelled examples (``psum``), BatchNorm averages its moments over all devices (with
``config.model.sync_batch_norm``, the default; without it each device normalises its own
rows, which trades this exactness for a handful of collectives per step), and all
randomness (dequantisation noise, augmentation) is drawn per example from keys split for the
global batch (keyed by each row's position in the sampled batch), so the same global batch
gives the same update on 1 or 8 devices. (Dropout masks are drawn per device and are the one
exception.)
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from flowgmm_jax.flowgmm import bits_per_dim
from flowgmm_jax.losses import FlowGMMLoss
from flowgmm_jax.mesh import DATA_AXIS
from flowgmm_jax.training.state import TrainState


def _psum_flat(tree, axis_name: str = DATA_AXIS):
  """``lax.psum`` of a pytree as one collective: the leaves raveled into one vector, summed,
  and split back (each leaf keeps its dtype). ``lax.psum`` of a pytree issues one
  all-reduce per leaf, which XLA may or may not combine (not inside shard_map on CPU)."""
  flat, unravel = ravel_pytree(tree)
  return unravel(jax.lax.psum(flat, axis_name))


def _pmean_flat(tree, num_devices: int, axis_name: str = DATA_AXIS):
  """``lax.pmean`` of a float pytree as one collective (see ``_psum_flat``)."""
  flat, unravel = ravel_pytree(tree)
  return unravel(jax.lax.psum(flat, axis_name) / num_devices)


def _example_keys(rng, position):
  """One key per example, from the example's row in the global batch (``position: [b]``),
  so an example's randomness does not depend on which device holds it."""
  return jax.vmap(lambda p: jax.random.fold_in(rng, p))(position)


def _per_example_uniform(keys, shape, dtype):
  return jax.vmap(lambda k: jax.random.uniform(k, shape, dtype))(keys)


def make_train_step(model, tx: optax.GradientTransformation, mesh: Mesh, *,
                    loss: FlowGMMLoss,
                    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
                    dequantize: bool = False,
                    num_dims: int = 1):
  """Builds the jitted data-parallel train step.

  Args:
    model: a ``FlowGMM`` whose flow was built with ``bn_axis_name='data'`` (BatchNorm's
      moments averaged over the devices in every layer) or None (each device normalises its
      own rows, ``config.model.sync_batch_norm=False``; the running statistics are then
      averaged across devices once per step here).
    tx: the optax transformation.
    mesh: 1-D mesh with axis ``data``; the batch's row count must divide by its size.
    loss: the objective and its weights (``losses.FlowGMMLoss``, from ``config.loss``); a
      consistency weight of 0 skips FlowGMM-cons's second forward pass.
    augment: ``augment(rng, x[1, ...]) -> x[1, ...]`` applied per example, or None.
    dequantize: draw dequantisation noise for 8-bit images.
    num_dims: D, for the per-dimension (bits/dim) reporting of the NLL.

  Returns:
    ``train_step(state, batch, rng) -> (state, metrics)`` where ``batch`` is a dict with
    ``x: [B, ...]``, ``y: [B]`` (int32, -1 = unlabelled), ``position: [B]`` (int32, each
    row's index in the batch as sampled, before any reordering across devices; it seeds the
    row's noise and augmentation) and optionally ``mask: [B]`` (bool, False for padding
    rows, which count for nothing), sharded over ``data``; ``metrics`` is a dict of
    replicated scalars. ``metrics['train/skipped_steps']`` is 1.0 when the step was not
    finite and so changed nothing but the step counter, else 0.0.
  """
  num_devices = mesh.shape[DATA_AXIS]

  def inputs(keys, x):
    """Augments and draws dequantisation noise, one key per example."""
    if augment is not None:
      aug_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
      x = jax.vmap(lambda k, xi: augment(k, xi[None])[0])(aug_keys, x)
    noise = None
    if dequantize:
      noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys)
      noise = _per_example_uniform(noise_keys, x.shape[1:], x.dtype)
    return x, noise

  def per_device(state: TrainState, batch, rng):
    step_rng = jax.random.fold_in(rng, state.step)
    position = batch["position"]
    keys1 = _example_keys(jax.random.fold_in(step_rng, 0), position)
    keys2 = _example_keys(jax.random.fold_in(step_rng, 1), position)
    dropout_rng = jax.random.fold_in(jax.random.fold_in(step_rng, 2),
                                     jax.lax.axis_index(DATA_AXIS))
    # 8-bit images arrive as integers; float rows keep their precision (float64 under x64).
    x = batch["x"].astype(jnp.promote_types(batch["x"].dtype, jnp.float32)
                          if jnp.issubdtype(batch["x"].dtype, jnp.floating) else jnp.float32)
    y = batch["y"]
    mask = batch["mask"] if "mask" in batch else jnp.ones(y.shape, bool)
    labeled = (y >= 0) & mask
    # Global counts, so that the pmean of device losses is the loss of the global batch
    # (one psum for the three).
    counts = _psum_flat(dict(num_labeled=jnp.sum(labeled, dtype=jnp.int32),
                             num_unlabeled=jnp.sum((y < 0) & mask, dtype=jnp.int32),
                             num_examples=jnp.sum(mask, dtype=jnp.int32)))

    def loss_fn(params):
      batch_stats = state.batch_stats
      clj2 = None
      if loss.uses_consistency:
        # FlowGMM-cons: the class predicted on a second augmentation, without gradient.
        x2, noise2 = inputs(keys2, x)
        (_, _, clj2), upd = model.apply(
            state.variables(params, batch_stats), x2, noise2, train=True, mask=mask,
            mutable=["batch_stats"], rngs={"dropout": jax.random.fold_in(dropout_rng, 1)})
        batch_stats = upd.get("batch_stats", batch_stats)
        clj2 = jax.lax.stop_gradient(clj2)
      x1, noise1 = inputs(keys1, x)
      (z, log_det, clj), upd = model.apply(
          state.variables(params, batch_stats), x1, noise1, train=True, mask=mask,
          mutable=["batch_stats"], rngs={"dropout": dropout_rng})
      new_batch_stats = upd.get("batch_stats", batch_stats)
      log_weights = model.apply(state.variables(params, batch_stats),
                                method=lambda m: m.prior.log_weights())
      # Normalised by global counts: this device's share, whose psum is the global loss.
      local, terms = loss(clj, log_det, y, step=state.step, class_log_joint_teacher=clj2,
                          log_weights=log_weights, mask=mask, **counts)
      correct = jnp.sum((jnp.argmax(clj, -1) == y) & labeled)
      log_det_sum = jnp.sum(jnp.where(mask, log_det, 0.0))
      # This device's shares; summed over devices below, in one psum with the others.
      scalars = dict(loss=local, terms=terms, correct=correct, log_det=log_det_sum)
      # Scaled so that pmean(grad) is the gradient of the global loss.
      return local * num_devices, (new_batch_stats, scalars)

    grads, (batch_stats, scalars) = jax.grad(loss_fn, has_aux=True)(state.params)
    # The step's collectives besides BatchNorm's own: the counts above, then one each for
    # the reported scalars, the gradients and the BatchNorm running statistics.
    # (``correct`` is summed as a float32 there: exact for counts below 2**24.)
    aux = _psum_flat(scalars)
    aux["log_det"] = aux["log_det"] / jnp.maximum(counts["num_examples"], 1)
    grads = _pmean_flat(grads, num_devices)
    # With synced BatchNorm (axis_name='data') the running averages are already identical
    # on every device and this keeps them provably replicated; with per-device BatchNorm
    # (sync_batch_norm=False) this is where they are averaged across devices, each device
    # weighted by its real rows, so a device holding only padding counts for nothing.
    share = jnp.sum(mask) / jnp.maximum(counts["num_examples"], 1)
    batch_stats = _psum_flat(jax.tree.map(lambda v: v * share.astype(v.dtype), batch_stats))
    terms = aux["terms"]
    # Non-finite guard: a step whose loss, gradients or BatchNorm statistics are not finite
    # leaves the parameters, optimiser state and BatchNorm statistics as they were (the step
    # counter still advances, so the next step sees the next batch). Every value compared
    # here is replicated, so all devices take the same decision. One norm per tree rather
    # than a check per leaf keeps the compiled step small (an overflowing norm counts as
    # not finite, which a step that large deserves); the update sits inside a cond so that
    # a kept step costs no extra pass over the parameters and optimiser state.
    grad_norm = optax.tree.norm(grads)
    finite = (jnp.isfinite(aux["loss"]) & jnp.isfinite(grad_norm)
              & jnp.isfinite(optax.tree.norm(batch_stats)))

    def apply_update(_):
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      return optax.apply_updates(state.params, updates), opt_state, batch_stats

    def keep_state(_):
      return state.params, state.opt_state, state.batch_stats

    params, opt_state, batch_stats = jax.lax.cond(finite, apply_update, keep_state, None)
    metrics = {
        "train/loss": aux["loss"],
        **{f"train/{name}": value for name, value in terms.items()},
        "train/bpd_unlabeled": bits_per_dim(terms["nll_unlabeled"], num_dims),
        "train/bpd": bits_per_dim(terms["nll_all"], num_dims),
        "train/consistency_weight": loss.consistency_weight_at(state.step),
        "train/labeled_accuracy": aux["correct"] / jnp.maximum(counts["num_labeled"], 1),
        "train/log_det": aux["log_det"],
        "train/grad_norm": grad_norm,
        "train/skipped_steps": 1.0 - finite.astype(jnp.float32),
    }
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    return new_state, metrics

  sharded = jax.shard_map(
      per_device, mesh=mesh,
      in_specs=(P(), P(DATA_AXIS), P()),
      out_specs=(P(), P()),
      check_vma=False)
  return jax.jit(sharded, donate_argnums=(0,))

