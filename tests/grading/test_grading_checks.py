"""The check engine in-process: right answers pass, each kind of mistake is named."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
from grading_helpers import solution_module

from course_lib.grading import catalog
from course_lib.grading.checks import (
    Case,
    check,
    check_function,
    graded_check,
    summary,
)
from course_lib.grading.scoreboard import SCOREBOARD
from course_lib.softmax_attention import numpy_ref

NUMPY_CELLS = ("ex01-1-solution", "ex01-2-solution", "ex01-3-solution")


@pytest.fixture(scope="module")
def pilot(tmp_path_factory):
    """The pilot notebook's numpy solutions, imported as a module."""
    return solution_module(tmp_path_factory.mktemp("pilot"), NUMPY_CELLS)


def _run(exercise_id: str, fn, seed: int = 0):
    return catalog.exercise(exercise_id).run(fn, seed=seed)


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pilot_solutions_pass(pilot, seed: int) -> None:
    for exercise_id, fn in (
        ("01.1", pilot.stable_softmax),
        ("01.2", pilot.causal_attention),
        ("01.3", pilot.merge_partials),
    ):
        result = _run(exercise_id, fn, seed)
        assert result.passed and result.points == result.max_points, result.report()
        assert result.cases >= 4


def test_triton_solution_passes_and_zero_padding_is_recognised(tmp_path) -> None:
    mod = solution_module(tmp_path, ("ex01-4-imports", "ex01-4-solution"))
    result = _run("01.4", mod.triton_softmax)
    assert result.passed, result.report()
    source = (tmp_path / next(p.name for p in tmp_path.glob("pilot_*.py"))).read_text()
    padded = source.replace('other=-float("inf")', "other=0.0")
    assert padded != source
    (tmp_path / "padded.py").write_text(padded)
    sys.path.insert(0, str(tmp_path))
    try:
        import padded as bad
    finally:
        sys.path.remove(str(tmp_path))
    result = _run("01.4", bad.triton_softmax)
    assert result.points == 0
    assert any("other=-float('inf')" in m for m in result.messages), result.messages


def test_report_of_a_pass_is_stable() -> None:
    # The stored notebooks are compared by nbval: a passing report holds no random number.
    a = _run("01.1", _softmax, seed=1).report()
    b = _run("01.1", _softmax, seed=2).report()
    assert a == b == "✓ 01.1 stable softmax: 2/2 points\n  all 7 cases correct"


def _one_message(exercise_id: str, fn) -> str:
    result = _run(exercise_id, fn)
    assert result.points == 0 and not result.passed
    assert result.messages
    return " ".join(result.messages)


def test_raising_function_reports_the_exception_and_line() -> None:
    def bad(x, axis=-1):
        raise ValueError("the axis is upside down")

    msg = _one_message("01.1", bad)
    assert "raised ValueError: the axis is upside down" in msg
    assert 'raise ValueError("the axis is upside down")' in msg


def test_stub_is_reported_as_not_done() -> None:
    def stub(x, axis=-1):
        raise NotImplementedError("exercise 01.1: replace these two lines with your code")

    assert "not done yet" in _one_message("01.1", stub)


def test_wrong_shape_names_the_expected_one() -> None:
    msg = _one_message("01.1", lambda x, axis=-1: _softmax(x, axis).sum(axis=axis))
    assert "wrong shape (3,); expected (3, 5)" in msg
    msg = _one_message(
        "01.2",
        lambda q, k, v, scale=None: numpy_ref.softmax_attention(q, k, v, scale).transpose(
            0, 2, 1, 3
        ),
    )
    assert "expected (2, 7, 2, 3)" in msg and "[B, T, H, V]" in msg


def test_wrong_dtype() -> None:
    msg = _one_message("01.1", lambda x, axis=-1: _softmax(x, axis).astype(np.float32))
    assert "dtype float32; expected float64" in msg


def test_nan_on_large_inputs() -> None:
    def naive(x, axis=-1):
        e = np.exp(x)
        return e / e.sum(axis=axis, keepdims=True)

    with np.errstate(over="ignore", invalid="ignore"):
        msg = _one_message("01.1", naive)
    assert "NaN or inf" in msg and "large logits" in msg and "subtract the maximum" in msg

    def naive_attention(q, k, v, scale=None):
        s = np.einsum("bthk,bshk->bhts", q, k) * (scale or q.shape[-1] ** -0.5)
        s = np.where(np.triu(np.ones(s.shape[-2:], bool), 1), -np.inf, s)
        p = np.exp(s)
        return np.einsum("bhts,bshv->bthv", p / p.sum(-1, keepdims=True), v)

    with np.errstate(over="ignore", invalid="ignore"):
        msg = _one_message("01.2", naive_attention)
    assert "NaN or inf" in msg and "long sequence" in msg


def test_causal_mask_mistakes_are_named() -> None:
    msg = _one_message(
        "01.2", lambda q, k, v, scale=None: numpy_ref.softmax_attention(q, k, v, scale, False)
    )
    assert "WITHOUT the causal mask" in msg

    def mask_after(q, k, v, scale=None):
        s = numpy_ref.attention_scores(q, k, scale, causal=False)
        p = _softmax(s) * np.tril(np.ones(s.shape[-2:]))
        return np.einsum("bhts,bshv->bthv", p, v)

    assert "before the softmax instead" in _one_message("01.2", mask_after)
    msg = _one_message(
        "01.2", lambda q, k, v, scale=None: numpy_ref.softmax_attention(q, k, v, 1.0)
    )
    assert "not scaled" in msg


def test_merge_mistakes_are_named() -> None:
    def no_rescale(m1, l1, acc1, m2, l2, acc2):
        return np.maximum(m1, m2), l1 + l2, acc1 + acc2

    assert "exp(m1 - m)" in _one_message("01.3", no_rescale)
    msg = _one_message("01.3", lambda m1, l1, acc1, m2, l2, acc2: (m1, l1))
    assert "returned 2 values; expected a tuple of 3 arrays (m, l, acc)" in msg


def test_mutating_an_input() -> None:
    def in_place(x, axis=-1):
        x -= x.max(axis=axis, keepdims=True)
        np.exp(x, out=x)
        x /= x.sum(axis=axis, keepdims=True)
        return x

    assert "changed its input `x` in place" in _one_message("01.1", in_place)


def test_returning_none_and_wrong_types() -> None:
    def forgot_return(x, axis=-1):
        _softmax(x, axis)

    assert "returned None" in _one_message("01.1", forgot_return)
    assert "expected a numpy array" in _one_message(
        "01.1", lambda x, axis=-1: _softmax(x, axis).tolist()
    )
    torch = pytest.importorskip("torch")
    msg = _one_message("01.1", lambda x, axis=-1: torch.from_numpy(_softmax(x, axis)))
    assert "gave a torch tensor of shape (3, 5); expected a numpy array" in msg
    result = check_function("09.1 t", 42, _softmax, [Case("c", {"x": np.ones(2)})], verbose=False)
    assert result.points == 0 and "not a function" in result.messages[0]


def test_keyword_arguments_are_explained() -> None:
    msg = _one_message("01.3", lambda a, b, c, d, e, f: (a, b, c))
    assert "keyword arguments" in msg and "m1=..." in msg


def test_sys_exit_inside_the_function() -> None:
    def quits(x, axis=-1):
        print("bye")
        sys.exit(3)

    msg = _one_message("01.1", quits)
    assert "called sys.exit(3); a function should return" in msg
    assert "before that it printed 'bye'" in msg


def test_too_slow_is_stopped_by_the_time_limit() -> None:
    def endless(x):
        while True:
            time.sleep(0.01)

    start = time.perf_counter()
    result = check_function(
        "09.1 slow", endless, _softmax, [Case("c", {"x": np.ones(3)})] * 3, time_limit_s=0.3,
        verbose=False,
    )  # fmt: skip
    assert time.perf_counter() - start < 5  # stopped at the first case
    assert result.points == 0 and "too slow" in result.messages[0]


def test_printing_megabytes() -> None:
    def chatty(x, axis=-1):
        print("#" * 2_000_000)
        return _softmax(x, axis)

    msg = _one_message("01.1", chatty)
    assert "printed 2.0 MB" in msg


def test_check_function_validates_its_own_arguments() -> None:
    with pytest.raises(ValueError, match="checks"):
        check_function("09.1 t", _softmax, _softmax, [], checks=("shape", "colour"))
    with pytest.raises(ValueError, match="exercise_id"):
        catalog.exercise("1.1")
    with pytest.raises(ValueError, match="chapter"):
        catalog.exercise("42.1")


def test_check_records_and_summary_totals(capsys) -> None:
    SCOREBOARD.clear()
    check("01.1", _softmax)
    check("01.3", lambda *a, **k: None)
    out = capsys.readouterr().out
    assert "✓ 01.1 stable softmax: 2/2 points" in out and "✗ 01.3" in out
    summary("01")
    out = capsys.readouterr().out
    assert "01.2 causal softmax attention    not checked yet" in out
    assert "total                            2/10" in out


def test_graded_check_finds_the_function_by_name(capsys) -> None:
    result = graded_check("01.1", {"stable_softmax": _softmax}, token="t0")
    assert result.passed
    result = graded_check("01.1", {}, token="t0")
    assert result.points == 0 and "`stable_softmax` is not defined" in result.messages[0]
    record = result.to_record("t0")
    assert record["token"] == "t0" and record["points"] == 0 and record["max_points"] == 2
