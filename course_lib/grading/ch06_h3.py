"""Graded exercises of chapter 06, H3 (Fu et al. 2023).

Glossary of dimension letters: B batch, T sequence length, D channels, W taps of the shift
SSM, K head size (q, k, v of one head are K-vectors), N modes of the head's diagonal SSM.

===== ===================================== ====================== ===========================
id    the learner writes                    checked against        edge cases
===== ===================================== ====================== ===========================
06.1  ``shift_ssm_fir(x, kernel)`` (numpy)  ``h3.numpy_ref.        W = 1, W > T, T = 1, the
                                            shift_ssm``            previous-token filter (0, 1)
06.2  ``h3_head_step(q_t, kbar_t, v_t, S,   ``h3.numpy_ref.        a zero state, N = 1, K = 1,
      Abar, Bbar, C, D)`` (numpy)           h3_step``              the state must not be
                                                                   changed in place
06.3  ``h3_head(q, k, v, shift_kernel,      ``h3.numpy_ref.        T = 1, W = 1, float32,
      Abar, Bbar, C, D)`` (PyTorch)         h3_recurrent``         T = 64 with slow decay
===== ===================================== ====================== ===========================

The library's H3 layer takes the input ``x`` and four projections and has one diagonal SSM
per head in continuous form (A, B, dt, discretised by ZOH). The exercises work on one head
with q, k, v given and the SSM already discretised (real diagonal ``Abar``, ``Bbar``,
``C`` of N modes and a skip ``D``). The references embed that head in a three-head layer
(``x = [q | k | v]``, projections that route each part to head 0, ``A = log Abar`` with
``dt = 1``) and call the library's public functions. torch is imported only when the cases
of 06.3 are drawn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from course_lib.grading.checks import Case, Exercise, Hint
from course_lib.h3 import numpy_ref as h3

CHAPTER = "06"
TITLE = "H3"


# --------------------------------------------------------------------------- embedding


def _layer_params(
    shift_kernel: np.ndarray, Abar: np.ndarray, Bbar: np.ndarray, C: np.ndarray, D: float
) -> dict[str, np.ndarray]:
    """Parameters of a 3-head H3 layer whose head 0 is the given head, for x = [q | k | v].

    Heads 1 and 2 see zero inputs and output nothing; ``Wo`` keeps head 0's output in the
    first K columns. The diagonal SSM is written back in continuous form for ZOH with
    ``dt = 1``: ``A = log Abar``, ``B = Bbar A / (exp(A) - 1)`` (``B = Bbar`` where A = 0).
    """
    K, W = shift_kernel.shape
    eye = np.eye(K)
    proj = {n: np.zeros((3 * K, 3 * K)) for n in ("Wq", "Wk", "Wv", "Wo")}
    proj["Wq"][:K, :K] = eye  # q -> head 0
    proj["Wk"][K : 2 * K, :K] = eye  # k -> head 0
    proj["Wv"][2 * K :, :K] = eye  # v -> head 0
    proj["Wo"][:K, :K] = eye  # head 0 -> the first K outputs
    kernel = np.zeros((3 * K, W))
    kernel[:K] = shift_kernel
    A = np.log(Abar)  # [N]
    safe = np.where(A == 0, 1.0, A)
    B = np.where(A == 0, Bbar, Bbar * safe / np.expm1(safe))

    def rows(a: Any) -> np.ndarray:
        return np.tile(np.asarray(a, dtype=np.float64), (3, 1))  # [3, N]

    return {
        **proj,
        "shift_kernel": kernel,
        "A": rows(A),
        "B": rows(B),
        "C": rows(C),
        "dt": np.ones(3),
        "D": np.full(3, float(D)),
    }


# --------------------------------------------------------------------------- 06.1 shift SSM


def _fir_inputs(rng: np.random.Generator, B: int, T: int, D: int, W: int) -> dict[str, Any]:
    return {"x": rng.standard_normal((B, T, D)), "kernel": rng.standard_normal((D, W))}


def _fir_cases(rng: np.random.Generator) -> list[Case]:
    previous = _fir_inputs(rng, 2, 9, 3, 2)
    previous["kernel"] = np.tile([0.0, 1.0], (3, 1))
    return [
        Case("B=2, T=10, D=3, W=4", _fir_inputs(rng, 2, 10, 3, 4)),
        Case("W=1 (a gain per channel)", _fir_inputs(rng, 1, 6, 4, 1)),
        Case("W=8 longer than T=5", _fir_inputs(rng, 2, 5, 2, 8)),
        Case("one step, T=1", _fir_inputs(rng, 3, 1, 2, 3)),
        Case("the previous-token filter (0, 1)", previous),
    ]


def _fir_future(x: Any, kernel: Any) -> Any:
    return h3.shift_ssm(x[:, ::-1], kernel)[:, ::-1]


def _fir_reversed(x: Any, kernel: Any) -> Any:
    return h3.shift_ssm(x, kernel[:, ::-1])


def _fir_wraparound(x: Any, kernel: Any) -> Any:
    y = np.zeros(x.shape)
    for j in range(kernel.shape[1]):
        y += kernel[:, j] * np.roll(x, j, axis=1)
    return y


SHIFT_FIR = Exercise(
    id="06.1",
    title="the shift SSM as a causal FIR filter",
    function="shift_ssm_fir",
    points=2,
    reference=h3.shift_ssm,
    make_cases=_fir_cases,
    hints=(
        Hint(
            _fir_future,
            "your output at t uses x_{t+j}, the future: the shift SSM's buffer holds "
            "x_t, x_{t-1}, ..., so y_t = sum_j kernel[:, j] x_{t-j}",
        ),
        Hint(
            _fir_reversed,
            "the taps are in reverse order: kernel[:, 0] multiplies the newest input x_t, "
            "kernel[:, 1] the one before it",
        ),
        Hint(
            _fir_wraparound,
            "the end of the sequence wrapped around to the start (np.roll?): before t = 0 the "
            "buffer holds zeros, so y_t only uses x_0 ... x_t",
        ),
    ),
    shape_hint="y has the shape of x, [B, T, D]",
    time_limit_s=5.0,
)


# --------------------------------------------------------------------------- 06.2 step


def _head_ssm(rng: np.random.Generator, N: int, slow: bool = False) -> dict[str, Any]:
    low, high = (0.95, 0.999) if slow else (0.3, 0.95)
    return {
        "Abar": rng.uniform(low, high, N),
        "Bbar": rng.standard_normal(N) * 0.5,
        "C": rng.standard_normal(N),
        "D": float(rng.standard_normal()),
    }


def _step_inputs(
    rng: np.random.Generator, B: int, K: int, N: int, zero_state: bool = False
) -> dict[str, Any]:
    S = np.zeros((B, N, K, K)) if zero_state else rng.standard_normal((B, N, K, K))
    return {
        "q_t": rng.standard_normal((B, K)),
        "kbar_t": rng.standard_normal((B, K)),
        "v_t": rng.standard_normal((B, K)),
        "S": S,
        **_head_ssm(rng, N),
    }


def _step_cases(rng: np.random.Generator) -> list[Case]:
    return [
        Case("B=2, K=3, N=4", _step_inputs(rng, 2, 3, 4)),
        Case("the first token: S = 0", _step_inputs(rng, 1, 4, 2, zero_state=True)),
        Case("one mode, N=1", _step_inputs(rng, 3, 2, 1)),
        Case("K=1 (scalars)", _step_inputs(rng, 2, 1, 3)),
    ]


def _step_reference(
    q_t: Any, kbar_t: Any, v_t: Any, S: Any, Abar: Any, Bbar: Any, C: Any, D: float
) -> tuple[np.ndarray, np.ndarray]:
    """One step of head 0 of the embedding layer, with a one-tap identity shift."""
    Bsz, K = q_t.shape
    params = _layer_params(np.ones((K, 1)), Abar, Bbar, C, D)
    ssm_state = np.zeros((Bsz, 3, *S.shape[1:]))
    ssm_state[:, 0] = S
    state = {"shift": np.zeros((Bsz, 3 * K, 1)), "ssm": ssm_state}
    x_t = np.concatenate([q_t, kbar_t, v_t], axis=-1)  # [B, 3K]
    y, new = h3.h3_step(x_t, params, state, num_heads=3)
    return y[:, :K], new["ssm"][:, 0]


def _step_read_before_write(q_t, kbar_t, v_t, S, Abar, Bbar, C, D):  # type: ignore[no-untyped-def]
    _, S_new = _step_reference(q_t, kbar_t, v_t, S, Abar, Bbar, C, D)
    kv = np.einsum("bk,bv->bkv", kbar_t, v_t)
    Z = np.einsum("n,bnkv->bkv", C, S) + D * kv  # read the old state
    return np.einsum("bk,bkv->bv", q_t, Z), S_new


def _step_no_skip(q_t, kbar_t, v_t, S, Abar, Bbar, C, D):  # type: ignore[no-untyped-def]
    return _step_reference(q_t, kbar_t, v_t, S, Abar, Bbar, C, 0.0)


def _step_transposed(q_t, kbar_t, v_t, S, Abar, Bbar, C, D):  # type: ignore[no-untyped-def]
    _, S_new = _step_reference(q_t, kbar_t, v_t, S, Abar, Bbar, C, D)
    kv = np.einsum("bk,bv->bkv", kbar_t, v_t)
    Z = np.einsum("n,bnkv->bkv", C, S_new) + D * kv
    return np.einsum("bkv,bv->bk", Z, q_t), S_new  # Z q instead of Z^T q


def _step_no_decay(q_t, kbar_t, v_t, S, Abar, Bbar, C, D):  # type: ignore[no-untyped-def]
    return _step_reference(q_t, kbar_t, v_t, S, np.ones_like(Abar), Bbar, C, D)


HEAD_STEP = Exercise(
    id="06.2",
    title="one decoding step of an H3 head",
    function="h3_head_step",
    points=3,
    reference=_step_reference,
    make_cases=_step_cases,
    output_names=("o_t", "S"),
    hints=(
        Hint(
            _step_read_before_write,
            "the output was read from the old state: update S first (decay and write "
            "kbar_t v_t^T), then read Z_t = sum_n C_n S_t[n] + D kbar_t v_t^T from the new one",
        ),
        Hint(_step_no_skip, "the skip term is missing: Z_t = sum_n C_n S_t[n] + D kbar_t v_t^T"),
        Hint(
            _step_transposed,
            "o_t = Z_t^T q_t contracts q_t with the FIRST index of Z_t (the key side), "
            "as in linear attention: np.einsum('bk,bkv->bv', q_t, Z)",
        ),
        Hint(
            _step_no_decay,
            "the old state is not decayed: S_t[n] = Abar_n S_{t-1}[n] + Bbar_n kbar_t v_t^T",
        ),
    ),
    shape_hint="o_t is [B, K] and the new state S is [B, N, K, K], as the old one",
    time_limit_s=5.0,
)


# --------------------------------------------------------------------------- 06.3 head


def _head_cases(rng: np.random.Generator) -> list[Case]:
    import torch

    def inputs(
        B: int, T: int, K: int, W: int, N: int, dtype: Any = torch.float64, slow: bool = False
    ) -> dict[str, Any]:
        def t(a: np.ndarray) -> Any:
            return torch.tensor(a, dtype=dtype)

        ssm = _head_ssm(rng, N, slow)
        return {
            "q": t(rng.standard_normal((B, T, K))),
            "k": t(rng.standard_normal((B, T, K))),
            "v": t(rng.standard_normal((B, T, K))),
            "shift_kernel": t(rng.standard_normal((K, W)) / np.sqrt(W)),
            "Abar": t(ssm["Abar"]),
            "Bbar": t(ssm["Bbar"]),
            "C": t(ssm["C"]),
            "D": ssm["D"],
        }

    return [
        Case("B=2, T=12, K=3, W=3, N=4", inputs(2, 12, 3, 3, 4)),
        Case("one token, T=1", inputs(1, 1, 2, 3, 2)),
        Case("W=1, N=1", inputs(2, 7, 4, 1, 1)),
        Case("float32, T=20, K=4, W=4, N=3", inputs(2, 20, 4, 4, 3, torch.float32)),
        Case("T=64 with slow decay (Abar near 1)", inputs(1, 64, 2, 4, 3, slow=True)),
    ]


def _head_reference(
    q: Any, k: Any, v: Any, shift_kernel: Any, Abar: Any, Bbar: Any, C: Any, D: float
) -> np.ndarray:
    """Head 0 of the embedding layer, the library's recurrent form."""
    K = q.shape[-1]
    params = _layer_params(shift_kernel, Abar, Bbar, C, D)
    x = np.concatenate([q, k, v], axis=-1)  # [B, T, 3K]
    return h3.h3_recurrent(x, **params, num_heads=3)[..., :K]


def _head_no_shift(q, k, v, shift_kernel, Abar, Bbar, C, D):  # type: ignore[no-untyped-def]
    identity = np.zeros_like(shift_kernel)
    identity[:, 0] = 1.0
    return _head_reference(q, k, v, identity, Abar, Bbar, C, D)


def _head_no_skip(q, k, v, shift_kernel, Abar, Bbar, C, D):  # type: ignore[no-untyped-def]
    return _head_reference(q, k, v, shift_kernel, Abar, Bbar, C, 0.0)


H3_HEAD = Exercise(
    id="06.3",
    title="the forward pass of one H3 head (PyTorch)",
    function="h3_head",
    points=3,
    reference=_head_reference,
    make_cases=_head_cases,
    hints=(
        Hint(
            _head_no_shift,
            "the shift SSM is missing: the keys go through it first, "
            "kbar = shift_ssm(k, shift_kernel) (exercise 06.1), and kbar enters the state",
        ),
        Hint(_head_no_skip, "the skip term D kbar_t v_t^T is missing from Z_t"),
    ),
    shape_hint="the output of the head is [B, T, K], like q",
    time_limit_s=20.0,
)


EXERCISES = (SHIFT_FIR, HEAD_STEP, H3_HEAD)
