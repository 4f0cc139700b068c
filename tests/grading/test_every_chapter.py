"""Every chapter's exercises: the solution earns full marks, the blank exercise zero.

The functions are taken from the notebooks' solution cells (role "solution" in the cell's
``course_lib`` metadata), so the test follows the notebooks; each exercise is graded by its
own check from the catalog, on fresh random draws.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from grading_helpers import chapter_module

from course_lib.grading import catalog

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = catalog.chapters()
MIN_CASES = {"05": 4, "06": 4}  # draws each check must grade (3 elsewhere)


def test_thirty_exercises_in_chapters_01_to_09() -> None:
    counts = {ch: len(catalog.chapter_exercises(ch)) for ch in CHAPTERS}
    core = {ch: n for ch, n in counts.items() if "01" <= ch <= "09"}
    assert set(core) == {f"{n:02d}" for n in range(1, 10)}, counts
    assert all(n >= 3 for n in core.values()) and sum(core.values()) >= 30, counts


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_solution_full_marks_and_blank_zero(chapter: str, tmp_path: Path) -> None:
    """On two seeds: every solution passes all of its cases (3 or more, see MIN_CASES); every blank
    exercise scores zero and is reported as not done (not as wrong)."""
    solution = chapter_module("solutions", chapter, tmp_path)
    blank = chapter_module("exercises", chapter, tmp_path)
    for exercise in catalog.chapter_exercises(chapter):
        for seed in (0, 1):
            good = exercise.run(getattr(solution, exercise.function), seed=seed)
            assert good.passed and good.points == good.max_points, good.report()
            need = MIN_CASES.get(chapter, 3)
            assert good.cases >= need, f"{exercise.id}: {good.cases} cases, want {need}"
        empty = exercise.run(getattr(blank, exercise.function), seed=0)
        assert empty.points == 0, empty.report()
        assert empty.messages[0].startswith("not done yet"), empty.report()
