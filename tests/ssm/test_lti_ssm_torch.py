"""LTI SSM in PyTorch: gradients (float64 gradcheck), dtypes, devices of the helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib.registry import Sizes
from course_lib.ssm import numpy_ref as ref
from course_lib.ssm import registrations
from course_lib.ssm import torch_impl as tim
from course_lib.testing import TOLERANCE, NumpyRand, rel_error

FORMS = ("recurrent", "convolution", "fft")


def _tensors(case: str, seed: int = 0, **sizes) -> dict:
    inp = registrations.make_inputs(NumpyRand(seed), Sizes(**sizes), case)
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in inp.items()}


GRAD_CASES = [(c, f, "zoh") for c in registrations.CASES for f in FORMS] + [
    (c, "recurrent", "bilinear") for c in registrations.CASES
]


@pytest.mark.parametrize(("case", "form", "method"), GRAD_CASES)
def test_gradcheck_float64(case, form, method):
    inp = _tensors(case, B=1, T=4, D=2, N=2)
    names = ("x", "A", "B", "C", "dt", "D", "initial_state")
    leaves = [inp[n].clone().requires_grad_(True) for n in names]
    fn = getattr(tim, f"lti_ssm_{form}")

    def f(*args):
        y, h = fn(**dict(zip(names, args, strict=True)), method=method, output_final_state=True)
        return y, torch.view_as_real(h) if h.is_complex() else h

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("form", FORMS)
def test_float32_in_float32_out_close_to_reference(form):
    inp = _tensors("diag_complex", B=2, T=33, D=3, N=4)
    want = ref.lti_ssm_recurrent(
        **{k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in inp.items()}
    )
    f32 = {
        k: v.to(torch.complex64 if v.is_complex() else torch.float32)
        if isinstance(v, torch.Tensor) else v
        for k, v in inp.items()
    }  # fmt: skip
    y, h = getattr(tim, f"lti_ssm_{form}")(**f32)
    assert y.dtype == torch.float32 and h.dtype == torch.complex64
    assert rel_error(y, want[0]) <= TOLERANCE["float32"]
    assert rel_error(h, want[1]) <= TOLERANCE["float32"]


def test_dense_zoh_matrix_exp_matches_numpy_expm():
    inp = _tensors("dense", B=1, T=1, D=3, N=5, seed=3)
    At, Bt = tim.discretize_zoh(inp["A"], inp["B"], inp["dt"])
    An, Bn = ref.discretize_zoh(inp["A"].numpy(), inp["B"].numpy(), inp["dt"].numpy())
    assert rel_error(At, An) <= TOLERANCE["float64"]
    assert rel_error(Bt, Bn) <= TOLERANCE["float64"]


@pytest.mark.parametrize("case", registrations.CASES)
def test_state_kernel_by_doubling_matches_the_loop(case):
    inp = _tensors(case, B=1, T=1, D=2, N=3, seed=6)
    Abar, Bbar = tim.discretize(inp["A"], inp["B"], inp["dt"])
    for L in (1, 2, 7, 16):
        got = tim.state_kernel(Abar, Bbar, L)
        assert rel_error(got, ref.state_kernel(Abar.numpy(), Bbar.numpy(), L)) <= 1e-12
