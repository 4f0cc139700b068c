"""Gated linear attention: the forms agree, states carry, bad inputs are refused.

Numpy (float64) and torch (float64) versions of the recurrent, parallel and chunkwise forms,
for every gate case of the chapter's table.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from course_lib.gated_linear_attention import numpy_ref as R
from course_lib.gated_linear_attention import torch_impl as P
from course_lib.gated_linear_attention.registrations import CASES, make_inputs
from course_lib.registry import Sizes
from course_lib.testing import TOLERANCE, NumpyRand, autograd_nodes, indexes_along, rel_error

TOL = TOLERANCE["float64"]
FORMS = ("recurrent", "parallel", "chunkwise")


def _inputs(case, B=2, T=11, H=2, K=3, V=5, seed=0):
    return make_inputs(NumpyRand(seed), Sizes(B=B, T=T, H=H, K=K, V=V), case)


def _t(inputs, requires_grad=False):
    out = {}
    for name, x in inputs.items():
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x).requires_grad_(requires_grad)
        out[name] = x
    return out


def _call(module, form, inputs, chunk_size=4):
    fn = getattr(module, f"gated_linear_attention_{form}")
    kwargs = {"chunk_size": chunk_size} if form == "chunkwise" else {}
    return fn(**inputs, **kwargs)


def _assert_close(got, ref, what=""):
    for g, r in zip(got, ref, strict=True):
        err = rel_error(g, r)
        assert err <= TOL, f"{what}: relative error {err:.2e} > {TOL}"


@given(
    case=st.sampled_from(CASES),
    B=st.integers(1, 2),
    T=st.integers(1, 23),
    H=st.integers(1, 2),
    K=st.integers(1, 7),
    V=st.integers(1, 6),
    chunk=st.sampled_from([1, 4, 5, 16]),
)
def test_all_forms_agree(case, B, T, H, K, V, chunk):
    inputs = _inputs(case, B, T, H, K, V, seed=T)
    ref = R.gated_linear_attention_recurrent(**inputs)
    for form in FORMS:
        _assert_close(_call(R, form, inputs, chunk), ref, f"numpy {form} {case}")
        _assert_close(_call(P, form, _t(inputs), chunk), ref, f"torch {form} {case}")


@pytest.mark.parametrize("module", [R, P], ids=["numpy", "torch"])
@pytest.mark.parametrize("form", ["parallel", "chunkwise"])
def test_strong_decay_stays_finite(module, form):
    """Gates near -20 per step: exp(-G_j) alone would overflow after ~35 steps in float64
    on this length (-20 * 40 = -800); the masked differences never form it."""
    inputs = _inputs("vector", T=40, K=4, V=3)
    rng = np.random.default_rng(1)
    inputs["gk"] = rng.uniform(-20.0, -19.0, inputs["gk"].shape)
    if module is P:
        inputs = _t(inputs)
    o, S = _call(module, form, inputs, chunk_size=32)
    o, S = np.asarray(o), np.asarray(S)
    assert np.all(np.isfinite(o)) and np.all(np.isfinite(S))
    # with such decay only the current token is remembered: o_t ~ scale (q_t.k_t) v_t
    ref, _ = R.gated_linear_attention_recurrent(
        **_inputs("vector", T=40, K=4, V=3) | {"gk": np.asarray(inputs["gk"])}
    )
    assert rel_error(o, ref) <= TOL


def test_strong_decay_gradients_finite():
    inputs = _t(_inputs("vector", T=40, K=4, V=3), requires_grad=True)
    with torch.no_grad():
        inputs["gk"].uniform_(-20.0, -19.0)
    for form in ("parallel", "chunkwise"):
        o, S = _call(P, form, inputs, chunk_size=32)
        grads = torch.autograd.grad((o.sum() + S.sum()), [inputs["q"], inputs["gk"]])
        assert all(torch.isfinite(g).all() for g in grads), form


def test_no_gate_is_plain_linear_attention():
    """G = 1: o_i = scale * sum_{j<=i} (q_i . k_j) v_j + scale * S_0^T q_i, computed directly."""
    inputs = _inputs("none", T=9, K=4, V=3)
    q, k, v, S0 = inputs["q"], inputs["k"], inputs["v"], inputs["initial_state"]
    scale = q.shape[-1] ** -0.5
    T = q.shape[1]
    scores = np.einsum("bihk,bjhk->bhij", q, k) * np.tril(np.ones((T, T)))
    o = scale * (np.einsum("bhij,bjhv->bihv", scores, v) + np.einsum("bihk,bhkv->bihv", q, S0))
    S = S0 + np.einsum("bthk,bthv->bhkv", k, v)
    for form in FORMS:
        _assert_close(_call(R, form, inputs), (o, S), f"numpy {form}")
        _assert_close(_call(P, form, _t(inputs)), (o, S), f"torch {form}")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("module", [R, P], ids=["numpy", "torch"])
@pytest.mark.parametrize("form", FORMS)
def test_split_in_two_with_carried_state(case, module, form):
    inputs = _inputs(case, T=13)
    ref = R.gated_linear_attention_recurrent(**inputs)
    cut = 6
    halves = []
    for part in (slice(0, cut), slice(cut, None)):
        sub = dict(inputs)
        for name in ("q", "k", "v", "gv") + (("gk",) if case not in ("none", "constant") else ()):
            if sub[name] is not None:
                sub[name] = sub[name][:, part]
        if halves:
            sub["initial_state"] = np.asarray(halves[-1][1])
        if module is P:
            sub = _t(sub)
        halves.append(_call(module, form, sub, chunk_size=4))
    o = np.concatenate([np.asarray(h[0]) for h in halves], axis=1)
    _assert_close((o, np.asarray(halves[-1][1])), ref, f"{form} {case}")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("module", [R, P], ids=["numpy", "torch"])
def test_step_decode_equals_full_forward(case, module):
    inputs = _inputs(case, T=7)
    ref_o, ref_S = R.gated_linear_attention_recurrent(**inputs)
    S = inputs["initial_state"]
    gk, gv = inputs["gk"], inputs["gv"]
    outs = []
    for t in range(7):
        step = {
            "q_t": inputs["q"][:, t],
            "k_t": inputs["k"][:, t],
            "v_t": inputs["v"][:, t],
            "state": S,
            "gk_t": None if gk is None else gk if gk.ndim == 1 else gk[:, t],
            "gv_t": None if gv is None else gv[:, t],
        }
        if module is P:
            step = _t(step)
        o_t, S = module.gated_linear_attention_step(**step)
        outs.append(np.asarray(o_t))
    _assert_close((np.stack(outs, axis=1), np.asarray(S)), (ref_o, ref_S), case)


def test_decay_mask_and_cumulative_gates():
    g = np.array([-0.5, -1.0, -0.25])
    G = R.cumulative_log_gates(g[None])[0]
    D = R.decay_mask(G)
    want = np.array(
        [[1, 0, 0], [np.exp(-1.0), 1, 0], [np.exp(-1.25), np.exp(-0.25), 1]], dtype=float
    )
    assert np.allclose(D, want, rtol=0, atol=1e-15)
    Dt = P.decay_mask(P.cumulative_log_gates(torch.from_numpy(g)[None])[0])
    assert np.allclose(Dt.numpy(), want, rtol=0, atol=1e-15)


@pytest.mark.parametrize("case", ["none", "constant", "scalar", "vector"])
def test_effective_attention_reproduces_output(case):
    inputs = _inputs(case, T=8)
    inputs["initial_state"] = None
    o, _ = R.gated_linear_attention_recurrent(**inputs)
    A = R.effective_attention(inputs["q"], inputs["k"], inputs["gk"])  # [B, H, T, T]
    _assert_close((np.einsum("bhij,bjhv->bihv", A, inputs["v"]),), (o,), case)
    At = P.effective_attention(
        *(
            torch.from_numpy(x) if x is not None else None
            for x in (inputs["q"], inputs["k"], inputs["gk"])
        )
    )
    _assert_close((At,), (A,), case)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("form", FORMS)
def test_torch_gradcheck(case, form):
    inputs = _t(_inputs(case, B=1, T=4, H=1, K=2, V=2), requires_grad=True)
    names = [n for n, x in inputs.items() if isinstance(x, torch.Tensor)]
    fn = getattr(P, f"gated_linear_attention_{form}")
    kwargs = {"chunk_size": 2} if form == "chunkwise" else {}

    def f(*tensors):
        args = dict(inputs, **dict(zip(names, tensors, strict=True)))
        return fn(**args, **kwargs)

    assert torch.autograd.gradcheck(f, [inputs[n] for n in names])


def test_torch_low_precision_returns_input_dtype():
    inputs = _t(_inputs("vector", T=9))
    for name in ("q", "k", "v"):
        inputs[name] = inputs[name].to(torch.bfloat16)
    ref = R.gated_linear_attention_recurrent(**_inputs("vector", T=9))
    for form in FORMS:
        o, S = _call(P, form, inputs)
        assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
        assert rel_error(o, ref[0]) <= TOLERANCE["bfloat16"]


# ---------------------------------------------------------------------------- bad inputs

BAD = {
    "positive gate": ("gk", lambda i: np.abs(i["gk"]) + 0.1, "gk"),
    "NaN gate": (
        "gk",
        lambda i: np.where(np.arange(i["gk"].size).reshape(i["gk"].shape) == 3, np.nan, i["gk"]),
        "gk",
    ),
    "inf gate": ("gk", lambda i: np.full_like(i["gk"], -np.inf), "gk"),
    "gate wrong rank": ("gk", lambda i: i["gk"][..., None, None], "gk"),
    "gate wrong K": ("gk", lambda i: i["gk"][..., :-1], "gk"),
    "positive gv": ("gv", lambda i: -i["gv"], "gv"),
    "gv wrong V": ("gv", lambda i: i["gv"][..., :-1], "gv"),
    "k wrong K": ("k", lambda i: i["k"][..., :-1], "k"),
    "v wrong T": ("v", lambda i: i["v"][:, :-1], "v"),
    "state wrong shape": ("initial_state", lambda i: i["initial_state"][..., :-1], "initial_state"),
    "integer q": ("q", lambda i: i["q"].astype(np.int64), "q"),
    "negative scale": ("scale", lambda i: -1.0, "scale"),
}


@pytest.mark.parametrize("bad", list(BAD), ids=list(BAD))
@pytest.mark.parametrize("module", [R, P], ids=["numpy", "torch"])
@pytest.mark.parametrize("form", FORMS)
def test_bad_inputs_rejected(bad, module, form):
    name, change, named = BAD[bad]
    inputs = _inputs("outer", T=5)
    inputs[name] = change(inputs)
    if module is P:
        inputs = _t(inputs)
    with pytest.raises((ValueError, TypeError), match=named) as numpy_err:
        _call(R if module is R else P, form, inputs)
    assert named in str(numpy_err.value)


def test_bad_inputs_same_message_numpy_and_torch():
    for name, change, _ in BAD.values():
        inputs = _inputs("outer", T=5)
        inputs[name] = change(inputs)
        messages = []
        for module, args in ((R, inputs), (P, _t(inputs))):
            with pytest.raises((ValueError, TypeError)) as err:
                module.gated_linear_attention_chunkwise(**args)
            messages.append((type(err.value), str(err.value).replace("torch.", "")))
        assert messages[0][0] is messages[1][0], name


def test_bad_chunk_size_and_step_gate():
    inputs = _inputs("scalar", T=5)
    with pytest.raises(ValueError, match="chunk_size"):
        R.gated_linear_attention_chunkwise(**inputs, chunk_size=0)
    S = inputs["initial_state"]
    with pytest.raises(ValueError, match="gk_t"):
        R.gated_linear_attention_step(
            inputs["q"][:, 0], inputs["k"][:, 0], inputs["v"][:, 0], S, gk_t=np.ones(2)
        )


def test_chunkwise_state_loop_does_not_index_per_chunk():
    """The chunk loop takes its per-chunk decays and writes by ``unbind``: indexing the
    [B, N, H, K, V] tensors chunk by chunk makes a backward that fills a whole-size
    gradient per chunk (N^2 work; on an H200 the SSD forward+backward grew with slope 1.9
    from T = 8192 to 65536 that way)."""
    x = _t(_inputs("vector", T=40), requires_grad=True)
    o, _ = P.gated_linear_attention_chunkwise(**x, chunk_size=4)  # 10 chunks
    assert indexes_along(autograd_nodes(o), 10) == 0
