"""Helpers shared by the config files: parsing ``--config=configs/X.py:ARG`` strings."""

from __future__ import annotations

import ml_collections

from flowgmm_jax.training.config import base_config, model_config


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
    for key, value in (("num_blocks", 1), ("mid_channels", 8), ("steps_per_scale", 2)):
      if key in c.model:  # each image model has its own fields
        c.model[key] = value
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


# What every image config shares with the original image command (train_semisup_cons.py and
# the commands in the original README), and where it differs, with the reason. Each config's
# docstring points here and lists its own values.
IMAGE_RECIPE_NOTES = """
Faithful to the original (train_semisup_cons.py and its README commands):
  objective "original": label_weight * CE(labelled) + mixture NLL over ALL rows
    + consistency_weight * consistency NLL (losses.flowgmm_objective);
  RealNVP, 2 scales, 8 ResNet blocks, 64 channels, no dropout (the original image RealNVP has
    none); 32 labelled + 32 unlabelled images per step (its --batch_size 64);
  its random initialisation (model.zero_init_last = False): PyTorch's defaults, layer by
    layer in flowgmm_jax/nets.py's docstring, the weight-norm gains g = ||v||;
  Adam (0.9, 0.999), constant learning rate; L2 weight decay 5e-5 on the weight-norm gains
    only (its get_param_groups 'weight_g'); gradient-norm clipping at 100;
  consistency weight 1, ramped up linearly; random crop with zero padding 4;
  a fixed GMM prior (means r * N(0, I) with r = 1, unit covariances, uniform weights). The
    original script does build an Adam, opt_gmm, over the prior's means, weights and
    inv_cov_stds, but without its --*_trainable flags none of those tensors requires grad
    (the means are a plain tensor from get_means, the others get requires_grad = False),
    so opt_gmm.step() changes nothing; the parity run checks that they stay unchanged;
  the same inputs: the original's MNIST is torchvision's 28x28 images, RandomCrop(28,
    padding=4) (zero fill) for training and nothing for testing, then ToTensor (/255); no
    resizing, normalisation or flips; its iLogits maps x to logit(0.05 + 0.9 (255 x + u) /
    256), exactly our Dequantize + Logit(0.05) of the 8-bit pixels; bits/dim include the
    D log 256 term.
Measured side by side (python -m benchmarks.parity_original; raw numbers in
benchmarks/results/parity_original.json, curves in docs/parity_original.png; MNIST, 1,000
labels as the original's label file, RealNVP 2 scales x 1 block x 16 channels, 172,856
parameters on both sides, the same 2,000 test images, one CPU core per run):
  - with the original's tensors our flow computes its latent, log-det, BatchNorm
    statistics, loss terms and gradient to float32 round-off (tests/test_benchmarks.py);
  - the random inits draw from one distribution: the train-mode NLL of one fixed batch over
    60 inits per side has medians 10,565 (original) and 10,720 nats (ours), Mann-Whitney
    p = 0.92, Kolmogorov-Smirnov p = 0.99; the log-det and |z|^2 likewise (p >= 0.66);
  - at the README recipe (lr 1e-5, label weight 3), seeds 0-2 on each side, 1,000 steps:
    test accuracy lies within the seed spreads at every evaluation (step 1,000: 11.6 +- 0.5%
    ours, 11.8 +- 1.7% original: neither side learns the classes in 1,000 steps at this
    learning rate). Test bits/dim trail by 0.54 at step 1,000 (6.59 +- 0.20 against
    6.05 +- 0.24), outside the spreads from step 750 on; adjusted for each run's initial NLL
    the gap is 0.40 +- 0.18 (s.e.). Its cause is the initial draw: started from the
    original's own initial tensors of seed 0 (--recipes=original_same_init), our run
    follows the original's seed-0 run to within 0.015 bits/dim and 0.6 points of accuracy
    at every evaluation, and every random parameter tensor has the same initial
    distribution on both sides (--init-leaves=16: stds within 2.3%, means within 0.02
    stds). The initial NLL is heavy-tailed (our seed 1 started 2.5 bits/dim above the other
    runs), so three seeds per side leave a gap of this size unresolved; nothing in the
    training differs;
  - zero initialisation (every coupling starting as the identity) learns the density far
    more slowly at that recipe: seed 0, test bits/dim 11.14 -> 10.23 over steps 250-1,000,
    against 8.26 -> 6.28 from the random init. Hence the original's random init is the
    default here (model.zero_init_last = False);
  - at the :cpu settings (lr 1e-3, label weight 100, ramp 1,000 steps), one seed each,
    random init on both sides: ours 74.8% test
    accuracy and 3.63 bits/dim at step 1,000, the original 59.8% (71.6% evaluated at the
    bin midpoint, as ours) and 3.94 (3.86).
Differences, and why:
  - the consistency ramp counts steps, not epochs: the original raises the weight once per
    epoch (one pass over the labelled set, floor(num_labels / 32) steps); we give the same
    length in steps and raise it every step (a smooth version of the same staircase);
  - training length is in steps: the original's epochs times floor(num_labels / 32); its
    labelled epoch drops the last partial batch and restarts the unlabelled stream, ours
    runs through epochs without a gap (the same batches in distribution);
  - clipping: the original clips each of its two parameter groups (weight-norm gains; the
    rest) to norm 100 separately; we clip the global norm of all gradients to 100, which
    clips at least as often. Under Adam a rescaled gradient changes the update only through
    the moment averages;
  - evaluation dequantises at the bin midpoint (noise 0.5), the original draws fresh
    uniform noise on every evaluation too: ours gives the same number every time it is
    run, so checkpoints and runs compare without evaluation noise. Measured on the
    original side of the parity run (step 1,000): at the README recipe 12.1% with fresh
    noise against 11.8% at the midpoint, 6.067 against 6.050 bits/dim; at the :cpu
    settings 59.8% against 71.6%, 3.935 against 3.855: fresh noise costs accuracy
    where the classes are learnt, and the midpoint is the better estimate of p(y | x) of
    the 8-bit image;
  - plain FlowGMM (consistency_weight = 0) skips the second augmented view: the original
    still runs it (under no_grad, in train mode) and so updates the BatchNorm running
    statistics twice per step, ours once. It saves a third of the step; the running
    averages (momentum 0.1 per update) then span about 10 steps instead of 5, estimating
    the same statistics. Training itself uses batch statistics and is unaffected;
  - BatchNorm's running variance averages the biased batch variance (Flax), torch's the
    unbiased one: a relative 1 / (B H W - 1), at most 1 / 12,543 here; evaluation only;
  - the labelled images are a class-balanced draw made with the config's seed
    (data.labeled_unlabeled_split); the original reads label files drawn with
    np.random.seed(i) (unpack_mnist.py; its README command uses file 10): the same kind of
    draw of other images. benchmarks/parity_original.original_label_split recomputes the
    original's files from our MNIST exactly (tested), and the parity run uses them on both
    sides;
  - the latent is flattened in NHWC order, the original's in NCHW: a fixed permutation of
    z's coordinates. With an isotropic prior and i.i.d. N(0, I) means the model and its
    training are the same up to relabelling coordinates; only checkpoints do not
    interchange (benchmarks/original_step.latent_nchw_to_ours converts);
  - the original's test loss and bits/dim are -log p(x | y_true) (its FlowLoss with the
    test labels); we report that (eval/bpd_given_label) and the marginal -log p(x)
    (eval/bpd), larger by at most log K / (D log 2) bits/dim (0.004 on MNIST);
  - bits/dim are not comparable with the paper's: the original's image code as it ran for
    the paper (before its commit 5c1bc3b) summed the checkerboard couplings' log-scale over
    the kept positions too, so its log-det over-counted and its likelihoods and bits/dim
    were not those of a normalised density. Ours counts the changed positions only, as the
    original's HEAD does (and the parity run, which runs HEAD).
"""


# The paper's recipe for tables and sentence embeddings (``:paper`` of configs/tabular.py and
# configs/text.py), value by value with its source in the original repository
# (github.com/izmailovpavel/flowgmm at 071285b; paths relative to its root), and where we
# differ, with the reason. The original runs
#   python experiments/train_flows/flowgmm_tabular_new.py --network RealNVPTabularWPrior \
#     --trainer SemiFlow --net_config "{'k':K,'coupling_layers':L,'nperlayer':1}" \
#     --trainer_config "{'unlab_weight':A}" --num_epochs E --dataset DATA [--lr LR] [--train N]
# (README "Tabular Datasets"); every value it does not pass is makeTrainer's default
# (experiments/train_flows/flowgmm_tabular_new.py:47-49).
PAPER_TABLE_RECIPE_NOTES = """
Faithful to the original:
  flow: RealNVPTabular(num_coupling_layers=L, in_dim=D, hidden_dim=K, num_layers=1,
    dropout=True) (train_semisup_flowgmm_tabular.py:21; RealNVPTabularWPrior ignores its
    nperlayer argument): each conditioner is Linear(D, K), ReLU, Dropout(0.5), then ONE
    Linear(K, K), ReLU (our model.hidden_layers = 2 counts both hidden layers; the
    original's num_layers = 1 counts the extra K -> K layers), then Linear(K, 2D)
    (coupling_layer.py:171-181); dropout only
    after the first layer, active while training, off at evaluation (oil's Eval context);
    s = weight_norm(Rescale)(tanh(s_raw)) (coupling_layer.py:90, 184); alternating halves
    masks (realnvp.py:211-214); PyTorch's default init, no zero init (init_zeros=False,
    realnvp.py:207);
  prior: fixed (its means are tensors, not parameters, so the optimiser over
    model.parameters() never moves them; uniform weights, distributions.py:18); 2 classes:
    mu_0 = 3.75 v/||v|| for v ~ N(0, I_D), mu_1 = -mu_0, i.e. antipodal and 7.5 apart along
    a random direction (train_semisup_flowgmm_tabular.py:23-29); more classes:
    mu_k = 0.56 N(0, I_D) (means_r = 0.8 times 0.7, line 36; train_utils.py:142-144).
    Ours: prior.means_init "auto" -> "tabular" (prior.py), means_scale None (7.5 / 0.56);
  objective: SemiFlow.loss (train_semisup_flowgmm_tabular.py:65-73):
    mean_lab -log p(x | y) + unlab_weight * mean_unl -log p(x), no consistency term; ours
    "joint" with label_weight 1 (-log p(x, y) = -log p(x | y) + log K: a constant);
  optimiser: AdamW (flowgmm_tabular_new.py:48, betas 0.9/0.999, eps 1e-8) with
    weight_decay 1e-5 (line 49) and the given --lr (default 1e-3, line 48);
    gradient-norm clipping at 100 over its one parameter group, i.e. the global norm
    (train_semisup_flowgmm_tabular.py:78; optim_util.py:22-31);
  schedule: oil's cosLr(num_epochs) (flowgmm_tabular_new.py:66), evaluated at the
    fractional epoch after every step (oil Trainer.train), so a per-step cosine from the
    learning rate to 0 over the run: ours "cosine" over num_train_steps;
  batches: bs = 5000 (line 48) and each loader takes min(bs, len(split)) (line 62), so a
    step sees ALL labelled rows (20 for the UCI commands, --train 200 / 800 for text)
    and 5000 unlabelled rows;
  labels: split_dataset(..., {'train': N, 'val': 5000}) (line 55), N = 20 by default
    (stratified for MiniBooNE/HEPMASS: 10 per class), --train 200 (AG News) / 800 (Yahoo);
  length: one epoch is one pass over the unlabelled loader (oil izip stops with its
    shortest part; the labelled loader cycles), ceil(N_train / 5000) steps; ours counts the
    same number of steps: num_epochs * ceil(N_train / 5000);
  no early stopping (oil keeps the last state when early_stop_metric is None), no input
    noise, no calibration.
Differences, and why:
  - the prior's standard deviation: the original passes inv_cov_std = 1 / cov_std = 1
    through a softplus (distributions.py:23), so sigma = softplus(1) = 1.3133; ours is 1,
    because the config has no field for it yet (GaussianMixturePrior.scale_init exists;
    the config vocabulary is being renamed, so the field comes with that change). The
    flow can absorb a global latent scale, but the means then sit 7.5 / 1.31 = 5.7 sigma
    apart in the original and 7.5 sigma apart here;
  - weight decay: AdamW's decoupled decay reaches every flow parameter in the original; ours
    reaches the weight-norm gains only (training/optim.py masks it, as the image recipe
    needs). At lr 3e-4 the decay shrinks a weight by lr * wd = 3e-9 per step, a factor
    0.99999 over 4200 steps: no measurable effect either way;
  - the cosine floor: cosLr never goes below 1e-3 of the learning rate (oil utils.py:305),
    optax's cosine reaches 0: they differ in the last 2% of the steps only;
  - the conditioner layout: ours reads the kept half and predicts the changed half
    (model.full_width_conditioner=False, the model registry's layout); the original's reads
    all D inputs (the changed half zeroed) and predicts 2D outputs (the kept half
    discarded). Same family of functions; the original's extra weights multiply zeros or
    feed discarded outputs. TabularFlow(full_width_conditioner=True) is the original's
    layout, with its parameter count (tests/test_paper_recipe.py);
  - the last unlabelled batch of an epoch: the original's is the remainder
    (N_train mod 5000 rows); ours are all 5000 rows (a batch that crosses an epoch takes
    the head of the next permutation);
  - the unlabelled pool: the original's is every training row (labelled and its 5000
    validation rows included); ours is the training rows without the labelled ones;
  - text labels: the original's 200 / 800 are a uniformly random subset (AG_News and YAHOO
    have no stratify attribute); ours are class-balanced (AG News is balanced, so the same
    counts in expectation);
  - data: feature standardisation uses the training split's statistics (the original's
    MiniBooNE used the whole file's); the offline AG News is 384-d MiniLM embeddings of the
    AG News test split, standardised, not the original's 768-d BERT embeddings of the
    120,000-row train split (configs/text.py).
"""


def apply_paper_table_recipe(c: ml_collections.ConfigDict, *, num_coupling_layers: int,
                             hidden_dim: int, labeled_batch_size: int,
                             unlabeled_weight: float, num_train_steps: int,
                             learning_rate: float = 3e-4,
                             unlabeled_batch_size: int = 5000) -> None:
  """The paper's tabular/text recipe (``:paper``; PAPER_TABLE_RECIPE_NOTES gives each value's
  source in the original and every difference): RealNVP-tabular with ``num_coupling_layers``
  couplings whose conditioners have two hidden ``hidden_dim`` layers (the original's
  ``num_layers=1``) and dropout 0.5 after the first; the fixed prior (two classes: means
  7.5 apart; more: 0.56 N(0, I)); the "joint" objective with ``unlabeled_weight``; AdamW
  (``learning_rate``, weight decay 1e-5) with a cosine schedule over ``num_train_steps``,
  clipping 100; ``labeled_batch_size`` (all labelled rows, in the original) +
  ``unlabeled_batch_size`` (5000) rows per step; no early stopping or input noise."""
  c.model = model_config("realnvp_tabular", num_coupling_layers=num_coupling_layers,
                         hidden_dim=hidden_dim, hidden_layers=2, dropout_rate=0.5,
                         zero_init_last=False)
  c.prior.covariance = "isotropic"
  c.prior.means_init = "auto"
  c.prior.means_scale = None
  c.prior.learn_means = False
  c.prior.learn_scales = False
  c.prior.learn_weights = False
  c.loss.objective = "joint"
  c.loss.label_weight = 1.0
  c.loss.label_weight_per_feature = 0.0
  c.loss.unlabeled_weight = unlabeled_weight
  c.loss.consistency_weight = 0.0
  c.augment.noise_std = 0.0
  c.augment.dequantize = "off"  # the original models the raw values
  c.optim.optimizer = "adamw"
  c.optim.learning_rate = learning_rate
  c.optim.lr_schedule = "cosine"
  c.optim.warmup_steps = 0
  c.optim.weight_decay = 1e-5
  c.optim.grad_clip_norm = 100.0
  c.data.labeled_batch_size = labeled_batch_size
  c.data.unlabeled_batch_size = unlabeled_batch_size
  c.early_stopping.holdout_fraction = 0.0
  c.calibration.validation_fraction = 0.0
  c.num_train_steps = num_train_steps


def paper_steps(num_epochs: int, num_train_rows: int, batch_size: int = 5000) -> int:
  """The original's training length in steps: ``num_epochs`` passes over ``num_train_rows``
  unlabelled rows in batches of ``batch_size`` (the last one partial)."""
  return num_epochs * -(-num_train_rows // batch_size)


def image_config(name: str, *, num_labeled_per_class: int, flip: bool, learning_rate: float,
                 label_weight: float, consistency_rampup_steps: int, num_train_steps: int,
                 arg: str | None, extra_args: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  """The original image recipe (see IMAGE_RECIPE_NOTES): RealNVP (2 scales, 8 blocks, 64
  channels) with the original's random initialisation; 32 labelled + 32 unlabelled images
  per step; objective 'original' with
  ``label_weight``; consistency weight 1 ramped over ``consistency_rampup_steps``; Adam,
  clipping 100, decay 5e-5 on weight-norm gains; crop 4. The word 'glow' gives Glow (2
  scales, 8 steps per scale, 64 channels) instead of RealNVP. ``extra_args`` are further
  words the calling config handles itself (e.g. mnist's 'cpu')."""
  words = parse_args(arg, ("smoke", "glow") + tuple(extra_args))
  c = base_config()
  c.data.kind = "image"
  c.data.name = name
  c.data.num_labeled_per_class = num_labeled_per_class
  c.data.labeled_batch_size = 32
  c.data.unlabeled_batch_size = 32
  # The original's random initialisation: zero init learns the density far more slowly at
  # the original's settings (IMAGE_RECIPE_NOTES, "Measured side by side").
  if "glow" in words:
    c.model = model_config("glow", num_scales=2, steps_per_scale=8, mid_channels=64,
                           zero_init_last=False)
  else:
    c.model = model_config("realnvp", num_scales=2, num_blocks=8, mid_channels=64,
                           zero_init_last=False)
  # sync_batch_norm=True (every image config): BatchNorm sees the whole global batch, the
  # original's one-device semantics; False on many devices: 4 collectives per step, not one
  # per norm and pass (training/step.py), each device normalising its own rows.
  c.model.sync_batch_norm = True
  c.prior.means_init = "image"
  c.prior.means_scale = 1.0
  c.loss.objective = "original"
  c.loss.label_weight = label_weight
  c.loss.unlabeled_weight = 1.0
  c.loss.consistency_weight = 1.0
  c.loss.consistency_rampup_steps = consistency_rampup_steps
  c.optim.optimizer = "adam"
  c.optim.learning_rate = learning_rate
  c.optim.lr_schedule = "constant"
  c.optim.weight_decay = 5e-5
  c.optim.grad_clip_norm = 100.0
  c.augment.crop_padding = 4
  c.augment.flip = flip
  c.num_train_steps = num_train_steps
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2000
  c.eval_batch_size = 500
  if "smoke" in words:
    apply_smoke(c, image=True)
  return c
