"""course_lib.bench.timing.measure: the time budget and the warm-up call."""

from __future__ import annotations

import time

from course_lib.bench.timing import measure


def _slow_first(first_s: float, then_s: float):
    calls = []

    def fn() -> None:
        time.sleep(first_s if not calls else then_s)
        calls.append(1)

    return fn, calls


def test_a_slow_first_call_compiling_does_not_count_against_the_budget() -> None:
    fn, calls = _slow_first(0.3, 0.001)  # like a kernel that autotunes on its first call
    m = measure(fn, "cpu", "torch", budget_ms=100, memory=False, min_run_time=0.02)
    assert not m.over_budget and m.ms < 50 and len(calls) > 3


def test_a_call_slow_every_time_is_over_the_budget_after_two_calls() -> None:
    fn, calls = _slow_first(0.15, 0.15)
    m = measure(fn, "cpu", "torch", budget_ms=100, memory=False)
    assert m.over_budget and m.ms >= 150 and len(calls) == 2
    assert "second call" in m.method
