"""Graded exercises of chapter 07, selective SSMs and Mamba.

Glossary of dimension letters: B batch, T sequence length, D channels, N state size per
channel; in the scan exercises ``...`` is any number of trailing dimensions.

===== ===================================== ========================= ============================
id    the learner writes                    checked against           edge cases
===== ===================================== ========================= ============================
07.1  ``selective_step(u_t, delta_t, A,     ``selective_ssm.numpy_    B=1, N=1, D=1, a raw delta
      B_t, C_t, state, delta_bias)``        ref.selective_scan_step`` of 800 (softplus must not
      (numpy)                               (softplus on)             overflow), a zero state
07.2  ``combine(a1, b1, a2, b2)`` (numpy)   ``numpy_ref.combine``     scalars as [1] arrays, 3-d
                                                                      arrays, broadcasting shapes
07.3  ``hillis_steele_scan(a, b)`` (torch,  ``numpy_ref.associative_  T=1, T=2, T not a power of
      along dim 0)                          scan`` (axis 0)           two, float32 and float64
07.4  ``triton_selective_scan(u, delta, A,  ``numpy_ref.selective_    T=1, D not a multiple of
      B, C)`` (the kernel's time loop)      scan_sequential``         BLOCK_D, N not a power of 2;
                                                                      outputs poisoned with NaN
===== ===================================== ========================= ============================

The cases are drawn afresh at every check. torch (and for 07.4 Triton) is imported only
when the cases that need it are drawn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from course_lib.grading.checks import Case, Exercise, Hint
from course_lib.selective_ssm import numpy_ref as sel

CHAPTER = "07"
TITLE = "Selective SSMs and Mamba"


# --------------------------------------------------------------------------- 07.1 step


def _step_inputs(
    rng: np.random.Generator, B: int, D: int, N: int, delta_scale: float = 1.0
) -> dict[str, Any]:
    return {
        "u_t": rng.standard_normal((B, D)),
        "delta_t": rng.standard_normal((B, D)) * delta_scale,
        "A": -rng.uniform(0.2, 2.0, (D, N)),
        "B_t": rng.standard_normal((B, N)),
        "C_t": rng.standard_normal((B, N)),
        "state": rng.standard_normal((B, D, N)),
        "delta_bias": rng.standard_normal(D) * 0.5,
    }


def _step_cases(rng: np.random.Generator) -> list[Case]:
    large = _step_inputs(rng, 2, 3, 4)
    large["delta_t"][0, 0] = 800.0  # softplus(800) = 800; log(1 + exp(800)) overflows
    zero = _step_inputs(rng, 1, 5, 3)
    zero["state"] = np.zeros((1, 5, 3))
    return [
        Case("B=2, D=6, N=4", _step_inputs(rng, 2, 6, 4)),
        Case("one of everything, B=D=N=1", _step_inputs(rng, 1, 1, 1)),
        Case("D=7, N=5, the first token (zero state)", zero),
        Case("a raw delta of 800 (a very large step)", large),
    ]


def _step(u_t, delta_t, A, B_t, C_t, state, delta_bias):  # type: ignore[no-untyped-def]
    return sel.selective_scan_step(
        u_t, delta_t, A, B_t, C_t, state, delta_bias=delta_bias, delta_softplus=True
    )


def _step_no_softplus(u_t, delta_t, A, B_t, C_t, state, delta_bias):  # type: ignore[no-untyped-def]
    return sel.selective_scan_step(u_t, delta_t, A, B_t, C_t, state, delta_bias=delta_bias)


def _step_no_bias(u_t, delta_t, A, B_t, C_t, state, delta_bias):  # type: ignore[no-untyped-def]
    return sel.selective_scan_step(u_t, delta_t, A, B_t, C_t, state, delta_softplus=True)


def _step_zoh_b(u_t, delta_t, A, B_t, C_t, state, delta_bias):  # type: ignore[no-untyped-def]
    dt = sel.softplus(delta_t + delta_bias)[..., None]  # [B, D, 1]
    h = np.exp(dt * A) * state + np.expm1(dt * A) / A * (B_t[:, None, :] * u_t[..., None])
    return np.einsum("bdn,bn->bd", h, C_t), h


def _step_read_before_write(u_t, delta_t, A, B_t, C_t, state, delta_bias):  # type: ignore[no-untyped-def]
    _, h = _step(u_t, delta_t, A, B_t, C_t, state, delta_bias)
    return np.einsum("bdn,bn->bd", state, C_t), h


def _step_no_dt_on_input(u_t, delta_t, A, B_t, C_t, state, delta_bias):  # type: ignore[no-untyped-def]
    dt = sel.softplus(delta_t + delta_bias)[..., None]  # [B, D, 1]
    h = np.exp(dt * A) * state + B_t[:, None, :] * u_t[..., None]
    return np.einsum("bdn,bn->bd", h, C_t), h


STEP = Exercise(
    id="07.1",
    title="one selective SSM step",
    function="selective_step",
    points=2,
    reference=_step,
    make_cases=_step_cases,
    output_names=("y_t", "new_state"),
    hints=(
        Hint(
            _step_no_softplus,
            "the step size is the raw delta: apply dt = softplus(delta_t + delta_bias), which "
            "makes every step positive",
        ),
        Hint(_step_no_bias, "delta_bias is left out: dt = softplus(delta_t + delta_bias)"),
        Hint(
            _step_zoh_b,
            "you discretised B with zero-order hold ((exp(dt A) - 1) / A * B); Mamba uses the "
            "simpler Euler rule for the input: b_t = dt * B_t * u_t",
        ),
        Hint(
            _step_read_before_write,
            "y_t is read from the old state: update the state first, then y_t = new_state . C_t",
        ),
        Hint(
            _step_no_dt_on_input,
            "the input term lacks the step size: it is dt * B_t * u_t, not B_t * u_t",
        ),
    ),
    shape_hint="y_t is [B, D] and new_state is [B, D, N], like state",
    nan_hint=(
        "softplus(x) = log(1 + exp(x)) overflows for large x: use np.logaddexp(0, x), "
        "which is the same function computed safely"
    ),
    time_limit_s=5.0,
)


# --------------------------------------------------------------------------- 07.2 combine


def _pair(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    return rng.uniform(0.1, 1.0, shape), rng.standard_normal(shape)


def _combine_inputs(
    rng: np.random.Generator, shape1: tuple[int, ...], shape2: tuple[int, ...] | None = None
) -> dict[str, Any]:
    a1, b1 = _pair(rng, shape1)
    a2, b2 = _pair(rng, shape2 or shape1)
    return {"a1": a1, "b1": b1, "a2": a2, "b2": b2}


def _combine_cases(rng: np.random.Generator) -> list[Case]:
    return [
        Case("vectors of 6", _combine_inputs(rng, (6,))),
        Case("single numbers as [1] arrays", _combine_inputs(rng, (1,))),
        Case("3-d arrays [2, 3, 4]", _combine_inputs(rng, (2, 3, 4))),
        Case("broadcasting [4, 1] with [4, 5]", _combine_inputs(rng, (4, 1), (4, 5))),
    ]


def _combine_swapped(a1: Any, b1: Any, a2: Any, b2: Any) -> Any:
    return sel.combine(a2, b2, a1, b1)


def _combine_wrong_b(a1: Any, b1: Any, a2: Any, b2: Any) -> Any:
    return a1 * a2, a1 * b2 + b1


COMBINE = Exercise(
    id="07.2",
    title="the associative combine",
    function="combine",
    points=1,
    reference=sel.combine,
    make_cases=_combine_cases,
    output_names=("a", "b"),
    hints=(
        Hint(
            _combine_swapped,
            "the order is reversed: (a1, b1) is the FIRST step and (a2, b2) the second, so "
            "the composed map is a2 (a1 h + b1) + b2",
        ),
        Hint(
            _combine_wrong_b,
            "the b part multiplies the wrong step: b = a2 * b1 + b2 (the second step decays "
            "what the first one wrote)",
        ),
    ),
    shape_hint="a and b have the broadcast shape of the inputs",
    time_limit_s=5.0,
)


# --------------------------------------------------------------------------- 07.3 scan


def _scan_cases(rng: np.random.Generator) -> list[Case]:
    import torch

    def pair(shape: tuple[int, ...], dtype: Any = torch.float64) -> dict[str, Any]:
        a, b = _pair(rng, shape)
        return {"a": torch.tensor(a, dtype=dtype), "b": torch.tensor(b, dtype=dtype)}

    return [
        Case("T=8, one channel [8]", pair((8,))),
        Case("T=1 [1, 3]", pair((1, 3))),
        Case("T=2 [2, 4]", pair((2, 4))),
        Case("T=37 (not a power of two) [37, 2, 3]", pair((37, 2, 3))),
        Case("T=300, float32 [300, 5]", pair((300, 5), torch.float32)),
    ]


def _scan(a: Any, b: Any) -> Any:
    return sel.associative_scan(a, b, axis=0)


def _scan_exclusive(a: Any, b: Any) -> Any:
    a_cum, h = sel.associative_scan(a, b, axis=0)
    shift = np.concatenate([np.zeros_like(h[:1]), h[:-1]], axis=0)
    return a_cum, shift


def _scan_b_only_summed(a: Any, b: Any) -> Any:
    return np.cumprod(a, axis=0), np.cumsum(b, axis=0)


SCAN = Exercise(
    id="07.3",
    title="Hillis-Steele scan in PyTorch",
    function="hillis_steele_scan",
    points=3,
    reference=_scan,
    make_cases=_scan_cases,
    output_names=("a_cum", "h"),
    hints=(
        Hint(
            _scan_exclusive,
            "h is shifted by one step (an exclusive scan): h[t] must include step t itself, "
            "h[t] = a[t] h[t-1] + b[t]",
        ),
        Hint(
            _scan_b_only_summed,
            "h is a plain running sum of b: each earlier b must be decayed by the a's of the "
            "steps after it, which is what combine's a2 * b1 does",
        ),
    ),
    shape_hint="a_cum and h have the shape of a",
    time_limit_s=10.0,
)


# --------------------------------------------------------------------------- 07.4 Triton


def _triton_cases(rng: np.random.Generator) -> list[Case]:
    import torch

    from course_lib import runtime

    device = runtime.default_device()

    def inputs(B: int, T: int, D: int, N: int) -> dict[str, Any]:
        def t(x: np.ndarray) -> Any:
            return torch.tensor(x, dtype=torch.float32, device=device)

        return {
            "u": t(rng.standard_normal((B, T, D))),
            "delta": t(rng.uniform(0.05, 1.0, (B, T, D))),
            "A": t(-rng.uniform(0.2, 1.5, (D, N))),
            "B": t(rng.standard_normal((B, T, N))),
            "C": t(rng.standard_normal((B, T, N))),
        }

    return [
        Case("B=1, T=8, D=4, N=2", inputs(1, 8, 4, 2)),
        Case("one step, T=1", inputs(2, 1, 3, 4)),
        Case("B=2, T=12, D=19 (two channel blocks, masked), N=5", inputs(2, 12, 19, 5)),
    ]


def _triton_reference(u: Any, delta: Any, A: Any, B: Any, C: Any) -> Any:
    return sel.selective_scan_sequential(u, delta, A, B, C)


def _triton_no_carry(u: Any, delta: Any, A: Any, B: Any, C: Any) -> Any:
    _, b = sel.discretize(u, delta, A, B)  # [B, T, D, N]: each step from a zero state
    return np.einsum("btdn,btn->btd", b, C)


def _triton_no_exp(u: Any, delta: Any, A: Any, B: Any, C: Any) -> Any:
    h = np.zeros((u.shape[0], u.shape[2], A.shape[1]))
    ys = []
    for t in range(u.shape[1]):
        h = (delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None]
        ys.append(np.einsum("bdn,bn->bd", h, C[:, t]))
    return np.stack(ys, 1)


TRITON_SCAN = Exercise(
    id="07.4",
    title="the time loop of a Triton scan kernel",
    function="triton_selective_scan",
    points=3,
    reference=_triton_reference,
    make_cases=_triton_cases,
    hints=(
        Hint(
            _triton_no_carry,
            "the state is not carried from step to step: every output looks like a fresh "
            "start; update h in place of a new variable (h = a * h + ...) inside the loop",
        ),
        Hint(
            _triton_no_exp,
            "the decay is dt * A itself; it is exp(dt * A) (tl.exp), a number in (0, 1)",
        ),
    ),
    shape_hint="The output y is [B, T, D], like u",
    nan_hint=(
        "part of the output was never written (in this check, outputs start as NaN): store "
        "y_t for every step t and every channel of the block, with the channel mask"
    ),
    time_limit_s=120.0,
    poison=True,
)


EXERCISES = (STEP, COMBINE, SCAN, TRITON_SCAN)
