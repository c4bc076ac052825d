"""The step-speed benchmark (benchmarks/bench_steps.py) and its PyTorch side
(benchmarks/original_step.py).

The original-side tests need PyTorch (the 'bench' extra) and a clone of
github.com/izmailovpavel/flowgmm named by the environment variable FLOWGMM_ORIGINAL; they
are skipped without either. The rest run everywhere, without PyTorch.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ORIGINAL = os.environ.get("FLOWGMM_ORIGINAL", "")


def test_library_never_imports_torch():
  """PyTorch is a benchmark extra, never a dependency of the library."""
  pattern = re.compile(r"^\s*(import torch|from torch\b)", re.M)
  offenders = [str(p.relative_to(REPO)) for p in (REPO / "flowgmm_jax").rglob("*.py")
               if pattern.search(p.read_text())]
  assert not offenders, offenders


def test_bench_steps_toy_runs_without_torch(tmp_path):
  """The CLI on the toy workload, one repeat: a time, a FLOP count > 0, and (without
  --original) PyTorch never imported."""
  out = tmp_path / "bench.json"
  code = ("import runpy, sys\n"
          f"sys.argv = ['bench_steps', '--only=toy', '--repeats=1', '--json={out}']\n"
          "runpy.run_module('benchmarks.bench_steps', run_name='__main__')\n"
          "assert 'torch' not in sys.modules, 'bench_steps imported torch'\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| toy |" in proc.stdout and "original" not in proc.stdout
  report = json.loads(out.read_text())
  assert report["header"]["cores"] >= 1 and "torch" not in report["header"]
  (row,) = report["rows"]
  assert row["workload"] == "toy" and row["median_s"] > 0
  assert row["flops"] > 0 and row["gflops_per_s"] > 0
  assert row["params"] == 1_323_550  # the compact conditioners (models/tabular.py)
  assert row["xla_compile_s"] > 0 and row["hlo_fusions"] > 0
  assert row["hlo_dots"] > 0 and row["hlo_convolutions"] == 0  # a tabular flow: dense only


def test_bench_kernels_reports_every_kernel(tmp_path):
  """The kernel benchmark at a tiny scale: every row timed, FLOP rates where FLOPs are
  counted, bandwidths where bytes are; the 1x1 convolution both ways (the rates themselves
  are the benchmark's job, not a test's)."""
  from benchmarks import bench_kernels
  out = tmp_path / "kernels.json"
  rows = bench_kernels.main(["--scale=0.01", "--repeats=1", f"--json={out}"])
  groups = {r["group"] for r in rows}
  assert groups == {"stream", "dispatch", "matmul", "text dots", "conv3x3", "conv1x1"}
  assert all(r["seconds"] > 0 for r in rows)
  assert all(r["gflops_per_s"] > 0 for r in rows if r["group"] in ("matmul", "conv3x3"))
  assert all(r["gb_per_s"] > 0 for r in rows if r["group"] == "stream")
  names = [r["kernel"] for r in rows if r["group"] == "conv1x1"]
  assert any("lax conv" in n for n in names) and any("matrix product" in n for n in names)
  assert json.loads(out.read_text())["rows"] == rows


def _original():
  pytest.importorskip("torch")
  if not ORIGINAL or not os.path.isdir(os.path.join(ORIGINAL, "flow_ssl")):
    pytest.skip("set FLOWGMM_ORIGINAL to a clone of github.com/izmailovpavel/flowgmm")
  from benchmarks import original_step
  return original_step.load_original(ORIGINAL)


def test_original_toy_step_matches_ours():
  """The original's toy model has exactly the parameters of ours in the original's layout,
  its step runs and trains, and XLA's FLOP count of our step in that layout covers torch's
  matmul count (the excess is the optimiser's elementwise work on 1.3 M parameters)."""
  orig = _original()
  from benchmarks import bench_steps, original_step
  _, x, y, _, k = bench_steps.workload("toy")
  step = original_step.build_step(orig, "toy", x, y, k)
  ours = bench_steps.original_layout_counts("toy")
  assert step.num_params == ours["params"] == 1_331_240
  before = [p.detach().clone() for p in step.model.parameters()]
  flops = original_step.count_flops(step.step)
  loss = float(step.step())
  assert np.isfinite(loss)
  assert any(not (p == q).all() for p, q in zip(step.model.parameters(), before))
  assert 1.0 <= ours["flops"] / flops < 1.5, (ours["flops"], flops)


def test_original_prior_built_once_changes_no_number():
  """The one change of the 'prior built once' variant: same losses step by step."""
  orig = _original()
  from benchmarks import bench_steps, original_step
  _, x, y, _, k = bench_steps.workload("toy")
  shipped = original_step.build_step(orig, "toy", x, y, k, prior="shipped", seed=3)
  once = original_step.build_step(orig, "toy", x, y, k, prior="once", seed=3)
  for _ in range(3):
    assert float(shipped.step()) == pytest.approx(float(once.step()), rel=1e-6)


def test_crop_flip_is_a_padded_crop_and_a_mirror():
  torch = pytest.importorskip("torch")
  from benchmarks.original_step import crop_flip
  x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8) + 1
  out = crop_flip(x, torch.Generator().manual_seed(0), padding=2)
  assert out.shape == x.shape
  padded = torch.nn.functional.pad(x, (2,) * 4)
  for b in range(2):
    windows = [padded[b, :, i:i + 8, j:j + 8] for i in range(5) for j in range(5)]
    assert any(torch.equal(out[b], w) or torch.equal(out[b], w.flip(-1)) for w in windows)


def test_bench_kernels_filter_gradient_rewrites_equal_jax_vjp():
  """The two filter-gradient rewrites the kernel benchmark times compute the real thing."""
  import jax
  import jax.numpy as jnp
  from benchmarks import bench_kernels as bk
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 6, 5, 3)), jnp.float32)
  dy = jnp.asarray(rng.normal(size=(2, 6, 5, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
  expected = jax.vjp(bk._conv, x, w)[1](dy)[1]
  np.testing.assert_allclose(bk._filter_grad_taps(x, dy), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(bk._filter_grad_batch_conv(x, dy), expected, rtol=1e-5, atol=1e-5)


def test_bench_fit_large_table_reports_time_memory_and_failures(tmp_path):
  """--rows: one child process per method; its fit time, accuracy and memory (peak >= the
  data's resident set), and a method past --timeout reported as stopped, not a crash."""
  from benchmarks import bench_fit
  x, y, x_test, y_test = bench_fit.synthetic_table(3000, 4, classes=3, seed=1)
  assert x.shape == (3000, 4) and x_test.shape == (bench_fit.TEST_ROWS, 4)
  assert np.bincount(y[y >= 0]).tolist() == [10, 10, 10] and set(y_test) == {0, 1, 2}
  out = tmp_path / "big.json"
  bench_fit.main(["--rows=3000", "--features=4", "--methods=selftraining", f"--json={out}"])
  (row,) = json.loads(out.read_text())["rows"]
  assert row["fit_s"] > 0 and row["accuracy"] > 0.8
  assert row["peak_mib"] >= row["data_mib"] > 0 and row["fit_mib"] == pytest.approx(
      row["peak_mib"] - row["data_mib"])
  (row,) = bench_fit.main(["--rows=3000", "--features=4", "--methods=labelspreading",
                           "--timeout=0.01"])
  assert row["failed"] == "stopped after 0.01 s (--timeout)"
