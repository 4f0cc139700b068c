"""Registry entries for the H3 layer (chapter 06).

Sizes: the model width is ``D = H * K`` (the attention family's heads and head size, so
that any ``Sizes`` gives a width the heads divide), the diagonal SSM has state ``N`` and
the shift filter ``W = N + 1`` taps. Cases: a complex diagonal SSM (S4D-like, as H3 uses)
or a real one.
"""

from __future__ import annotations

from typing import Any

from course_lib.registry import Impl, Mechanism, Sizes, register, register_mechanism

CASES = ("diag_complex", "diag_real")


def make_inputs(rand: Any, sizes: Sizes, case: str) -> dict[str, Any]:
    """x [B, T, H*K], random projections and filters, a stable diagonal SSM per head."""
    H, N = sizes.H, sizes.N
    Dm, W = sizes.H * sizes.K, sizes.N + 1
    inputs = {"x": rand.normal((sizes.B, sizes.T, Dm))}
    for name in ("Wq", "Wk", "Wv", "Wo"):
        inputs[name] = rand.normal((Dm, Dm), Dm**-0.5)
    inputs["shift_kernel"] = rand.normal((Dm, W), W**-0.5)
    if case == "diag_complex":
        inputs["A"] = -rand.uniform((H, N), 0.1, 1.0) + 1j * rand.uniform((H, N), 0.0, 10.0)
        inputs["B"] = rand.normal((H, N)) + 1j * rand.normal((H, N))
        inputs["C"] = rand.normal((H, N), 0.5) + 1j * rand.normal((H, N), 0.5)
    else:
        inputs["A"] = -rand.uniform((H, N), 0.1, 2.0)
        inputs["B"] = rand.normal((H, N))
        inputs["C"] = rand.normal((H, N))
    inputs["dt"] = 10 ** rand.uniform((H,), -2.0, 0.0)
    inputs["D"] = rand.normal((H,))
    inputs["num_heads"] = H
    return inputs


register_mechanism(
    Mechanism(
        name="h3",
        chapter=6,
        summary="y = q * SSM_diag(SSM_shift(k) * v), per head (Fu et al. 2023)",
        make_inputs="course_lib.h3.registrations:make_inputs",
        reference="course_lib.h3.numpy_ref:h3_recurrent",
        cases=CASES,
        family="ssm",
    )
)

for _backend, _module in (("numpy", "numpy_ref"), ("torch", "torch_impl")):
    for _form in ("recurrent", "fft"):
        register(
            Impl(
                "h3",
                _backend,
                _form,
                f"course_lib.h3.{_module}:h3_{_form}",
                differentiable=_backend == "torch",
            )
        )
