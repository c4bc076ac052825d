"""FlowGMM on sentence embeddings: AG News (offline MiniLM embeddings), Yahoo, or your file.

By default this runs the library's table recipe, ``TABLE_RECIPE`` in
``flowgmm_jax/training/config.py``: the same model, prior, objective, optimiser and early
stopping as ``FlowGMMClassifier()`` (one definition serves both), with the paper's label
counts (200 for AG News, 800 for Yahoo). ``:paper`` gives the paper's text recipe instead:
RealNVP-tabular with k=1024, 7 couplings, two hidden layers per conditioner (the original's
``num_layers=1``); AdamW 3e-4 with a cosine schedule; 200 labelled and 5000 unlabelled rows
per step; unlabelled weight 0.6 (AG News) / 0.2 (Yahoo). On the offline data it memorises the labelled rows and ends at
chance (README "Experiments"): the offline embeddings are 384-d MiniLM, not the paper's
768-d BERT, and only 6,080 training rows exist offline, not the full AG News train split.

    python -m experiments.main --config=configs/text.py --workdir=/tmp/agnews
    python -m experiments.main --config=configs/text.py:agnews,paper --workdir=/tmp/agnews_paper
    python -m experiments.main --config=configs/text.py:yahoo \\
        --config.data.path=/data/yahoo_answers --workdir=/tmp/yahoo
    python -m experiments.main --config=configs/text.py:file \\
        --config.data.path=embeddings.npz --workdir=/tmp/mine
    python -m experiments.main --config=configs/text.py:smoke --workdir=/tmp/text_smoke

Offline, only the AG News test split exists (7,600 rows, 384-d MiniLM embeddings); it is
split into train/test by seed.

ARG: a dataset (agnews | yahoo | file), and optionally paper or spline (the table recipe
with rational-quadratic spline couplings), and/or smoke.
"""

from configs.common import apply_paper_table_recipe, apply_smoke, parse_args
from flowgmm_jax.training.config import apply_table_recipe, base_config

DATASETS = ("agnews", "yahoo", "file")


def get_config(arg: str | None = None):
  words = parse_args(arg, DATASETS + ("paper", "spline", "smoke"))
  if {"paper", "spline"} <= words:
    raise ValueError("ARG: spline changes the table recipe's flow; the paper's recipe "
                     "(paper) is RealNVP-tabular only. Give one of them.")
  name = next((w for w in words if w in DATASETS), "agnews")
  c = base_config()
  c.data.kind = "text"
  c.data.name = name
  c.data.num_labeled_per_class = -1
  c.data.num_labeled = 800 if name == "yahoo" else 200
  c.data.test_fraction = 0.2
  if "paper" in words:
    apply_paper_table_recipe(c, num_coupling_layers=7, hidden_dim=1024,
                             labeled_batch_size=c.data.num_labeled, unlabeled_batch_size=5000,
                             unlabeled_weight=0.2 if name == "yahoo" else 0.6,
                             num_train_steps=1000)
  else:
    apply_table_recipe(c, model="spline_tabular" if "spline" in words else "realnvp_tabular")
  c.log_every_steps = 50
  c.eval_every_steps = 250
  c.eval_batch_size = 2000
  if "smoke" in words:
    apply_smoke(c, image=False)
    c.data.labeled_batch_size = 40
    c.data.num_labeled = 40
    c.data.unlabeled_batch_size = 256
  return c
