"""The notebooks stay thin (issue: notebooks that read like the paper): little code in all,
no logic repeated between chapters (it belongs in clustr_lib), outputs stripped."""

from collections import Counter
from itertools import combinations

import nbformat

from clustr_lib import book

MAX_TOTAL_LINES = 450  # code lines over every chapter
MAX_SHARED_LINES = 10  # identical code lines any two chapters may share


def code_lines(name: str) -> Counter:
    """Non-blank code lines of a chapter (stripped of indentation), with multiplicity."""
    nb = nbformat.read(book.NOTEBOOKS / f"{name}.ipynb", as_version=4)
    return Counter(
        line.strip()
        for cell in nb.cells
        if cell.cell_type == "code"
        for line in cell.source.splitlines()
        if line.strip()
    )


def test_the_notebooks_hold_little_code_and_repeat_none_of_it():
    lines = {name: code_lines(name) for name in book.chapters()}
    total = sum(sum(c.values()) for c in lines.values())
    assert total <= MAX_TOTAL_LINES, f"{total} code lines in the notebooks"
    for a, b in combinations(lines, 2):
        shared = sum((lines[a] & lines[b]).values())
        assert shared <= MAX_SHARED_LINES, (a, b, sorted((lines[a] & lines[b]).elements()))


def test_the_source_notebooks_carry_no_outputs():
    for name in book.chapters():
        nb = nbformat.read(book.NOTEBOOKS / f"{name}.ipynb", as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, name
