"""FlowGMM on CIFAR-10: RealNVP (2 scales, 8 ResNet blocks, 64 channels).

Reproduces the paper's CIFAR-10 setting: 4000 labels (400 per class), batches of
32 labelled + 32 unlabelled images, Adam 1e-4, gradient clipping 100, weight decay
5e-5 on the weight-norm gains, random crop with padding 4 and horizontal flips.
FlowGMM-cons (the paper's best image numbers) adds a consistency term:
--config.loss.consistency_weight=1.0 (ramped up over loss.consistency_rampup_steps).

    python -m experiments.main --config=configs/cifar10.py --workdir=/tmp/cifar10
    python -m experiments.main --config=configs/cifar10.py --workdir=/tmp/cifar10_cons \
        --config.loss.consistency_weight=1.0
    python -m experiments.main --config=configs/cifar10.py:smoke --workdir=/tmp/cifar10_smoke

Data: ../shared/data/cifar10 JPEG tar (decoded once, then cached), or tfds 'cifar10'.

ARG: smoke (tiny model, 20 steps, a subset of the data).
"""

from configs.common import image_config


def get_config(arg: str | None = None):
  return image_config("cifar10", num_labeled_per_class=400, flip=True, learning_rate=1e-4,
                      num_train_steps=200_000, arg=arg)
