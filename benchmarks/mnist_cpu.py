"""The CPU-budget MNIST runs (``configs/mnist.py:cpu``) as a table, from their results file.

``benchmarks/results/mnist_cpu.json`` holds, for each run, the evaluation rows of its
``metrics.jsonl`` (``step``, ``eval/accuracy``, ``eval/bpd``, ``eval/ece``, ``eval/nll`` on the
10,000 test images at steps 1,000, 2,000 and 3,000). The runs are the commands in
``docs/results.md`` ("MNIST on a CPU budget"); ``runs`` holds seed 0 of each method and label
count, ``"FlowGMM-cons, 1000 labels, more seeds"`` seeds 1 and 2 of FlowGMM-cons at 1,000
labels. ``python -m benchmarks.report`` renders the table with ``markdown``.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np

STEPS = (1000, 2000, 3000)
SEEDS_KEY = "FlowGMM-cons, 1000 labels, more seeds"
MULTI_SEED_RUN = "FlowGMM-cons, 1000 labels"


def _cells(evals: List[dict]) -> List[str]:
  """Accuracy at each of ``STEPS`` (``–`` where the run had stopped), then the last row's
  bits/dim and ECE, suffixed with its step when that is not the final one."""
  by_step: Dict[int, dict] = {e["step"]: e for e in evals}
  accuracy = [f"{100 * by_step[s]['eval/accuracy']:.1f}%" if s in by_step else "–"
              for s in STEPS]
  last = evals[-1]
  at = "" if last["step"] == STEPS[-1] else f" @{last['step'] // 1000}k"
  return accuracy + [f"{last['eval/bpd']:.2f}{at}", f"{last['eval/ece']:.3f}{at}"]


def markdown(results: dict) -> str:
  """One row per run (method, labels, test accuracy at 1k/2k/3k steps, final bits/dim and
  ECE), then the extra seeds and the mean ± std (ddof 1) over the seeds of the run that has
  several."""
  lines = ["| run | test acc. @1k steps | @2k | @3k (final) | test bits/dim | ECE |",
           "|---|---|---|---|---|---|"]
  for name, evals in results["runs"].items():
    seed = f", seed {results['seed']}"
    lines.append("| " + " | ".join([name + seed] + _cells(evals)) + " |")
  extra = results.get(SEEDS_KEY, {}).get("runs", {})
  for seed_name, evals in extra.items():
    lines.append("| " + " | ".join([f"{MULTI_SEED_RUN}, {seed_name}"] + _cells(evals)) + " |")
  if extra:
    finals = [results["runs"][MULTI_SEED_RUN][-1]] + [e[-1] for e in extra.values()]
    def stat(key, scale=1.0):
      v = scale * np.asarray([f[key] for f in finals])
      return v.mean(), v.std(ddof=1)
    acc, bpd, ece = stat("eval/accuracy", 100), stat("eval/bpd"), stat("eval/ece")
    lines.append(f"| {MULTI_SEED_RUN}, seeds 0-{len(finals) - 1}, mean ± std (ddof 1) | | | "
                 f"**{acc[0]:.1f} ± {acc[1]:.1f}%** | {bpd[0]:.2f} ± {bpd[1]:.2f} | "
                 f"{ece[0]:.3f} ± {ece[1]:.3f} |")
  return "\n".join(lines)
