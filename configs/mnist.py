"""FlowGMM-cons on MNIST, the original README command: RealNVP (2 scales, 8 ResNet blocks,
64 channels), 100 labels (10 per class).

The original command (train_semisup_cons.py --label_weight=3 --consistency_weight=1.
--consistency_rampup=1000 --lr=1e-5 --num_epochs=30001, batch 64) becomes: objective
"marginal_and_cross_entropy" with label_weight 3, Adam lr 1e-5, consistency weight 1 ramped
over 1000 epochs = 3,000 steps (an epoch is floor(100 / 32) = 3 steps), 30001 epochs =
90,003 steps; batches of 32 labelled + 32 unlabelled, clipping 100, weight decay 5e-5 on
the weight-norm gains, random crop with padding 4 (no flips, as the original for MNIST).
Shared choices and every difference from the original, with the reason:
docs/recipes.md#the-image-recipe.
Plain FlowGMM (no consistency term): --config.loss.consistency_weight=0.

    python -m experiments.main --config=configs/mnist.py --workdir=/tmp/mnist
    python -m experiments.main --config=configs/mnist.py --workdir=/tmp/mnist_flowgmm \
        --config.loss.consistency_weight=0
    python -m experiments.main --config=configs/mnist.py:smoke --workdir=/tmp/mnist_smoke

ARG cpu: a run sized for a 2-core CPU, to show that the image path learns on real MNIST; not
the paper's model: 1,000 labels, a small RealNVP (CPU_MODEL: 172,856 parameters against
19,552,008), zero-initialised couplings,
learning rate 1e-3 warmed up over 200 steps then a cosine over 6,000 steps, label weight 100,
consistency ramp 1,000 steps. Each change and the pilot runs that chose it:
docs/recipes.md#mnist-on-a-cpu-budget; results: docs/results.md#mnist-on-a-cpu-budget. On a
multi-core CPU, run it on two (or more) data-parallel XLA devices (the first command):

    XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python -m experiments.main --config=configs/mnist.py:cpu --workdir=/tmp/mnist_cpu
    python -m experiments.main --config=configs/mnist.py:cpu --workdir=/tmp/mnist_cpu
    python -m experiments.main --config=configs/mnist.py:cpu --workdir=/tmp/mnist_cpu_flowgmm \
        --config.loss.consistency_weight=0
    python -m experiments.main --config=configs/mnist.py:cpu --workdir=/tmp/mnist_cpu_100 \
        --config.data.num_labeled_per_class=10

Data: ../shared/data/mnist IDX files, or tfds 'mnist' with --config.data.source=tfds.

ARG: smoke (tiny model, 20 steps, a subset of the data) | cpu (see above).
"""

from configs.common import image_config, parse_args

# The CPU-budget run (ARG cpu); sizes chosen by measuring seconds per step (docs/results.md).
CPU_MODEL = dict(num_scales=2, num_blocks=1, mid_channels=16)
CPU_LR = 1e-3
CPU_STEPS = 6000
CPU_WARMUP = 200
CPU_RAMP = 1000
CPU_EVAL = 1000
CPU_LABEL_WEIGHT = 100.0


def get_config(arg: str | None = None):
  words = parse_args(arg, ("smoke", "cpu"))
  c = image_config("mnist", num_labeled_per_class=10, flip=False, learning_rate=1e-5,
                   label_weight=3.0, consistency_rampup_steps=3_000,
                   num_train_steps=90_003, arg=arg, extra_args=("cpu",))
  if "cpu" in words and "smoke" not in words:
    c.data.num_labeled_per_class = 100
    for key, value in CPU_MODEL.items():
      c.model[key] = value
    c.model.zero_init_last = True  # the init these settings were measured with (above)
    c.optim.learning_rate = CPU_LR
    c.loss.label_weight = CPU_LABEL_WEIGHT
    c.loss.consistency_rampup_steps = CPU_RAMP
    c.num_train_steps = CPU_STEPS
    c.optim.lr_schedule = "cosine"
    c.optim.warmup_steps = CPU_WARMUP
    c.eval_every_steps = CPU_EVAL
    c.checkpoint_every_steps = CPU_EVAL
    c.log_every_steps = 50
    c.eval_batch_size = 1000
    c.progress_bar = False
  return c
