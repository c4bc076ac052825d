"""FlowGMM-cons on CIFAR-10, the original README command: RealNVP (2 scales, 8 ResNet
blocks, 64 channels), 4000 labels (400 per class).

The original command (train_semisup_cons.py --label_weight=3 --consistency_weight=1.
--consistency_rampup=100 --lr=1e-4 --num_epochs=1501, batch 64) becomes: objective
"marginal_and_cross_entropy" with label_weight 3, Adam lr 1e-4, consistency weight 1 ramped
over 100 epochs = 12,500 steps (an epoch is floor(4000 / 32) = 125 steps), 1501 epochs =
187,625 steps; batches of 32 labelled + 32 unlabelled, clipping 100, weight decay 5e-5 on
the weight-norm gains, random crop with padding 4 and horizontal flips. Shared choices and
every difference from the original, with the reason: docs/recipes.md#the-image-recipe.
Plain FlowGMM (no consistency term): --config.loss.consistency_weight=0.

    python -m experiments.main --config=configs/cifar10.py --workdir=/tmp/cifar10
    python -m experiments.main --config=configs/cifar10.py --workdir=/tmp/cifar10_flowgmm \
        --config.loss.consistency_weight=0
    python -m experiments.main --config=configs/cifar10.py:smoke --workdir=/tmp/cifar10_smoke

Data: ../shared/data/cifar10 JPEG tar (decoded once, then cached), or tfds 'cifar10'.

ARG: smoke (tiny model, 20 steps, a subset of the data).
"""

from configs.common import image_config


def get_config(arg: str | None = None):
  return image_config("cifar10", num_labeled_per_class=400, flip=True, learning_rate=1e-4,
                      label_weight=3.0, consistency_rampup_steps=12_500,
                      num_train_steps=187_625, arg=arg)
