"""``exercises/`` from ``solutions/``: solution regions become stubs, outputs are cleared.

Glossary: an *exercise id* is ``"NN.M"``; a *region* is the lines between a ``BEGIN`` and
an ``END`` marker; a *check cell* is a code cell that calls ``check("NN.M", ...)``.

Markers (nbgrader's, so that an instructor can also run the solutions through nbgrader):

* ``### BEGIN SOLUTION`` ... ``### END SOLUTION``: in a code cell the region becomes, at
  the indentation of the ``BEGIN`` line::

      # YOUR CODE HERE
      raise NotImplementedError("exercise 01.1: replace these two lines with your code")

  and in a markdown cell it becomes ``YOUR ANSWER HERE``.
* ``### BEGIN HIDDEN`` ... ``### END HIDDEN`` (also nbgrader's ``### BEGIN HIDDEN TESTS``):
  the region is removed; a cell left empty by it is dropped.

Every code cell loses its outputs and execution count (no solution output survives);
cell ids and metadata stay, so the two notebooks line up cell by cell. :func:`annotate`
adds the metadata nbgrader and the grader read: solution cells ``solution: true``, check
cells ``grade: true`` with their points and ``locked``, the chapter's total cell
``locked`` (and JupyterLab's ``editable``/``deletable`` false for the locked ones).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import nbformat

SOLUTION = ("### BEGIN SOLUTION", "### END SOLUTION")
HIDDEN = ("### BEGIN HIDDEN", "### END HIDDEN")
CODE_STUB = (
    "# YOUR CODE HERE",
    'raise NotImplementedError("{what}: replace these two lines with your code")',
)
MARKDOWN_STUB = "YOUR ANSWER HERE"
CHECK_CALL = re.compile(r"""^\s*check\(\s*["'](\d\d\.\d+)["']""", re.MULTILINE)
TOTAL_CALL = re.compile(r"""^\s*summary\(\s*["'](\d\d)["']""", re.MULTILINE)
NOTEBOOK_NAME = re.compile(r"^(\d\d)_\w+\.ipynb$")
NBGRADER_SCHEMA = 3


def annotate(nb: Any) -> Any:
    """Set the course's and nbgrader's metadata on check, solution and total cells (in place).

    Check cells are found by their ``check("NN.M", ...)`` call, solution cells by their
    ``### BEGIN SOLUTION`` marker (they belong to the next check cell's exercise), the
    total cell by its ``summary("NN")`` call. Returns ``nb``.
    """
    from course_lib.grading.catalog import exercise

    pending: list[Any] = []
    chapter = None
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            if SOLUTION[0] in cell.source:
                pending.append(cell)
            continue
        check_match = CHECK_CALL.search(cell.source)
        total_match = TOTAL_CALL.search(cell.source)
        if SOLUTION[0] in cell.source:
            pending.append(cell)
        elif check_match:
            ex = exercise(check_match.group(1))
            chapter = ex.id[:2]
            _set_meta(cell, "check", ex.id, grade=True, points=ex.points)
            for sol in pending:
                _set_meta(sol, "solution", ex.id, solution=True)
            pending = []
        elif total_match:
            chapter = total_match.group(1)
            _set_meta(cell, "total", chapter)
        if not cell.get("id"):
            cell["id"] = f"cell-{index:03d}"
    if pending:
        raise ValueError(
            f"cell {pending[0].get('id')!r} has a {SOLUTION[0]} region but no check cell after it"
        )
    if chapter is not None:
        nb.metadata.setdefault("course_lib", {})["chapter"] = chapter
    return nb


def _set_meta(
    cell: Any, role: str, ident: str, grade: bool = False, solution: bool = False, points: int = 0
) -> None:
    locked = role in ("check", "total")
    grade_id = f"{role}_{ident.replace('.', '_')}"
    nbgrader: dict[str, Any] = {
        "grade": grade,
        "grade_id": grade_id,
        "locked": locked,
        "schema_version": NBGRADER_SCHEMA,
        "solution": solution,
        "task": False,
    }
    if grade:
        nbgrader["points"] = points
    cell.metadata["nbgrader"] = nbgrader
    course: dict[str, Any] = {"role": role}
    course["chapter" if role == "total" else "exercise"] = ident
    if grade:
        course["points"] = points
    cell.metadata["course_lib"] = course
    if locked:
        cell.metadata["editable"] = False
        cell.metadata["deletable"] = False


def strip_markers(source: str, cell_type: str, what: str = "exercise") -> tuple[str, bool]:
    """Replace solution regions by the stub and drop hidden regions.

    Returns the new source and whether anything was hidden. Raises ``ValueError`` for a
    marker without its partner or regions that nest.
    """
    out: list[str] = []
    region: tuple[str, str, int] | None = None  # (kind, end marker, line of BEGIN)
    hidden = False
    for lineno, line in enumerate(source.split("\n"), start=1):
        stripped = line.strip()
        begin = next((m for m in (SOLUTION, HIDDEN) if stripped.startswith(m[0])), None)
        end = next((m for m in (SOLUTION, HIDDEN) if stripped.startswith(m[1])), None)
        if begin is not None:
            if region is not None:
                raise ValueError(
                    f"line {lineno}: {stripped!r} inside the region opened on line {region[2]}"
                )
            region = (begin[0], begin[1], lineno)
            if begin is SOLUTION:
                indent = line[: len(line) - len(line.lstrip())]
                if cell_type == "code":
                    out.extend(indent + s.format(what=what) for s in CODE_STUB)
                else:
                    out.append(MARKDOWN_STUB)
            else:
                hidden = True
        elif end is not None:
            if region is None or region[1] != end[1]:
                raise ValueError(f"line {lineno}: {stripped!r} without its BEGIN marker")
            region = None
        elif region is None:
            out.append(line)
    if region is not None:
        raise ValueError(f"line {region[2]}: {region[0]!r} is never closed")
    return "\n".join(out), hidden


def make_exercise(solution_nb: Any) -> Any:
    """The exercise notebook made from a solution notebook (which is not modified)."""
    nb = annotate(copy.deepcopy(solution_nb))
    cells = []
    for cell in nb.cells:
        exercise_id = cell.metadata.get("course_lib", {}).get("exercise")
        what = f"exercise {exercise_id}" if exercise_id else "exercise"
        try:
            source, hidden = strip_markers(cell.source, cell.cell_type, what)
        except ValueError as exc:
            raise ValueError(f"cell {cell.get('id')!r}: {exc}") from None
        if hidden and not source.strip():
            continue
        cell.source = source
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
        cells.append(cell)
    nb.cells = cells
    nb.metadata.pop("widgets", None)
    return nb


def _solution_files(solutions_dir: Path) -> list[Path]:
    return sorted(p for p in Path(solutions_dir).glob("*.ipynb") if NOTEBOOK_NAME.match(p.name))


def generate(
    solutions_dir: str | Path = "solutions", exercises_dir: str | Path = "exercises"
) -> list[Path]:
    """Write ``exercises_dir/NN_name.ipynb`` for every ``solutions_dir/NN_name.ipynb``."""
    solutions_dir, exercises_dir = Path(solutions_dir), Path(exercises_dir)
    if not solutions_dir.is_dir():
        raise ValueError(f"solutions_dir {str(solutions_dir)!r} is not a directory")
    exercises_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in _solution_files(solutions_dir):
        nb = make_exercise(nbformat.read(path, as_version=4))
        target = exercises_dir / path.name
        nbformat.write(nb, target)
        written.append(target)
    return written


def check_in_sync(
    solutions_dir: str | Path = "solutions", exercises_dir: str | Path = "exercises"
) -> list[str]:
    """Names of exercise notebooks that differ from what :func:`generate` would write.

    Includes exercises missing for a solution and exercises without a solution. Formatting
    alone (JSON whitespace, key order) is not a difference.
    """
    solutions_dir, exercises_dir = Path(solutions_dir), Path(exercises_dir)
    drifted = []
    names = set()
    for path in _solution_files(solutions_dir):
        names.add(path.name)
        target = exercises_dir / path.name
        want = json.loads(nbformat.writes(make_exercise(nbformat.read(path, as_version=4))))
        try:
            have = json.loads(target.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            drifted.append(path.name)
            continue
        if have != want:
            drifted.append(path.name)
    if exercises_dir.is_dir():
        drifted += [p.name for p in _solution_files(exercises_dir) if p.name not in names]
    return sorted(drifted)
