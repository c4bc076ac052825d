"""The one train step and the eval step, data-parallel over a 1-D ``data`` mesh.

``train_step(state, batch, rng) -> (state, metrics)`` is a single jitted function: inside
``jax.shard_map`` each device takes its slice of the global batch, computes the FlowGMM loss,
and gradients and BatchNorm statistics are averaged with ``lax.pmean`` over the ``data``
axis. The state is replicated and donated, shapes are static, and nothing syncs with the
host, so the step runs back to back without recompiling.

Exactness across device counts: the loss is normalised by GLOBAL counts of labelled and
unlabelled examples (``psum``), BatchNorm averages its moments over all devices, and all
randomness (dequantisation noise, augmentation) is drawn per example from keys split for the
global batch (keyed by each row's position in the sampled batch), so the same global batch
gives the same update on 1 or 8 devices. (Dropout
masks are drawn per device and are the one exception.)
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flowgmm_jax import losses
from flowgmm_jax.training.state import TrainState

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named ``data`` over every device of every host (or the given ones)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def _example_keys(rng, position):
  """One key per example, from the example's row in the global batch (``position: [b]``),
  so an example's randomness does not depend on which device holds it."""
  return jax.vmap(lambda p: jax.random.fold_in(rng, p))(position)


def _per_example_uniform(keys, shape, dtype):
  return jax.vmap(lambda k: jax.random.uniform(k, shape, dtype))(keys)


def make_train_step(model, tx: optax.GradientTransformation, mesh: Mesh, *,
                    global_batch_size: int,
                    objective: str = "joint",
                    label_weight: float = 1.0,
                    unlabeled_weight: float = 1.0,
                    consistency_weight: Callable[[jax.Array], jax.Array] | float = 0.0,
                    augment: Optional[Callable[[jax.Array, jax.Array], jax.Array]] = None,
                    dequantize: bool = False,
                    num_dims: int = 1):
  """Builds the jitted data-parallel train step.

  Args:
    model: a ``FlowGMM`` whose flow was built with ``bn_axis_name='data'``.
    tx: the optax transformation.
    mesh: 1-D mesh with axis ``data``; ``global_batch_size`` must divide by its size.
    global_batch_size: B, the number of rows of every batch (labelled + unlabelled).
    objective, label_weight, unlabeled_weight: the form and weights of
      ``losses.flowgmm_objective`` ("original": CE + mixture NLL over all rows; "joint":
      labelled -log p(x, y) + unlabelled mixture NLL).
    consistency_weight: a float, or a function of the step (the ramp-up); 0 disables
      FlowGMM-cons (and its second forward pass).
    augment: ``augment(rng, x[1, ...]) -> x[1, ...]`` applied per example, or None.
    dequantize: draw dequantisation noise for 8-bit images.
    num_dims: D, for the per-dimension (bits/dim) reporting of the NLL.

  Returns:
    ``train_step(state, batch, rng) -> (state, metrics)`` where ``batch`` is a dict with
    ``x: [B, ...]``, ``y: [B]`` (int32, -1 = unlabelled) and ``position: [B]`` (int32, each
    row's index in the batch as sampled, before any reordering across devices; it seeds the
    row's noise and augmentation), sharded over ``data``; ``metrics`` is a dict of
    replicated scalars. ``metrics['train/skipped_steps']`` is 1.0 when the step was not
    finite and so changed nothing but the step counter, else 0.0.
  """
  num_devices = mesh.shape[DATA_AXIS]
  if global_batch_size % num_devices:
    raise ValueError(
        f"The global batch size {global_batch_size} must be divisible by the number of "
        f"devices ({num_devices}); change the labelled/unlabelled batch sizes in the config.")
  use_cons = callable(consistency_weight) or float(consistency_weight) != 0.0
  cons_weight_fn = (consistency_weight if callable(consistency_weight)
                    else (lambda step: jnp.asarray(consistency_weight, jnp.float32)))

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
    x = batch["x"].astype(jnp.float32)
    y = batch["y"]
    labeled = y >= 0
    # Global counts, so that the pmean of device losses is the loss of the global batch.
    num_labeled = jax.lax.psum(jnp.sum(labeled), DATA_AXIS)
    num_unlabeled = jax.lax.psum(jnp.sum(~labeled), DATA_AXIS)
    cons_w = cons_weight_fn(state.step)

    def loss_fn(params):
      batch_stats = state.batch_stats
      clj2 = None
      if use_cons:
        # FlowGMM-cons: the class predicted on a second augmentation, without gradient.
        x2, noise2 = inputs(keys2, x)
        (_, _, clj2), upd = model.apply(
            state.variables(params, batch_stats), x2, noise2, train=True,
            mutable=["batch_stats"], rngs={"dropout": jax.random.fold_in(dropout_rng, 1)})
        batch_stats = upd.get("batch_stats", batch_stats)
        clj2 = jax.lax.stop_gradient(clj2)
      x1, noise1 = inputs(keys1, x)
      (z, log_det, clj), upd = model.apply(
          state.variables(params, batch_stats), x1, noise1, train=True,
          mutable=["batch_stats"], rngs={"dropout": dropout_rng})
      new_batch_stats = upd.get("batch_stats", batch_stats)
      log_weights = model.apply(state.variables(params, batch_stats),
                                method=lambda m: m.prior.log_weights())
      # Normalised by GLOBAL counts: this device's share, whose psum is the global loss.
      local, terms = losses.flowgmm_objective(
          clj, log_det, y, objective=objective, label_weight=label_weight,
          unlabeled_weight=unlabeled_weight, consistency_weight=cons_w,
          class_log_joint_teacher=clj2, log_weights=log_weights, num_labeled=num_labeled,
          num_unlabeled=num_unlabeled, num_examples=global_batch_size)
      correct = jnp.sum((jnp.argmax(clj, -1) == y) & labeled)
      aux = dict(batch_stats=new_batch_stats, loss=jax.lax.psum(local, DATA_AXIS),
                 terms=jax.lax.psum(terms, DATA_AXIS),
                 correct=jax.lax.psum(correct, DATA_AXIS),
                 log_det=jax.lax.pmean(jnp.mean(log_det), DATA_AXIS))
      # Scaled so that pmean(grad) is the gradient of the global loss.
      return local * num_devices, aux

    grads, aux = jax.grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, DATA_AXIS)
    # Flax BatchNorm with axis_name='data' already pmean-s its batch moments; the running
    # averages are then identical on every device. pmean keeps them provably replicated.
    batch_stats = jax.lax.pmean(aux["batch_stats"], DATA_AXIS)
    terms = aux["terms"]
    loss = aux["loss"]
    # Non-finite guard: a step whose loss, gradients or BatchNorm statistics are not finite
    # leaves the parameters, optimiser state and BatchNorm statistics as they were (the step
    # counter still advances, so the next step sees the next batch). Every value compared
    # here is replicated, so all devices take the same decision.
    # One norm per tree, not a check per leaf: a chain of hundreds of per-leaf reductions
    # that every update waits on made the image step take minutes to compile. An overflowing
    # norm (inf) counts as not finite, which a step that large deserves. The update runs
    # inside a cond rather than being computed and then discarded with a `where` over every
    # leaf: that `where` read and wrote the whole state once more per step, which costs
    # a memory-bound step (the toy one, README "Speed") about a millisecond.
    grad_norm = optax.tree.norm(grads)
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
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
        "train/bpd_unlabeled": terms["nll_unlabeled"] / (num_dims * np.log(2.0)),
        "train/bpd": terms["nll_all"] / (num_dims * np.log(2.0)),
        "train/consistency_weight": cons_w,
        "train/labeled_accuracy": aux["correct"] / jnp.maximum(num_labeled, 1),
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


def make_eval_step(model, mesh: Mesh):
  """Jitted data-parallel evaluation: per-example class log-joints and log-dets.

  Returns ``eval_step(variables, x) -> (class_log_joint [B, K], log_det [B])``, sharded over
  ``data``. For 8-bit images FlowGMM uses the midpoint dequantisation noise 0.5 when none
  is given, so evaluation is deterministic.
  """
  def per_device(variables, x):
    _, log_det, clj = model.apply(variables, x.astype(jnp.float32), None, train=False)
    return clj, log_det

  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                          out_specs=(P(DATA_AXIS), P(DATA_AXIS)), check_vma=False)
  return jax.jit(sharded)


def shard_batch(mesh: Mesh, batch):
  """Puts the GLOBAL host batch (every host builds the same one: batches are a pure function
  of (seed, step)) on the devices, split along the batch axis. On several hosts each host
  contributes only the contiguous slice that its own devices hold."""
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  n, i = jax.process_count(), jax.process_index()
  def local(a):
    per_host = a.shape[0] // n
    return jax.make_array_from_process_local_data(sharding, a[i * per_host:(i + 1) * per_host],
                                                  a.shape)
  return jax.tree.map(local, batch)


def to_host(array) -> np.ndarray:
  """A (possibly multi-host) sharded array as one numpy array on every host."""
  if jax.process_count() == 1:
    return np.asarray(array)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def replicate(mesh: Mesh, tree):
  """Replicates a pytree on every device of the mesh.

  Every leaf gets its own buffers (via a host copy): ``model.init`` may return one array
  object at two places of the tree, and a donated state must not alias itself.
  """
  return jax.device_put(jax.tree.map(np.array, tree), NamedSharding(mesh, P()))
