"""FlowGMM on SVHN: RealNVP (2 scales, 8 ResNet blocks, 64 channels).

Reproduces the paper's SVHN setting: 1000 labels (100 per class), batches of
32 labelled + 32 unlabelled images, Adam 1e-4, gradient clipping 100, weight decay
5e-5 on the weight-norm gains, random crop with padding 4 (no flips: digits).
FlowGMM-cons (the paper's best image numbers) adds a consistency term:
--config.loss.consistency_weight=1.0 (ramped up over loss.consistency_rampup_steps).

    python -m experiments.main --config=configs/svhn.py --workdir=/tmp/svhn
    python -m experiments.main --config=configs/svhn.py --workdir=/tmp/svhn_cons \
        --config.loss.consistency_weight=1.0
    python -m experiments.main --config=configs/svhn.py:smoke --workdir=/tmp/svhn_smoke

Data: tfds 'svhn_cropped' (prepare it once with TensorFlow installed; the error says how).

ARG: smoke (tiny model, 20 steps, a subset of the data).
"""

from configs.common import image_config


def get_config(arg: str | None = None):
  return image_config("svhn", num_labeled_per_class=100, flip=False, learning_rate=1e-4,
                      num_train_steps=200_000, arg=arg)
