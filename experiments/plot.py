"""Writes the figures of a saved run into DIR/plots/ (and its TensorBoard log).

    python -m experiments.plot --workdir=/tmp/toy
    python -m experiments.plot --workdir=DIR --step=1000 --config=configs/toy.py

The run's own config (DIR/config.json) rebuilds its data and label split; pass --config
only for runs that have no config.json. Figures: see flowgmm_jax/plots.py.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from flowgmm_jax.run_files import read_config
from flowgmm_jax.training.finish_run import write_plots

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config of the run (default: DIR/config.json).", lock_config=True)
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  try:
    config = _CONFIG.value if _CONFIG.value is not None else read_config(_WORKDIR.value)
    paths = write_plots(config, _WORKDIR.value, _STEP.value, tensorboard=True)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print("\n".join(paths))


if __name__ == "__main__":
  app.run(main)
