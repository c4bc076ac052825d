"""The README's and docs' results tables agree with the results files they are made from."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import report


def test_every_generated_table_matches_its_results_file():
  stale = [(str(p), name) for p in report.documents() for name in report.update(p, write=False)]
  assert not stale, (f"{stale}: regenerate with python -m benchmarks.report")


def test_a_table_is_computed_from_the_raw_numbers(tmp_path, monkeypatch):
  results = json.loads((report.REPO / report.REPORTS["ssl_suite"].results).read_text())
  wine = results["results"]["wine"]["flowgmm"]
  mean = 100 * np.mean([r["accuracy"] for r in wine])
  assert f"{mean:.1f} ± " in report.render("ssl_suite")
  # One changed number in the results file changes the table, and --check notices.
  wine[0]["accuracy"] = 0.0
  path = tmp_path / "ssl_suite.json"
  path.write_text(json.dumps(results))
  doc = tmp_path / "doc.md"
  doc.write_text("before\n<!-- results: ssl_suite -->\n" + report.render("ssl_suite")
                 + "<!-- /results -->\nafter\n")
  monkeypatch.setitem(report.REPORTS, "ssl_suite",
                      report.Report(str(path), report.REPORTS["ssl_suite"].module))
  assert report.update(doc, write=False) == ["ssl_suite"]
  report.update(doc, write=True)
  assert report.update(doc, write=False) == []
  text = doc.read_text()
  assert text.startswith("before\n")
  assert text.endswith("<!-- /results -->\nafter\n")
  assert f"{100 * np.mean([r['accuracy'] for r in wine]):.1f} ± " in text


def _measured(key: str) -> bool:
  """Keys of measured numbers: accuracies, seconds, kernel counts."""
  return "accuracy" in key or key.endswith("_s") or key in ("seconds", "hlo_fusions")


def _halve_accuracies(obj, under_accuracy=False):
  """``obj`` with every measured number (``_measured``) halved."""
  if isinstance(obj, dict):
    return {k: _halve_accuracies(v, _measured(k)) for k, v in obj.items()}
  if isinstance(obj, list):
    return [_halve_accuracies(v, under_accuracy) for v in obj]
  if under_accuracy and isinstance(obj, (int, float)) and not isinstance(obj, bool):
    return obj / 2
  return obj


def test_every_report_renders_from_its_file_and_changes_with_it(tmp_path, monkeypatch):
  """Each report's table is made from its results file: halving the accuracies in the file
  changes the table (no number of it is typed into the code)."""
  for name, entry in report.REPORTS.items():
    if name == "headline":  # rows read other files; checked below
      continue
    if not (report.REPO / entry.results).exists():  # registered, its run not made yet
      continue
    before = report.render(name)
    results = json.loads((report.REPO / entry.results).read_text())
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(_halve_accuracies(results)))
    monkeypatch.setitem(report.REPORTS, name, report.Report(str(path), entry.module))
    assert report.render(name) != before, name


def test_headline_rows_are_the_detailed_tables_numbers():
  toy = json.loads((report.REPO / "benchmarks/results/toy_table.json").read_text())
  rows = toy["rows"] if isinstance(toy, dict) else toy
  moons = 100 * np.asarray(next(r for r in rows if r["dataset"] == "moons")["accuracy"])
  suite = json.loads((report.REPO / report.REPORTS["ssl_suite"].results).read_text())
  per_seed = 100 * np.mean([[r["accuracy"] for r in t["flowgmm"]]
                            for t in suite["results"].values()], axis=0)  # [seeds]
  text = report.render("headline")
  assert f"{moons.mean():.1f} ± {moons.std():.1f}%" in text
  assert f"FlowGMM {per_seed.mean():.1f} ± {per_seed.std():.1f}%" in text
  # Both panels as one: the mean over all 25 tables, whatever the panels' sizes.
  mixed = json.loads((report.REPO / report.REPORTS["ssl_suite_mixed"].results).read_text())
  both = [np.mean([r["accuracy"] for r in t["flowgmm"]])
          for panel in (suite, mixed) for t in panel["results"].values()]
  assert len(both) == 25
  assert f"mean over 25 tables (± over seeds): FlowGMM {100 * np.mean(both):.1f} ±" in text
  seeds = json.loads((report.REPO / "benchmarks/results/mnist_cpu_seeds.json").read_text())
  mnist = 100 * np.asarray([r["evals"][-1]["eval/accuracy"] for r in seeds["runs"]])
  assert f"{mnist.mean():.1f} ± {mnist.std():.1f}% (seeds 0, 1, 2" in text


def _step_row(workload, ours, shipped, once, **extra):
  return {"workload": workload, "median_s": ours, "original_shipped_median_s": shipped,
          "original_once_median_s": once, "params": 10, "original_params": 10, "flops": 2e9,
          "original_flops": 2e9, "gflops_per_s": 2e9 / ours / 1e9, "first_step_s": 1.0,
          "hlo_fusions": 100, "trace_and_lower_cpu_s": 1.0, "xla_compile_cpu_s": 1.0, **extra}


def test_step_rows_carry_the_ratios_against_both_originals():
  """bench_steps' rows get ours / original and the speed-up against both originals, each
  judged against its target (no compiling: synthetic rows)."""
  from benchmarks import bench_steps
  rows = [bench_steps.add_ratios(_step_row("toy", 0.0015, 0.009, 0.004)),
          bench_steps.add_ratios(_step_row("text", 2.0, 3.0, 2.5)),
          bench_steps.add_ratios(_step_row("cifar", 20.0, 30.0, 25.0, first_step_s=50.0,
                                           hlo_fusions=4000))]
  toy, text, cifar = rows
  assert toy["ratio_vs_shipped"] == pytest.approx(1 / 6)
  assert toy["speedup_vs_shipped"] == pytest.approx(6.0)
  assert toy["speedup_vs_shipped_meets_target"]
  assert not text["speedup_vs_shipped_meets_target"]
  assert cifar["speedup_vs_once"] == pytest.approx(1.25)
  assert cifar["speedup_vs_once_meets_target"]
  steps_md = bench_steps.markdown({"header": {"layout": "scanned"}, "rows": rows})
  assert "| toy | 0.0015 | 0.009 | 0.004 | 0.167 | 0.375 | 6.00x | 2.67x |" in steps_md
