"""Command-line entry point: flags -> config -> train_and_evaluate.

    python -m experiments.main --config=configs/toy.py --workdir=/tmp/toy
    python -m experiments.main --config=configs/svhn.py --workdir=DIR --config.data.num_labeled=1000

Rerunning the same command resumes from the latest checkpoint in ``DIR/checkpoints``.

Evaluate a saved run without training (read-only; writes DIR/eval/metrics.json and
DIR/eval/predictions.npz), on the config's test split or on a file of your own:

    python -m experiments.main --config=configs/toy.py --workdir=/tmp/toy --mode=eval
    python -m experiments.main --config=configs/tabular.py --workdir=DIR --mode=eval \
        --config.data.path=new_rows.csv [--step=2000]
"""

import json
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from flowgmm_jax.training import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file with get_config(), e.g. configs/toy.py.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"],
                          "train (or resume), or eval: evaluate a saved checkpoint only.")
_STEP = flags.DEFINE_integer("step", None, "--mode=eval: the checkpoint step (default: latest).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  # Orbax logs every checkpoint step at INFO; keep the terminal for the progress bar.
  if not flags.FLAGS.is_parsed() or flags.FLAGS["verbosity"].present == 0:
    logging.set_verbosity(logging.WARNING)
  try:
    if _MODE.value == "eval":
      from flowgmm_jax.training.after_run import evaluate_saved_run
      results = evaluate_saved_run(_CONFIG.value, _WORKDIR.value, _STEP.value)
    else:
      results = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    # Bad configs, bad data, missing files and incompatible checkpoints: one clear message.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
  app.run(main)
