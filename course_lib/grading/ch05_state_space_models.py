"""Graded exercises of chapter 05, state space models (LTI SSMs, S4D).

Glossary of dimension letters: B batch, T sequence length, D channels (one SSM each),
N state size of one channel, L length of a convolution kernel.

===== ================================== ======================== ==============================
id    the learner writes                 checked against          edge cases
===== ================================== ======================== ==============================
05.1  ``discretize_zoh_diag(A, B, dt)``  ``ssm.numpy_ref.         one channel, one mode, a mode
      (numpy, real diagonal A)           discretize_zoh``         with a = 0 (the limit dt), D = N
                                                                  (a broadcast of dt along N
                                                                  shows), very different dt
05.2  ``ssm_kernel_diag(Abar, Bbar, C,   ``ssm.numpy_ref.         L = 1, N = 1, a long kernel
      L)`` (numpy)                       ssm_kernel``             (L = 300) with poles near 1
05.3  ``fft_causal_conv(x, K)`` (torch)  ``ssm.numpy_ref.         T = 1, L < T, L = T, float32,
                                         fft_conv``               a long T = 4096 (time limit)
===== ================================== ======================== ==============================

The cases are drawn afresh at every check. Complex S4D systems are left out on purpose:
the checks compare real arrays, and a real diagonal A (S4D-Real) exercises the same
formulas. torch is imported only when the cases of 05.3 are drawn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from course_lib.grading.checks import Case, Exercise, Hint
from course_lib.ssm import numpy_ref as ssm

CHAPTER = "05"
TITLE = "State space models"


# --------------------------------------------------------------------------- 05.1 ZOH


def _system(rng: np.random.Generator, D: int, N: int, dt_low: float = -3.0) -> dict[str, Any]:
    """A stable real diagonal system: A in [-3, -0.05], B normal, log10 dt in [dt_low, 0]."""
    return {
        "A": -rng.uniform(0.05, 3.0, (D, N)),
        "B": rng.standard_normal((D, N)),
        "dt": 10.0 ** rng.uniform(dt_low, 0.0, D),
    }


def _zoh_cases(rng: np.random.Generator) -> list[Case]:
    with_zero = _system(rng, 3, 5)
    with_zero["A"][1, 2] = 0.0  # a mode that does not decay: Bbar = dt B there
    return [
        Case("D=3 channels, N=4 modes", _system(rng, 3, 4)),
        Case("one channel, one mode", _system(rng, 1, 1)),
        Case("D=N=5 (dt must scale the rows, one step size per channel)", _system(rng, 5, 5)),
        Case("a mode with a = 0 (A[1, 2] = 0)", with_zero),
        Case("step sizes from 1e-4 to 1", _system(rng, 6, 3, dt_low=-4.0)),
    ]


def _zoh_bilinear(A: Any, B: Any, dt: Any) -> Any:
    return ssm.discretize_bilinear(A, B, dt)


def _zoh_euler(A: Any, B: Any, dt: Any) -> Any:
    return 1 + dt[:, None] * A, dt[:, None] * B


def _zoh_dt_on_columns(A: Any, B: Any, dt: Any) -> Any:
    if A.shape[0] != A.shape[1]:
        raise ValueError("only defined when D == N")
    Abar, Bbar = ssm.discretize_zoh(A.T, B.T, dt)
    return Abar.T, Bbar.T


def _zoh_no_inverse(A: Any, B: Any, dt: Any) -> Any:
    Abar = np.exp(dt[:, None] * A)
    return Abar, (Abar - 1) * B


ZOH = Exercise(
    id="05.1",
    title="zero-order hold of a diagonal SSM",
    function="discretize_zoh_diag",
    points=2,
    reference=ssm.discretize_zoh,
    make_cases=_zoh_cases,
    output_names=("Abar", "Bbar"),
    hints=(
        Hint(
            _zoh_bilinear,
            "these are the bilinear formulas; zero-order hold is Abar = exp(dt A), "
            "Bbar = (exp(dt A) - 1) / A * B",
        ),
        Hint(
            _zoh_euler,
            "this is forward Euler (Abar = 1 + dt A, Bbar = dt B), only the first term of the "
            "exponential; use np.exp",
        ),
        Hint(
            _zoh_dt_on_columns,
            "the step sizes multiply the wrong axis: dt has one entry per channel (row of A), "
            "so use dt[:, None] * A",
        ),
        Hint(
            _zoh_no_inverse,
            "Bbar is missing the division by A: Bbar = (exp(dt A) - 1) / A * B",
        ),
    ),
    shape_hint="Abar and Bbar have the shapes of A and B, [D, N]",
    nan_hint=(
        "at a = 0 the formula (exp(dt a) - 1) / a is 0/0; its limit is dt: use np.where "
        "(divide by a safe value where a == 0 and put dt there), or np.expm1 for accuracy"
    ),
    time_limit_s=5.0,
)


# --------------------------------------------------------------------------- 05.2 kernel


def _kernel_inputs(
    rng: np.random.Generator, D: int, N: int, L: int, slow: bool = False
) -> dict[str, Any]:
    low, high = (0.97, 0.999) if slow else (0.3, 0.95)
    Abar = rng.uniform(low, high, (D, N)) * rng.choice([-1.0, 1.0], (D, N))
    return {
        "Abar": Abar,
        "Bbar": rng.standard_normal((D, N)),
        "C": rng.standard_normal((D, N)),
        "L": L,
    }


def _kernel_cases(rng: np.random.Generator) -> list[Case]:
    return [
        Case("D=3, N=4, L=10", _kernel_inputs(rng, 3, 4, 10)),
        Case("L=1 (only K_0 = C Bbar)", _kernel_inputs(rng, 2, 3, 1)),
        Case("one mode, N=1, L=7", _kernel_inputs(rng, 4, 1, 7)),
        Case("long kernel L=300, poles near 1", _kernel_inputs(rng, 2, 6, 300, slow=True)),
    ]


def _kernel_shifted(Abar: Any, Bbar: Any, C: Any, L: int) -> Any:
    return ssm.ssm_kernel(Abar, Abar * Bbar, C, L)  # starts at C Abar Bbar


def _kernel_no_C(Abar: Any, Bbar: Any, C: Any, L: int) -> Any:
    return ssm.ssm_kernel(Abar, Bbar, np.ones_like(C), L)


KERNEL = Exercise(
    id="05.2",
    title="the SSM convolution kernel",
    function="ssm_kernel_diag",
    points=2,
    reference=ssm.ssm_kernel,
    make_cases=_kernel_cases,
    hints=(
        Hint(
            _kernel_shifted,
            "your kernel is shifted by one lag: K_0 = C Bbar (Abar to the power 0), then "
            "K_1 = C Abar Bbar, ...",
        ),
        Hint(_kernel_no_C, "C is missing: K_j = sum_n C_n Abar_n^j Bbar_n"),
    ),
    shape_hint="The kernel is [D, L]: one row of L taps per channel (sum over the N modes)",
    time_limit_s=5.0,
)


# --------------------------------------------------------------------------- 05.3 FFT conv


def _conv_cases(rng: np.random.Generator) -> list[Case]:
    import torch

    def tensors(B: int, T: int, D: int, L: int, dtype: Any = torch.float64) -> dict[str, Any]:
        return {
            "x": torch.tensor(rng.standard_normal((B, T, D)), dtype=dtype),
            "K": torch.tensor(rng.standard_normal((D, L)) * 0.5, dtype=dtype),
        }

    return [
        Case("B=2, T=16, D=3, L=T", tensors(2, 16, 3, 16)),
        Case("a short kernel, T=20, L=5", tensors(1, 20, 2, 5)),
        Case("one step, T=1, L=1", tensors(3, 1, 2, 1)),
        Case("float32, T=33, L=33", tensors(2, 33, 4, 33, torch.float32)),
        Case("long, T=4096, D=2, L=T", tensors(1, 4096, 2, 4096)),
    ]


def _conv_circular(x: Any, K: Any) -> Any:
    T = x.shape[1]
    Kp = np.zeros((K.shape[0], T))
    Kp[:, : min(T, K.shape[1])] = K[:, :T]
    return np.fft.irfft(np.fft.rfft(x, axis=1) * np.fft.rfft(Kp, axis=1).T, n=T, axis=1)


def _conv_correlation(x: Any, K: Any) -> Any:
    """``y_t = sum_j K_j x_{t+j}`` (the future): a causal convolution of the reversed input."""
    return ssm.fft_conv(x[:, ::-1], K)[:, ::-1]


FFT_CONV = Exercise(
    id="05.3",
    title="causal convolution through the FFT (PyTorch)",
    function="fft_causal_conv",
    points=3,
    reference=ssm.fft_conv,
    make_cases=_conv_cases,
    hints=(
        Hint(
            _conv_circular,
            "this is a circular convolution: the end of the kernel wrapped around onto the "
            "first outputs. Zero-pad both signals to n = T + L (n=... in torch.fft.rfft) and "
            "keep the first T outputs",
        ),
        Hint(
            _conv_correlation,
            "your output at t uses x_{t+j}, the future: that is a correlation, not a causal "
            "convolution (y_t = sum_j K_j x_{t-j})",
        ),
    ),
    shape_hint="y has the shape of x, [B, T, D]: keep only the first T outputs of the FFT",
    time_limit_s=10.0,
)


EXERCISES = (ZOH, KERNEL, FFT_CONV)
