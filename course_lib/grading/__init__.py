"""Graded exercises: generating them from solutions, checking them, grading submissions.

Glossary: an *exercise id* is ``"NN.M"`` (chapter ``NN``, exercise ``M``); a *solution
notebook* is ``solutions/NN_name.ipynb``, the single source of the exercises; an
*exercise notebook* is ``exercises/NN_name.ipynb``, generated from it.

* :mod:`.checks` -- what a notebook's check cell calls: ``check("01.1", stable_softmax)``
  grades the function on fresh random inputs and edge cases against the float64 reference
  and prints what is wrong; ``summary("01")`` totals the chapter.
* :mod:`.catalog` and ``chNN_*.py`` -- the exercises of each chapter.
* :mod:`.generate` -- ``exercises/`` from ``solutions/`` (nbgrader's ``### BEGIN SOLUTION``
  / ``### END SOLUTION`` markers), and the check that the two folders agree.
* :mod:`.grade` -- the instructor's command: run every submitted notebook in a fresh kernel
  with its own check cells and write a table of points.

Command line: ``python -m course_lib.grading generate | check-sync | grade SUBMISSIONS``.
Importing this package is cheap; submodules load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "check": "checks",
    "check_function": "checks",
    "summary": "checks",
    "graded_check": "checks",
    "Case": "checks",
    "Exercise": "checks",
    "Hint": "checks",
    "Result": "checks",
    "make_exercise": "generate",
    "generate": "generate",
    "check_in_sync": "generate",
    "grade_notebook": "grade",
    "grade_folder": "grade",
}
_SUBMODULES = {"checks", "catalog", "generate", "grade", "scoreboard"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | _SUBMODULES)
