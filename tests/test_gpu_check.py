"""benchmarks/gpu_check.py, the prepared accelerator check, on the CPU: --tiny runs every row
and the training run within its budget and writes its JSON after each row; a budget too small
skips rows with their reasons and still writes valid JSON."""

import argparse
import json
import os

import numpy as np
import pytest
from conftest import missing_shared_data


def test_peaks_rows_and_reference():
  from benchmarks import gpu_check
  assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == (989.4, None)
  assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3", "float32") == (67.0, 494.7)
  assert gpu_check.peak_tflops("NVIDIA H200", "float32") == (67.0, 494.7)
  assert gpu_check.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == (756.0, None)
  assert gpu_check.peak_tflops("cpu", "float32") == (None, None)
  assert gpu_check.peak_tflops("NVIDIA GH200 480GB", "bfloat16") == (989.4, None)
  assert gpu_check.parse_rows("cifar:bfloat16:512,mnist:float32:64") == (
      ("cifar", "bfloat16", 512), ("mnist", "float32", 64))
  for bad in ("cifar:float16:64", "svhn:float32:64", "cifar:float32:63", "cifar:float32"):
    with pytest.raises(argparse.ArgumentTypeError, match="bad row"):
      gpu_check.parse_rows(bad)
  reference = gpu_check.reference_curve()
  assert sorted(reference) == [1000, 2000, 3000, 4000, 5000, 6000]
  assert len(reference[6000]["accuracy"]) == 3
  assert min(reference[6000]["accuracy"]) > 0.95


def test_gpu_check_budget_too_small_skips_every_row_with_its_reason(tmp_path):
  from benchmarks import gpu_check
  out = tmp_path / "gpu.json"
  report = gpu_check.main(["--tiny", "--budget-s=1", f"--out={out}"])
  assert json.loads(out.read_text()) == report
  assert report["complete"]
  assert [(r["workload"], r["compute_dtype"], r["per_device_batch"]) for r in report["rows"]] \
      == list(gpu_check.TINY_ROWS)
  for row in report["rows"]:
    assert "left" in row["skipped"], row
    assert "estimated at 5 s" in row["skipped"], row
  assert "training needs at least 10 s" in report["training"]["skipped"]
  assert report["total_s"] < 1.0


@pytest.mark.shared_data
def test_gpu_check_tiny_runs_within_its_budget_writing_json_after_each_row(tmp_path,
                                                                          monkeypatch):
  """A tiny row timed (positive speeds, FLOPs from the jaxpr, MFU against a given peak, a
  warm compile that loads from the cache), the training curve, all within --budget-s=120,
  and the file valid after every write (also under $OUT). One row of the two --tiny rows
  (the other is the same code with another config): CI time."""
  from benchmarks import gpu_check
  from flowgmm_jax.data import DataNotFoundError, load_mnist
  try:
    load_mnist(source="files", max_examples=10)
  except DataNotFoundError as e:
    missing_shared_data(f"MNIST IDX files not found: {e}")
  out = tmp_path / "gpu.json"
  monkeypatch.setenv("OUT", str(tmp_path / "out"))
  written = []
  write = gpu_check.write_json

  def recording_write(path, report):
    write(path, report)
    if str(path) == str(out):
      written.append(json.loads(out.read_text()))  # valid JSON on disk after every write

  monkeypatch.setattr(gpu_check, "write_json", recording_write)
  report = gpu_check.main(["--tiny", "--budget-s=120", f"--out={out}", "--peak-tflops=1",
                           "--rows=cifar:float32:8"])
  assert json.loads((tmp_path / "out" / "gpu_check.json").read_text()) == report
  assert [len(w["rows"]) for w in written] == [0, 1, 1]
  assert [w["complete"] for w in written] == [False, False, True]
  assert report["tiny"]
  assert report["total_s"] <= 120
  for row in report["rows"]:
    assert "skipped" not in row, row
    assert "failed" not in row, row
    for key in ("median_s", "pipelined_s", "images_per_s", "flops_per_device",
                "tflops_per_s_per_device", "mfu", "compile_cold_s", "compile_warm_s",
                "params"):
      assert np.isfinite(row[key]), (row["workload"], key, row[key])
      assert row[key] > 0, (row["workload"], key, row[key])
    assert row["global_batch"] == row["per_device_batch"] == 8
    assert row["loss_finite"]
    assert row["mfu"] == pytest.approx(row["tflops_per_s_per_device"])
    assert row["warm"]["cache_hits"] >= 1, row["warm"]
    assert sum(row["collectives_per_step"].values()) > 0  # gradients averaged over the mesh
    # More arithmetic per step than one multiply-add per parameter per image.
    assert row["flops_per_device"] > 2 * row["params"] * row["global_batch"]
  training = report["training"]
  # All 4 steps, or (on a loaded machine) stopped where the next evaluation would not fit.
  assert training["steps_done"] == 4 or "would not have finished" in training["stopped"]
  assert [e["step"] for e in training["eval"]] == [2, 4][:len(training["eval"])]
  for e in training["eval"]:
    assert 0.0 <= e["accuracy"] <= 1.0
    assert np.isfinite(e["bpd"])
    assert e["bpd"] > 0
    assert e["cpu_reference_accuracy"] is None  # the reference has steps 1000, 2000, ...
  assert not os.path.exists(f"{out}.tmp{os.getpid()}")
