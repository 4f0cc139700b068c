"""Registry entries for the LTI state space model (chapter 05).

Cases: ``diag_real`` (real diagonal A, as S4D-Real), ``diag_complex`` (complex diagonal A
with conjugate pairs folded, as S4D-Lin/Inv) and ``dense`` (a full N x N A per channel).
Every form gets an initial state and returns the final state, so the registry compares
both outputs: the convolution and FFT forms add the free response of the initial state and
compute the final state in closed form (see :mod:`course_lib.ssm.numpy_ref`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from course_lib.registry import Impl, Mechanism, Sizes, register, register_mechanism

CASES = ("diag_real", "diag_complex", "dense")


def _eye_like(a: Any, n: int) -> Any:
    """An n x n identity of ``a``'s kind (numpy array or torch tensor)."""
    if type(a).__module__.startswith("torch"):
        import torch

        return torch.eye(n, dtype=a.dtype, device=a.device)
    return np.eye(n)


def make_inputs(rand: Any, sizes: Sizes, case: str) -> dict[str, Any]:
    """x [B, T, D], a stable system for ``case``, dt log-uniform in [0.01, 1], a state."""
    Bsz, T, D, N = sizes.B, sizes.T, sizes.D, sizes.N
    x = rand.normal((Bsz, T, D))
    dt = 10 ** rand.uniform((D,), -2.0, 0.0)
    if case == "diag_complex":
        A = -rand.uniform((D, N), 0.1, 1.0) + 1j * rand.uniform((D, N), 0.0, 10.0)
        B = rand.normal((D, N)) + 1j * rand.normal((D, N))
        C = rand.normal((D, N), 0.5) + 1j * rand.normal((D, N), 0.5)
        h0 = rand.normal((Bsz, D, N)) + 1j * rand.normal((Bsz, D, N))
    else:
        if case == "dense":  # eigenvalues of M/sqrt(N) lie in about the unit disc
            M = rand.normal((D, N, N), N**-0.5)
            A = M - 1.5 * _eye_like(M, N)
        else:
            A = -rand.uniform((D, N), 0.1, 2.0)
        B = rand.normal((D, N))
        C = rand.normal((D, N))
        h0 = rand.normal((Bsz, D, N))
    return {
        "x": x,
        "A": A,
        "B": B,
        "C": C,
        "dt": dt,
        "D": rand.normal((D,)),
        "initial_state": h0,
        "output_final_state": True,
    }


register_mechanism(
    Mechanism(
        name="lti_ssm",
        chapter=5,
        summary="h_t = Abar h_{t-1} + Bbar x_t, y_t = C h_t + D x_t (LTI, S4/S4D)",
        make_inputs="course_lib.ssm.registrations:make_inputs",
        reference="course_lib.ssm.numpy_ref:lti_ssm_recurrent",
        cases=CASES,
        family="ssm",
    )
)

for _backend, _module in (("numpy", "numpy_ref"), ("torch", "torch_impl")):
    for _form in ("recurrent", "convolution", "fft"):
        register(
            Impl(
                "lti_ssm",
                _backend,
                _form,
                f"course_lib.ssm.{_module}:lti_ssm_{_form}",
                differentiable=_backend == "torch",
            )
        )
