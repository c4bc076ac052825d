"""Seeds of the shipped ``configs/mnist.py:cpu`` on the full training set: collect and render.

    python -m experiments.main --config=configs/mnist.py:cpu --workdir=/tmp/mnist_cpu_sS \
        --config.seed=S                                   # S = 0, 1, 2, one after another
    python -m benchmarks.mnist_seeds --workdirs=/tmp/mnist_cpu_s0,/tmp/mnist_cpu_s1,\
/tmp/mnist_cpu_s2 --json=benchmarks/results/mnist_cpu_seeds.json

``collect`` reads each run directory: the seed and step count from ``config.json``, the
evaluation rows of ``metrics.jsonl`` (all 10,000 test images, every 1,000 steps) and the
run's wall time, from ``config.json`` (written when the run starts) to ``results.json``
(written when it ends), so compilation and every evaluation are included.
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
  return {"workdir": workdir, "seed": config["seed"],
          "num_train_steps": config["num_train_steps"], "wall_s": round(wall, 1),
          "evals": evals}


def markdown(results: dict) -> str:
  """One row per seed (test accuracy at each evaluation, final bits/dim and ECE, wall
  minutes), then the mean ± std (ddof 0, as every other table here) of the final rows."""
  runs = results["runs"]
  steps = [e["step"] for e in runs[0]["evals"]]
  head = " | ".join(f"@{s // 1000}k" for s in steps)
  lines = [f"| seed | test accuracy {head} | test bits/dim | ECE | wall (min) |",
           "|---|" + "---|" * (len(steps) + 3)]
  for run in runs:
    by_step = {e["step"]: e for e in run["evals"]}
    last = run["evals"][-1]
    accs = " | ".join(f"{100 * by_step[s]['eval/accuracy']:.1f}%" if s in by_step else "–"
                      for s in steps)
    lines.append(f"| {run['seed']} | {accs} | {last['eval/bpd']:.2f} | "
                 f"{last['eval/ece']:.3f} | {run['wall_s'] / 60:.1f} |")
  finals = [r["evals"][-1] for r in runs]
  acc = 100 * np.array([f["eval/accuracy"] for f in finals])
  bpd = np.array([f["eval/bpd"] for f in finals])
  ece = np.array([f["eval/ece"] for f in finals])
  wall = np.array([r["wall_s"] for r in runs]) / 60
  blanks = " | " * (len(steps) - 1)
  lines.append(f"| mean ± std |{blanks} **{acc.mean():.1f} ± {acc.std():.1f}%** | "
               f"{bpd.mean():.2f} ± {bpd.std():.2f} | {ece.mean():.3f} ± {ece.std():.3f} | "
               f"{wall.mean():.1f} ± {wall.std():.1f} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdirs", required=True, help="comma-separated run directories")
  parser.add_argument("--json", default="benchmarks/results/mnist_cpu_seeds.json")
  parser.add_argument("--note", default="", help="how the runs shared the machine")
  args = parser.parse_args(argv)
  from benchmarks.provenance import provenance
  runs = sorted((collect_run(w) for w in args.workdirs.split(",")), key=lambda r: r["seed"])
  results = {"provenance": provenance(argv), "config": "configs/mnist.py:cpu",
             "note": args.note, "runs": runs}
  Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
  print(markdown(results))


if __name__ == "__main__":
  main()
