"""FlowGMM on tabular data: UCI Letter and Shuttle (offline), MiniBooNE, HEPMASS, or your file.

The recipe follows the original's UCI runs (RealNVP-tabular, k=256, 10 couplings, Adam
3e-4, batch 5000 unlabelled rows next to the labelled ones).

    python -m experiments.main --config=configs/tabular.py:letter --workdir=/tmp/letter
    python -m experiments.main --config=configs/tabular.py:shuttle --workdir=/tmp/shuttle
    python -m experiments.main --config=configs/tabular.py:miniboone \
        --config.data.path=/data/miniboone/data.npy --workdir=/tmp/miniboone
    python -m experiments.main --config=configs/tabular.py:file \
        --config.data.path=my.npz --workdir=/tmp/mine        # or my.csv (label = last column)
    python -m experiments.main --config=configs/tabular.py:letter,smoke --workdir=/tmp/smoke

ARG: a dataset (letter | shuttle | miniboone | hepmass | file) and/or smoke.
"""

from configs.common import apply_smoke, parse_args
from flowgmm_jax.training.config import base_config

DATASETS = ("letter", "shuttle", "miniboone", "hepmass", "file")
UNLABELED_WEIGHT = {"miniboone": 3.0, "hepmass": 10.0}


def get_config(arg: str | None = None):
  words = parse_args(arg, DATASETS + ("smoke",))
  name = next((w for w in words if w != "smoke"), "letter")
  c = base_config()
  c.data.kind = "tabular"
  c.data.name = name
  c.data.num_labeled_per_class = 10
  c.data.test_fraction = 0.2
  c.data.labeled_batch_size = 64
  c.data.unlabeled_batch_size = 1024
  c.model.name = "realnvp_tabular"
  c.model.num_coupling_layers = 10
  c.model.hidden_dim = 256
  c.model.num_layers = 1
  c.loss.unlabeled_weight = UNLABELED_WEIGHT.get(name, 1.0)
  c.optim.optimizer = "adamw"
  c.optim.learning_rate = 3e-4
  c.optim.schedule = "cosine"
  c.num_train_steps = 3000
  c.log_every_steps = 100
  c.eval_every_steps = 1000
  c.eval_batch_size = 5000
  if "smoke" in words:
    apply_smoke(c, image=False)
  return c
