"""Optimisers and schedules: Adam/AdamW, global-norm clipping, the original's schedules.

Weight decay follows the original FlowGMM code, which applied L2 only to the weight-norm
gains (PyTorch's ``weight_g``; ours are the leaves named ``g``, see
``flowgmm_jax.models.weight_norm_gain_mask``) and to nothing else. Everything here is a pure
optax transformation, so it runs inside the jitted step.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from flowgmm_jax.models import weight_norm_gain_mask

SCHEDULES = ("constant", "cosine", "hold_then_linear")
# Former names of schedules, for a one-line error that names the current one.
RENAMED_SCHEDULES = {"wilson": "hold_then_linear"}
OPTIMIZERS = ("adam", "adamw", "sgd")


def hold_then_linear_schedule(base_lr: float, total_steps: int, final_ratio: float = 0.01
                              ) -> optax.Schedule:
  """Holds ``base_lr``, then decays linearly: the original code's ``wilson_schedule``, per
  step instead of per epoch.

  Constant for the first half, linear decay to ``final_ratio * base_lr`` between 50% and 90%
  of training, then constant at that value.
  """
  total = max(int(total_steps), 1)

  def schedule(step):
    t = jnp.asarray(step, jnp.float32) / total
    factor = jnp.where(
        t <= 0.5, 1.0,
        jnp.where(t <= 0.9, 1.0 - (1.0 - final_ratio) * (t - 0.5) / 0.4, final_ratio))
    return base_lr * factor

  return schedule


def make_schedule(name: str, base_lr: float, total_steps: int, warmup_steps: int = 0
                  ) -> optax.Schedule:
  """Learning-rate schedule by name: 'constant', 'cosine' or 'hold_then_linear' (+ optional
  warmup)."""
  if name == "constant":
    main = optax.constant_schedule(base_lr)
  elif name == "cosine":
    main = optax.cosine_decay_schedule(base_lr, max(total_steps - warmup_steps, 1))
  elif name == "hold_then_linear":
    main = hold_then_linear_schedule(base_lr, max(total_steps - warmup_steps, 1))
  elif name in RENAMED_SCHEDULES:
    raise ValueError(f"Learning-rate schedule {name!r} is now called "
                     f"{RENAMED_SCHEDULES[name]!r} (the same schedule); use that name "
                     "(config.optim.lr_schedule).")
  else:
    raise ValueError(f"Unknown learning-rate schedule {name!r}; choose one of {SCHEDULES} "
                     "(config.optim.lr_schedule).")
  if warmup_steps > 0:
    warmup = optax.linear_schedule(0.0, base_lr, warmup_steps)
    return optax.join_schedules([warmup, main], [warmup_steps])
  return main


def make_optimizer(optimizer: str, learning_rate: float, total_steps: int, *,
                   schedule: str = "constant", warmup_steps: int = 0,
                   weight_decay: float = 0.0, grad_clip_norm: float = 0.0,
                   b1: float = 0.9, b2: float = 0.999) -> optax.GradientTransformation:
  """Builds the optax chain: clip by global norm -> Adam/AdamW/SGD, decay on gains only.

  'adam' adds ``weight_decay * g`` to the gradient of each weight-norm gain before Adam
  (the original's PyTorch Adam ``weight_decay``, i.e. L2); 'adamw' applies decoupled decay
  to the same parameters.
  """
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"Unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS} "
                     "(config.optim.optimizer).")
  lr = make_schedule(schedule, learning_rate, total_steps, warmup_steps)
  def decay():
    return optax.masked(optax.add_decayed_weights(weight_decay), weight_norm_gain_mask)
  parts = []
  if grad_clip_norm and grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(grad_clip_norm))
  if optimizer == "adam":
    if weight_decay > 0:
      parts.append(decay())
    parts.append(optax.adam(lr, b1=b1, b2=b2))
  elif optimizer == "adamw":
    # optax.adamw's own order: moments -> decoupled decay -> learning rate.
    parts.append(optax.scale_by_adam(b1=b1, b2=b2))
    if weight_decay > 0:
      parts.append(decay())
    parts.append(optax.scale_by_learning_rate(lr))
  else:  # plain SGD with momentum b1 (the original's --optimizer SGD option)
    if weight_decay > 0:
      parts.append(decay())
    parts.append(optax.sgd(lr, momentum=b1 if b1 > 0 else None))
  return optax.chain(*parts)
