"""The README's and docs' results tables, written from ``benchmarks/results/*.json``.

    python -m benchmarks.report            # rewrite every table from its results file
    python -m benchmarks.report --check    # exit 1 if a table differs from its results file

A table lives between ``<!-- results: NAME -->`` and ``<!-- /results -->``; ``REPORTS`` maps
each name to its results file and the module whose ``markdown(results) -> str`` renders it
(benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from benchmarks.provenance import REPO

# The markdown files that may hold generated tables.
DOCUMENTS = ("README.md", "docs/*.md", "benchmarks/README.md")
_REGION = re.compile(r"(<!-- results: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results -->)",
                     re.S)


class Report(NamedTuple):
  results: str   # path of the results JSON, relative to the repository
  module: str    # the benchmark module whose markdown(results) renders it


REPORTS: dict[str, Report] = {
    "headline": Report("benchmarks/results/headline.json", "benchmarks.headline"),
    "ssl_suite": Report("benchmarks/results/ssl_suite.json", "benchmarks.ssl_suite"),
    "ssl_suite_lpc50": Report("benchmarks/results/ssl_suite_lpc50.json", "benchmarks.ssl_suite"),
    "ssl_suite_mixed": Report("benchmarks/results/ssl_suite_mixed.json", "benchmarks.ssl_suite"),
    "ssl_suite_unlabelled": Report("benchmarks/results/ssl_suite_unlabelled.json",
                                   "benchmarks.ssl_suite"),
    "bench_steps": Report("benchmarks/results/bench_steps.json", "benchmarks.bench_steps"),
    "bench_fit_large": Report("benchmarks/results/bench_fit_large.json", "benchmarks.bench_fit"),
    "parity_original": Report("benchmarks/results/parity_original.json",
                              "benchmarks.parity.parity_original"),
}


def md_row(cells) -> str:
  """One row of a markdown table (an empty cell is one space wide)."""
  return "|" + "|".join(f" {c} " if c != "" else " " for c in cells) + "|"


def md_table(head, rows) -> str:
  """A markdown table: the ``head`` cells, then one row per list of cells."""
  return "\n".join([md_row(head), "|" + "---|" * len(head), *map(md_row, rows)])


def provenance_line(results: dict) -> str:
  """How the numbers were made, from the file's ``provenance``: one line, or one per run when
  ``provenance_by_method`` says that several runs made the file's methods (``--merge``)."""
  p = results.get("provenance")
  if not p:  # a file made by hand says where its numbers come from in its "note"
    note = results.get("note")
    return f"_{note}_" if note else (
        "_Made before results files recorded their command, commit and machine._")
  runs = {}
  for method, made in (results.get("provenance_by_method") or {}).items():
    runs.setdefault(json.dumps(made, sort_keys=True), []).append(method)
  if len(runs) > 1:
    return "\n\n".join(f"{', '.join(methods)}: {_one_provenance(json.loads(made))}"
                      for made, methods in runs.items())
  return _one_provenance(p)


def _one_provenance(p: dict) -> str:
  m = p.get("machine", {})
  cores = f"{m['cores']} cores" if m.get("cores") else None
  if cores and m.get("cores_used"):
    cores += f" ({m['cores_used']} used)"
  where = ", ".join(str(v) for v in (m.get("cpu"), cores) if v)
  load = m.get("load_average_1min")
  load = f", load {load} at the start" if load is not None else ""
  note = f" ({p['note']})" if p.get("note") else ""
  return (f"_`{p.get('command', '?')}` at commit `{p.get('commit') or '?'}`, "
          f"{p.get('date', '?')}, {where}{load}{note}._")


def render(name: str) -> str:
  """The markdown of report ``name`` (the table, then the provenance line)."""
  if name not in REPORTS:
    raise KeyError(f"no report named {name!r}; known: {', '.join(REPORTS)}")
  report = REPORTS[name]
  results = json.loads((REPO / report.results).read_text())
  markdown: Callable[[dict], str] = importlib.import_module(report.module).markdown
  return markdown(results).rstrip() + "\n\n" + provenance_line(results) + "\n"


def documents() -> list[Path]:
  return [p for pattern in DOCUMENTS for p in sorted(REPO.glob(pattern)) if p.is_file()]


def update(path: Path, write: bool) -> list[str]:
  """Re-renders every region of ``path``; returns the names of the regions that changed
  (and rewrites the file when ``write``)."""
  text = path.read_text()
  changed = []

  def replace(match):
    name = match.group("name")
    body = render(name)
    if body != match.group("body"):
      changed.append(name)
    return match.group(1) + body + match.group(4)

  new = _REGION.sub(replace, text)
  if write and new != text:
    path.write_text(new)
  return changed


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--check", action="store_true",
                      help="only report tables that differ from their results files")
  args = parser.parse_args(argv)
  stale = []
  for path in documents():
    for name in update(path, write=not args.check):
      stale.append(f"{path.relative_to(REPO)}: {name}")
  if args.check and stale:
    print("tables out of date with their results files (run python -m benchmarks.report): "
          + "; ".join(stale), file=sys.stderr)
    return 1
  for entry in stale:
    print(f"rewrote {entry}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
