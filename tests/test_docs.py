"""The docs' references to tests: every `test_file.py::test_name` in the Markdown files of
`doc_files` names a test function of that file. A bare `::test_name` belongs to the last file
named before it in the same table cell or line. Within a cell or line, the tests cited after
`slow:` are marked slow and those before it (or in a cell without it) are not. And their
links: every relative Markdown link names a file that exists, and a `#section` of a Markdown
file one of its headings. And their code names: every `hgmt.module.name` or `module.name`
(a module of hgmt) they cite names a module or an attribute the code has."""

from __future__ import annotations

import ast
import functools
import gc
import pathlib
import re
from collections.abc import Iterator

REPO = pathlib.Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"(?:tests/)?(test_\w+\.py)?::(test_\w+)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
SLOW_LABEL = re.compile(r"\bslow:")


def doc_files() -> list[pathlib.Path]:
    return [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").rglob("*.md")),
            REPO / "data_builders" / "surreal" / "README.md", REPO / "experiments" / "README.md",
            REPO / "benchmarks" / "results" / "README.md"]


def _citations(text: str) -> Iterator[tuple[int, str | None, str, bool]]:
    """(line number, test file or None, test name, cited after `slow:` in its cell) of each
    `file::test` and bare `::test` of `text`."""
    for number, line in enumerate(text.splitlines(), 1):
        for cell in line.split("|"):
            current = None
            label = SLOW_LABEL.search(cell)
            for match in REFERENCE.finditer(cell):
                current = match.group(1) or current
                after = label is not None and match.start() > label.start()
                yield number, current, match.group(2), after


def _is_slow_mark(node: ast.expr) -> bool:
    """`pytest.mark.slow`, called or not."""
    return ast.unparse(node.func if isinstance(node, ast.Call) else node) == "pytest.mark.slow"


@functools.lru_cache(maxsize=64)
def marked_tests(source: str) -> dict[str, bool]:
    """{name: marked slow} of the module-level test functions of `source`: slow by a
    `@pytest.mark.slow` decorator or a module-level `pytestmark` that holds it (a mark on
    some of a test's parameters does not count). Cached by the source: the docs cite a test
    file hundreds of times. The dict is shared: do not change it."""
    # Without the garbage collector while parsing: a finalizer it runs inside the parse (an
    # asyncio task of an earlier test logging its error) makes CPython 3.11's ast constructor
    # raise "SystemError: AST constructor recursion depth mismatch".
    gc.disable()
    try:
        tree = ast.parse(source)
    finally:
        gc.enable()
    module_slow = False
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            value = node.value
            marks = value.elts if isinstance(value, (ast.List, ast.Tuple)) else [value]
            module_slow = module_slow or any(_is_slow_mark(m) for m in marks)
    return {node.name: module_slow or any(_is_slow_mark(d) for d in node.decorator_list)
            for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name.startswith("test_")}


def _tests_of(tests_dir: pathlib.Path, name: str | None) -> dict[str, bool]:
    path = tests_dir / name if name else None
    return marked_tests(path.read_text()) if path and path.is_file() else {}


def broken_references(text: str, tests_dir: pathlib.Path) -> list[str]:
    """`file::test` references of `text` that name no test function in `tests_dir`, as
    'line N: file::test' (file '?' where no file was named before a bare `::test`)."""
    return [f"line {number}: {file or '?'}::{test}"
            for number, file, test, _ in _citations(text)
            if test not in _tests_of(tests_dir, file)]


def misplaced_slow(text: str, tests_dir: pathlib.Path) -> list[str]:
    """References of `text` whose place says the wrong thing about their slow marker: cited
    after `slow:` but not marked slow, or before it (or with no `slow:` in the cell) but
    marked, as 'line N: file::test is (not) marked slow'."""
    bad = []
    for number, file, test, after in _citations(text):
        slow = _tests_of(tests_dir, file).get(test)
        if slow is not None and slow != after:
            bad.append(f"line {number}: {file}::{test} is {'' if slow else 'not '}marked slow")
    return bad


def test_every_test_the_docs_name_exists():
    found = {str(p.relative_to(REPO)): broken_references(p.read_text(), REPO / "tests")
             for p in doc_files()}
    assert {f: b for f, b in found.items() if b} == {}
    assert sum(p.read_text().count("::test_") for p in doc_files()) >= 30  # the check sees them


def test_the_docs_cite_slow_tests_after_slow_and_only_those():
    found = {str(p.relative_to(REPO)): misplaced_slow(p.read_text(), REPO / "tests")
             for p in doc_files()}
    assert {f: b for f, b in found.items() if b} == {}
    cited_slow = sum(after for p in doc_files() for *_, after in _citations(p.read_text()))
    assert cited_slow >= 10  # the check sees them


def test_a_slow_test_cited_before_slow_or_a_quick_one_after_is_reported(tmp_path):
    (tmp_path / "test_a.py").write_text(
        "import pytest\n\n\ndef test_quick():\n    pass\n\n\n@pytest.mark.slow\n"
        "def test_long():\n    pass\n\n\n@pytest.mark.parametrize('x', [pytest.param(1, "
        "marks=pytest.mark.slow)])\ndef test_some(x):\n    pass\n")
    (tmp_path / "test_b.py").write_text(
        "import pytest\n\npytestmark = [pytest.mark.slow]\n\n\ndef test_all():\n    pass\n")
    text = ("| x | `test_a.py::test_quick`, `::test_some`; slow: `::test_long` |\n"
            "| x | `test_a.py::test_long`; slow: `::test_quick`, `test_b.py::test_all` |\n"
            "`test_b.py::test_all` and `test_a.py::test_quick`\n")
    assert misplaced_slow(text, tmp_path) == ["line 2: test_a.py::test_long is marked slow",
                                              "line 2: test_a.py::test_quick is not marked slow",
                                              "line 3: test_b.py::test_all is marked slow"]
    assert broken_references(text, tmp_path) == []


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


def _heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of the headings of a Markdown `text`: lower case, punctuation but `-`
    and `_` dropped, spaces as `-`."""
    return {re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def broken_links(path: pathlib.Path) -> list[str]:
    """The relative links of the Markdown file `path` (not URLs) to a file that does not
    exist, or to a `#section` its Markdown target has no heading for."""
    bad = []
    for match in LINK.finditer(path.read_text()):
        link = match.group(1)
        if re.match(r"^[a-z]+:", link):  # https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            bad.append(f"{link}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _heading_anchors(file.read_text()):
            bad.append(f"{link}: no such section")
    return bad


def test_every_relative_link_of_the_docs_resolves(tmp_path):
    found = {str(p.relative_to(REPO)): broken_links(p) for p in doc_files()}
    assert {f: b for f, b in found.items() if b} == {}
    assert sum(len(LINK.findall(p.read_text())) for p in doc_files()) >= 100  # it sees them
    (tmp_path / "a.md").write_text("# Title\n\n## The `x` section, here\n")
    (tmp_path / "b.md").write_text(
        "[ok](a.md#the-x-section-here) [self](#top) [web](https://e.org/#x) [gone](c.md) "
        "[top](a.md#title) [none](a.md#other)\n\n# Top\n")
    assert broken_links(tmp_path / "b.md") == ["c.md: no such file", "a.md#other: no such section"]


# `module.name` or `hgmt.module.name` in backticks (a call's arguments allowed): a code name
# the docs cite, checked when it starts with `hgmt.` or with the last part of one module's
# dotted name (`workdirs.lock_file`); file names and config fields are not code names.
CODE_NAME = re.compile(r"`((?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*)(?:\([^`]*\))?`")
FILE_SUFFIXES = {"py", "json", "jsonl", "md", "png", "sh", "sbatch", "txt", "mp4", "mat",
                 "toml", "cfg", "log", "npz", "pb", "csv"}
# Names of earlier commits that dated measurements cite as they were then.
HISTORICAL = {"steps.replicate"}


@functools.cache
def _module_of_last_part() -> dict[str, str]:
    """{last part: dotted name} of hgmt's modules whose last part no other module shares."""
    names = [".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
             for p in (REPO / "hgmt").rglob("*.py")]
    last = [n.rsplit(".", 1)[-1] for n in names]
    return {part: name for part, name in zip(last, names, strict=True) if last.count(part) == 1}


@functools.cache
def _config_fields() -> frozenset[str]:
    """The dotted fields of hgmt's configs (`demo.seed`, `evals.test.protocol`)."""
    from configs import default, demo

    fields = set()
    for config in (default.get_config(), demo.get_config()):
        stack = [("", config)]
        while stack:
            prefix, node = stack.pop()
            for key, value in node.items():
                fields.add(prefix + key)
                if hasattr(value, "items"):
                    stack.append((prefix + key + ".", value))
    return frozenset(fields)


def _resolves(name: str) -> bool:
    """Whether the dotted `name` is a module of hgmt or an attribute reached from one."""
    import importlib

    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        try:
            for attribute in parts[k:]:
                obj = getattr(obj, attribute)
        except AttributeError:
            return False
        return True
    return False


def unresolved_code_names(text: str) -> tuple[list[str], int]:
    """(the code names of `text` that name nothing in hgmt, how many were checked)."""
    bad, checked = [], 0
    for match in CODE_NAME.finditer(text):
        name = match.group(1)
        first, _, rest = name.partition(".")
        if (name.rsplit(".", 1)[-1] in FILE_SUFFIXES or name in HISTORICAL
                or name in _config_fields()):
            continue
        if first == "hgmt":
            full = name
        elif first in _module_of_last_part():
            full = f"{_module_of_last_part()[first]}.{rest}"
        else:
            continue
        checked += 1
        if not _resolves(full):
            bad.append(name)
    return bad, checked


def test_every_code_name_the_docs_cite_resolves():
    """A name moved or renamed in the code and still cited at its old home in the docs."""
    found, checked = {}, 0
    for path in doc_files():
        bad, n = unresolved_code_names(path.read_text())
        checked += n
        if bad:
            found[str(path.relative_to(REPO))] = bad
    assert found == {}
    assert checked >= 200  # it sees them
    assert unresolved_code_names(
        "`workdirs.lock_file(w)`, `hgmt.run_config.load_config`, `hgmt.evaluate`, `a.b`, "
        "`config.json`, `demo.seed`, `workdirs.load_config`, `hgmt.predict.nothing(x)`, "
        "`hgmt.nomodule`") == (["workdirs.load_config", "hgmt.predict.nothing",
                                "hgmt.nomodule"], 6)
