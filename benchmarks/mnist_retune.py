"""The retuning runs of ``configs/mnist.py:cpu`` as a table, from their results file.

``benchmarks/results/mnist_cpu_retune.json`` holds, per candidate recipe, its command, the
evaluation rows of its ``metrics.jsonl`` on 5,000 held-out *training* images
(``--config.data.validation_examples=5000``: the choice among candidates sees no test
label) and, for runs that reached their end, ``test_of_final_checkpoint``: the final
checkpoint scored once on the 10,000 test images after the choice (``--mode=eval
--config.data.validation_examples=0``). ``python -m benchmarks.report`` renders it.
"""

from __future__ import annotations


def markdown(results: dict) -> str:
  """One row per candidate: validation accuracy at each evaluation, the last validation
  bits/dim and ECE, and the test accuracy of its final checkpoint where there is one."""
  lines = ["| candidate (seed 0) | validation accuracy by step | last validation bits/dim, "
           "ECE | test accuracy of the final checkpoint |", "|---|---|---|---|"]
  for name, run in results["runs"].items():
    evals = run["evals"]
    curve = ", ".join(f"{100 * e['eval/accuracy']:.1f}% @{e['step']}" for e in evals)
    last = evals[-1]
    test = run.get("test_of_final_checkpoint")
    cell = (f"{100 * test['accuracy']:.1f}% (bits/dim {test['bpd']:.2f}, ECE "
            f"{test['ece']:.3f})" if test else "– (stopped early)")
    lines.append(f"| {name} | {curve} | {last['eval/bpd']:.2f}, {last['eval/ece']:.3f} "
                 f"| {cell} |")
  return "\n".join(lines)
