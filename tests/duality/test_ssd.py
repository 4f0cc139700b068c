"""Duality (chapter 08): the SSM scan, gated linear attention and the quadratic form agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from course_lib.duality import numpy_ref as ref
from course_lib.duality import torch_impl as ti
from course_lib.selective_ssm import numpy_ref as scan_ref
from course_lib.testing import TOLERANCE, rel_error

TOL64 = TOLERANCE["float64"]
FORMS = ("ssd_scan", "ssd_as_gla", "ssd_quadratic")


def draw(b, T, H, P, N, *, shared=False, h0=True, seed=0):
    rng = np.random.default_rng(seed)
    bc = (b, T, N) if shared else (b, T, H, N)
    args = {
        "x": rng.standard_normal((b, T, H, P)),
        "dt": rng.uniform(0.01, 0.8, (b, T, H)),
        "A": -rng.uniform(0.1, 2.0, H),
        "B": rng.standard_normal(bc),
        "C": rng.standard_normal(bc),
    }
    if h0:
        args["initial_state"] = rng.standard_normal((b, H, N, P))
    return args


def to_torch(args, requires_grad=False):
    return {k: torch.tensor(v).requires_grad_(requires_grad) for k, v in args.items()}


shapes = st.tuples(
    st.integers(1, 2),  # b
    st.sampled_from([1, 5, 16, 17, 40]),  # T
    st.integers(1, 3),  # H
    st.integers(1, 5),  # P
    st.integers(1, 5),  # N
    st.booleans(),  # shared B, C
    st.booleans(),  # initial state
)


@given(shapes)
def test_three_forms_agree(shape):
    b, T, H, P, N, shared, h0 = shape
    args = draw(b, T, H, P, N, shared=shared, h0=h0, seed=T + 10 * P)
    y0, s0 = ref.ssd_scan(**args, output_final_state=True)
    assert y0.shape == (b, T, H, P) and s0.shape == (b, H, N, P)
    for module in (ref, ti):
        a = args if module is ref else to_torch(args)
        for name in FORMS:
            kw = {"chunk_size": 8} if name == "ssd_as_gla" else {}
            y, s = getattr(module, name)(**a, output_final_state=True, **kw)
            assert rel_error(y, y0) < TOL64, (module.__name__, name)
            assert rel_error(s, s0) < TOL64, (module.__name__, name)


@pytest.mark.parametrize("module", [ref, ti], ids=["numpy", "torch"])
def test_masked_stand_in_agrees_with_chapter_04(module):
    args = draw(2, 13, 2, 3, 4, seed=1)
    a = args if module is ref else to_torch(args)
    y0, s0 = module.ssd_as_gla(**a, output_final_state=True)
    q, k = a["C"], a["B"]
    v, g = a["dt"][..., None] * a["x"], a["dt"] * a["A"]
    y, s = module.gla_scalar_gate_masked(q, k, v, g, a["initial_state"])
    assert rel_error(y, y0) < TOL64 and rel_error(s, s0) < TOL64


def test_ssd_is_a_selective_scan_with_one_a_per_head():
    """Mamba-2 with shared B, C is chapter 07's scan over D = H P channels whose rows of A
    are the head's scalar repeated N times and whose step size is the head's dt."""
    b, T, H, P, N = 2, 11, 3, 2, 4
    args = draw(b, T, H, P, N, shared=True, seed=2)
    y, s = ref.ssd_scan(**args, output_final_state=True)
    u = args["x"].reshape(b, T, H * P)  # channel d = h P + p
    delta = np.repeat(args["dt"], P, axis=2)  # [b, T, H P]
    A = np.repeat(args["A"], P)[:, None] * np.ones((1, N))  # [H P, N]
    h0 = args["initial_state"].transpose(0, 1, 3, 2).reshape(b, H * P, N)
    out, last = scan_ref.selective_scan_sequential(
        u, delta, A, args["B"], args["C"], initial_state=h0, return_last_state=True
    )
    assert rel_error(out.reshape(b, T, H, P), y) < TOL64
    assert rel_error(last.reshape(b, H, P, N).transpose(0, 1, 3, 2), s) < TOL64


@pytest.mark.parametrize("module", [ref, ti], ids=["numpy", "torch"])
@pytest.mark.parametrize("name", FORMS)
def test_split_in_two_with_carried_state(module, name):
    args = draw(1, 21, 2, 3, 2, seed=3)
    y0, s0 = ref.ssd_scan(**args, output_final_state=True)
    a = args if module is ref else to_torch(args)
    cut = 8
    first = {k: (v[:, :cut] if k != "A" and k != "initial_state" else v) for k, v in a.items()}
    second = {k: (v[:, cut:] if k != "A" and k != "initial_state" else v) for k, v in a.items()}
    fn = getattr(module, name)
    y1, s1 = fn(**first, output_final_state=True)
    y2, s2 = fn(**dict(second, initial_state=s1), output_final_state=True)
    assert rel_error(np.concatenate([np.asarray(y1), np.asarray(y2)], 1), y0) < TOL64
    assert rel_error(s2, s0) < TOL64


@pytest.mark.parametrize("module", [ref, ti], ids=["numpy", "torch"])
def test_final_state_only_when_asked(module):
    args = draw(1, 4, 1, 2, 2)
    a = args if module is ref else to_torch(args)
    for name in FORMS:
        y, s = getattr(module, name)(**a)
        assert s is None and tuple(y.shape) == (1, 4, 1, 2)


def test_strong_decay_does_not_overflow():
    args = draw(1, 200, 1, 2, 2, seed=4)
    args["dt"] = np.full_like(args["dt"], 5.0)
    args["A"] = np.array([-20.0])  # log gate -100 per step: G reaches -20000
    y0, _ = ref.ssd_scan(**args)
    for module in (ref, ti):
        a = args if module is ref else to_torch(args)
        y, _ = module.ssd_quadratic(**a)
        assert np.all(np.isfinite(np.asarray(y))) and rel_error(y, y0) < TOL64


def test_float32_and_bfloat16_follow_the_input_dtype():
    args = draw(2, 9, 2, 3, 4, seed=5)
    y0, _ = ref.ssd_scan(**args, output_final_state=True)
    for dtype in (torch.float32, torch.bfloat16):
        a = {k: torch.tensor(v, dtype=dtype) for k, v in args.items()}
        a["A"] = a["A"].float()
        rounded = {k: v.double().numpy() for k, v in a.items()}
        yr, sr = ref.ssd_scan(**rounded, output_final_state=True)
        name = str(dtype).replace("torch.", "")
        for form in FORMS:
            y, s = getattr(ti, form)(**a, output_final_state=True)
            assert y.dtype == dtype and s.dtype == torch.float32
            assert rel_error(y, yr) < TOLERANCE[name], form
            assert rel_error(s, sr) < TOLERANCE["float32"], form
    assert rel_error(yr, y0) < TOLERANCE["bfloat16"] * 2  # rounding the inputs alone


BAD = [
    ("x", lambda a: a.update(x=a["x"][0]), ValueError),
    ("dt", lambda a: a.update(dt=a["dt"][:, :-1]), ValueError),
    ("A", lambda a: a.update(A=a["A"][None]), ValueError),
    ("B", lambda a: a.update(B=a["B"][:, :, 0, 0]), ValueError),
    ("C", lambda a: a.update(C=a["C"][:, :, :, :-1]), ValueError),
    ("initial_state", lambda a: a.update(initial_state=a["initial_state"][..., :-1]), ValueError),
    ("dt", lambda a: a.update(dt=-a["dt"]), ValueError),
    ("A", lambda a: a.update(A=-a["A"]), ValueError),
    ("x", lambda a: a.update(x=a["x"].astype(np.int64)), TypeError),
    ("output_final_state", lambda a: a.update(output_final_state="no"), TypeError),
]


@pytest.mark.parametrize("module", [ref, ti], ids=["numpy", "torch"])
@pytest.mark.parametrize("name", FORMS)
@pytest.mark.parametrize(("arg", "spoil", "error"), BAD, ids=[f"{b[0]}-{i}" for i, b in
                                                              enumerate(BAD)])  # fmt: skip
def test_bad_inputs_name_the_argument(module, name, arg, spoil, error):
    args = draw(2, 5, 2, 3, 4)
    spoil(args)
    if module is ti:
        args = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                for k, v in args.items()}  # fmt: skip
    with pytest.raises(error, match=rf"^{arg}\b"):
        getattr(module, name)(**args)


@pytest.mark.parametrize("name", FORMS)
@pytest.mark.parametrize("shared", [False, True])
def test_gradcheck_float64(name, shared):
    args = to_torch(draw(1, 4, 2, 2, 2, shared=shared, seed=6), requires_grad=True)
    names = list(args)

    def f(*tensors):
        return getattr(ti, name)(**dict(zip(names, tensors, strict=True)), output_final_state=True)

    assert torch.autograd.gradcheck(f, tuple(args.values()), fast_mode=True)
