"""Softmax attention, numpy reference and PyTorch: forms agree, masks, stability, bad input.

Glossary: B batch, T queries, S keys, H heads, K query/key head dim, V value head dim.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from course_lib.softmax_attention import numpy_ref, torch_impl
from course_lib.testing import TOLERANCE, rel_error

TOL64 = TOLERANCE["float64"]


def _qkv(rng, B, T, S, H, K, V, scale=1.0):
    q = rng.standard_normal((B, T, H, K)) * scale
    k = rng.standard_normal((B, S, H, K)) * scale
    v = rng.standard_normal((B, S, H, V))
    return q, k, v


def _t(*arrays, grad=False):
    return [torch.tensor(a, dtype=torch.float64, requires_grad=grad) for a in arrays]


# ---------------------------------------------------------------- forms agree (hypothesis)


@st.composite
def attention_shapes(draw):
    causal = draw(st.booleans())
    T = draw(st.integers(1, 23))
    S = draw(st.integers(T if causal else 1, 29))
    return {
        "B": draw(st.integers(1, 2)),
        "T": T,
        "S": S,
        "H": draw(st.integers(1, 3)),
        "K": draw(st.sampled_from([1, 3, 5, 8])),
        "V": draw(st.sampled_from([1, 2, 7])),
        "causal": causal,
        "block_q": draw(st.integers(1, 9)),
        "block_k": draw(st.integers(1, 11)),
        "seed": draw(st.integers(0, 2**16)),
    }


@given(attention_shapes())
def test_tiled_matches_parallel_numpy(c):
    q, k, v = _qkv(np.random.default_rng(c["seed"]), c["B"], c["T"], c["S"], c["H"], c["K"], c["V"])
    ref = numpy_ref.softmax_attention(q, k, v, causal=c["causal"])
    o, lse = numpy_ref.softmax_attention_tiled_lse(
        q, k, v, causal=c["causal"], block_q=c["block_q"], block_k=c["block_k"]
    )
    assert o.shape == (c["B"], c["T"], c["H"], c["V"])
    assert rel_error(o, ref) <= TOL64
    assert rel_error(lse, numpy_ref.attention_lse(q, k, causal=c["causal"])) <= TOL64


@given(attention_shapes())
def test_torch_forms_match_numpy(c):
    q, k, v = _qkv(np.random.default_rng(c["seed"]), c["B"], c["T"], c["S"], c["H"], c["K"], c["V"])
    ref = numpy_ref.softmax_attention(q, k, v, causal=c["causal"])
    tq, tk, tv = _t(q, k, v)
    par = torch_impl.softmax_attention(tq, tk, tv, causal=c["causal"])
    til, lse = torch_impl.softmax_attention_tiled_lse(
        tq, tk, tv, causal=c["causal"], block_q=c["block_q"], block_k=c["block_k"]
    )
    assert par.dtype == til.dtype == torch.float64
    assert rel_error(par, ref) <= TOL64
    assert rel_error(til, ref) <= TOL64
    assert rel_error(lse, numpy_ref.attention_lse(q, k, causal=c["causal"])) <= TOL64
    assert rel_error(torch_impl.attention_lse(tq, tk, causal=c["causal"]), lse) <= TOL64


def test_online_softmax_merge_equals_one_pass():
    """Merging the partial results of two key sets gives the partial result of their union."""
    rng = np.random.default_rng(0)
    s = rng.standard_normal((3, 10)) * 5  # [rows, keys]
    v = rng.standard_normal((10, 4))  # [keys, V]

    def partial(cols):
        m = s[:, cols].max(axis=1)
        p = np.exp(s[:, cols] - m[:, None])
        return m, p.sum(axis=1), p @ v[cols]

    whole = partial(np.arange(10))
    merges = (
        (numpy_ref.online_softmax_merge, np.asarray),
        (torch_impl.online_softmax_merge, torch.tensor),
    )
    for merge, cast in merges:
        a, b = partial(np.arange(4)), partial(np.arange(4, 10))
        merged = merge(*(cast(x) for x in (*a, *b)))
        swapped = merge(*(cast(x) for x in (*b, *a)))
        empty = (np.full(3, -np.inf), np.zeros(3), np.zeros((3, 4)))
        with_empty = merge(*(cast(x) for x in (*empty, *whole)))
        for got in (merged, swapped, with_empty):
            for g, w in zip(got, whole, strict=True):
                assert rel_error(g, w) <= TOL64
    # The rescale matters: adding the sums without it would be wrong.
    a, b = partial(np.arange(4)), partial(np.arange(4, 10))
    assert rel_error(a[1] + b[1], whole[1]) > 1e-3


# ---------------------------------------------------------------- stability


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_softmax_stable_on_huge_logits(backend):
    x = np.array([[1e4, 1e4 - 1.0, -1e4], [-1e4, -1e4 + 2.0, -1e4 - 3.0]])
    want = np.array([[1.0, np.exp(-1.0), 0.0], [np.exp(-2.0), 1.0, np.exp(-5.0)]])
    want /= want.sum(axis=1, keepdims=True)
    if backend == "numpy":
        got = numpy_ref.softmax(x)
    else:
        got = torch_impl.softmax(torch.tensor(x, dtype=torch.float32))
        assert got.dtype == torch.float32
    assert np.all(np.isfinite(np.asarray(got)))
    assert rel_error(got, want) <= TOLERANCE["float64" if backend == "numpy" else "float32"]
    # axis is honoured: softmax over axis 0 is the transpose of softmax over axis -1.
    xt = x.T if backend == "numpy" else torch.tensor(x.T)
    got0 = numpy_ref.softmax(xt, axis=0) if backend == "numpy" else torch_impl.softmax(xt, axis=0)
    assert rel_error(np.asarray(got0).T, want) <= TOL64


@pytest.mark.parametrize("causal", [True, False])
def test_attention_stable_on_huge_scores(causal):
    """Scores around 1e4: no overflow in either form, and the result is a convex mix of v."""
    q, k, v = _qkv(np.random.default_rng(1), 1, 9, 9, 2, 4, 3, scale=70.0)
    outs = [
        numpy_ref.softmax_attention(q, k, v, causal=causal),
        numpy_ref.softmax_attention_tiled(q, k, v, causal=causal, block_q=4, block_k=3),
    ]
    tq, tk, tv = _t(q, k, v)
    outs += [
        torch_impl.softmax_attention(tq, tk, tv, causal=causal),
        torch_impl.softmax_attention_tiled(tq, tk, tv, causal=causal, block_q=4, block_k=3),
        torch_impl.softmax_attention(tq.float(), tk.float(), tv.float(), causal=causal),
    ]
    assert np.abs(np.einsum("bthk,bshk->bhts", q, k)).max() / 2 > 1e3  # really huge
    for o in outs:
        o = np.asarray(o.detach() if isinstance(o, torch.Tensor) else o, dtype=np.float64)
        assert np.all(np.isfinite(o))
        assert np.all(o <= v.max(axis=1, keepdims=True) + 1e-5)
        assert np.all(o >= v.min(axis=1, keepdims=True) - 1e-5)
    assert rel_error(outs[1], outs[0]) <= TOL64


# ---------------------------------------------------------------- the causal mask


@pytest.mark.parametrize("form", ["numpy/parallel", "numpy/tiled", "torch/parallel", "torch/tiled"])
def test_future_keys_do_not_change_past_outputs(form):
    rng = np.random.default_rng(2)
    T, S = 11, 15  # bottom-right: query i sees keys j <= i + 4
    q, k, v = _qkv(rng, 2, T, S, 2, 5, 3)
    fn = _forms()[form]
    o = fn(q, k, v)
    i = 5  # change keys and values from i + S - T + 1 on: queries <= i must not move
    k2, v2 = k.copy(), v.copy()
    k2[:, i + S - T + 1 :] = rng.standard_normal(k2[:, i + S - T + 1 :].shape)
    v2[:, i + S - T + 1 :] = rng.standard_normal(v2[:, i + S - T + 1 :].shape)
    o2 = fn(q, k2, v2)
    np.testing.assert_array_equal(o2[:, : i + 1], o[:, : i + 1])
    assert np.abs(o2[:, i + 1 :] - o[:, i + 1 :]).min() > 0  # later queries do see them


def _forms():
    def wrap(fn, **kw):
        def call(q, k, v, **more):
            if fn.__module__.endswith("numpy_ref"):
                return fn(q, k, v, **kw, **more)
            return fn(*_t(q, k, v), **kw, **more).numpy()

        return call

    return {
        "numpy/parallel": wrap(numpy_ref.softmax_attention),
        "numpy/tiled": wrap(numpy_ref.softmax_attention_tiled, block_q=4, block_k=3),
        "torch/parallel": wrap(torch_impl.softmax_attention),
        "torch/tiled": wrap(torch_impl.softmax_attention_tiled, block_q=4, block_k=3),
    }


@pytest.mark.parametrize("form", ["numpy/parallel", "numpy/tiled", "torch/parallel", "torch/tiled"])
def test_mask_is_bottom_right_aligned(form):
    """A decode query sees the whole cache; new queries after a cache equal the full run's tail."""
    fn = _forms()[form]
    q, k, v = _qkv(np.random.default_rng(3), 1, 12, 12, 2, 4, 3)
    full = fn(q, k, v, causal=True)
    tail = fn(q[:, -5:], k, v, causal=True)  # 5 new queries after 7 cached tokens
    assert rel_error(tail, full[:, -5:]) <= TOL64
    decode = fn(q[:, -1:], k, v, causal=True)
    assert rel_error(decode, fn(q[:, -1:], k, v, causal=False)) <= TOL64
    # and causal is not a no-op: the first query sees only key 0, so o_0 = v_0
    assert rel_error(full[:, 0], v[:, 0]) <= TOL64
    assert rel_error(fn(q, k, v, causal=False)[:, 0], v[:, 0]) > 1e-3


# ---------------------------------------------------------------- bad input

GOOD = {
    "q": np.zeros((2, 5, 3, 4)),
    "k": np.zeros((2, 6, 3, 4)),
    "v": np.zeros((2, 6, 3, 7)),
}

BAD = [
    # (name, overrides, exception, words the message must contain)
    ("q rank", {"q": np.zeros((2, 5, 4))}, ValueError, ["q", "4 dimensions"]),
    ("k head dim", {"k": np.zeros((2, 6, 3, 5))}, ValueError, ["k", "K=4"]),
    ("v length", {"v": np.zeros((2, 5, 3, 7))}, ValueError, ["v", "S=6"]),
    ("k batch", {"k": np.zeros((1, 6, 3, 4))}, ValueError, ["k", "B=2"]),
    ("v heads", {"v": np.zeros((2, 6, 2, 7))}, ValueError, ["v", "H=3"]),
    ("v dtype", {"v": np.zeros((2, 6, 3, 7), dtype=np.float32)}, TypeError, ["v", "dtype"]),
    ("q ints", {"q": np.zeros((2, 5, 3, 4), dtype=np.int64)}, TypeError, ["q", "floating"]),
    ("k list", {"k": [[0.0]]}, TypeError, ["k", "list"]),
    ("empty q", {"q": np.zeros((2, 0, 3, 4))}, ValueError, ["q", "empty"]),
    ("scale <= 0", {"scale": -1.0}, ValueError, ["scale"]),
    ("scale str", {"scale": "big"}, TypeError, ["scale"]),
    ("causal int", {"causal": 1}, TypeError, ["causal", "bool"]),
    ("causal T > S", {"q": np.zeros((2, 7, 3, 4))}, ValueError, ["causal", "T=7", "S=6"]),
    ("block_q zero", {"block_q": 0}, ValueError, ["block_q"]),
    ("block_k float", {"block_k": 2.5}, TypeError, ["block_k"]),
]


def _to_torch(args):
    out = {}
    for name, x in args.items():
        out[name] = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    return out


@pytest.mark.parametrize(("case", "over", "exc", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_named_and_same_in_numpy_and_torch(case, over, exc, words):
    tiled = "block" in case
    args = {**GOOD, **over}
    messages = []
    for module, convert in ((numpy_ref, dict), (torch_impl, _to_torch)):
        fns = (
            [module.softmax_attention_tiled]
            if tiled
            else [
                module.softmax_attention,
                module.softmax_attention_tiled,
            ]
        )
        for fn in fns:
            with pytest.raises(exc) as info:
                fn(**convert(args))
            messages.append(str(info.value).replace("torch.", "").replace("numpy.", ""))
    for word in words:
        assert word in messages[0], f"{case}: {messages[0]!r} lacks {word!r}"
    if case not in ("v dtype", "q ints"):  # dtype names print differently in numpy and torch
        assert len(set(messages)) == 1, messages


def test_softmax_rejects_non_float():
    for fn, x in ((numpy_ref.softmax, np.arange(3)), (torch_impl.softmax, torch.arange(3))):
        with pytest.raises(TypeError, match="x"):
            fn(x)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("form", ["parallel", "tiled"])
def test_torch_gradcheck(form, causal):
    q, k, v = _t(*_qkv(np.random.default_rng(4), 1, 4, 6, 1, 3, 2), grad=True)
    if form == "parallel":
        fn = lambda q, k, v: torch_impl.softmax_attention(q, k, v, causal=causal)  # noqa: E731
    else:
        fn = lambda q, k, v: torch_impl.softmax_attention_tiled(  # noqa: E731
            q, k, v, causal=causal, block_q=3, block_k=4
        )
    assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("causal", [True, False])
def test_numpy_backward_matches_autograd(causal):
    rng = np.random.default_rng(5)
    q, k, v = _qkv(rng, 2, 6, 9, 2, 4, 3)
    do = rng.standard_normal((2, 6, 2, 3))
    grads = numpy_ref.softmax_attention_backward(q, k, v, do, scale=0.7, causal=causal)
    tq, tk, tv = _t(q, k, v, grad=True)
    torch_impl.softmax_attention(tq, tk, tv, scale=0.7, causal=causal).backward(torch.tensor(do))
    for got, t in zip(grads, (tq, tk, tv), strict=True):
        assert rel_error(got, t.grad) <= TOL64


def test_numpy_backward_rejects_bad_do():
    q, k, v = GOOD["q"], GOOD["k"], GOOD["v"]
    with pytest.raises(ValueError, match="do"):
        numpy_ref.softmax_attention_backward(q, k, v, np.zeros((2, 5, 3, 4)), causal=False)


# ---------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("form", ["parallel", "tiled"])
def test_torch_low_precision_returns_input_dtype(form, dtype):
    q, k, v = _qkv(np.random.default_rng(6), 2, 13, 13, 2, 8, 6)
    ref = numpy_ref.softmax_attention(q, k, v)
    tdt = getattr(torch, dtype)
    fn = torch_impl.softmax_attention if form == "parallel" else torch_impl.softmax_attention_tiled
    o = fn(*(torch.from_numpy(x).to(tdt) for x in (q, k, v)))
    assert o.dtype == tdt
    assert rel_error(o, ref) <= TOLERANCE[dtype]
