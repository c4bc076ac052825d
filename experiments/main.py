"""Command-line entry point: flags -> config -> train_and_evaluate.

    python -m experiments.main --config=configs/toy.py --workdir=/tmp/toy
    python -m experiments.main --config=configs/svhn.py --workdir=DIR --config.data.num_labeled=1000

Rerunning the same command resumes from the latest checkpoint in ``DIR/checkpoints``. One run
writes a workdir at a time: a second one on the same DIR stops with one line naming the
first (its host and pid; see flowgmm_jax/training/lock.py).

Evaluate a saved run without training (read-only; writes DIR/eval/metrics.json and
DIR/eval/predictions.npz), on the config's test split or on a file of your own:

    python -m experiments.main --config=configs/toy.py --workdir=/tmp/toy --mode=eval
    python -m experiments.main --config=configs/tabular.py --workdir=DIR --mode=eval \
        --config.data.path=new_rows.csv [--step=2000]

Compiled programs are kept in JAX's persistent compilation cache on GPU and TPU
(``--config.compilation_cache_dir``, default "auto": ``$XDG_CACHE_HOME/flowgmm_jax/xla`` or
``~/.cache/flowgmm_jax/xla``), so a resume or a rerun loads them instead of compiling;
``--config.compilation_cache_dir=off`` or ``FLOWGMM_COMPILATION_CACHE=off`` turns it off, and
``=on`` turns it on for CPU runs too (flowgmm_jax/compile_cache.py).

SIGTERM or Ctrl-C saves a checkpoint after the current step and exits (status 128 + signal
number); rerunning the command resumes bit-identically.

Several processes (hosts), anywhere: run the same command on every process with
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` (see the README).
"""

import ast
import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from flowgmm_jax.compile_cache import enable_compilation_cache
from flowgmm_jax.training import train_and_evaluate
from flowgmm_jax.training.lock import WorkdirBusyError
from flowgmm_jax.training.loop import Preempted

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file with get_config(), e.g. configs/toy.py.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"],
                          "train (or resume), or eval: evaluate a saved checkpoint only.")
_STEP = flags.DEFINE_integer("step", None, "--mode=eval: the checkpoint step (default: latest).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-process: HOST:PORT of process 0 "
    "(config.distributed.coordinator_address).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-process: the number of processes (config.distributed.num_processes).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Multi-process: this process's index (config.distributed.process_id).")
flags.mark_flags_as_required(["config", "workdir"])


def _parse_flags(argv):
  """absl's flag parsing, with a misspelt ``--config.x.y`` reported in one line."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    text = str(e)
    try:
      text = str(ast.literal_eval(text))
    except (ValueError, SyntaxError):
      pass
    text = " ".join(text.split())
    given = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    key = text.split("'")[1] if text.count("'") >= 2 else ""
    bad = [a for a in given if a.split(".")[-1] == key] or given
    print(f"error: unknown config key {text} (in {' '.join(bad)}); see the config file for "
          "the valid keys.", file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  # Orbax logs every checkpoint step at INFO; keep the terminal for the progress bar.
  if not flags.FLAGS.is_parsed() or flags.FLAGS["verbosity"].present == 0:
    logging.set_verbosity(logging.ERROR)
  config = _CONFIG.value
  for flag, key in ((_COORDINATOR, "coordinator_address"), (_NUM_PROCESSES, "num_processes"),
                    (_PROCESS_ID, "process_id")):
    if flag.value is not None:
      config.distributed[key] = flag.value
  try:
    if _MODE.value == "eval":
      # Training turns the cache on itself, after starting a multi-process runtime (which
      # must come before anything that starts XLA, as this call does).
      enable_compilation_cache(config.compilation_cache_dir)
      from flowgmm_jax.training.evaluate_run import evaluate_saved_run
      results = evaluate_saved_run(config, _WORKDIR.value, _STEP.value)
    else:
      results = train_and_evaluate(config, _WORKDIR.value)
  except Preempted as e:
    print(e, file=sys.stderr, flush=True)
    sys.exit(128 + e.signum)
  except (ValueError, FileNotFoundError, FloatingPointError, PermissionError,
          WorkdirBusyError) as e:
    # Bad configs, bad data, missing files, incompatible checkpoints and a workdir that
    # another run is writing: one clear message.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
