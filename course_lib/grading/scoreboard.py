"""The learner's running tally of checked exercises, kept for the chapter's total cell.

Glossary: an *exercise id* is ``"NN.M"`` (chapter ``NN``, exercise ``M``).

This module holds state only, and the instructor's grader deliberately does not trust it:
a learner's code can reach this object and change it, and that fools only the learner's
own total cell. Grades come from :mod:`course_lib.grading.grade`, which re-runs its own
check cells and reads their structured records (see that module for the threat model).
The grader re-imports every other grading module before each check; this one is left
alone so that the tally survives those re-imports.
"""

from __future__ import annotations

from typing import Any


class Scoreboard:
    """Latest result per exercise id, in the order exercises were first checked."""

    def __init__(self) -> None:
        self._results: dict[str, Any] = {}

    def record(self, result: Any) -> None:
        self._results[result.exercise] = result

    def get(self, exercise_id: str) -> Any | None:
        return self._results.get(exercise_id)

    def results(self) -> list[Any]:
        return list(self._results.values())

    def clear(self) -> None:
        self._results.clear()


SCOREBOARD = Scoreboard()
