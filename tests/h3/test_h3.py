"""H3 (chapter 06): forms agree, decoding, the linear-attention view, bad input, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from course_lib.h3 import numpy_ref as ref
from course_lib.h3 import registrations
from course_lib.h3 import torch_impl as tim
from course_lib.registry import Sizes
from course_lib.ssm import numpy_ref as ssm_ref
from course_lib.testing import TOLERANCE, NumpyRand, rel_error

TOL = TOLERANCE["float64"]


def _inputs(case: str, B: int, T: int, H: int, K: int, N: int, seed: int = 0) -> dict:
    return registrations.make_inputs(NumpyRand(seed), Sizes(B=B, T=T, H=H, K=K, N=N), case)


def _torch(d: dict) -> dict:
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in d.items()}


def _split(inp: dict) -> tuple[np.ndarray, dict, int]:
    """(x, params, num_heads) from the flat registry inputs."""
    rest = dict(inp)
    return rest.pop("x"), {n: rest[n] for n in ref.PARAM_NAMES}, rest["num_heads"]


# ---------------------------------------------------------------- forms agree


@given(
    case=st.sampled_from(registrations.CASES),
    B=st.integers(1, 2),
    T=st.integers(1, 17),
    H=st.integers(1, 3),
    K=st.sampled_from([1, 2, 3]),
    N=st.integers(1, 3),
)
def test_fft_equals_recurrent(case, B, T, H, K, N):
    inp = _inputs(case, B, T, H, K, N)
    assert rel_error(ref.h3_fft(**inp), ref.h3_recurrent(**inp)) <= TOL


@pytest.mark.parametrize("lib", [ref, tim], ids=["numpy", "torch"])
@pytest.mark.parametrize("case", registrations.CASES)
def test_step_decoding_equals_full_forward(lib, case):
    inp = _inputs(case, 2, 13, 2, 3, 3, seed=1)
    if lib is tim:
        inp = _torch(inp)
    x, params, H = _split(inp)
    full = lib.h3_forward(x, params, H, form="fft")
    state, ys = None, []
    for t in range(x.shape[1]):
        y, state = lib.h3_step(x[:, t], params, state, H)
        ys.append(y)
    stack = torch.stack if lib is tim else np.stack
    assert rel_error(stack(ys, 1), full) <= TOL
    assert state["shift"].shape == (2, 6, 4) and state["ssm"].shape == (2, 2, 3, 3, 3)


def test_h3_forward_dispatches_and_init_params():
    params = ref.init_h3_params(6, 3, 4, seed=2, shift_size=3)
    assert params["shift_kernel"].shape == (6, 3) and params["A"].shape == (3, 4)
    assert np.all(params["A"].real < 0) and np.all(params["dt"] > 0)
    x = np.random.default_rng(0).standard_normal((1, 9, 6))
    y = ref.h3_forward(x, params, 3, "fft")
    assert rel_error(ref.h3_forward(x, params, 3, "recurrent"), y) <= TOL
    tp = tim.init_h3_params(6, 3, 4, seed=2, shift_size=3)  # float32 tensors
    yt = tim.h3_forward(torch.from_numpy(x).float(), tp, 3)
    assert yt.dtype == torch.float32
    assert rel_error(yt, y) <= TOLERANCE["float32"]


# ---------------------------------------------------------------- the shift SSM


@given(B=st.integers(1, 2), T=st.integers(1, 12), D=st.sampled_from([1, 3]), W=st.integers(1, 15))
def test_shift_ssm_conv_equals_recurrence(B, T, D, W):
    rng = np.random.default_rng(T * 31 + W)
    x, kern = rng.standard_normal((B, T, D)), rng.standard_normal((D, W))
    y, _ = ref.shift_ssm_recurrent(x, kern)
    assert rel_error(ref.shift_ssm(x, kern), y) <= TOL
    xt, kt = torch.from_numpy(x), torch.from_numpy(kern)
    assert rel_error(tim.shift_ssm(xt, kt), y) <= TOL
    assert rel_error(tim.shift_ssm_recurrent(xt, kt)[0], y) <= TOL


def test_shift_ssm_is_an_ssm_with_the_shift_matrix():
    kern = np.random.default_rng(0).standard_normal((3, 4))
    Abar, Bbar, C = ref.shift_ssm_matrices(kern)
    K = ssm_ref.ssm_kernel(Abar, Bbar, C, 9)  # C A^j B
    assert np.array_equal(K[:, :4], kern) and np.all(K[:, 4:] == 0)
    At, Bt, _ = tim.shift_ssm_matrices(torch.from_numpy(kern))
    assert np.array_equal(At.numpy(), Abar) and np.array_equal(Bt.numpy(), Bbar)


@pytest.mark.parametrize("lib", [ref, tim], ids=["numpy", "torch"])
def test_shift_ssm_state_carries_across_calls(lib):
    rng = np.random.default_rng(1)
    x, kern = rng.standard_normal((2, 11, 3)), rng.standard_normal((3, 5))
    if lib is tim:
        x, kern = torch.from_numpy(x), torch.from_numpy(kern)
    y_all, h_all = lib.shift_ssm_recurrent(x, kern, output_final_state=True)
    y1, h1 = lib.shift_ssm_recurrent(x[:, :4], kern, output_final_state=True)
    y2, h2 = lib.shift_ssm_recurrent(x[:, 4:], kern, initial_state=h1, output_final_state=True)
    cat = torch.cat if lib is tim else np.concatenate
    assert rel_error(cat([y1, y2], 1), y_all) <= TOL and rel_error(h2, h_all) <= TOL


# ---------------------------------------------------------------- H3 as linear attention


def _decayed_linear_attention(q, k, v, w, skip):
    """o_t = sum_{s<=t} w(t - s) (q_t . k_s) v_s + skip (q_t . k_t) v_t, per head, in parallel.

    q, k, v [B, T, H, K]; w [H, T] the decay by lag; skip [H].
    """
    T = q.shape[1]
    lag = np.arange(T)[:, None] - np.arange(T)[None, :]  # t - s
    M = np.where(lag >= 0, w[:, np.clip(lag, 0, None)], 0.0)  # [H, T, T]
    M = M + skip[:, None, None] * np.eye(T)
    scores = np.einsum("bthd,bshd->bhts", q, k) * M
    return np.einsum("bhts,bshe->bthe", scores, v)


@pytest.mark.parametrize("a", [0.0, -0.3])
def test_identity_shift_and_scalar_ssm_is_linear_attention_with_a_decay(a):
    """Shift = identity, N = 1, B = C = 1, D = 0, Wo = I: o_t = Bbar sum_s gamma^{t-s} (q.k) v.

    gamma = exp(dt a) (RetNet's constant decay); a = 0 is plain causal linear attention.
    """
    H, K, T, dt = 2, 3, 10, np.array([0.5, 0.2])
    inp = _inputs("diag_real", 2, T, H, K, 1, seed=3)
    x, params, _ = _split(inp)
    params.update(
        shift_kernel=np.tile(np.eye(1, 4), (H * K, 1)),  # taps (1, 0, 0, 0): kbar = k
        A=np.full((H, 1), a), B=np.ones((H, 1)), C=np.ones((H, 1)), dt=dt,
        D=np.zeros(H), Wo=np.eye(H * K),
    )  # fmt: skip
    q = (x @ params["Wq"]).reshape(2, T, H, K)
    k = (x @ params["Wk"]).reshape(2, T, H, K)
    v = (x @ params["Wv"]).reshape(2, T, H, K)
    gamma = np.exp(dt * a)
    bbar = dt if a == 0 else (gamma - 1) / a
    w = bbar[:, None] * gamma[:, None] ** np.arange(T)  # [H, T]
    want = _decayed_linear_attention(q, k, v, w, np.zeros(H)).reshape(2, T, H * K)
    if a == 0:  # no decay: the plain running sum of (q_t . k_s) v_s, times dt
        mask = np.tril(np.ones((T, T)))
        plain = np.einsum("ts,bthd,bshd,bshe->bthe", mask, q, k, v) * dt[None, None, :, None]
        assert rel_error(plain.reshape(2, T, H * K), want) <= TOL
    for form in ref.FORMS:
        assert rel_error(ref.h3_forward(x, params, H, form), want) <= TOL
        got = tim.h3_forward(torch.from_numpy(x), _torch(params), H, form)
        assert rel_error(got, want) <= TOL


def test_general_h3_is_attention_weighted_by_the_ssm_kernel():
    """Any H3: ``o_t = sum_s w_h(t-s) (q_t . kbar_s) v_s + D_h (q_t . kbar_t) v_t``.

    The decay ``w_h(j) = C_h Abar_h^j Bbar_h`` is the diagonal SSM's convolution kernel.
    """
    inp = _inputs("diag_complex", 2, 15, 2, 3, 3, seed=4)
    x, p, H = _split(inp)
    q, v = (x @ p["Wq"]).reshape(2, 15, H, 3), (x @ p["Wv"]).reshape(2, 15, H, 3)
    kbar = ref.shift_ssm(x @ p["Wk"], p["shift_kernel"]).reshape(2, 15, H, 3)
    w = ssm_ref.impulse_response(p["A"], p["B"], p["C"], p["dt"], 15, "zoh")  # [H, T]
    o = _decayed_linear_attention(q, kbar, v, w, p["D"]).reshape(2, 15, -1)
    assert rel_error(ref.h3_recurrent(**inp), o @ p["Wo"]) <= TOL


# ---------------------------------------------------------------- bad input


def _bad_cases():
    inp = _inputs("diag_complex", 1, 4, 2, 2, 2)
    x, p, H = _split(inp)
    return [
        ("heads do not divide D", (x, p, 3, "fft"), ValueError, "num_heads"),
        ("num_heads zero", (x, p, 0, "fft"), ValueError, "num_heads"),
        ("num_heads float", (x, p, 2.0, "fft"), TypeError, "num_heads"),
        ("form", (x, p, H, "chunkwise"), ValueError, "form"),
        ("missing key", (x, {k: p[k] for k in p if k != "Wq"}, H, "fft"), ValueError, "Wq"),
        ("extra key", (x, {**p, "bias": p["D"]}, H, "fft"), ValueError, "bias"),
        ("params not a dict", (x, list(p.values()), H, "fft"), TypeError, "params"),
        ("x int", (x.astype(np.int64), p, H, "fft"), TypeError, "x"),
        ("x 2-d", (x[0], p, H, "recurrent"), ValueError, "x"),
        ("Wq shape", (x, {**p, "Wq": np.ones((4, 3))}, H, "fft"), ValueError, "Wq"),
        ("shift kernel D", (x, {**p, "shift_kernel": np.ones((3, 3))}, H, "fft"), ValueError,
         "shift_kernel"),
        ("dense A", (x, {**p, "A": -np.ones((2, 2, 2))}, H, "fft"), ValueError, "A"),
        ("A heads", (x, {**p, "A": p["A"][:1]}, H, "recurrent"), ValueError, "A"),
        ("dt negative", (x, {**p, "dt": -p["dt"]}, H, "fft"), ValueError, "dt"),
        ("D wrong", (x, {**p, "D": np.ones(3)}, H, "fft"), ValueError, "D"),
    ]  # fmt: skip


BAD = _bad_cases()


def _to_torch(args):
    x, p, H, form = args
    p = {k: torch.from_numpy(v) for k, v in p.items()} if isinstance(p, dict) else p
    return torch.from_numpy(x), p, H, form


@pytest.mark.parametrize(("what", "args", "err", "name"), BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_same_error_in_numpy_and_torch(what, args, err, name):
    with pytest.raises(err, match=name) as np_err:
        ref.h3_forward(*args)
    with pytest.raises(err, match=name) as t_err:
        tim.h3_forward(*_to_torch(args))
    assert str(np_err.value) == str(t_err.value).replace("torch.", "")


@pytest.mark.parametrize("lib", [ref, tim], ids=["numpy", "torch"])
def test_bad_decoding_state(lib):
    inp = _inputs("diag_real", 2, 3, 2, 2, 2)
    if lib is tim:
        inp = _torch(inp)
    x, p, H = _split(inp)
    state = lib.h3_init_state(2, p, H)
    with pytest.raises(ValueError, match="state"):
        lib.h3_step(x[:, 0], p, {"shift": state["shift"]}, H)
    with pytest.raises(ValueError, match=r"state\['shift'\]"):
        lib.h3_step(x[:1, 0], p, state, H)  # state for batch 2, token for batch 1
    bad_ssm = {"shift": state["shift"], "ssm": state["ssm"][:, :, :1]}
    with pytest.raises(ValueError, match=r"state\['ssm'\]"):
        lib.h3_step(x[:, 0], p, bad_ssm, H)  # state size 1 for an N = 2 SSM
    with pytest.raises(ValueError, match="x"):
        lib.h3_step(x, p, state, H)  # a whole sequence instead of one token


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("case", registrations.CASES)
@pytest.mark.parametrize("form", ref.FORMS)
def test_gradcheck_float64(case, form):
    inp = _torch(_inputs(case, 1, 3, 1, 2, 2, seed=5))
    names = ("x", *ref.PARAM_NAMES)
    leaves = [inp[n].clone().requires_grad_(True) for n in names]
    fn = getattr(tim, f"h3_{form}")

    def f(*args):
        return fn(**dict(zip(names, args, strict=True)), num_heads=1)

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, fast_mode=True)
