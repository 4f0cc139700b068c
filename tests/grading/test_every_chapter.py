"""Every chapter's exercises: the solution earns full marks, the blank exercise zero.

The functions are taken from the notebooks' solution cells (role "solution" in the cell's
``course_lib`` metadata), so the test follows the notebooks; each exercise is graded by its
own check from the catalog, on fresh random draws.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import nbformat
import pytest

from course_lib.grading import catalog

ROOT = Path(__file__).resolve().parents[2]
PRELUDE = """import numpy as np
import torch

from course_lib import runtime

runtime.require_triton()
import triton
import triton.language as tl
"""
CHAPTERS = catalog.chapters()


def _notebook(folder: str, chapter: str) -> Path:
    (path,) = (ROOT / folder).glob(f"{chapter}_*.ipynb")
    return path


def _module(folder: str, chapter: str, tmp_path: Path) -> ModuleType:
    nb = nbformat.read(_notebook(folder, chapter), as_version=4)
    cells = [
        c.source for c in nb.cells if c.metadata.get("course_lib", {}).get("role") == "solution"
    ]
    assert cells, f"{folder}/{chapter}: no solution cells"
    path = tmp_path / f"{folder}_{chapter}.py"
    path.write_text(PRELUDE + "\n\n" + "\n\n".join(cells) + "\n")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_thirty_exercises_in_chapters_01_to_09() -> None:
    counts = {ch: len(catalog.chapter_exercises(ch)) for ch in CHAPTERS}
    core = {ch: n for ch, n in counts.items() if "01" <= ch <= "09"}
    assert set(core) == {f"{n:02d}" for n in range(1, 10)}, counts
    assert all(n >= 3 for n in core.values()) and sum(core.values()) >= 30, counts


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_solution_full_marks_and_blank_zero(chapter: str, tmp_path: Path) -> None:
    solution = _module("solutions", chapter, tmp_path)
    blank = _module("exercises", chapter, tmp_path)
    for exercise in catalog.chapter_exercises(chapter):
        good = exercise.run(getattr(solution, exercise.function), seed=3)
        assert good.passed and good.points == good.max_points, good.report()
        empty = exercise.run(getattr(blank, exercise.function), seed=3)
        assert empty.points == 0, empty.report()
