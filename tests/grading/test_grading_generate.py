"""exercises/ generated from solutions/: stubs, cleared outputs, metadata, drift detection."""

from __future__ import annotations

import re
import shutil

import nbformat
import pytest
from grading_helpers import EXERCISES, PILOT, SOLUTIONS, read
from hypothesis import given
from hypothesis import strategies as st

from course_lib.grading.__main__ import main
from course_lib.grading.generate import (
    SOLUTION,
    annotate,
    check_in_sync,
    generate,
    make_exercise,
    strip_markers,
)


def _solution_lines(nb: nbformat.NotebookNode) -> list[str]:
    """Every non-blank line inside a solution region of ``nb``."""
    lines = []
    for cell in nb.cells:
        inside = False
        for line in cell.source.splitlines():
            if line.strip().startswith(SOLUTION[0]):
                inside = True
            elif line.strip().startswith(SOLUTION[1]):
                inside = False
            elif inside and line.strip():
                lines.append(line.strip())
    return lines


def test_exercise_replaces_solutions_and_clears_outputs() -> None:
    solution = read(SOLUTIONS / PILOT)
    exercise = make_exercise(solution)
    assert [c.id for c in exercise.cells] == [c.id for c in solution.cells]
    assert any(c.outputs for c in solution.cells if c.cell_type == "code"), "store it executed"
    stubs = 0
    for cell in exercise.cells:
        assert SOLUTION[0] not in cell.source and SOLUTION[1] not in cell.source
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
            stubs += cell.source.count("raise NotImplementedError(")
            assert "execution" not in cell.metadata
    assert stubs == 4  # one per exercise
    assert any(SOLUTION[0] in c.source for c in solution.cells)  # the source is untouched


def test_exercise_contains_no_solution_code() -> None:
    solution = read(SOLUTIONS / PILOT)
    lines = _solution_lines(solution)
    assert len(lines) >= 15
    for exercise in (make_exercise(solution), read(EXERCISES / PILOT)):
        code = {
            line.strip()
            for c in exercise.cells
            if c.cell_type == "code"
            for line in c.source.splitlines()
            if not line.strip().startswith("#")
        }
        leaked = [line for line in lines if line in code]
        assert not leaked, f"solution lines in the exercise: {leaked}"
        assert "BEGIN SOLUTION" not in nbformat.writes(exercise)


def test_check_and_solution_cells_carry_nbgrader_metadata() -> None:
    exercise = read(EXERCISES / PILOT)
    checks = [c for c in exercise.cells if c.metadata.get("course_lib", {}).get("role") == "check"]
    assert [c.metadata.course_lib.exercise for c in checks] == ["01.1", "01.2", "01.3", "01.4"]
    for c in checks:
        nbg = c.metadata.nbgrader
        assert nbg.grade and nbg.locked and not nbg.solution and nbg.points > 0
        assert re.fullmatch(r"[A-Za-z0-9_-]+", nbg.grade_id)
        assert c.metadata.editable is False and c.metadata.deletable is False
    solutions = [c for c in exercise.cells if c.metadata.get("nbgrader", {}).get("solution")]
    assert len(solutions) == 4 and all(not c.metadata.nbgrader.locked for c in solutions)
    assert sum(c.metadata.nbgrader.points for c in checks) == 10
    assert exercise.metadata.course_lib.chapter == "01"


def test_strip_markers() -> None:
    src = "def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n"
    out, hidden = strip_markers(src, "code", "exercise 09.1")
    assert "return x + y" not in out and not hidden
    assert '    raise NotImplementedError("exercise 09.1: ' in out  # the region's indentation
    out, hidden = strip_markers(
        "a\n### BEGIN HIDDEN TESTS\nassert f(1) == 2\n### END HIDDEN TESTS", "code"
    )
    assert out == "a" and hidden
    out, _ = strip_markers("Why?\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION", "markdown")
    assert out == "Why?\nYOUR ANSWER HERE"
    for bad in (
        "### BEGIN SOLUTION\nx = 1",
        "x = 1\n### END SOLUTION",
        "### BEGIN SOLUTION\n### BEGIN HIDDEN\n### END HIDDEN\n### END SOLUTION",
        "### BEGIN SOLUTION\nx\n### END HIDDEN",
    ):
        with pytest.raises(ValueError, match="line"):
            strip_markers(bad, "code")


def test_hidden_only_cell_is_dropped_and_bad_markers_name_the_cell() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION"
        ),
        nbformat.v4.new_code_cell("### BEGIN HIDDEN\nprint('instructor only')\n### END HIDDEN"),
        nbformat.v4.new_code_cell('check("01.1", f)'),
    ]
    out = make_exercise(nb)
    assert len(out.cells) == 2 and "instructor only" not in nbformat.writes(out)
    nb.cells[0].source = "### BEGIN SOLUTION\nx = 1"
    with pytest.raises(ValueError, match=nb.cells[0].id):
        make_exercise(nb)


def test_annotate_needs_a_check_after_each_solution() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")]
    with pytest.raises(ValueError, match="no check cell"):
        annotate(nb)


def test_committed_exercises_are_in_sync() -> None:
    assert check_in_sync(SOLUTIONS, EXERCISES) == [], (
        "exercises/ drifted from solutions/: run python -m course_lib.grading generate"
    )


def _pilot_folders(tmp_path):
    """A solutions folder holding the pilot only, and an empty exercises folder."""
    sol, ex = tmp_path / "solutions", tmp_path / "exercises"
    sol.mkdir()
    ex.mkdir()
    shutil.copy(SOLUTIONS / PILOT, sol / PILOT)
    return sol, ex


def test_sync_check_catches_drift(tmp_path) -> None:
    sol, ex = _pilot_folders(tmp_path)
    shutil.copy(EXERCISES / PILOT, ex / PILOT)
    assert check_in_sync(sol, ex) == []

    nb = read(sol / PILOT)  # the solution changes, the exercise is not regenerated
    nb.cells[2].source += "\nprint('new line')"
    nbformat.write(nb, sol / PILOT)
    assert check_in_sync(sol, ex) == [PILOT]
    assert generate(sol, ex) == [ex / PILOT]
    assert check_in_sync(sol, ex) == []

    nb = read(ex / PILOT)  # someone edits the exercise by hand: an output, then a source
    stub = next(i for i, c in enumerate(nb.cells) if "NotImplementedError" in c.source)
    nb.cells[stub].outputs = [nbformat.v4.new_output("stream", text="leaked\n")]
    nbformat.write(nb, ex / PILOT)
    assert check_in_sync(sol, ex) == [PILOT]
    generate(sol, ex)
    nb = read(ex / PILOT)
    nb.cells[stub].source = nb.cells[stub].source.replace("NotImplementedError", "ValueError")
    nbformat.write(nb, ex / PILOT)
    assert check_in_sync(sol, ex) == [PILOT]

    generate(sol, ex)
    shutil.copy(ex / PILOT, ex / "99_orphan.ipynb")  # an exercise without a solution
    assert check_in_sync(sol, ex) == ["99_orphan.ipynb"]
    (ex / "99_orphan.ipynb").unlink()
    (ex / PILOT).unlink()  # a missing exercise
    assert check_in_sync(sol, ex) == [PILOT]


def test_cli_generate_and_check_sync(tmp_path, capsys) -> None:
    sol, ex = _pilot_folders(tmp_path)
    assert main(["check-sync", "--solutions", str(sol), "--exercises", str(ex)]) == 1
    assert "out of sync" in capsys.readouterr().out
    assert main(["generate", "--solutions", str(sol), "--exercises", str(ex)]) == 0
    assert (ex / PILOT).read_text() == (EXERCISES / PILOT).read_text()
    assert main(["check-sync", "--solutions", str(sol), "--exercises", str(ex)]) == 0


_LINE = (
    st.text(alphabet="abcxyz =+()_.0123456789", min_size=1, max_size=12).map(str.strip).filter(bool)
)


@given(
    blocks=st.lists(
        st.tuples(st.lists(_LINE, max_size=3), st.lists(_LINE, min_size=1, max_size=3)),
        min_size=1,
        max_size=4,
    ),
    indent=st.sampled_from(["", "    ", "        "]),
)
def test_strip_markers_keeps_the_rest_and_drops_every_solution_line(blocks, indent) -> None:
    kept, hidden, lines = [], [], []
    for shown, solution in blocks:
        kept += [f"keep {s}" for s in shown]
        lines += [f"keep {s}" for s in shown]
        lines += [
            indent + SOLUTION[0],
            *(f"{indent}sol {s}" for s in solution),
            indent + SOLUTION[1],
        ]
        hidden += [f"sol {s}" for s in solution]
    out, _ = strip_markers("\n".join(lines), "code", "exercise 09.1")
    out_lines = out.split("\n")
    assert not any(line.strip().startswith("sol ") for line in out_lines)
    assert [line for line in out_lines if line.startswith("keep ")] == kept
    assert sum('raise NotImplementedError("exercise 09.1' in line for line in out_lines) == len(
        blocks
    )
    assert all(
        line.startswith(indent + "raise")
        for line in out_lines
        if "raise NotImplementedError" in line
    )


def test_find_submissions_and_chapter(tmp_path) -> None:
    from course_lib.grading.grade import _chapter_of, find_submissions

    (tmp_path / "carol" / ".ipynb_checkpoints").mkdir(parents=True)
    for rel in (
        "dave.ipynb",
        "carol/01_softmax_attention.ipynb",
        "carol/.ipynb_checkpoints/x.ipynb",
    ):
        (tmp_path / rel).write_text("{}")
    found = [(s, p.relative_to(tmp_path).as_posix()) for s, p in find_submissions(tmp_path)]
    assert found == [("carol", "carol/01_softmax_attention.ipynb"), ("dave", "dave.ipynb")]
    nb = nbformat.v4.new_notebook()
    assert _chapter_of(nb, tmp_path / "01_mine.ipynb") == "01"
    assert _chapter_of(nb, tmp_path / "mine.ipynb") is None
    nb.cells = [nbformat.v4.new_code_cell('check("01.2", f)')]
    assert _chapter_of(nb, tmp_path / "mine.ipynb") == "01"
