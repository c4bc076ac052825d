"""Seeds of ``configs/mnist.py:cpu``: collect and render.

    python -m experiments.main --config=configs/mnist.py:cpu --workdir=/tmp/mnist_cpu_sS \
        --config.seed=S                                   # S = 0, 1, 2, one after another
    python -m benchmarks.mnist_seeds --workdirs=/tmp/mnist_cpu_s0,/tmp/mnist_cpu_s1,\
/tmp/mnist_cpu_s2 --json=benchmarks/results/mnist_cpu_seeds.json

``collect`` reads each run directory: the seed and step count from ``config.json``, the
evaluation rows of ``metrics.jsonl`` (every 1,000 steps) and the run's wall time, from
``config.json`` (written when the run starts) to ``results.json`` (written when it ends),
so compilation and every evaluation are included.

A run with ``--config.data.validation_examples=N`` evaluated on N held-out training images
during training; its test numbers are those of ``--mode=eval
--config.data.validation_examples=0`` on its final checkpoint (``eval/metrics.json``, all
10,000 test images; not part of the wall time), and the table shows both.
``python -m benchmarks.report`` renders the file with ``markdown``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

_EVAL_KEYS = ("eval/accuracy", "eval/bpd", "eval/ece", "eval/nll")


def collect_run(workdir: str) -> dict:
  """One finished run directory as ``{seed, num_train_steps, wall_s, evals}``."""
  root = Path(workdir)
  missing = [n for n in ("config.json", "metrics.jsonl", "results.json")
             if not (root / n).is_file()]
  if missing:
    raise SystemExit(f"{workdir} lacks {', '.join(missing)}: it is not a finished run "
                     "directory of experiments.main; pass the --workdir of a run that "
                     "reached its last step.")
  config = json.loads((root / "config.json").read_text())
  evals = []
  for line in (root / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    if "eval/accuracy" in row:
      evals.append({"step": row["step"], **{k: row[k] for k in _EVAL_KEYS if k in row},
                    "num_examples": int(row.get("eval/num_examples", 0))})
  if not evals or evals[-1]["step"] != config["num_train_steps"]:
    raise SystemExit(f"{workdir}: its last evaluation is not at step "
                     f"{config['num_train_steps']}; the run did not finish.")
  wall = os.stat(root / "results.json").st_mtime - os.stat(root / "config.json").st_mtime
  run = {"workdir": workdir, "seed": config["seed"],
         "num_train_steps": config["num_train_steps"], "wall_s": round(wall, 1),
         "evals": evals}
  held_out = int(config.get("data", {}).get("validation_examples", 0) or 0)
  if held_out:
    run["validation_examples"] = held_out
    path = root / "eval" / "metrics.json"
    test = json.loads(path.read_text()) if path.is_file() else {}
    if (test.get("step") != config["num_train_steps"] or "test" not in test.get("source", "")
        or "accuracy" not in test):
      raise SystemExit(
          f"{workdir} held out {held_out} training images for validation, so its test "
          f"numbers come from evaluating its final checkpoint; run python -m experiments."
          f"main --config=configs/mnist.py:cpu --workdir={workdir} --mode=eval "
          "--config.data.validation_examples=0 (with the run's other --config flags).")
    run["test"] = {"step": test["step"], "num_examples": int(test["num_examples"]),
                   **{f"eval/{k}": test[k] for k in ("accuracy", "bpd", "ece", "nll")}}
  return run


def final_test(run: dict) -> dict:
  """The run's final test metrics: its last evaluation, or with a validation split the
  test evaluation of its final checkpoint."""
  return run.get("test", run["evals"][-1])


def markdown(results: dict) -> str:
  """One row per seed (accuracy at each evaluation, on the test images or on the held-out
  training images; the final test accuracy, bits/dim and ECE; wall minutes), then the mean
  ± std (ddof 0, as every other table here) of the final rows."""
  runs = results["runs"]
  steps = [e["step"] for e in runs[0]["evals"]]
  held_out = runs[0].get("validation_examples", 0)
  curve = f"validation accuracy ({held_out:,} training images)" if held_out else "test accuracy"
  head = " | ".join(f"@{s / 1000:g}k" for s in steps)
  final = " final test accuracy |" if held_out else ""
  lines = [f"| seed | {curve} {head} |{final} test bits/dim | test ECE | wall (min) |",
           "|---|" + "---|" * (len(steps) + 3 + bool(held_out))]
  for run in runs:
    by_step = {e["step"]: e for e in run["evals"]}
    last = final_test(run)
    accs = " | ".join(f"{100 * by_step[s]['eval/accuracy']:.1f}%" if s in by_step else "–"
                      for s in steps)
    test_acc = f" {100 * last['eval/accuracy']:.1f}% |" if held_out else ""
    lines.append(f"| {run['seed']} | {accs} |{test_acc} {last['eval/bpd']:.2f} | "
                 f"{last['eval/ece']:.3f} | {run['wall_s'] / 60:.1f} |")
  finals = [final_test(r) for r in runs]
  acc = 100 * np.array([f["eval/accuracy"] for f in finals])
  bpd = np.array([f["eval/bpd"] for f in finals])
  ece = np.array([f["eval/ece"] for f in finals])
  wall = np.array([r["wall_s"] for r in runs]) / 60
  if held_out:
    val = 100 * np.array([r["evals"][-1]["eval/accuracy"] for r in runs])
    blanks = " | " * (len(steps) - 2)
    acc_cells = (f"{blanks} {val.mean():.1f} ± {val.std():.1f}% | "
                 f"**{acc.mean():.1f} ± {acc.std():.1f}%** |")
  else:
    blanks = " | " * (len(steps) - 1)
    acc_cells = f"{blanks} **{acc.mean():.1f} ± {acc.std():.1f}%** |"
  if len(runs) == 1:
    return "\n".join(lines)  # one seed: no spread to report
  lines.append(f"| mean ± std |{acc_cells} "
               f"{bpd.mean():.2f} ± {bpd.std():.2f} | {ece.mean():.3f} ± {ece.std():.3f} | "
               f"{wall.mean():.1f} ± {wall.std():.1f} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdirs", required=True, help="comma-separated run directories")
  parser.add_argument("--json", default="benchmarks/results/mnist_cpu_seeds.json")
  parser.add_argument("--config", default="configs/mnist.py:cpu",
                      help="the config the runs used, with any --config flags they added")
  parser.add_argument("--note", default="", help="how the runs shared the machine")
  args = parser.parse_args(argv)
  from benchmarks.provenance import provenance
  runs = sorted((collect_run(w) for w in args.workdirs.split(",")), key=lambda r: r["seed"])
  results = {"provenance": provenance(argv), "config": args.config,
             "note": args.note, "runs": runs}
  Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
  print(markdown(results))


if __name__ == "__main__":
  main()
