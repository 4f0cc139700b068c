"""LTI state space model (chapter 05): forms, discretisation, initialisation, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from course_lib.registry import Sizes
from course_lib.ssm import numpy_ref as ref
from course_lib.ssm import registrations
from course_lib.ssm import torch_impl as tim
from course_lib.testing import TOLERANCE, NumpyRand, rel_error

TOL = TOLERANCE["float64"]
FORMS = ("recurrent", "convolution", "fft")


def _inputs(case: str, B: int, T: int, D: int, N: int, seed: int = 0) -> dict:
    sizes = Sizes(B=B, T=T, D=D, N=N)
    return registrations.make_inputs(NumpyRand(seed), sizes, case)


def _form(lib, name):
    return getattr(lib, f"lti_ssm_{name}")


# ---------------------------------------------------------------- the three forms agree


@given(
    case=st.sampled_from(registrations.CASES),
    method=st.sampled_from(ref.METHODS),
    B=st.integers(1, 2),
    T=st.integers(1, 24),
    D=st.sampled_from([1, 3, 5]),
    N=st.integers(1, 4),
    with_state=st.booleans(),
)
def test_numpy_forms_agree(case, method, B, T, D, N, with_state):
    inp = _inputs(case, B, T, D, N)
    if not with_state:
        inp["initial_state"] = None
    y0, h0 = ref.lti_ssm_recurrent(**inp, method=method)
    for form in ("convolution", "fft"):
        y, h = _form(ref, form)(**inp, method=method)
        assert rel_error(y, y0) <= TOL, form
        assert rel_error(h, h0) <= TOL, form


@pytest.mark.parametrize("case", registrations.CASES)
@pytest.mark.parametrize("method", ref.METHODS)
def test_torch_forms_match_numpy(case, method):
    inp = _inputs(case, 2, 19, 3, 3, seed=4)
    y0, h0 = ref.lti_ssm_recurrent(**inp, method=method)
    tin = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in inp.items()}
    for form in FORMS:
        y, h = _form(tim, form)(**tin, method=method)
        assert y.dtype == torch.float64
        assert rel_error(y, y0) <= TOL, form
        assert rel_error(h, h0) <= TOL, form


@pytest.mark.parametrize("lib", [ref, tim], ids=["numpy", "torch"])
@pytest.mark.parametrize("form", FORMS)
def test_split_in_two_with_carried_state(lib, form):
    inp = _inputs("diag_complex", 2, 23, 3, 4, seed=1)
    if lib is tim:
        inp = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in inp.items()}
    x = inp.pop("x")
    fn = _form(lib, form)
    y_all, h_all = fn(x, **inp)
    inp.pop("initial_state")
    h0 = _inputs("diag_complex", 2, 23, 3, 4, seed=1)["initial_state"]
    h0 = torch.from_numpy(h0) if lib is tim else h0
    y1, h1 = fn(x[:, :10], **inp, initial_state=h0)
    y2, h2 = fn(x[:, 10:], **inp, initial_state=h1)
    cat = torch.cat if lib is tim else np.concatenate
    assert rel_error(cat([y1, y2], 1), y_all) <= TOL
    assert rel_error(h2, h_all) <= TOL


def test_no_final_state_unless_asked():
    inp = _inputs("diag_real", 1, 5, 2, 2)
    inp["output_final_state"] = False
    for form in FORMS:
        assert _form(ref, form)(**inp)[1] is None


# ---------------------------------------------------------------- kernels and convolutions


@given(
    B=st.integers(1, 2), T=st.integers(1, 30), D=st.sampled_from([1, 2, 5]), L=st.integers(1, 40)
)
def test_fft_conv_equals_direct_conv(B, T, D, L):
    rng = np.random.default_rng(T * 100 + L)
    x, K = rng.standard_normal((B, T, D)), rng.standard_normal((D, L))
    direct = ref.causal_conv(x, K)
    assert rel_error(ref.fft_conv(x, K), direct) <= TOL
    assert rel_error(tim.fft_conv(torch.from_numpy(x), torch.from_numpy(K)), direct) <= TOL
    assert rel_error(tim.causal_conv(torch.from_numpy(x), torch.from_numpy(K)), direct) <= TOL


@pytest.mark.parametrize("case", registrations.CASES)
def test_kernel_is_the_impulse_response_of_the_recurrence(case):
    inp = _inputs(case, 1, 12, 3, 3, seed=2)
    x = np.zeros((1, 12, 3))
    x[0, 0] = 1.0
    y, _ = ref.lti_ssm_recurrent(x, inp["A"], inp["B"], inp["C"], inp["dt"], inp["D"])
    K = ref.impulse_response(inp["A"], inp["B"], inp["C"], inp["dt"], 12, "zoh", inp["D"])
    assert rel_error(K, y[0].T) <= TOL
    Kt = tim.impulse_response(
        *(torch.from_numpy(inp[n]) for n in ("A", "B", "C", "dt")), 12, "zoh",
        torch.from_numpy(inp["D"]),
    )  # fmt: skip
    assert rel_error(Kt, K) <= TOL


# ---------------------------------------------------------------- discretisation


def _expm_by_eig(M):
    w, V = np.linalg.eig(M)
    return V @ np.diag(np.exp(w)) @ np.linalg.inv(V)


def test_expm_against_closed_forms():
    theta = 2.7  # exp of a rotation generator is a rotation
    R = ref.expm(np.array([[0.0, -theta], [theta, 0.0]]))
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    assert np.abs(R - rot).max() <= TOL
    J = ref.expm(np.array([[1.5, 1.0], [0.0, 1.5]]))  # a Jordan block: e^a [[1, 1], [0, 1]]
    assert np.abs(J - np.exp(1.5) * np.array([[1.0, 1.0], [0.0, 1.0]])).max() <= TOL * 10
    M = np.random.default_rng(0).standard_normal((3, 5, 5)) * 2  # needs squaring
    for m, e in zip(M, ref.expm(M), strict=True):
        assert rel_error(e, _expm_by_eig(m).real) <= 1e-10 * np.linalg.cond(np.linalg.eig(m)[1])


@pytest.mark.parametrize("method", ref.METHODS)
@pytest.mark.parametrize("complex_", [False, True])
def test_diagonal_equals_dense_on_a_diagonal_matrix(method, complex_):
    rng = np.random.default_rng(3)
    A = -rng.uniform(0.1, 2.0, (4, 3)) + (1j * rng.uniform(0, 5, (4, 3)) if complex_ else 0)
    B = rng.standard_normal((4, 3)) + (1j * rng.standard_normal((4, 3)) if complex_ else 0)
    dt = rng.uniform(0.01, 1.0, 4)
    Ad, Bd = ref.discretize(A, B, dt, method)
    Am, Bm = ref.discretize(np.stack([np.diag(a) for a in A]), B, dt, method)
    assert rel_error(Am, np.stack([np.diag(a) for a in Ad])) <= TOL
    assert rel_error(Bm, Bd) <= TOL
    At, Bt = tim.discretize(torch.from_numpy(np.stack([np.diag(a) for a in A])),
                            torch.from_numpy(B), torch.from_numpy(dt), method)  # fmt: skip
    assert rel_error(At, Am) <= TOL
    assert rel_error(Bt, Bm) <= TOL


def test_zoh_handles_a_zero_eigenvalue():
    A, B, dt = np.array([[0.0, -1.0]]), np.array([[2.0, 1.0]]), np.array([0.5])
    Abar, Bbar = ref.discretize_zoh(A, B, dt)
    assert np.allclose(Abar, [[1.0, np.exp(-0.5)]], rtol=TOL)
    assert np.allclose(Bbar, [[2.0 * 0.5, 1.0 - np.exp(-0.5)]], rtol=TOL)  # dt B at a = 0
    _, Bm = ref.discretize_zoh(np.array([[[0.0, 0.0], [0.0, -1.0]]]), B, dt)  # singular A
    assert rel_error(Bm, Bbar) <= TOL


def test_zoh_is_exact_for_a_step_input():
    """ZOH assumes x constant over each step: for x = 1 it samples h(t) = (e^{At} - 1)/A B."""
    A = np.array([[-0.7 + 3j, -2.0 + 0.5j]])
    B, C, dt = np.array([[1.0 + 0j, 0.5 - 1j]]), np.array([[0.3 + 1j, 1.0 + 0j]]), np.array([0.37])
    T = 40
    y, _ = ref.lti_ssm_recurrent(np.ones((1, T, 1)), A, B, C, dt)
    t = dt[0] * np.arange(1, T + 1)
    h = (np.exp(np.outer(t, A[0])) - 1) / A[0] * B[0]  # [T, N]
    assert rel_error(y[0, :, 0], 2 * (h @ C[0]).real) <= TOL


def _continuous_sine_response(a, b, c, dt, T_end):
    """Both discretisations against the exact response of h' = a h + b sin(t), y = 2 Re(c h)."""
    T = round(T_end / dt)
    t = dt * np.arange(1, T + 1)
    exact = (np.exp(np.outer(t, a)) - a * np.sin(t)[:, None] - np.cos(t)[:, None]) / (1 + a**2)
    y_exact = 2 * (exact * b @ c).real
    x = np.sin(t)[None, :, None]
    args = (a[None], b[None], c[None], np.array([dt]))
    return [
        np.abs(ref.lti_ssm_recurrent(x, *args, method=m)[0][0, :, 0] - y_exact).max()
        for m in ref.METHODS
    ]


def test_zoh_and_bilinear_converge_to_the_continuous_system():
    a = np.array([-0.5 + 2j, -1.0 + 0.3j])
    b, c = np.array([1.0 + 0.5j, -0.7 + 0j]), np.array([0.4 - 1j, 1.0 + 0.2j])
    dts = [0.1, 0.05, 0.025, 0.0125]
    errs = np.array([_continuous_sine_response(a, b, c, dt, 6.0) for dt in dts])  # [4, 2]
    assert np.all(np.diff(errs, axis=0) < 0), errs  # both errors shrink as dt -> 0
    order = np.log2(errs[:-1] / errs[1:])  # measured convergence order per halving
    assert np.all(order > 0.8), order  # first order: x_t is held over the step
    # ZOH and bilinear agree to second order in dt (their Abar, Bbar share two Taylor
    # terms), so they approach each other faster than either approaches the true system
    gap = np.abs(errs[:, 0] - errs[:, 1])
    assert np.all(np.log2(gap[:-1] / gap[1:]) > 1.8), gap


# ---------------------------------------------------------------- S4D initialisation


@pytest.mark.parametrize("init", [ref.s4d_lin_init, ref.s4d_inv_init, ref.s4d_real_init])
@pytest.mark.parametrize("method", ref.METHODS)
def test_s4d_inits_are_stable(init, method):
    A = init(5, 7)
    assert A.shape == (5, 7)
    assert np.all(A.real < 0)
    dt = np.exp(ref.log_dt_init(5, 1e-3, 1e-1, seed=0))
    assert np.all(np.abs(ref.poles(A, dt, method)) < 1)
    assert np.all(np.abs(ref.poles(A, np.full(5, 10.0), method)) < 1)  # stable for any dt > 0


def test_s4d_init_values():
    lin, inv = ref.s4d_lin_init(2, 4), ref.s4d_inv_init(2, 4)
    assert np.allclose(lin.imag[1], np.pi * np.arange(4)) and np.allclose(lin.real, -0.5)
    assert np.all(np.diff(inv.imag[0]) < 0)  # frequencies fall like 1/n
    assert np.array_equal(ref.s4d_real_init(1, 3), [[-1.0, -2.0, -3.0]])
    assert np.iscomplexobj(lin) and not np.iscomplexobj(ref.s4d_real_init(1, 3))


def test_log_dt_init_range_and_seed():
    log_dt = ref.log_dt_init(1000, 1e-3, 1e-1, seed=7)
    assert np.all(log_dt >= np.log(1e-3)) and np.all(log_dt <= np.log(1e-1))
    assert np.array_equal(log_dt, ref.log_dt_init(1000, 1e-3, 1e-1, seed=7))
    assert np.array_equal(tim.log_dt_init(1000, 1e-3, 1e-1, seed=7).numpy(), log_dt)
    assert abs(np.mean(log_dt) - np.log(1e-2)) < 0.1  # uniform in log space


def test_dense_poles_are_exp_of_eigenvalues():
    inp = _inputs("dense", 1, 2, 3, 4, seed=5)
    p = ref.poles(inp["A"], inp["dt"], "zoh")
    want = np.exp(inp["dt"][:, None] * np.linalg.eigvals(inp["A"]))
    for got, w in zip(p, want, strict=True):
        assert rel_error(np.sort_complex(got), np.sort_complex(w)) <= 1e-8
    pt = tim.poles(torch.from_numpy(inp["A"]), torch.from_numpy(inp["dt"]), "zoh")
    assert rel_error(np.sort_complex(pt.numpy()), np.sort_complex(p)) <= 1e-8


# ---------------------------------------------------------------- bad input


def _bad_cases():
    inp = _inputs("diag_real", 2, 5, 3, 2)
    c = _inputs("diag_complex", 2, 5, 3, 2)
    return [
        ("dt zero", {**inp, "dt": np.array([0.1, 0.0, 0.2])}, ValueError, "dt"),
        ("dt negative", {**inp, "dt": -inp["dt"]}, ValueError, "dt"),
        ("dt nan", {**inp, "dt": np.array([0.1, np.nan, 0.2])}, ValueError, "dt"),
        ("x int", {**inp, "x": np.ones((2, 5, 3), dtype=np.int64)}, TypeError, "x"),
        ("x complex", {**inp, "x": inp["x"] + 0j}, TypeError, "x"),
        ("B wrong N", {**inp, "B": np.ones((3, 4))}, ValueError, "B"),
        ("C wrong D", {**inp, "C": np.ones((2, 2))}, ValueError, "C"),
        ("A 4-d", {**inp, "A": np.ones((3, 2, 2, 2))}, ValueError, "A"),
        ("A wrong D", {**inp, "A": -np.ones((4, 2))}, ValueError, "A"),
        ("dense A not square", {**inp, "A": -np.ones((3, 2, 3))}, ValueError, "A"),
        ("complex B real A", {**inp, "B": c["B"]}, TypeError, "B"),
        ("D wrong", {**inp, "D": np.ones(2)}, ValueError, "D"),
        ("state wrong", {**inp, "initial_state": np.ones((2, 3, 3))}, ValueError, "initial_state"),
        ("complex state", {**inp, "initial_state": c["initial_state"]}, TypeError, "initial_state"),
        ("method", {**inp, "method": "euler"}, ValueError, "method"),
    ]


BAD = _bad_cases()


@pytest.mark.parametrize(("what", "inp", "err", "name"), BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("form", FORMS)
def test_bad_inputs_same_error_in_numpy_and_torch(what, inp, err, name, form):
    with pytest.raises(err, match=name) as np_err:
        _form(ref, form)(**inp)
    tin = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in inp.items()}
    with pytest.raises(err, match=name) as t_err:
        _form(tim, form)(**tin)
    # the same message, up to the spelling of a dtype (int64 vs torch.int64)
    assert str(np_err.value) == str(t_err.value).replace("torch.", "")


def test_bad_helper_arguments():
    with pytest.raises(ValueError, match="L"):
        ref.ssm_kernel(np.ones((2, 2)) * 0.5, np.ones((2, 2)), np.ones((2, 2)), 0)
    with pytest.raises(ValueError, match="K"):
        ref.causal_conv(np.ones((1, 3, 2)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="dt_min"):
        ref.log_dt_init(3, 0.1, 0.01)
    with pytest.raises(ValueError, match="N"):
        ref.s4d_lin_init(3, 0)
    with pytest.raises(ValueError, match="method"):
        ref.poles(-np.ones((2, 2)), np.ones(2), "forward_euler")
