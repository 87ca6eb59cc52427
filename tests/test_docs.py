"""The docs' references to tests: every `test_file.py::test_name` in README.md, CONTRIBUTING.md
and docs/ names a test function of that file. A bare `::test_name` belongs to the last file
named before it in the same table cell or line."""

from __future__ import annotations

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"(?:tests/)?(test_\w+\.py)?::(test_\w+)")


def doc_files() -> list[pathlib.Path]:
    return [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").rglob("*.md"))]


def broken_references(text: str, tests_dir: pathlib.Path) -> list[str]:
    """`file::test` references of `text` that name no test function in `tests_dir`, as
    'line N: file::test' (file '?' where no file was named before a bare `::test`)."""
    bad = []
    for number, line in enumerate(text.splitlines(), 1):
        for cell in line.split("|"):
            current = None
            for match in REFERENCE.finditer(cell):
                current = match.group(1) or current
                path = tests_dir / current if current else None
                source = path.read_text() if path and path.is_file() else ""
                if not re.search(rf"^def {match.group(2)}\b", source, re.M):
                    bad.append(f"line {number}: {current or '?'}::{match.group(2)}")
    return bad


def test_every_test_the_docs_name_exists():
    found = {str(p.relative_to(REPO)): broken_references(p.read_text(), REPO / "tests")
             for p in doc_files()}
    assert {f: b for f, b in found.items() if b} == {}
    assert sum(p.read_text().count("::test_") for p in doc_files()) >= 30  # the check sees them


def test_a_reference_to_another_file_or_a_missing_test_is_reported(tmp_path):
    (tmp_path / "test_a.py").write_text("def test_one():\n    pass\n")
    (tmp_path / "test_b.py").write_text("def test_two():\n    pass\n")
    text = ("| x | `test_a.py::test_one`, `::test_two` |\n"
            "`tests/test_b.py::test_two`, `::test_two`, `test_c.py::test_one` `::test_three`\n")
    assert broken_references(text, tmp_path) == ["line 1: test_a.py::test_two",
                                                 "line 2: test_c.py::test_one",
                                                 "line 2: test_c.py::test_three"]


def test_the_results_readme_lists_every_raw_output_and_the_docs_cite_only_those():
    """benchmarks/results/README.md names each file beside it (`name`), and every
    benchmarks/results/<file> that docs/performance.md cites is there."""
    results = REPO / "benchmarks" / "results"
    listed = set(re.findall(r"^\| `([^`]+)`", (results / "README.md").read_text(), re.M))
    present = {p.name for p in results.iterdir() if p.name != "README.md"}
    assert present - listed == set()
    assert listed - present == set()
    cited = set(re.findall(r"benchmarks/results/([\w.-]+\.jsonl)",
                           (REPO / "docs" / "performance.md").read_text()))
    assert len(cited) >= 5 and cited - present == set()
