"""The README's and docs' results tables agree with the results files they are made from."""

from __future__ import annotations

import json

import numpy as np

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
  assert text.startswith("before\n") and text.endswith("<!-- /results -->\nafter\n")
  assert f"{100 * np.mean([r['accuracy'] for r in wine]):.1f} ± " in text
