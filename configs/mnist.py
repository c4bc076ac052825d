"""FlowGMM on MNIST: RealNVP (2 scales, 8 ResNet blocks, 64 channels).

Reproduces the paper's MNIST setting: 100 labels (10 per class), batches of
32 labelled + 32 unlabelled images, Adam 1e-4, gradient clipping 100, weight decay
5e-5 on the weight-norm gains, random crop with padding 4 (no flips: digits).
FlowGMM-cons (the paper's best image numbers) adds a consistency term:
--config.loss.consistency_weight=1.0 (ramped up over loss.consistency_rampup_steps).

    python -m experiments.main --config=configs/mnist.py --workdir=/tmp/mnist
    python -m experiments.main --config=configs/mnist.py --workdir=/tmp/mnist_cons \
        --config.loss.consistency_weight=1.0
    python -m experiments.main --config=configs/mnist.py:smoke --workdir=/tmp/mnist_smoke

Data: ../shared/data/mnist IDX files, or tfds 'mnist' with --config.data.source=tfds.

ARG: smoke (tiny model, 20 steps, a subset of the data).
"""

from configs.common import apply_smoke, parse_args
from flowgmm_jax.training.config import base_config


def get_config(arg: str | None = None):
  words = parse_args(arg, ("smoke",))
  c = base_config()
  c.data.kind = "image"
  c.data.name = "mnist"
  c.data.num_labeled_per_class = 10
  c.data.labeled_batch_size = 32
  c.data.unlabeled_batch_size = 32
  c.model.name = "realnvp"
  c.model.num_scales = 2
  c.model.num_blocks = 8
  c.model.mid_channels = 64
  c.prior.means_init = "image"
  c.prior.means_scale = 1.0
  c.loss.unlabeled_weight = 1.0
  c.loss.consistency_weight = 0.0
  c.loss.consistency_rampup_steps = 5000
  c.optim.optimizer = "adam"
  c.optim.learning_rate = 1e-4
  c.optim.weight_decay = 5e-5
  c.optim.grad_clip_norm = 100.0
  c.augment.crop_padding = 4
  c.augment.flip = False
  c.num_train_steps = 100000
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2000
  c.eval_batch_size = 500
  if "smoke" in words:
    apply_smoke(c, image=True)
  return c
