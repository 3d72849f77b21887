"""The notebooks check their own lessons: every claim a notebook's text makes about its output is
followed by a check cell (tagged "check", collapsed for readers) that asserts it, so that running the
notebooks (`make test`) fails when a lesson stops holding."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
CHECKED = [
    "01_first_run",
    "02_continuous_batching",
    "04b_mii_inside",
    "05_quantization_and_parallelism",
    "07_quantization_measured",
    "08_serving_frameworks",
    "09_parallelism_measured",
]


def check_cells(path: Path) -> list:
    """The code cells of a notebook tagged "check"."""
    nb = nbformat.read(path, as_version=4)
    return [c for c in nb.cells if c.cell_type == "code" and "check" in c.metadata.get("tags", [])]


def has_assert(source: str) -> bool:
    """Whether the cell's code holds at least one `assert` statement (comments and strings do not count)."""
    return any(isinstance(node, ast.Assert) for node in ast.walk(ast.parse(source)))


def test_the_checked_notebooks_exist():
    names = {p.stem for p in NOTEBOOKS}
    assert set(CHECKED) <= names, set(CHECKED) - names


@pytest.mark.parametrize("name", CHECKED)
def test_notebook_has_check_cells(name):
    cells = check_cells(ROOT / "notebooks" / f"{name}.ipynb")
    assert cells, f"{name} has no cell tagged 'check'"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_check_cell_is_hidden_and_asserts(path):
    for cell in check_cells(path):
        assert cell.metadata.get("jupyter", {}).get("source_hidden") is True, f"{path.stem} {cell.id}: not collapsed"
        assert has_assert(cell.source), f"{path.stem} {cell.id}: a check cell without an assert"
        first = cell.source.lstrip().splitlines()[0]
        assert first.startswith("#"), f"{path.stem} {cell.id}: say in a first-line comment which claim it checks"


def test_has_assert_sees_only_real_asserts():
    assert has_assert("x = 1\nassert x == 1")
    assert not has_assert("# assert x\ns = 'assert x'")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.stem} {cell.id} has outputs"


FRAME_MARKS = ("**What you will learn:**", "**What you need first:**", "**Time:** about")
NEXT_HEADING = "## What to try next"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_with_its_frame_and_ends_with_what_to_try_next(path):
    """The notebooks read as one course: each opens (right under its title) with what you will learn,
    what you need from the notebooks before and about how long it takes, and ends with what to try next."""
    cells = nbformat.read(path, as_version=4).cells
    frame = next((c for c in cells[:3] if c.cell_type == "markdown" and FRAME_MARKS[0] in c.source), None)
    assert frame is not None, f"{path.stem}: no 'What you will learn' cell under the title"
    for mark in FRAME_MARKS:
        assert mark in frame.source, f"{path.stem}: the opening frame lacks {mark!r}"
    assert re.search(r"\*\*Time:\*\* about \d+ minutes", frame.source), f"{path.stem}: say how many minutes"
    ends = [i for i, c in enumerate(cells) if c.cell_type == "markdown" and c.source.startswith(NEXT_HEADING)]
    assert ends, f"{path.stem}: no '{NEXT_HEADING}' cell"
    # the last section: only a cell or two (e.g. an export cell) may follow it
    assert ends[-1] >= len(cells) - 3, f"{path.stem}: '{NEXT_HEADING}' is not at the end"
    assert re.search(r"notebook \*\*0\d\*\*|docs/workshop\.md", cells[ends[-1]].source), (
        f"{path.stem}: say which notebook comes next"
    )
