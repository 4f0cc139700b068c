"""Chapter 10's graded exercises: the solutions pass, known mistakes are named, blanks score 0.

The solution code is read from the solution notebook's cells, so the tests follow it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import nbformat
import numpy as np
import pytest
import torch

from course_lib.grading import catalog
from course_lib.grading.generate import make_exercise

ROOT = Path(__file__).resolve().parents[2]
NAME = "10_tradeoff_in_practice.ipynb"
FUNCTIONS = {"10.1": "mqar_targets", "10.2": "answer_loss", "10.3": "state_numbers"}


def _module(folder: str, tmp_path: Path) -> ModuleType:
    nb = nbformat.read(ROOT / folder / NAME, as_version=4)
    cells = [
        c.source for c in nb.cells if c.metadata.get("course_lib", {}).get("role") == "solution"
    ]
    path = tmp_path / f"{folder}_10.py"
    path.write_text("import numpy as np\nimport torch\n\n" + "\n\n".join(cells) + "\n")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def solution(tmp_path_factory) -> ModuleType:
    return _module("solutions", tmp_path_factory.mktemp("sol10"))


@pytest.fixture(scope="module")
def blank(tmp_path_factory) -> ModuleType:
    return _module("exercises", tmp_path_factory.mktemp("ex10"))


def test_three_exercises_are_discovered() -> None:
    assert [ex.id for ex in catalog.chapter_exercises("10")] == list(FUNCTIONS)


@pytest.mark.parametrize("exercise_id", list(FUNCTIONS))
def test_solution_scores_full_marks_and_blank_scores_zero(exercise_id, solution, blank) -> None:
    ex = catalog.exercise(exercise_id)
    fn = FUNCTIONS[exercise_id]
    good = ex.run(getattr(solution, fn), seed=0)
    assert good.passed, good.messages
    bad = ex.run(getattr(blank, fn), seed=0)
    assert bad.points == 0 and "not done yet" in bad.messages[0]


def _value_after_query(inputs, num_pairs):  # marks the value's position (one late)
    from course_lib.tasks.mqar import mqar_targets

    t = mqar_targets(inputs, num_pairs)
    out = np.full_like(t, -100)
    out[:, 1:] = t[:, :-1]
    return out


def _mean_everywhere(logits, targets):
    t = targets.clone()
    t[t == -100] = 0
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), t.flatten())


def _keys_only(mixer, d_model, seq_len, num_heads):
    from course_lib.tasks.experiment import state_numbers

    out = np.asarray(state_numbers(mixer, d_model, np.asarray(seq_len), num_heads))
    return out // 2 if mixer == "attention" else out


@pytest.mark.parametrize(
    ("exercise_id", "wrong", "words"),
    [
        ("10.1", _value_after_query, "one position late"),
        ("10.2", _mean_everywhere, "every position"),
        ("10.3", _keys_only, "keys only"),
    ],
)
def test_known_mistakes_are_named(exercise_id, wrong, words) -> None:
    result = catalog.exercise(exercise_id).run(wrong, seed=1)
    assert result.points == 0
    assert any(words in m for m in result.messages), result.messages


def test_exercise_notebook_is_generated_from_the_solutions() -> None:
    sol = nbformat.read(ROOT / "solutions" / NAME, as_version=4)
    ex = nbformat.read(ROOT / "exercises" / NAME, as_version=4)
    made = make_exercise(sol)
    assert [c.source for c in made.cells] == [c.source for c in ex.cells]
    assert "### BEGIN SOLUTION" not in "".join(c.source for c in ex.cells)
