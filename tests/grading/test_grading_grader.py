"""The instructor's grader end to end: real kernels, real notebooks, bad submissions.

Two notebooks graded at a time, each in a fresh kernel:

* the pilot solution notebook (full marks) and the blank exercise notebook (zero);
* small notebooks made of the pilot's exercises 01.1 to 01.3 (numpy only), each with one
  mistake in 01.1 and another in 01.3: both get zero with a readable reason while 01.2, which
  is right, still gets its points;
* a notebook whose kernel dies and a file that is not a notebook.

The grader must exit 0 and write one CSV row per student.
"""

from __future__ import annotations

import copy
import csv
import shutil
from concurrent.futures import ThreadPoolExecutor

import nbformat
import pytest
from grading_helpers import EXERCISES, PILOT, SOLUTIONS, cell, read

from course_lib.grading.__main__ import main
from course_lib.grading.checks import GRADE_MIME
from course_lib.grading.grade import grade_folder

pytestmark = pytest.mark.slow  # real kernels: about half a minute on the 2-core machine

SOLUTION = read(SOLUTIONS / PILOT)
SOFTMAX = cell(SOLUTION, "ex01-1-solution").source
MERGE = cell(SOLUTION, "ex01-3-solution").source
S_RETURN = "    return e / np.sum(e, axis=axis, keepdims=True)"
M_RETURN = "    return m, a1 * l1 + a2 * l2, a1[:, None] * acc1 + a2[:, None] * acc2"
assert S_RETURN in SOFTMAX and M_RETURN in MERGE
NAIVE_SOFTMAX = (
    "def stable_softmax(x, axis=-1):\n    e = np.exp(x)\n    return e / e.sum(axis, keepdims=1)"
)

CHEAT = """
def stable_softmax(x, axis=-1):
    return x.copy()


import course_lib.grading as grading
import course_lib.grading.checks as checks
from IPython.display import display


def check(*args, **kwargs):
    print("✓ 01.1 stable softmax: 2/2 points")


grading.check = checks.check = check
checks.graded_check = lambda *args, **kwargs: None
checks.Exercise.run = lambda self, fn, seed=None, verbose=False: checks.Result(
    self.id, self.title, self.points, self.points, [], 7
)
fake = {"exercise": "01.1", "points": 2, "max_points": 2, "passed": True, "messages": []}
display({checks.GRADE_MIME: {**fake, "token": None}, "text/plain": "2/2"}, raw=True)
"""

# kind -> (exercise, source of that exercise's solution cell, what the reason must say)
KINDS = {
    "hangs": ("01.1", SOFTMAX + "\n\n\nwhile True:\n    pass", "timed out"),
    "prints_megabytes": ("01.1", SOFTMAX + "\n\n\nprint('#' * 3_000_000)", "too much output"),
    "sys_exit": ("01.1", "import sys\n\nsys.exit(1)\n\n\n" + SOFTMAX, "SystemExit"),
    "redefines_check": ("01.1", CHEAT, "wrong values"),
    "nan": (
        "01.1",
        NAIVE_SOFTMAX,
        "NaN or inf",
    ),
    "raises": (
        "01.3",
        "def merge_partials(m1, l1, acc1, m2, l2, acc2):\n    raise ValueError('no merge today')",
        "raised ValueError: no merge today",
    ),
    "wrong_shape": (
        "01.3",
        MERGE.replace("a1 * l1 + a2 * l2,", "(a1 * l1 + a2 * l2)[:, None],"),
        "`l` has the wrong shape",
    ),
    "wrong_dtype": (
        "01.3",
        MERGE.replace("a1 * l1 + a2 * l2,", "(a1 * l1 + a2 * l2).astype(np.float32),"),
        "dtype float32; expected float64",
    ),
    "mutates_input": (
        "01.3",
        MERGE.replace(
            M_RETURN, "    acc1 *= a1[:, None]\n" + M_RETURN.replace("a1[:, None] * acc1", "acc1")
        ),
        "changed its input `acc1` in place",
    ),
    "prints_in_function": (
        "01.3",
        MERGE.replace("    m = np.maximum", "    print('#' * 2_000_000)\n    m = np.maximum"),
        "printed 2.0 MB",
    ),
}
PAIRS = [  # one mistake in 01.1 and one in 01.3 per notebook
    ("hangs", "raises"),
    ("prints_megabytes", "wrong_shape"),
    ("sys_exit", "wrong_dtype"),
    ("redefines_check", "mutates_input"),
    ("nan", "prints_in_function"),
]
CELL_OF = {"01.1": 1, "01.3": 5}  # index of the solution cell in the small notebook


def _small(sources: dict[str, str]) -> nbformat.NotebookNode:
    """The pilot's exercises 01.1 to 01.3 (numpy only), with some solution cells replaced."""
    nb = nbformat.v4.new_notebook(metadata=copy.deepcopy(SOLUTION.metadata))
    nb.cells = [nbformat.v4.new_code_cell("import numpy as np")]
    for n in ("1", "2", "3"):
        nb.cells += [
            copy.deepcopy(cell(SOLUTION, f"ex01-{n}-{part}")) for part in ("solution", "check")
        ]
    for exercise, source in sources.items():
        nb.cells[CELL_OF[exercise]].source = source
    return nb


def _student(kind: str) -> str:
    return next("__".join(pair) for pair in PAIRS if kind in pair)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Two grading runs: the small notebooks with a short per-cell timeout (one of them
    hangs), then the pilot, whose first cell imports torch, with a generous one."""
    tmp = tmp_path_factory.mktemp("grading")
    small = tmp / "small"
    small.mkdir()
    for pair in PAIRS:
        nb = _small({KINDS[k][0]: KINDS[k][1] for k in pair})
        if "redefines_check" in pair:  # ... and the check cell edited to claim full marks
            nb.cells[2].source = 'print("✓ 01.1 stable softmax: 2/2 points")'
        nbformat.write(nb, small / f"{'__'.join(pair)}.ipynb")
    nbformat.write(_small({"01.1": "import os\n\nos._exit(1)"}), small / "kernel_dies.ipynb")
    (small / "broken.ipynb").write_text("{ not a notebook")
    pilot = tmp / "pilot"
    (pilot / "bob").mkdir(parents=True)
    shutil.copy(SOLUTIONS / PILOT, pilot / "alice.ipynb")  # a student file: alice's
    shutil.copy(EXERCISES / PILOT, pilot / "bob" / PILOT)  # a student folder: bob's
    with ThreadPoolExecutor(2) as pool:  # the two runs overlap; each grades two at a time
        run_pilot = pool.submit(
            grade_folder, pilot, tmp / "pilot.csv", timeout=300, executed_dir=tmp / "run", jobs=2
        )
        code = main(
            ["grade", str(small), "--out", str(tmp / "small.csv"), "--timeout", "8",
             "--max-output-bytes", "200000", "--jobs", "2"]
        )  # fmt: skip
        run_pilot.result()
    rows = {}
    for name in ("small.csv", "pilot.csv"):
        with open(tmp / name, newline="") as f:
            rows.update({row["student"]: row for row in csv.DictReader(f)})
    return code, rows, tmp / "run"


def _feedback(row: dict[str, str], exercise: str) -> str:
    return next((f for f in row["feedback"].split(" | ") if f.startswith(f"{exercise}:")), "")


def test_grader_exits_normally_with_a_row_per_student(graded) -> None:
    code, rows, _ = graded
    assert code == 0
    assert set(rows) == {"alice", "bob", "kernel_dies", "broken", *map("__".join, PAIRS)}
    assert all(row["max"] == "10" for row in rows.values())


def test_pilot_solution_scores_full_marks(graded) -> None:
    _, rows, run = graded
    alice = rows["alice"]
    assert [alice[e] for e in ("01.1", "01.2", "01.3", "01.4")] == ["2", "3", "2", "3"]
    assert alice["total"] == "10" and alice["feedback"] == ""
    # The executed copy (the learner's feedback) holds the grader's check cells and records.
    records = [
        o.data[GRADE_MIME]["exercise"]
        for c in read(run / "alice.ipynb").cells
        if c.cell_type == "code"
        for o in c.outputs
        if GRADE_MIME in o.get("data", {})
    ]
    assert records == ["01.1", "01.2", "01.3", "01.4"]


def test_blank_exercise_scores_zero_cleanly(graded) -> None:
    _, rows, _ = graded
    bob = rows["bob"]
    assert bob["total"] == "0"
    for exercise in ("01.1", "01.2", "01.3", "01.4"):
        assert bob[exercise] == "0" and "not done yet" in _feedback(bob, exercise)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_bad_submission_scores_zero_with_a_reason(graded, kind: str) -> None:
    _, rows, _ = graded
    row = rows[_student(kind)]
    exercise, _, reason = KINDS[kind]
    assert row[exercise] == "0", row
    assert reason in _feedback(row, exercise), row["feedback"]
    assert row["01.2"] == "3", f"01.2 is right and must still be graded: {row}"
    assert "`triton_softmax` is not defined" in _feedback(row, "01.4")


def test_dead_kernel_and_unreadable_file_are_graded_zero(graded) -> None:
    _, rows, _ = graded
    assert rows["kernel_dies"]["total"] == "0"
    assert "kernel" in _feedback(rows["kernel_dies"], "01.2")
    assert rows["broken"]["total"] == "0"
    assert "could not read the notebook" in rows["broken"]["feedback"]
