"""FlowGMM-cons on SVHN, the original image recipe: RealNVP (2 scales, 8 ResNet blocks,
64 channels), 1000 labels (100 per class) as in the paper.

The original README gives no SVHN command; this config takes its CIFAR-10 command (same
32x32x3 images): objective "marginal_and_cross_entropy" with label_weight 3, Adam lr 1e-4,
consistency weight 1 ramped over 100 epochs (100 * floor(1000 / 32) = 3,100 steps at 1000
labels), batches of 32 labelled + 32 unlabelled, clipping 100, weight decay 5e-5 on the
weight-norm gains, random crop with padding 4. Shared choices and every difference from the
original, with the reason: docs/recipes.md#the-image-recipe. Differences particular to
SVHN:
  - no horizontal flips: the original applies its CIFAR-10 transform (crop + flip) to SVHN
    as well, but a mirrored digit is not the same digit; we leave flips off;
  - 200,000 steps (the original gives no SVHN length).
Plain FlowGMM (no consistency term): --config.loss.consistency_weight=0.

    python -m experiments.main --config=configs/svhn.py --workdir=/tmp/svhn
    python -m experiments.main --config=configs/svhn.py --workdir=/tmp/svhn_mat \
        --config.data.path=/path/to/folder/with/train_32x32.mat
    python -m experiments.main --config=configs/svhn.py --workdir=/tmp/svhn_flowgmm \
        --config.loss.consistency_weight=0
    python -m experiments.main --config=configs/svhn.py:smoke --workdir=/tmp/svhn_smoke

Data, either of (no TensorFlow is needed on the training host in both cases):
  - the original train_32x32.mat and test_32x32.mat (http://ufldl.stanford.edu/housenumbers/)
    in a folder given as --config.data.path (read with scipy);
  - tfds 'svhn_cropped', prepared where TensorFlow is installed and then copied:
      python -c "import tensorflow_datasets as tfds; tfds.builder('svhn_cropped', file_format='array_record').download_and_prepare()"
      rsync -a ~/tensorflow_datasets/svhn_cropped TRAINING_HOST:~/tensorflow_datasets/

ARG: smoke (tiny model, 20 steps, a subset of the data).
"""

from configs.common import image_config


def get_config(arg: str | None = None):
  return image_config("svhn", num_labeled_per_class=100, flip=False, learning_rate=1e-4,
                      label_weight=3.0, consistency_rampup_steps=3_100,
                      num_train_steps=200_000, arg=arg)
