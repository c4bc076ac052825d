"""Helpers shared by the config files: parsing ``--config=configs/X.py:ARG`` strings."""

from __future__ import annotations

import ml_collections


def parse_args(arg: str | None, allowed: tuple[str, ...]) -> set[str]:
  """Splits 'a,b' into {'a', 'b'} and rejects unknown words with a clear message."""
  words = {w.strip() for w in (arg or "").split(",") if w.strip()}
  unknown = words - set(allowed)
  if unknown:
    raise ValueError(f"Unknown config argument(s) {sorted(unknown)}; allowed: {allowed} "
                     "(e.g. --config=configs/toy.py:smoke).")
  return words


def apply_smoke(c: ml_collections.ConfigDict, *, image: bool) -> None:
  """Tiny model, few steps, small eval: runs in seconds on a laptop CPU."""
  c.num_train_steps = 20
  c.log_every_steps = 10
  c.eval_every_steps = 20
  c.checkpoint_every_steps = 20
  c.progress_bar = False
  if c.data.num_labeled_per_class > 0:  # keep an unlabelled pool in the small subset
    c.data.num_labeled_per_class = min(c.data.num_labeled_per_class, 5)
  if image:
    c.model.num_blocks = 1
    c.model.mid_channels = 8
    c.model.steps_per_scale = 2
    c.data.max_train_examples = 512
    c.data.max_test_examples = 256
    c.data.labeled_batch_size = 8
    c.data.unlabeled_batch_size = 8
    c.eval_batch_size = 128
  else:
    c.model.hidden_dim = 32
    c.model.num_coupling_layers = 2
    c.data.max_train_examples = 2000
    c.data.max_test_examples = 500
    c.eval_batch_size = 500
