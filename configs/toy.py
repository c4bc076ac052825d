"""FlowGMM on the paper's 2-D toy data (moons, circles, 8 gaussians, pinwheel).

Reproduces the synthetic experiments of Izmailov et al. (2020), Sec. 6.1: 1000 training
points (and 1000 test points drawn afresh), a handful of labels (the paper uses 10-19),
RealNVP-tabular with 5 couplings, width 512.

    python -m experiments.main --config=configs/toy.py --workdir=/tmp/toy
    python -m experiments.main --config=configs/toy.py:circles --workdir=/tmp/circles
    python -m experiments.main --config=configs/toy.py:smoke --workdir=/tmp/toy_smoke
    python -m experiments.main --config=configs/toy.py:moons,spline --workdir=/tmp/toy_spline
    # FlowGMM-cons: --config.loss.consistency_weight=1.0 (tabular "augmentation" is dropout
    # in the original; here the term uses a second pass with its own dropout mask)

ARG: comma-separated words: a dataset (moons | circles | 8gaussians | pinwheel), spline
(rational-quadratic spline couplings instead of affine ones, same layout) and/or smoke.
"""

from configs.common import apply_smoke, parse_args
from flowgmm_jax.data import PAPER_NUM_LABELED as NUM_LABELED
from flowgmm_jax.training.config import base_config, model_config


def get_config(arg: str | None = None):
  words = parse_args(arg, ("moons", "circles", "8gaussians", "pinwheel", "spline", "smoke"))
  name = next((w for w in words if w not in ("smoke", "spline")), "moons")
  c = base_config()
  c.data.kind = "toy"
  c.data.name = name
  # 1000 training points (labelled + unlabelled) and 1000 fresh test points from the same
  # distribution, as the paper; data.test_fraction does not apply to generated toy data.
  c.data.num_points = 1000
  c.data.num_labeled_per_class = -1
  c.data.num_labeled = NUM_LABELED[name]
  c.data.labeled_batch_size = NUM_LABELED[name]
  c.data.unlabeled_batch_size = NUM_LABELED[name]  # as the original notebook: n_l + n_l rows
  # The original notebook's prior: class means on a circle, radius 3.5 (2 classes) or 5.5.
  c.prior.means_init = "circle"
  c.prior.means_scale = 3.5 if name in ("moons", "circles") else 5.5
  # The notebook's RealNVPTabular(num_coupling_layers=5, hidden_dim=512, num_layers=1): two
  # hidden layers per conditioner.
  c.model = model_config("spline_tabular" if "spline" in words else "realnvp_tabular",
                         num_coupling_layers=5, hidden_dim=512, hidden_layers=2)
  c.optim.learning_rate = 1e-3
  c.optim.lr_schedule = "hold_then_linear"
  c.num_train_steps = 2000 if name == "moons" else 5000  # the notebook: 2001 / 5001 iterations
  c.log_every_steps = 100
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 1000
  if "smoke" in words:
    apply_smoke(c, image=False)
    c.model.hidden_dim = 64
  return c
