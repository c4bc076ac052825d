"""Does an XLA flag make our train step faster without changing what it computes?

    python -m benchmarks.xla_flags_check --flags=--xla_cpu_use_onednn=true \
        --json benchmarks/results/xla_flags_check.json
    python -m benchmarks.xla_flags_check --workload=toy --repeats=3      # a quick look

For the setting without flags (the user's ``XLA_FLAGS`` cleared) and then each of
``--flags`` (comma-separated, one setting each), a child process of its own (XLA reads
``XLA_FLAGS`` once, when it starts) builds ``bench_steps``' train step of ``--workload``
with the same initial state, batch and key, and reports:
  * ``bench_kernels``' rows of ``--kernel-groups`` (the convolutions by default), timed;
  * trace + lower and XLA compile time, wall and process CPU seconds; the fused kernels and
    the oneDNN custom calls in the compiled step (a flag that routes nothing to oneDNN
    leaves the second at 0), and a hash of the compiled program's text: the same hash as
    without flags means the flag changed nothing XLA runs;
  * the median of ``--repeats`` steps, each ended by ``block_until_ready``;
  * the metrics (losses, accuracy) of the first step and of the last timed one (after
    ``--repeats`` updates), and the parameters after the first step, which the parent
    compares with the setting without flags. The metrics must agree to float32
    tolerance (``RTOL``, relative to the largest magnitude) for the flag to give "the
    same results". The parameters' largest difference is reported, not judged: Adam's
    first update is about ``lr * sign(g)``, so a gradient within round-off of 0 may move
    its parameter by up to ``2 lr`` under a reordered sum.
A flag this jaxlib does not know stops the child with XLA's "Unknown flags" error, which
is reported as rejected.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# Agreement of the first step's outputs across settings: float32 round-off over a step
# whose reductions may be reordered (relative to the largest magnitude of each output).
RTOL = 1e-4


def _child(workload: str, repeats: int, out: str, kernel_groups: str,
           kernel_repeats: int) -> dict:
  import jax
  from benchmarks import bench_kernels, bench_steps
  kernels = []
  if kernel_groups:
    kernels = bench_kernels.main([f"--groups={kernel_groups}", f"--repeats={kernel_repeats}"])
  train_step, state, batch, rng, _ = bench_steps._ours(workload)
  compiled, (lower_s, compile_s, lower_cpu_s, compile_cpu_s) = bench_steps.compile_timed(
      train_step, state, batch, rng)
  hlo = compiled.as_text()
  new_state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(metrics)
  first = np.array([float(v) for _, v in sorted(metrics.items())])
  leaves = jax.tree_util.tree_leaves(jax.device_get(new_state.params))
  params = np.concatenate([np.ravel(x) for x in leaves])
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    new_state, metrics = compiled(new_state, batch, rng)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  last = np.array([float(v) for _, v in sorted(metrics.items())])
  np.savez(out, metrics=np.concatenate([first, last]), params=params)
  return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
          "trace_and_lower_s": lower_s, "xla_compile_s": compile_s,
          "trace_and_lower_cpu_s": lower_cpu_s, "xla_compile_cpu_s": compile_cpu_s,
          "hlo_fusions": hlo.count(" fusion("), "hlo_convolutions": hlo.count(" convolution("),
          "onednn_custom_calls": hlo.count("__onednn$"),
          "hlo_sha256": hashlib.sha256(hlo.encode()).hexdigest(), "kernels": kernels}


def _relative_difference(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--flags", default="--xla_cpu_use_onednn=true",
                      help="comma-separated XLA flag settings, each measured alone")
  parser.add_argument("--workload", default="cifar", choices=("toy", "text", "cifar"))
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--kernel-groups", default="conv3x3,conv1x1",
                      help="bench_kernels groups also timed under each setting ('' for none)")
  parser.add_argument("--kernel-repeats", type=int, default=5)
  parser.add_argument("--json", default="")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    print("RESULT " + json.dumps(_child(args.workload, args.repeats, args.child,
                                        args.kernel_groups, args.kernel_repeats)))
    return None

  settings = [""] + [f for f in args.flags.split(",") if f]
  rows, reference = [], None
  with tempfile.TemporaryDirectory() as tmp:
    for i, flag in enumerate(settings):
      out = os.path.join(tmp, f"{i}.npz")
      env = dict(os.environ, XLA_FLAGS=flag)
      load = os.getloadavg()[0]
      proc = subprocess.run([sys.executable, "-m", "benchmarks.xla_flags_check",
                             f"--workload={args.workload}", f"--repeats={args.repeats}",
                             f"--kernel-groups={args.kernel_groups}",
                             f"--kernel-repeats={args.kernel_repeats}",
                             f"--child={out}"], env=env, capture_output=True, text=True)
      row = {"xla_flags": flag, "load_average_1min_before": round(load, 2)}
      result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
      if proc.returncode or not result:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        row["error"] = next((line for line in lines if "Unknown flag" in line),
                            lines[-1] if lines else "")
        row["accepted"] = "Unknown flag" not in row["error"]
      else:
        row.update(json.loads(result[0][len("RESULT "):]), accepted=True)
        outputs = dict(np.load(out))
        if reference is None:
          reference = outputs
        else:
          row["metrics_relative_difference"] = _relative_difference(reference["metrics"],
                                                                    outputs["metrics"])
          row["params_max_abs_difference"] = float(
              np.max(np.abs(reference["params"] - outputs["params"])))
          row["same_results"] = row["metrics_relative_difference"] <= RTOL
          row["same_compiled_program"] = row["hlo_sha256"] == rows[0]["hlo_sha256"]
          row["speedup"] = rows[0]["median_s"] / row["median_s"]
      rows.append(row)
      print(json.dumps(row), flush=True)
  print(markdown({"rows": rows, "workload": args.workload}))
  if args.json:
    from benchmarks.provenance import provenance
    with open(args.json, "w") as f:
      json.dump({"provenance": provenance(argv), "workload": args.workload,
                 "repeats": args.repeats, "rtol": RTOL, "rows": rows}, f, indent=2)
  return rows


def markdown(results) -> str:
  """The table of a results file written by ``main`` (``benchmarks.report``)."""
  lines = [f"| XLA_FLAGS | {results['workload']} step (s) | speed-up | first step: compile "
           "wall (CPU) s | fused kernels | oneDNN calls | outputs vs no flag |",
           "|---|---|---|---|---|---|---|"]
  for r in results["rows"]:
    flag = f"`{r['xla_flags']}`" if r["xla_flags"] else "(none)"
    if "error" in r:
      lines.append(f"| {flag} | {'rejected' if not r['accepted'] else 'failed'}: "
                   f"{r['error'][:120]} | | | | | |")
      continue
    compile_s = r["trace_and_lower_s"] + r["xla_compile_s"]
    compile_cpu = r["trace_and_lower_cpu_s"] + r["xla_compile_cpu_s"]
    same = ("reference" if "same_results" not in r else
            f"{'same' if r['same_results'] else 'DIFFERENT'} (metrics "
            f"{r['metrics_relative_difference']:.1e} relative; parameters after one step "
            f"{r['params_max_abs_difference']:.1e} absolute)"
            + ("; the same compiled program" if r.get("same_compiled_program") else ""))
    lines.append(f"| {flag} | {r['median_s']:.4g} | {r.get('speedup', 1.0):.2f}x | "
                 f"{compile_s:.1f} ({compile_cpu:.1f}) | {r['hlo_fusions']:,} | "
                 f"{r['onednn_custom_calls']} | {same} |")
  ok = [r for r in results["rows"] if "error" not in r and r.get("kernels")]
  if ok:
    flags = [f"`{r['xla_flags']}`" if r["xla_flags"] else "(none)" for r in ok]
    lines += ["", "| kernel | " + " | ".join(f"{f} ms (GFLOP/s)" for f in flags) + " |",
              "|---|" + "---|" * len(ok)]
    for i, k in enumerate(ok[0]["kernels"]):
      cells = []
      for r in ok:
        row = r["kernels"][i]
        rate = f" ({row['gflops_per_s']:.0f})" if row.get("gflops_per_s") else ""
        cells.append(f"{1e3 * row['seconds']:.2f}{rate}")
      lines.append(f"| {k['group']}: {k['kernel']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
