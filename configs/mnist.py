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

from configs.common import image_config


def get_config(arg: str | None = None):
  return image_config("mnist", num_labeled_per_class=10, flip=False, learning_rate=1e-4,
                      num_train_steps=100_000, arg=arg)
