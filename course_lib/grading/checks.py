"""What a check cell runs: grade a learner's function against the float64 reference.

Glossary of dimension letters used by the exercises: B batch, T sequence length, H heads,
K query/key head dimension, V value head dimension, N rows of partial results, R and C rows
and columns of a matrix.

A check calls the learner's function on freshly drawn random inputs and on edge cases
(:class:`Case`), computes the expected answer with the float64 numpy reference of
``course_lib``, and explains every failure in words:

* the function raised (the exception and the line of the learner's code that raised it),
  is still the ``NotImplementedError`` stub, called ``sys.exit``, or ran past its time limit;
* it returned the wrong type, the wrong number of outputs, ``None``, the wrong shape (with
  the expected one) or the wrong dtype;
* its output holds NaN or inf where the answer is finite (long inputs, large logits);
* its values are off by more than the tolerance of :data:`course_lib.testing.TOLERANCE`
  for the output's dtype, and, when the output matches a known mistake (a :class:`Hint`:
  the causal mask forgotten, the scale left out...), what that mistake is;
* it changed one of its inputs in place, or printed megabytes while being checked.

Points are all or nothing per exercise: a function earns them when every case passes.

Two entry points:

* :func:`check` -- what a notebook's check cell calls, ``check("01.1", stable_softmax)``:
  prints the report and records the result for the chapter's total (:func:`summary`).
* :func:`graded_check` -- what the instructor's grader puts in place of each check cell:
  looks the function up by name, runs the same check, and emits a structured record
  (MIME type :data:`GRADE_MIME`) tagged with the grader's token for this run.

:func:`check_function` is the engine underneath, usable for any function and reference.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from course_lib.grading.scoreboard import SCOREBOARD
from course_lib.testing import TOLERANCE

GRADE_MIME = "application/vnd.course-lib.grade+json"

#: Checks :func:`check_function` runs by default. Values are always compared; the causal
#: mask and similar mistakes are recognised through :class:`Hint`\ s.
DEFAULT_CHECKS = ("type", "shape", "dtype", "nan", "mutation", "time", "prints")
_KNOWN_CHECKS = frozenset(DEFAULT_CHECKS)
MAX_MESSAGES = 4
NOT_DONE = (
    "not done yet: the function still raises NotImplementedError (replace the "
    "`raise NotImplementedError(...)` lines with your code)"
)


@dataclass(frozen=True)
class Case:
    """One call of the learner's function: keyword ``inputs`` and what they exercise.

    ``dtype`` is the dtype the output must have (default: that of the first floating
    input); ``tolerance`` overrides the relative-error bound taken from ``TOLERANCE``.
    """

    name: str
    inputs: Mapping[str, Any]
    dtype: str | None = None
    tolerance: float | None = None


@dataclass(frozen=True)
class Hint:
    """A known mistake: when the output matches ``reference``, tell the learner ``message``."""

    reference: Callable[..., Any]
    message: str


@dataclass
class Result:
    """Points earned on one exercise and why."""

    exercise: str
    title: str
    points: float
    max_points: float
    messages: list[str] = field(default_factory=list)
    cases: int = 0

    @property
    def passed(self) -> bool:
        return self.points >= self.max_points and not self.messages

    def report(self) -> str:
        mark = "✓" if self.passed else "✗"
        score = f"{_fmt(self.points)}/{_fmt(self.max_points)} points"
        head = f"{mark} {self.exercise} {self.title}: {score}"
        if self.passed:
            return f"{head}\n  all {self.cases} cases correct"
        return "\n".join([head, *(f"  - {m}" for m in self.messages)])

    def to_record(self, token: str | None) -> dict[str, Any]:
        return {
            "exercise": self.exercise,
            "title": self.title,
            "points": float(self.points),
            "max_points": float(self.max_points),
            "passed": self.passed,
            "messages": list(self.messages),
            "token": token,
        }


@dataclass(frozen=True)
class Exercise:
    """One graded exercise: the learner writes ``function``; ``reference`` is the truth.

    ``make_cases(rng)`` draws the cases from a fresh generator at every check.
    ``output_names`` name the outputs in messages; ``shape_hint`` and ``nan_hint`` are
    appended to shape and NaN messages; ``poison`` fills outputs allocated through
    :func:`course_lib.runtime.new_empty` with NaN, so that unwritten elements show.
    """

    id: str
    title: str
    function: str
    points: int
    reference: Callable[..., Any]
    make_cases: Callable[[np.random.Generator], Sequence[Case]]
    output_names: tuple[str, ...] = ()
    hints: tuple[Hint, ...] = ()
    shape_hint: str = ""
    nan_hint: str = ""
    time_limit_s: float = 10.0
    poison: bool = False
    checks: tuple[str, ...] = DEFAULT_CHECKS

    def run(self, fn: Any, seed: int | None = None, verbose: bool = False) -> Result:
        """Check ``fn`` on fresh cases; print the report when ``verbose``."""
        return check_function(
            f"{self.id} {self.title}",
            fn,
            self.reference,
            self.make_cases,
            self.points,
            checks=self.checks,
            hints=self.hints,
            time_limit_s=self.time_limit_s,
            output_names=self.output_names,
            shape_hint=self.shape_hint,
            nan_hint=self.nan_hint,
            poison=self.poison,
            seed=seed,
            verbose=verbose,
            function_name=self.function,
        )


# --------------------------------------------------------------------------- the engine


def check_function(
    name: str,
    fn: Any,
    reference: Callable[..., Any],
    cases: Sequence[Case] | Callable[[np.random.Generator], Sequence[Case]],
    points: float = 1,
    *,
    checks: Sequence[str] = DEFAULT_CHECKS,
    hints: Sequence[Hint] = (),
    time_limit_s: float = 10.0,
    output_names: Sequence[str] = (),
    shape_hint: str = "",
    nan_hint: str = "",
    poison: bool = False,
    seed: int | None = None,
    max_print_bytes: int = 1 << 20,
    verbose: bool = True,
    function_name: str | None = None,
) -> Result:
    """Run ``fn`` and ``reference`` on every case and grade ``fn`` (all points or none).

    Args:
        name: ``"01.1 stable softmax"``; the part before the first space is the exercise id.
        fn: the learner's function, called as ``fn(**case.inputs)``.
        reference: float64 numpy function with the same signature.
        cases: a list of :class:`Case`, or ``cases(rng)`` drawing them from a fresh
            ``numpy.random.Generator`` (seeded by ``seed`` when given).
        points: what a function that passes every case earns.
        checks: subset of :data:`DEFAULT_CHECKS` to run (values are always compared).
        hints: known mistakes to recognise when the values are wrong.
        time_limit_s: longest a single call may take.
        max_print_bytes: most the function may print while being checked.
        verbose: print the report.

    Returns:
        a :class:`Result` with the points earned and one message per kind of failure.
    """
    unknown = set(checks) - _KNOWN_CHECKS
    if unknown:
        raise ValueError(f"checks has unknown names {sorted(unknown)}; known: {DEFAULT_CHECKS}")
    exercise_id, _, title = name.partition(" ")
    label = f"`{function_name or getattr(fn, '__name__', 'your function')}`"
    settings = _Settings(
        frozenset(checks), tuple(hints), time_limit_s, tuple(output_names), shape_hint,
        nan_hint, poison, max_print_bytes, label,
    )  # fmt: skip
    failures = _Failures()
    n_cases = 0
    if not callable(fn):
        failures.add("type", f"{label} is a {type(fn).__name__}, not a function")
    else:
        if callable(cases):
            cases = cases(np.random.default_rng(seed))
        for case in cases:
            n_cases += 1
            if _run_case(fn, reference, case, failures, settings):
                break
    result = Result(
        exercise_id,
        title,
        points=0 if failures else points,
        max_points=points,
        messages=failures.messages(),
        cases=n_cases,
    )
    if verbose:
        print(result.report())
    return result


class _Failures:
    """The first failure of each kind, in the order found."""

    def __init__(self) -> None:
        self._by_kind: dict[str, str] = {}

    def add(self, kind: str, message: str) -> None:
        self._by_kind.setdefault(kind, message)

    def __bool__(self) -> bool:
        return bool(self._by_kind)

    def messages(self) -> list[str]:
        msgs = list(self._by_kind.values())
        if len(msgs) > MAX_MESSAGES:
            msgs = msgs[:MAX_MESSAGES] + [f"(and {len(msgs) - MAX_MESSAGES} more problems)"]
        return msgs


@dataclass(frozen=True)
class _Settings:
    """What :func:`check_function` was asked to check, passed down to each case."""

    checks: frozenset[str]
    hints: tuple[Hint, ...]
    time_limit_s: float
    output_names: tuple[str, ...]
    shape_hint: str
    nan_hint: str
    poison: bool
    max_print_bytes: int
    label: str  # the learner's function as messages name it, e.g. "`stable_softmax`"


def _run_case(
    fn: Callable[..., Any],
    reference: Callable[..., Any],
    case: Case,
    failures: _Failures,
    s: _Settings,
) -> bool:
    """Grade one case into ``failures``; True when checking should stop (no use going on)."""
    np_inputs = {k: _to_float64(v) for k, v in case.inputs.items()}
    expected = _flatten(reference(**_copy_inputs(np_inputs)))
    call = _call(fn, _copy_inputs(case.inputs), s.time_limit_s, s.poison)
    where = f'case "{case.name}"'
    if call.outcome != "ok":
        failures.add(call.outcome, _failed_call_message(call, case, where, s))
        return True
    if "prints" in s.checks and call.printed > s.max_print_bytes:
        failures.add(
            "prints",
            f"{where}: {s.label} printed {_fmt_bytes(call.printed)} while being checked "
            f"(limit {_fmt_bytes(s.max_print_bytes)}); remove the prints inside the function",
        )
    if "time" in s.checks and call.seconds > s.time_limit_s:
        failures.add(
            "time", f"{where}: too slow, took {call.seconds:.1f} s (limit {s.time_limit_s:g} s)"
        )
    if "mutation" in s.checks:
        for arg, before in case.inputs.items():
            if not _unchanged(before, call.inputs[arg]):
                failures.add(
                    "mutation",
                    f"{where}: {s.label} changed its input `{arg}` in place (e.g. `{arg} -= ...` "
                    f"or `{arg}[...] = ...`); work on a copy, the caller still needs `{arg}`",
                )
    got = _outputs(call.value, len(expected), where, failures, s)
    if got is not None and _wrong_outputs(got, expected, case, where, failures, s):
        for hint in s.hints:
            if _matches(hint.reference, np_inputs, got, case.tolerance):
                failures.add(f"hint:{hint.message}", hint.message)
    return False


def _failed_call_message(call: _Call, case: Case, where: str, s: _Settings) -> str:
    """What to say when the call did not return: it raised, exited or ran too long."""
    message = _failed_call_reason(call, case, where, s)
    if call.printed_head:
        message += f" (before that it printed {call.printed_head})"
    return message


def _failed_call_reason(call: _Call, case: Case, where: str, s: _Settings) -> str:
    if call.outcome == "interrupted":
        return f"{where}: interrupted before {s.label} returned (too slow?)"
    if call.outcome == "time":
        return (
            f"{where}: too slow, {s.label} did not finish within {s.time_limit_s:g} s (an "
            "endless loop? a Python loop over every element?)"
        )
    if call.outcome == "exit":
        return (
            f"{where}: {s.label} called sys.exit({call.error}); a function should return its "
            "result, not stop Python"
        )
    if call.error.startswith(NOT_DONE):
        return call.error
    message = f"{where}: {call.error}"
    if call.error.startswith("raised TypeError") and "argument" in call.error:
        args = ", ".join(f"{k}=..." for k in case.inputs)
        message += f"; the check calls it with keyword arguments, as {s.label.strip('`')}({args})"
    return message


def _outputs(
    got: Any, n_expected: int, where: str, failures: _Failures, s: _Settings
) -> list[Any] | None:
    """The learner's outputs as a list of ``n_expected`` items, or None (failure recorded)."""
    if n_expected == 1:
        return [got]
    names = s.output_names or tuple(f"output {i}" for i in range(n_expected))
    want = f"a tuple of {n_expected} arrays ({', '.join(names)})"
    if not isinstance(got, (tuple, list)):
        failures.add("type", f"{where}: {s.label} returned {_describe(got)}; expected {want}")
        return None
    if len(got) != n_expected:
        failures.add("type", f"{where}: {s.label} returned {len(got)} values; expected {want}")
        return None
    return list(got)


def _wrong_outputs(
    got: list[Any], expected: list[Any], case: Case, where: str, failures: _Failures, s: _Settings
) -> bool:
    """Compare each output with the reference; True when some value (not a type) is wrong."""
    names = [""]  # a single output is named after the function
    if len(expected) > 1:
        names = list(s.output_names) or [f"output {i}" for i in range(len(expected))]
    want_dtype = case.dtype or _first_float_dtype(case.inputs)
    want_torch = any(_is_torch(v) for v in case.inputs.values())
    want_kind = "a torch tensor" if want_torch else "a numpy array"
    wrong_values = False
    for name, g, e in zip(names, got, expected, strict=True):
        prefix = f"{where}: " + (f"`{name}`" if name else s.label)
        if g is None:
            failures.add("type", f"{prefix} returned None; did you forget `return`?")
            return False
        if not (isinstance(g, np.ndarray) or _is_torch(g)):
            failures.add("type", f"{prefix} gave {_describe(g)}; expected {want_kind}")
            return False
        if "type" in s.checks and want_torch != _is_torch(g):
            failures.add("type", f"{prefix} gave {_describe(g)}; expected {want_kind}")
        if tuple(g.shape) != tuple(e.shape):
            if "shape" in s.checks:
                hint = f". {s.shape_hint}" if s.shape_hint else ""
                failures.add(
                    "shape",
                    f"{prefix} has the wrong shape {tuple(g.shape)}; expected {tuple(e.shape)}"
                    + hint,
                )
            return False
        got_dtype = _dtype_name(g)
        if "dtype" in s.checks and want_dtype and got_dtype != want_dtype:
            failures.add(
                "dtype",
                f"{prefix} has dtype {got_dtype}; expected {want_dtype} (keep the input's "
                "dtype: no `.astype(...)`/`.to(...)` to another one)",
            )
        g64 = _to_float64(g)
        bad = np.isfinite(e) & ~np.isfinite(g64)
        if bad.any():
            if "nan" in s.checks:
                idx = tuple(int(i) for i in np.argwhere(bad)[0])
                failures.add(
                    "nan",
                    f"{prefix} holds NaN or inf (first at index {idx}, {int(bad.sum())} in all) "
                    "where the answer is finite" + (f". {s.nan_hint}" if s.nan_hint else ""),
                )
            wrong_values = True
            continue
        tol = case.tolerance or TOLERANCE.get(got_dtype, TOLERANCE["float32"])
        msg = _value_error(g64, e, tol)
        if msg:
            failures.add("values", f"{prefix} has wrong values: {msg}")
            wrong_values = True
    return wrong_values


@dataclass
class _Call:
    outcome: str  # "ok", "raised", "exit", "time", "interrupted"
    value: Any = None
    error: str = ""
    seconds: float = 0.0
    printed: int = 0  # bytes
    printed_head: str = ""  # the start of what it printed, quoted
    inputs: dict[str, Any] = field(default_factory=dict)


class _TimeLimit(BaseException):
    """Raised by the alarm inside a call that runs too long (a BaseException, so that a
    learner's ``except Exception`` does not swallow it)."""


class _CountingSink:
    """A text stream that counts what is written and keeps only the first few lines."""

    def __init__(self, keep: int = 2000) -> None:
        self.count = 0
        self.head: list[str] = []
        self._keep = keep

    def write(self, text: str) -> int:
        self.count += len(text.encode("utf-8", "replace"))
        if sum(len(h) for h in self.head) < self._keep:
            self.head.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _call(
    fn: Callable[..., Any], inputs: dict[str, Any], time_limit_s: float, poison: bool
) -> _Call:
    """Call ``fn(**inputs)`` with a time limit, its prints captured, every exception caught."""
    sink = _CountingSink()
    call = _Call("ok", inputs=inputs)
    use_alarm = (
        hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    )
    previous = None
    if use_alarm:

        def _on_alarm(signum: int, frame: Any) -> None:
            raise _TimeLimit

        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, time_limit_s)
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            with _poisoned(poison):
                call.value = fn(**inputs)
    except _TimeLimit:
        call.outcome = "time"
    except KeyboardInterrupt:
        call.outcome = "interrupted"
    except SystemExit as exc:
        call.outcome, call.error = "exit", "" if exc.code is None else repr(exc.code)
    except BaseException as exc:  # any failure of learner code is a result
        call.outcome, call.error = "raised", _explain_exception(exc)
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
    call.seconds = time.perf_counter() - start
    call.printed = sink.count
    if sink.count:
        head = "".join(sink.head)[:300].rstrip()
        call.printed_head = f"{head!r}{'...' if sink.count > 300 else ''}"
    return call


@contextlib.contextmanager
def _poisoned(on: bool) -> Any:
    if not on:
        yield
        return
    from course_lib.runtime import poison_outputs

    with poison_outputs():
        yield


def _explain_exception(exc: BaseException) -> str:
    """``"raised ValueError: ... (line 4: `y = x @ w`)"``, pointing into the learner's code."""
    if isinstance(exc, NotImplementedError) or "NotImplementedError" in str(exc):
        return NOT_DONE
    text = f"raised {type(exc).__name__}: {exc}".rstrip(": ")
    frames = traceback.extract_tb(exc.__traceback__)
    here = os.path.abspath(__file__)
    mine = [
        f
        for f in frames
        if os.path.abspath(f.filename) != here and "site-packages" not in f.filename
    ]
    if mine and mine[-1].line:
        text += f" (line {mine[-1].lineno}: `{mine[-1].line.strip()}`)"
    return text


def _matches(
    alt: Callable[..., Any], np_inputs: dict[str, Any], got: list[Any], tolerance: float | None
) -> bool:
    """Whether the learner's outputs equal ``alt``'s on these inputs (a known mistake)."""
    try:
        with np.errstate(all="ignore"):  # a known mistake may well overflow
            want = _flatten(alt(**_copy_inputs(np_inputs)))
    except Exception:  # a hint that cannot run simply does not match
        return False
    if len(want) != len(got):
        return False
    for g, w in zip(got, want, strict=True):
        g64 = _to_float64(g)
        if g64.shape != w.shape:
            return False
        tol = tolerance or TOLERANCE.get(_dtype_name(g), TOLERANCE["float32"])
        if _value_error(g64, w, tol):
            return False
    return True


def _value_error(got: np.ndarray, want: np.ndarray, tol: float) -> str:
    """Empty when ``got`` matches ``want`` (relative error <= ``tol``), else what differs."""
    finite = np.isfinite(want)
    if not np.array_equal(got[~finite], want[~finite], equal_nan=True):
        return "entries where the answer is inf or NaN differ"
    if not np.isfinite(got[finite]).all():
        return "NaN or inf where the answer is finite"
    g, w = got[finite], want[finite]
    err = float(np.linalg.norm(g - w)) / max(float(np.linalg.norm(w)), 1e-30)
    if err <= tol:
        return ""
    diff = np.where(finite, np.abs(got - want), -1.0)
    idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
    at = tuple(int(i) for i in idx)
    return (
        f"relative error {err:.2e} (tolerance {tol:g}); largest difference at index {at}: "
        f"got {got[idx]:.10g}, expected {want[idx]:.10g}"
    )


# --------------------------------------------------------------------------- small helpers


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _dtype_name(x: Any) -> str:
    return str(x.dtype).replace("torch.", "")


def _first_float_dtype(inputs: Mapping[str, Any]) -> str | None:
    for v in inputs.values():
        if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating):
            return _dtype_name(v)
        if _is_torch(v) and v.is_floating_point():
            return _dtype_name(v)
    return None


def _to_float64(x: Any) -> Any:
    if _is_torch(x):
        return x.detach().cpu().double().numpy()
    if isinstance(x, np.ndarray):
        return x.astype(np.float64)
    return x


def _copy_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in inputs.items():
        if _is_torch(v):
            out[k] = v.detach().clone()
        elif isinstance(v, np.ndarray):
            out[k] = v.copy()
        else:
            out[k] = v
    return out


def _unchanged(before: Any, after: Any) -> bool:
    if _is_torch(before):
        import torch

        return before.shape == after.shape and bool(
            torch.equal(torch.nan_to_num(before), torch.nan_to_num(after))
        )
    if isinstance(before, np.ndarray):
        return before.shape == after.shape and np.array_equal(before, after, equal_nan=True)
    return True


def _flatten(x: Any) -> list[Any]:
    if isinstance(x, (tuple, list)):
        return [leaf for item in x for leaf in _flatten(item)]
    return [x]


def _describe(x: Any) -> str:
    if x is None:
        return "None"
    if isinstance(x, np.ndarray):
        return f"a numpy array of shape {x.shape}"
    if _is_torch(x):
        return f"a torch tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__}"


def _fmt(points: float) -> str:
    return f"{points:g}"


def _fmt_bytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n} bytes"


# --------------------------------------------------------------------------- cell entry points


def check(exercise_id: str, fn: Any) -> None:
    """The check cell: grade ``fn`` on exercise ``exercise_id``, print why, keep the score."""
    from course_lib.grading.catalog import exercise

    result = exercise(exercise_id).run(fn, verbose=True)
    SCOREBOARD.record(result)


def graded_check(exercise_id: str, namespace: Mapping[str, Any], token: str | None) -> Result:
    """The grader's check cell: find the learner's function in ``namespace`` and grade it.

    Prints the same report as :func:`check` and then emits a record (MIME type
    :data:`GRADE_MIME`) carrying ``token``, which the grader reads from this cell's outputs.
    """
    from course_lib.grading.catalog import exercise

    ex = exercise(exercise_id)
    fn = namespace.get(ex.function)
    if fn is None:
        result = Result(
            ex.id,
            ex.title,
            0,
            ex.points,
            [
                f"`{ex.function}` is not defined: the cell that defines it did not run "
                "(or raised before defining it)"
            ],
        )
        print(result.report())
    else:
        result = ex.run(fn, verbose=True)
    SCOREBOARD.record(result)
    _emit(result.to_record(token))
    return result


def _emit(record: dict[str, Any]) -> None:
    text = f"[grader] {record['exercise']}: {_fmt(record['points'])}/{_fmt(record['max_points'])}"
    try:
        from IPython.display import display

        display({GRADE_MIME: record, "text/plain": text}, raw=True)
    except ImportError:  # pragma: no cover - the grader always runs in a kernel
        print(text)


def summary(chapter: str) -> None:
    """The chapter's total cell: points of every exercise checked so far in this kernel."""
    from course_lib.grading.catalog import chapter_exercises, chapter_title

    exercises = chapter_exercises(chapter)
    width = max(len(f"{ex.id} {ex.title}") for ex in exercises) + 2
    lines = [f"Chapter {chapter}: {chapter_title(chapter)}"]
    total = 0.0
    for ex in exercises:
        got = SCOREBOARD.get(ex.id)
        shown = "not checked yet" if got is None else f"{_fmt(got.points)}/{ex.points}"
        total += 0.0 if got is None else min(got.points, ex.points)
        lines.append(f"  {f'{ex.id} {ex.title}':<{width}}{shown}")
    max_total = sum(ex.points for ex in exercises)
    lines.append(f"  {'total':<{width}}{_fmt(total)}/{max_total}")
    print("\n".join(lines))
