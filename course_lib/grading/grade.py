"""The instructor's grader: every submitted notebook in a fresh kernel, one table of points.

Glossary: an *exercise id* is ``"NN.M"``; a *check cell* is the cell after an exercise that
grades it; a *record* is the structured result a check cell emits (MIME type
:data:`~course_lib.grading.checks.GRADE_MIME`); the *token* is a random string the grader
makes for each notebook it runs.

How a notebook is graded (:func:`grade_notebook`):

1. The grader finds the chapter (notebook metadata, else the ``NN_`` of the file name, else
   the ids in its check cells) and so the exercises it must grade, from
   :mod:`course_lib.grading.catalog`.
2. It replaces the source of every check cell with its own (a check cell deleted by the
   learner is appended at the end). That cell re-imports the grading modules from disk,
   looks the learner's function up by name and runs the check, which prints the usual
   report and emits a record carrying the token.
3. It runs the notebook with nbclient in a fresh kernel: a per-cell timeout (a cell that
   runs longer is interrupted and execution goes on), errors allowed (a cell that raises,
   even ``SystemExit``, does not stop the run), output capped per cell.
4. An exercise's points are those of the record with the right token in the output of the
   check cell the grader wrote -- never what the notebook prints elsewhere -- and zero
   when a cell of that exercise timed out or exceeded the output cap. Each zero comes
   with a reason a learner can act on.

Threat model, honestly: this is a teaching grader, not a sandbox. It is meant to grade
honest work fairly and to be robust to the usual accidents and shortcuts: code that raises,
hangs, calls ``sys.exit``, prints megabytes, returns NaN or the wrong shape or dtype,
mutates its input; a learner who edits or deletes a check cell, prints a fake "2/2 points"
or a fake record, redefines ``check``, or monkeypatches ``course_lib.grading`` (its modules
are re-imported from disk before each graded check). It does not defend against a
determined cheater: the learner's code runs in the same process as the check, so it can
read the token from the cell, patch numpy, or simply call the library's reference
implementation. Run it on submissions in a container or a throwaway account if the
submissions themselves are not trusted: they execute arbitrary code.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

from course_lib.grading import catalog
from course_lib.grading.checks import GRADE_MIME
from course_lib.grading.generate import CHECK_CALL, NOTEBOOK_NAME

DEFAULT_TIMEOUT_S = 60
DEFAULT_MAX_OUTPUT_BYTES = 1 << 20
_TIMEOUT_ENAME = "CellTimeoutError"
_COURSE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder that holds course_lib/

#: The source the grader puts in place of a check cell. It runs the grading code fresh from
#: disk: modules a learner may have patched are dropped from ``sys.modules`` (and from their
#: parent package) first; only the learner-facing scoreboard is kept.
CHECK_CELL_TEMPLATE = """\
# Check cell written by the grader (course_lib.grading) for exercise {exercise}.
def _course_grader_run(namespace):
    import importlib
    import sys

    def stale(name):
        if name == "course_lib.grading.scoreboard":
            return False
        return (
            name == "course_lib.grading"
            or name.startswith("course_lib.grading.")
            or name in ("course_lib.checks", "course_lib.testing")
            or (name.startswith("course_lib.") and name.endswith(".numpy_ref"))
        )

    for name in sorted((n for n in list(sys.modules) if stale(n)), reverse=True):
        del sys.modules[name]
        parent, _, child = name.rpartition(".")
        if parent in sys.modules and child in vars(sys.modules[parent]):
            delattr(sys.modules[parent], child)
    checks = importlib.import_module("course_lib.grading.checks")
    checks.graded_check({exercise!r}, namespace, token={token!r})


_course_grader_run(globals())
del _course_grader_run
"""


@dataclass
class ExerciseGrade:
    exercise: str
    title: str
    points: float
    max_points: float
    reason: str = ""


@dataclass
class NotebookGrade:
    student: str
    path: str
    chapter: str | None
    exercises: list[ExerciseGrade] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0

    @property
    def total(self) -> float:
        return sum(e.points for e in self.exercises)


class _GradingClient(NotebookClient):
    """nbclient with an output cap per cell and a note of the cells that timed out."""

    def __init__(self, nb: Any, token: str, max_output_bytes: int, **kwargs: Any) -> None:
        super().__init__(
            nb,
            on_cell_start=self._on_start,
            on_cell_executed=self._on_executed,
            **kwargs,
        )
        self._token = token
        self.max_output_bytes = max_output_bytes
        self._bytes: dict[int, int] = {}
        self.timed_out: set[int] = set()
        self.over_cap: set[int] = set()
        self.started: set[int] = set()
        self.current: int | None = None

    def _on_start(self, cell: Any, cell_index: int) -> None:
        self.current = cell_index
        if cell.cell_type == "code":
            self.started.add(cell_index)

    def _on_executed(self, cell: Any, cell_index: int, execute_reply: Any) -> None:
        content = (execute_reply or {}).get("content", {})
        if content.get("ename") == _TIMEOUT_ENAME:
            self.timed_out.add(cell_index)

    def output(self, outs: Any, msg: Any, display_id: Any, cell_index: int) -> Any:
        data = msg.get("content", {}).get("data") or {}
        record = data.get(GRADE_MIME)
        if isinstance(record, dict) and record.get("token") == self._token:
            return super().output(outs, msg, display_id, cell_index)
        size = len(json.dumps(msg.get("content", {}), default=str))
        used = self._bytes.get(cell_index, 0) + size
        self._bytes[cell_index] = used
        if used <= self.max_output_bytes:
            return super().output(outs, msg, display_id, cell_index)
        if cell_index not in self.over_cap:
            self.over_cap.add(cell_index)
            note = nbformat.v4.new_output(
                "stream",
                name="stderr",
                text=f"[grader] output cut: this cell printed more than "
                f"{self.max_output_bytes} bytes\n",
            )
            outs.append(note)
        return None


def _chapter_of(nb: Any, path: Path) -> str | None:
    chapter = nb.metadata.get("course_lib", {}).get("chapter")
    if chapter in catalog.CHAPTER_MODULES:
        return chapter
    match = NOTEBOOK_NAME.match(path.name) or re.match(r"^(\d\d)_", path.name)
    if match and match.group(1) in catalog.CHAPTER_MODULES:
        return match.group(1)
    for cell in nb.cells:
        found = CHECK_CALL.search(cell.source) if cell.cell_type == "code" else None
        if found and found.group(1)[:2] in catalog.CHAPTER_MODULES:
            return found.group(1)[:2]
    return None


def _check_cell_exercise(cell: Any) -> str | None:
    """The exercise id a cell checks, from its metadata or its ``check("NN.M", ...)`` call."""
    if cell.cell_type != "code":
        return None
    meta = cell.metadata.get("course_lib", {})
    if meta.get("role") == "check" and meta.get("exercise"):
        return str(meta["exercise"])
    found = CHECK_CALL.search(cell.source)
    return found.group(1) if found else None


def _prepare(nb: Any, exercise_ids: list[str], token: str) -> dict[str, int]:
    """Write the grader's check cells into ``nb``; return exercise id -> check cell index."""
    where: dict[str, int] = {}
    for index, cell in enumerate(nb.cells):
        ex = _check_cell_exercise(cell)
        if ex in exercise_ids:
            if ex in where:  # a duplicated check cell: only the first one counts
                cell.source = f"# (a second check cell for {ex}, left out by the grader)"
            else:
                where[ex] = index
    for ex in exercise_ids:
        source = CHECK_CELL_TEMPLATE.format(exercise=ex, token=token)
        if ex in where:
            nb.cells[where[ex]].source = source
        else:
            nb.cells.append(nbformat.v4.new_code_cell(source))
            where[ex] = len(nb.cells) - 1
    return where


def _cell_label(nb: Any, index: int) -> str:
    first = next((ln.strip() for ln in nb.cells[index].source.splitlines() if ln.strip()), "")
    if len(first) > 40:
        first = first[:37] + "..."
    return f"cell {index + 1}" + (f" (`{first}`)" if first else "")


def _error_of(cell: Any) -> str:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            value = str(out.get("evalue", "")).strip()
            return f"{out.get('ename', 'error')}: {value}" if value else str(out.get("ename"))
    return ""


def _record_of(cell: Any, exercise_id: str, token: str) -> dict[str, Any] | None:
    found = None
    for out in cell.get("outputs", []):
        record = (out.get("data") or {}).get(GRADE_MIME)
        if isinstance(record, str):
            try:
                record = json.loads(record)
            except ValueError:
                continue
        if (
            isinstance(record, dict)
            and record.get("token") == token
            and record.get("exercise") == exercise_id
        ):
            found = record
    return found


def _regions(nb: Any, exercises: list[Any], where: dict[str, int]) -> dict[str, list[int]]:
    """The cells of each exercise: those after the previous check cell up to its own, and
    any cell whose metadata names the exercise (its check cell not included)."""
    check_cells = set(where.values())
    regions: dict[str, list[int]] = {}
    previous = -1
    for ex in sorted(exercises, key=lambda e: where[e.id]):
        index = where[ex.id]
        regions[ex.id] = [
            i
            for i, cell in enumerate(nb.cells)
            if i not in check_cells
            and (
                previous < i < index or cell.metadata.get("course_lib", {}).get("exercise") == ex.id
            )
        ]
        previous = index
    return regions


def _grade_exercise(
    nb: Any, client: _GradingClient, ex: Any, index: int, region: list[int], token: str,
    timeout: int, died: str,
) -> ExerciseGrade:  # fmt: skip
    """Points of one exercise: its record, unless a cell of it timed out or printed too much."""
    cells = [*region, index]
    timed_out = [_cell_label(nb, i) for i in cells if i in client.timed_out]
    over_cap = [_cell_label(nb, i) for i in cells if i in client.over_cap]
    reasons = []
    if timed_out:
        reasons.append(
            f"timed out: {', '.join(timed_out)} ran longer than {timeout} s and was interrupted"
        )
    if over_cap:
        reasons.append(
            f"too much output: {', '.join(over_cap)} printed more than "
            f"{client.max_output_bytes} bytes"
        )
    record = _record_of(nb.cells[index], ex.id, token)
    points = 0.0
    if record is not None:
        if not reasons:
            points = max(0.0, min(float(record.get("points", 0.0)), float(ex.points)))
        if not record.get("passed") or points < ex.points:
            reasons += [str(m) for m in record.get("messages", [])]
    elif index not in client.started or (died and index == client.current):
        reasons.append(died or "not graded: the notebook stopped before this exercise's check")
    else:
        error = _error_of(nb.cells[index])
        reasons.append(
            f"the check could not run ({error})" if error else "the check gave no result"
        )
    if points < ex.points:  # errors in the exercise's cells often say why
        for i in region:
            error = _error_of(nb.cells[i])
            # The stub's NotImplementedError is expected; a timed-out cell's KeyboardInterrupt
            # is the grader's own doing.
            if error and "NotImplementedError" not in error and i not in client.timed_out:
                reasons.append(f"{_cell_label(nb, i)} raised {error}")
    return ExerciseGrade(ex.id, ex.title, points, ex.points, "; ".join(reasons))


def _score(
    nb: Any, client: _GradingClient, exercises: list[Any], where: dict[str, int], token: str,
    timeout: int, died: str,
) -> list[ExerciseGrade]:  # fmt: skip
    """Each exercise's grade, read from the check cell the grader wrote for it."""
    regions = _regions(nb, exercises, where)
    return [
        _grade_exercise(nb, client, ex, where[ex.id], regions[ex.id], token, timeout, died)
        for ex in exercises
    ]


def grade_notebook(
    path: str | Path,
    student: str | None = None,
    timeout: int = DEFAULT_TIMEOUT_S,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    kernel_name: str = "python3",
    executed_path: str | Path | None = None,
) -> NotebookGrade:
    """Run one submitted notebook in a fresh kernel and grade each of its exercises.

    Never raises for a bad submission: an unreadable notebook, a kernel that dies or fails
    to start give zero points with the reason in :attr:`NotebookGrade.error` and in each
    exercise's reason. ``executed_path``, if given, receives the executed notebook (the
    learner's feedback).
    """
    path = Path(path)
    start = time.perf_counter()
    result = NotebookGrade(student or path.stem, str(path), None)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # any unreadable file is graded, not fatal
        result.error = f"could not read the notebook: {exc}"
        return result
    chapter = _chapter_of(nb, path)
    result.chapter = chapter
    if chapter is None:
        result.error = "could not tell which chapter this notebook is (no NN_ file name, no checks)"
        return result
    exercises = list(catalog.chapter_exercises(chapter))
    token = secrets.token_hex(16)
    where = _prepare(nb, [ex.id for ex in exercises], token)
    client = _GradingClient(
        nb,
        token,
        max_output_bytes,
        timeout=timeout,
        interrupt_on_timeout=True,
        error_on_timeout={
            "ename": _TIMEOUT_ENAME,
            "evalue": f"the cell ran longer than {timeout} s and was interrupted",
            "traceback": [],
        },
        allow_errors=True,
        kernel_name=kernel_name,
        shutdown_kernel="immediate",
    )
    died = ""
    workdir = tempfile.mkdtemp(prefix="course-grade-")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_COURSE_ROOT, env.get("PYTHONPATH")) if p)
    env.setdefault("MPLBACKEND", "Agg")
    try:
        client.execute(cwd=workdir, env=env)
    except Exception as exc:  # a dead kernel must not stop the other students
        at = f" in {_cell_label(nb, client.current)}" if client.current is not None else ""
        died = f"not graded: the kernel stopped{at} ({type(exc).__name__}: {exc})".rstrip()
        result.error = died
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.exercises = _score(nb, client, exercises, where, token, timeout, died)
    if executed_path is not None:
        Path(executed_path).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, executed_path)
    result.seconds = time.perf_counter() - start
    return result


def find_submissions(folder: str | Path) -> list[tuple[str, Path]]:
    """``(student, notebook)`` pairs: ``folder/alice.ipynb`` is alice's, so is every
    notebook under ``folder/alice/``."""
    folder = Path(folder)
    found = []
    for path in sorted(folder.rglob("*.ipynb")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):  # .ipynb_checkpoints and such
            continue
        student = rel.parts[0] if len(rel.parts) > 1 else path.stem
        found.append((student, path))
    return found


def grade_folder(
    submissions: str | Path,
    out_csv: str | Path = "grades.csv",
    timeout: int = DEFAULT_TIMEOUT_S,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    kernel_name: str = "python3",
    executed_dir: str | Path | None = None,
    verbose: bool = True,
    jobs: int = 1,
) -> list[NotebookGrade]:
    """Grade every notebook under ``submissions``; write ``out_csv`` and print the table.

    The CSV has one row per student: points per exercise, ``total``, ``max`` and
    ``feedback`` (the reason for every exercise short of full marks). ``jobs`` notebooks
    run at the same time, each in its own process and kernel.
    """
    submissions = Path(submissions)
    if not submissions.is_dir():
        raise ValueError(f"submissions {str(submissions)!r} is not a directory")
    tasks = []
    for student, path in find_submissions(submissions):
        executed = None
        if executed_dir is not None:
            executed = Path(executed_dir) / path.relative_to(submissions)
        tasks.append((path, student, timeout, max_output_bytes, kernel_name, executed))
    if jobs <= 1 or len(tasks) <= 1:
        graded = []
        for task in tasks:
            if verbose:
                print(f"grading {task[0].relative_to(submissions)} ...", flush=True)
            graded.append(grade_notebook(*task))
    else:
        # Separate processes (spawned, not forked: the grader holds sockets and threads).
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            graded = list(pool.map(_grade_task, tasks))
    write_csv(graded, out_csv)
    if verbose:
        print(format_table(graded))
    return graded


def _grade_task(task: tuple[Any, ...]) -> NotebookGrade:
    return grade_notebook(*task)


def _table(graded: list[NotebookGrade]) -> tuple[list[str], list[dict[str, Any]]]:
    titles: dict[str, float] = {}
    for g in graded:
        chapters = [g.chapter] if g.chapter else []
        for chapter in chapters:
            for ex in catalog.chapter_exercises(chapter):
                titles[ex.id] = ex.points
    ids = sorted(titles)
    rows: dict[str, dict[str, Any]] = {}
    for g in graded:
        row = rows.setdefault(g.student, {"student": g.student, "_feedback": []})
        for ex in g.exercises:
            row[ex.exercise] = row.get(ex.exercise, 0.0) + ex.points
            if ex.reason:
                row["_feedback"].append(f"{ex.exercise}: {ex.reason}")
        if g.error and not g.exercises:
            row["_feedback"].append(f"{Path(g.path).name}: {g.error}")
    out = []
    for student in sorted(rows):
        row = rows[student]
        for ex_id in ids:
            if ex_id not in row:
                row[ex_id] = 0.0
                row["_feedback"].append(f"{ex_id}: not submitted")
        row["total"] = sum(row[ex_id] for ex_id in ids)
        row["max"] = sum(titles.values())
        row["feedback"] = " | ".join(row.pop("_feedback"))
        out.append(row)
    return ids, out


def write_csv(graded: list[NotebookGrade], out_csv: str | Path) -> None:
    ids, rows = _table(graded)
    with open(out_csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["student", *ids, "total", "max", "feedback"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:g}" if isinstance(v, float) else v) for k, v in row.items()})


def format_table(graded: list[NotebookGrade]) -> str:
    """The grades as an aligned text table, each student's reasons below their row."""
    ids, rows = _table(graded)
    width = max([len("student"), *(len(r["student"]) for r in rows)])
    head = f"{'student':<{width}}  " + "  ".join(f"{i:>5}" for i in ids) + "  total    max"
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "  ".join(f"{r[i]:>5g}" for i in ids)
        lines.append(f"{r['student']:<{width}}  {cells}  {r['total']:>5g}  {r['max']:>5g}")
        for note in filter(None, r["feedback"].split(" | ")):
            lines.append(f"{'':<{width}}    {note}")
    return "\n".join(lines)


def main_grade(args: Any) -> int:
    """``python -m course_lib.grading grade``: always exits 0 once the table is written."""
    try:
        grade_folder(
            args.submissions,
            args.out,
            timeout=args.timeout,
            max_output_bytes=args.max_output_bytes,
            kernel_name=args.kernel,
            executed_dir=args.executed,
            jobs=args.jobs,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
