"""Selective scan (chapter 07): the forms agree, states carry, decoding matches, selectivity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from course_lib.selective_ssm import numpy_ref as ref
from course_lib.selective_ssm import torch_impl as ti
from course_lib.testing import TOLERANCE, rel_error

TOL64 = TOLERANCE["float64"]
FORMS = ("sequential", "parallel", "chunked")


OPTIONS = ("D", "z", "delta_bias", "delta_softplus", "initial_state")


def draw(b, T, D, N, *, full, seed=0, delta_scale=1.0):
    """Random inputs; ``full`` is True (every option), False (none) or a set of OPTIONS."""
    options = set(OPTIONS) if full is True else set(full or ())
    rng = np.random.default_rng(seed)
    args = {
        "u": rng.standard_normal((b, T, D)),
        "A": -rng.uniform(0.2, 1.5, (D, N)),
        "B": rng.standard_normal((b, T, N)),
        "C": rng.standard_normal((b, T, N)),
    }
    if "delta_softplus" in options:  # raw delta, any sign, through softplus
        args["delta"] = rng.standard_normal((b, T, D)) * delta_scale
        args["delta_softplus"] = True
    else:  # delta used as the step size itself: positive
        args["delta"] = rng.uniform(0.05, 1.0, (b, T, D)) * delta_scale
    optional = {
        "D": lambda: rng.standard_normal(D),
        "z": lambda: rng.standard_normal((b, T, D)),
        "delta_bias": lambda: rng.standard_normal(D) * 0.5,
        "initial_state": lambda: rng.standard_normal((b, D, N)),
    }
    args.update({name: make() for name, make in optional.items() if name in options})
    return args


def to_torch(args, dtype=torch.float64, requires_grad=False):
    out = {}
    for k, v in args.items():
        if isinstance(v, np.ndarray):
            t = torch.tensor(v, dtype=dtype)
            out[k] = t.requires_grad_(requires_grad)
        else:
            out[k] = v
    return out


def call(module, form, args, chunk_size=16, **kw):
    fn = getattr(module, f"selective_scan_{form}")
    if form == "chunked":
        kw["chunk_size"] = chunk_size
    return fn(**args, **kw)


shapes = st.tuples(
    st.integers(1, 2),  # b
    st.sampled_from([1, 2, 7, 16, 17, 33]),  # T
    st.integers(1, 5),  # D
    st.integers(1, 5),  # N
    st.sets(st.sampled_from(OPTIONS)),  # which optional inputs are given
    st.sampled_from([1, 3, 8, 16]),  # chunk
)


@given(shapes)
def test_numpy_forms_agree(shape):
    b, T, D, N, full, chunk = shape
    args = draw(b, T, D, N, full=full, seed=T * 31 + D)
    out0, h0 = ref.selective_scan_sequential(**args, return_last_state=True)
    assert out0.shape == (b, T, D) and h0.shape == (b, D, N)
    for form in ("parallel", "chunked"):
        out, h = call(ref, form, args, chunk, return_last_state=True)
        assert rel_error(out, out0) < TOL64, form
        assert rel_error(h, h0) < TOL64, form


@given(shapes)
def test_torch_forms_match_numpy(shape):
    b, T, D, N, full, chunk = shape
    args = draw(b, T, D, N, full=full, seed=T * 7 + N)
    out0, h0 = ref.selective_scan_sequential(**args, return_last_state=True)
    for form in FORMS:
        out, h = call(ti, form, to_torch(args), chunk, return_last_state=True)
        assert out.dtype == torch.float64
        assert rel_error(out, out0) < TOL64, form
        assert rel_error(h, h0) < TOL64, form


@pytest.mark.parametrize("form", FORMS)
def test_torch_float32_and_bfloat16(form):
    args = draw(2, 19, 4, 3, full=True, seed=3)
    for dtype in (torch.float32, torch.bfloat16):
        targs = to_torch(args, dtype)
        targs["A"] = targs["A"].float()
        out, h = call(ti, form, targs, 8, return_last_state=True)
        assert out.dtype == dtype and h.dtype == torch.float32
        name = str(dtype).replace("torch.", "")
        # bf16 inputs are rounded before the fp32 maths: compare with the rounded inputs
        rounded = {
            k: v.double().numpy() if isinstance(v, torch.Tensor) else v for k, v in targs.items()
        }
        o_r, h_r = ref.selective_scan_sequential(**rounded, return_last_state=True)
        assert rel_error(out, o_r) < TOLERANCE[name], name
        assert rel_error(h, h_r) < TOLERANCE["float32"], name


def test_return_last_state_false_gives_one_array():
    args = draw(1, 5, 2, 3, full=True)
    for module in (ref, ti):
        a = args if module is ref else to_torch(args)
        for form in FORMS:
            out = call(module, form, a, 2)
            assert not isinstance(out, tuple) and tuple(out.shape) == (1, 5, 2)


@pytest.mark.parametrize("module", [ref, ti], ids=["numpy", "torch"])
@pytest.mark.parametrize("form", FORMS)
def test_split_in_two_with_carried_state(module, form):
    b, T, D, N, cut = 2, 23, 3, 4, 10
    args = draw(b, T, D, N, full=True, seed=1)
    whole, last = call(ref, "sequential", args, return_last_state=True)
    first = {k: (v[:, :cut] if k in "u delta B C z".split() else v) for k, v in args.items()}
    second = {k: (v[:, cut:] if k in "u delta B C z".split() else v) for k, v in args.items()}
    if module is ti:
        first, second = to_torch(first), to_torch(second)
    o1, h1 = call(module, form, first, 4, return_last_state=True)
    second["initial_state"] = h1
    o2, h2 = call(module, form, second, 4, return_last_state=True)
    joined = np.concatenate([np.asarray(o1), np.asarray(o2)], axis=1)
    assert rel_error(joined, whole) < TOL64
    assert rel_error(h2, last) < TOL64


@pytest.mark.parametrize("module", [ref, ti], ids=["numpy", "torch"])
@pytest.mark.parametrize("full", [False, True])
def test_decode_steps_equal_full_scan(module, full):
    b, T, D, N = 2, 9, 3, 5
    args = draw(b, T, D, N, full=full, seed=2)
    whole, last = ref.selective_scan_sequential(**args, return_last_state=True)
    a = args if module is ref else to_torch(args)
    state = a.get("initial_state")
    if state is None:
        state = np.zeros((b, D, N)) if module is ref else torch.zeros(b, D, N, dtype=torch.float64)
    ys = []
    for t in range(T):
        y, state = module.selective_scan_step(
            a["u"][:, t], a["delta"][:, t], a["A"], a["B"][:, t], a["C"][:, t], state,
            D=a.get("D"), z_t=None if a.get("z") is None else a["z"][:, t],
            delta_bias=a.get("delta_bias"), delta_softplus=a.get("delta_softplus", False),
        )  # fmt: skip
        ys.append(np.asarray(y))
    assert rel_error(np.stack(ys, 1), whole) < TOL64
    assert rel_error(state, last) < TOL64


def cumulative_loop(a, b):
    a_cum, h = np.empty_like(a), np.empty_like(b)
    acc_a, acc_h = np.ones_like(a[0]), np.zeros_like(b[0])
    for t in range(a.shape[0]):
        acc_a, acc_h = acc_a * a[t], a[t] * acc_h + b[t]
        a_cum[t], h[t] = acc_a, acc_h
    return a_cum, h


@given(st.integers(1, 40), st.integers(0, 2))
def test_associative_scan_against_cumulative_loop(T, axis):
    rng = np.random.default_rng(T)
    shape = [3, 2]
    shape.insert(axis, T)
    a, b = rng.uniform(0.3, 1.2, shape), rng.standard_normal(shape)
    want_a, want_h = cumulative_loop(np.moveaxis(a, axis, 0), np.moveaxis(b, axis, 0))
    want_a, want_h = np.moveaxis(want_a, 0, axis), np.moveaxis(want_h, 0, axis)
    for module in (ref, ti):
        x, y = (a, b) if module is ref else (torch.tensor(a), torch.tensor(b))
        got_a, got_h = module.associative_scan(x, y, axis=axis)
        assert rel_error(got_a, want_a) < TOL64
        assert rel_error(got_h, want_h) < TOL64


def test_combine_is_associative_not_commutative():
    rng = np.random.default_rng(0)
    p, q, r = (tuple(rng.standard_normal(2)) for _ in range(3))
    left = ref.combine(*ref.combine(*p, *q), *r)
    right = ref.combine(*p, *ref.combine(*q, *r))
    assert np.allclose(left, right, rtol=1e-12)
    assert not np.allclose(ref.combine(*p, *q), ref.combine(*q, *p))


@pytest.mark.parametrize("module", [ref, ti], ids=["numpy", "torch"])
def test_selectivity_large_delta_resets_small_delta_keeps(module):
    """A large step size forgets the past (exp(dt A) -> 0); a tiny one ignores the input."""
    b, T, D, N = 1, 6, 3, 4
    args = draw(b, T, D, N, full=False, seed=5)
    h_a = np.random.default_rng(1).standard_normal((b, D, N)) * 5
    h_b = -h_a

    def last_state(delta_last, init):
        a = dict(args, initial_state=init)
        a["delta"] = a["delta"].copy()
        a["delta"][:, -1] = delta_last
        if module is ti:
            a = to_torch(a)
        return np.asarray(module.selective_scan_sequential(**a, return_last_state=True)[1])

    # Reset: two different histories end in the same state after one step of dt = 200
    s_a, s_b = last_state(200.0, h_a), last_state(200.0, h_b)
    np.testing.assert_allclose(s_a, s_b, rtol=0, atol=1e-12 * np.abs(s_a).max())
    # and that state is the new input alone, dt B_t u_t
    want = 200.0 * np.einsum("bd,bn->bdn", args["u"][:, -1], args["B"][:, -1])
    assert rel_error(s_a, want) < TOL64
    # Keep: with dt = 1e-9 the last token leaves the state (almost) unchanged
    before = module.selective_scan_sequential(
        **(to_torch if module is ti else dict)(
            {k: (v[:, :-1] if k in ("u", "delta", "B", "C") else v) for k, v in args.items()}
            | {"initial_state": h_a}
        ),
        return_last_state=True,
    )[1]
    kept = last_state(1e-9, h_a)
    assert rel_error(kept, before) < 1e-7
    assert rel_error(s_a, before) > 0.5  # the reset really changed it


BAD = [
    ("u", lambda a: a.update(u=a["u"][0]), ValueError),
    ("delta", lambda a: a.update(delta=a["delta"][:, :-1]), ValueError),
    ("A", lambda a: a.update(A=a["A"][:, :-1]), ValueError),
    ("B", lambda a: a.update(B=a["B"][:, 1:]), ValueError),
    ("C", lambda a: a.update(C=a["C"][..., None]), ValueError),
    ("D", lambda a: a.update(D=a["D"][:-1]), ValueError),
    ("z", lambda a: a.update(z=a["z"][:1]), ValueError),
    ("delta_bias", lambda a: a.update(delta_bias=a["delta_bias"][None]), ValueError),
    ("initial_state", lambda a: a.update(initial_state=a["initial_state"][:, :, :-1]), ValueError),
    ("delta_softplus", lambda a: a.update(delta_softplus="yes"), TypeError),
    ("return_last_state", lambda a: a.update(return_last_state=1), TypeError),
    ("u", lambda a: a.update(u=[[1.0]]), TypeError),
    ("u", lambda a: a.update({k: a[k][:, :0] for k in ("u", "delta", "B", "C", "z")}), ValueError),
    ("A", lambda a: a.update(A=np.ones((3, 4), dtype=np.int64)), TypeError),
]


@pytest.mark.parametrize("module", [ref, ti], ids=["numpy", "torch"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("name", "spoil", "error"), BAD, ids=[f"{b[0]}-{i}" for i, b in
                                                               enumerate(BAD)])  # fmt: skip
def test_bad_inputs_name_the_argument(module, form, name, spoil, error):
    args = draw(2, 5, 3, 4, full=True)
    spoil(args)
    if module is ti:
        args = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in args.items()}
    with pytest.raises(error, match=rf"^{name}\b"):
        call(module, form, args, 2)


@pytest.mark.parametrize("module", [ref, ti], ids=["numpy", "torch"])
def test_bad_chunk_size_and_step_state(module):
    args = draw(1, 4, 2, 3, full=False)
    if module is ti:
        args = to_torch(args)
    with pytest.raises(ValueError, match="chunk_size"):
        module.selective_scan_chunked(**args, chunk_size=0)
    with pytest.raises(TypeError, match="state"):
        module.selective_scan_step(
            args["u"][:, 0], args["delta"][:, 0], args["A"], args["B"][:, 0], args["C"][:, 0], None
        )
    with pytest.raises(ValueError, match="state"):
        module.selective_scan_step(
            args["u"][:, 0], args["delta"][:, 0], args["A"], args["B"][:, 0], args["C"][:, 0],
            args["u"][:, :1],
        )  # fmt: skip


GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


@pytest.mark.parametrize("form", FORMS)
def test_gradcheck_float64(form):
    args = draw(1, 5, 2, 3, full=True, seed=4)
    targs = to_torch(args, requires_grad=True)
    names = [n for n in GRAD_NAMES if n in targs]

    def f(*tensors):
        a = dict(targs, **dict(zip(names, tensors, strict=True)))
        return call(ti, form, a, 2, return_last_state=True)

    assert torch.autograd.gradcheck(f, tuple(targs[n] for n in names))


def test_gradcheck_step():
    args = draw(2, 1, 3, 2, full=True, seed=6)
    t = to_torch(args, requires_grad=True)

    def f(u, dl, A, Bt, Ct, h, D, z, bias):
        return ti.selective_scan_step(u, dl, A, Bt, Ct, h, D=D, z_t=z, delta_bias=bias,
                                      delta_softplus=True)  # fmt: skip

    inputs = (t["u"][:, 0], t["delta"][:, 0], t["A"], t["B"][:, 0], t["C"][:, 0],
              t["initial_state"], t["D"], t["z"][:, 0], t["delta_bias"])  # fmt: skip
    assert torch.autograd.gradcheck(f, inputs)
