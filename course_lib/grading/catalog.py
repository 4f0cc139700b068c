"""Where the graded exercises are defined: one module per chapter, looked up by id.

Glossary: an *exercise id* is ``"NN.M"``: chapter ``NN`` (two digits), exercise ``M``.

A chapter module (``course_lib/grading/chNN_<name>.py``) defines ``CHAPTER = "NN"``,
``TITLE`` and ``EXERCISES``, a tuple of :class:`course_lib.grading.checks.Exercise`. It must
import neither torch nor Triton at import time (check cells import it in every kernel);
its case makers import them when they run. Adding the file is all it takes: modules named
``chNN_*.py`` in this folder are found by :func:`_discover`.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path
from types import ModuleType
from typing import Any


def _discover() -> dict[str, str]:
    """Chapter -> module name, for every ``chNN_<name>.py`` beside this file."""
    found = {}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        match = re.fullmatch(r"ch(\d\d)_\w+", info.name)
        if match:
            found[match.group(1)] = f"{__package__}.{info.name}"
    return dict(sorted(found.items()))


CHAPTER_MODULES = _discover()

_ID = re.compile(r"^(\d\d)\.\d+$")


def chapters() -> list[str]:
    return sorted(CHAPTER_MODULES)


def _module(chapter: str) -> ModuleType:
    if chapter not in CHAPTER_MODULES:
        raise ValueError(
            f"chapter must be one of {chapters()} (chapters with graded exercises), got {chapter!r}"
        )
    return importlib.import_module(CHAPTER_MODULES[chapter])


def chapter_title(chapter: str) -> str:
    return str(_module(chapter).TITLE)


def chapter_exercises(chapter: str) -> tuple[Any, ...]:
    """The chapter's exercises, in the order the notebook poses them."""
    return tuple(_module(chapter).EXERCISES)


def exercise(exercise_id: str) -> Any:
    """The :class:`~course_lib.grading.checks.Exercise` with id ``"NN.M"``."""
    match = _ID.match(str(exercise_id))
    if not match:
        raise ValueError(f"exercise_id must look like '01.2', got {exercise_id!r}")
    for ex in chapter_exercises(match.group(1)):
        if ex.id == exercise_id:
            return ex
    known = [ex.id for ex in chapter_exercises(match.group(1))]
    raise ValueError(f"exercise_id {exercise_id!r} is not one of chapter's exercises {known}")
