"""Linear attention: the forms agree, states carry across calls, decoding equals the forward.

Covers the numpy reference and the torch implementation (float64, so the tolerance is
``TOLERANCE["float64"]``); the Triton kernels have their own file.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from course_lib.linear_attention import numpy_ref, torch_impl
from course_lib.linear_attention.feature_maps import feature_map
from course_lib.testing import TOLERANCE, flatten, rel_error

TOL = TOLERANCE["float64"]
FORMS = ("parallel", "recurrent", "chunkwise")


def _draw(seed: int, B: int, T: int, H: int, K: int, V: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "q": rng.standard_normal((B, T, H, K)),
        "k": rng.standard_normal((B, T, H, K)),
        "v": rng.standard_normal((B, T, H, V)),
        "S0": rng.standard_normal((B, H, K, V)),
        "z0": rng.uniform(0.5, 1.5, (B, H, K)),
    }


def _state(x: dict, normalize: bool, with_init: bool, conv=lambda a: a):
    if not with_init:
        return None
    return (conv(x["S0"]), conv(x["z0"])) if normalize else conv(x["S0"])


def _options(normalize: bool, fm_index: int) -> dict:
    # The normaliser needs a positive map; the plain form takes any.
    fm = "elu1" if normalize else (None, "identity", "relu", "elu1")[fm_index]
    return {"feature_map": fm, "normalize": normalize}


def _assert_close(got, ref, tol: float = TOL) -> None:
    got, ref = flatten(got), flatten(ref)
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        if r is None:
            assert g is None
            continue
        err = rel_error(g, r)
        assert err <= tol, f"relative error {err:.3e} > {tol:g}"


shapes = st.fixed_dictionaries(
    {
        "B": st.integers(1, 2),
        "T": st.sampled_from([1, 2, 5, 16, 17, 33]),
        "H": st.integers(1, 2),
        "K": st.sampled_from([1, 3, 4, 7]),
        "V": st.sampled_from([1, 2, 5]),
    }
)


@given(
    sizes=shapes,
    chunk=st.sampled_from([1, 3, 8, 16, 64]),
    normalize=st.booleans(),
    with_init=st.booleans(),
    fm_index=st.integers(0, 3),
)
@example(  # T = 1, B = 1
    sizes={"B": 1, "T": 1, "H": 1, "K": 3, "V": 5},
    chunk=16,
    normalize=True,
    with_init=True,
    fm_index=0,
)
@example(  # T not a multiple of the chunk, odd head dims
    sizes={"B": 2, "T": 17, "H": 2, "K": 7, "V": 5},
    chunk=8,
    normalize=False,
    with_init=True,
    fm_index=2,
)
def test_numpy_and_torch_forms_agree(sizes, chunk, normalize, with_init, fm_index) -> None:
    x = _draw(1, **sizes)
    opts = _options(normalize, fm_index)
    ref = numpy_ref.linear_attention_recurrent(
        x["q"],
        x["k"],
        x["v"],
        **opts,
        initial_state=_state(x, normalize, with_init),
        output_final_state=True,
    )
    assert ref[0].shape == (sizes["B"], sizes["T"], sizes["H"], sizes["V"])
    for module, conv in ((numpy_ref, lambda a: a), (torch_impl, torch.from_numpy)):
        for form in FORMS:
            extra = {"chunk_size": chunk} if form == "chunkwise" else {}
            got = getattr(module, f"linear_attention_{form}")(
                conv(x["q"]),
                conv(x["k"]),
                conv(x["v"]),
                **opts,
                **extra,
                initial_state=_state(x, normalize, with_init, conv),
                output_final_state=True,
            )
            _assert_close(got, ref)


@pytest.mark.parametrize("module", [numpy_ref, torch_impl], ids=["numpy", "torch"])
@pytest.mark.parametrize("normalize", [False, True])
def test_final_state_is_none_unless_asked(module, normalize) -> None:
    x = _draw(2, 1, 5, 1, 3, 2)
    conv = torch.from_numpy if module is torch_impl else (lambda a: a)
    for form in FORMS:
        fn = getattr(module, f"linear_attention_{form}")
        o, final = fn(conv(x["q"]), conv(x["k"]), conv(x["v"]), normalize=normalize)
        assert final is None
        assert tuple(o.shape) == (1, 5, 1, 2)


@pytest.mark.parametrize("module", [numpy_ref, torch_impl], ids=["numpy", "torch"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("form", FORMS)
def test_carried_state_equals_one_call(module, normalize, form) -> None:
    """Two calls with the state handed over give the same output as one call."""
    x = _draw(3, 2, 29, 2, 5, 3)
    conv = torch.from_numpy if module is torch_impl else (lambda a: a)
    fn = getattr(module, f"linear_attention_{form}")
    opts = {"feature_map": "elu1" if normalize else "relu", "normalize": normalize}
    if form == "chunkwise":
        opts["chunk_size"] = 4
    init = _state(x, normalize, True, conv)
    q, k, v = conv(x["q"]), conv(x["k"]), conv(x["v"])
    whole = fn(q, k, v, **opts, initial_state=init, output_final_state=True)
    cut = 11
    o1, s1 = fn(
        q[:, :cut], k[:, :cut], v[:, :cut], **opts, initial_state=init, output_final_state=True
    )
    o2, s2 = fn(
        q[:, cut:], k[:, cut:], v[:, cut:], **opts, initial_state=s1, output_final_state=True
    )
    cat = torch.cat if module is torch_impl else np.concatenate
    _assert_close((cat([o1, o2], 1), s2), whole)


@pytest.mark.parametrize("module", [numpy_ref, torch_impl], ids=["numpy", "torch"])
@pytest.mark.parametrize("normalize", [False, True])
def test_noncausal_associativity(module, normalize) -> None:
    """phi(Q) (phi(K)^T V) equals the quadratic (phi(Q) phi(K)^T) V, row-normalised if asked."""
    x = _draw(4, 2, 13, 3, 6, 4)
    fm = "elu1"
    scale = 0.7
    fq, fk = feature_map(x["q"], fm) * scale, feature_map(x["k"], fm)
    A = np.einsum("bthk,bshk->bhts", fq, fk)  # [B, H, T, T], no mask
    ref = np.einsum("bhts,bshv->bthv", A, x["v"])
    if normalize:
        ref = ref / (np.einsum("bhts->bth", A)[..., None] + numpy_ref.EPS)
    conv = torch.from_numpy if module is torch_impl else (lambda a: a)
    got = module.linear_attention_noncausal(
        conv(x["q"]),
        conv(x["k"]),
        conv(x["v"]),
        scale=scale,
        feature_map=fm,
        normalize=normalize,
    )
    _assert_close(got, ref)


def test_noncausal_equals_causal_at_the_last_token() -> None:
    """The last query of the causal form sees every key: it equals the non-causal output."""
    x = _draw(5, 1, 9, 2, 4, 3)
    o_causal, _ = numpy_ref.linear_attention_parallel(x["q"], x["k"], x["v"], normalize=False)
    o_full = numpy_ref.linear_attention_noncausal(x["q"], x["k"], x["v"])
    _assert_close(o_causal[:, -1], o_full[:, -1])
    assert rel_error(o_causal[:, 0], o_full[:, 0]) > 1e-3  # the first query sees one key


@pytest.mark.parametrize("module", [numpy_ref, torch_impl], ids=["numpy", "torch"])
@pytest.mark.parametrize(("normalize", "with_init"), [(False, False), (False, True), (True, True)])
def test_step_by_step_decode_equals_forward(module, normalize, with_init) -> None:
    x = _draw(6, 2, 12, 2, 5, 3)
    conv = torch.from_numpy if module is torch_impl else (lambda a: a)
    opts = {"feature_map": "elu1" if normalize else None, "normalize": normalize}
    q, k, v = conv(x["q"]), conv(x["k"]), conv(x["v"])
    state = _state(x, normalize, with_init, conv)
    ref = module.linear_attention_parallel(
        q, k, v, **opts, initial_state=state, output_final_state=True
    )
    outs = []
    for t in range(q.shape[1]):
        o_t, state = module.linear_attention_step(q[:, t], k[:, t], v[:, t], state, **opts)
        assert tuple(o_t.shape) == (2, 2, 3)
        outs.append(o_t)
    stack = torch.stack if module is torch_impl else np.stack
    _assert_close((stack(outs, 1), state), ref)


def test_numpy_backward_matches_autograd() -> None:
    """The reverse recurrences of ``linear_attention_backward`` against torch autograd."""
    x = _draw(7, 2, 11, 2, 5, 3)
    rng = np.random.default_rng(8)
    do, dST = rng.standard_normal(x["v"].shape), rng.standard_normal(x["S0"].shape)
    ref = numpy_ref.linear_attention_backward(
        x["q"], x["k"], x["v"], do, scale=0.6, initial_state=x["S0"], d_final_state=dST
    )
    t = {n: torch.tensor(x[n], requires_grad=True) for n in ("q", "k", "v", "S0")}
    o, S = torch_impl.linear_attention_recurrent(
        t["q"], t["k"], t["v"], scale=0.6, initial_state=t["S0"], output_final_state=True
    )
    ((o * torch.from_numpy(do)).sum() + (S * torch.from_numpy(dST)).sum()).backward()
    _assert_close([t[n].grad for n in ("q", "k", "v", "S0")], list(ref))


# ---------------------------------------------------------------- torch gradients


def _grad_inputs(normalize: bool, T: int = 4, seed: int = 9):
    x = _draw(seed, 1, T, 1, 3, 2)
    names = ["q", "k", "v", "S0"] + (["z0"] if normalize else [])
    return [torch.tensor(x[n], requires_grad=True) for n in names]


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("form", [*FORMS, "noncausal", "step"])
def test_torch_gradcheck(form, normalize) -> None:
    """float64 finite differences against autograd, for every form."""
    fm = "elu1"  # smooth, so finite differences are valid everywhere

    def fn(q, k, v, S0, z0=None):
        state = (S0, z0) if normalize else S0
        opts = {"feature_map": fm, "normalize": normalize, "scale": 0.8}
        if form == "noncausal":
            return torch_impl.linear_attention_noncausal(q, k, v + S0.sum(), **opts)
        if form == "step":
            o, new = torch_impl.linear_attention_step(q[:, 0], k[:, 0], v[:, 0], state, **opts)
            return (o, *flatten(new))
        extra = {"chunk_size": 2} if form == "chunkwise" else {}
        f = getattr(torch_impl, f"linear_attention_{form}")
        o, final = f(q, k, v, **opts, **extra, initial_state=state, output_final_state=True)
        return (o, *flatten(final))

    assert torch.autograd.gradcheck(fn, _grad_inputs(normalize))


@pytest.mark.parametrize("normalize", [False, True])
def test_chunkwise_grads_equal_recurrent_grads(normalize) -> None:
    grads = []
    for form, extra in (("recurrent", {}), ("chunkwise", {"chunk_size": 4}), ("parallel", {})):
        xs = _grad_inputs(normalize, T=19, seed=10)
        state = (xs[3], xs[4]) if normalize else xs[3]
        f = getattr(torch_impl, f"linear_attention_{form}")
        o, final = f(
            *xs[:3],
            feature_map="elu1",
            normalize=normalize,
            **extra,
            initial_state=state,
            output_final_state=True,
        )
        g = torch.Generator().manual_seed(0)
        loss = sum(
            (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
            for y in (o, *flatten(final))
        )
        loss.backward()
        grads.append([x.grad for x in xs])
    for other in grads[1:]:
        _assert_close(other, grads[0])


def test_torch_low_precision_returns_input_dtype() -> None:
    x = _draw(11, 1, 9, 1, 4, 3)
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = (torch.from_numpy(x[n]).to(dtype) for n in ("q", "k", "v"))
        for form in FORMS:
            o, S = getattr(torch_impl, f"linear_attention_{form}")(q, k, v, output_final_state=True)
            assert o.dtype == dtype
            assert S.dtype == torch.float32  # accumulation dtype
            ref, _ = numpy_ref.linear_attention_recurrent(x["q"], x["k"], x["v"])
            assert rel_error(o, ref) <= TOLERANCE[str(dtype).replace("torch.", "")]


# ---------------------------------------------------------------- fla-core's references


def _fla_naive():
    """fla-core's ``fla/ops/linear_attn/naive.py``, loaded alone.

    Importing ``fla.ops`` builds every fla kernel (seconds in the interpreter); the naive
    file needs only torch and einops, so it is loaded by path when it is there.
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("fla-core is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "ops" / "linear_attn" / "naive.py"
    if not path.exists():
        return pytest.importorskip("fla.ops.linear_attn.naive")
    pytest.importorskip("einops")
    file_spec = importlib.util.spec_from_file_location("_fla_linear_attn_naive", path)
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def test_matches_fla_naive() -> None:
    """Our torch forms against fla-core's naive recurrent and chunk references (CPU)."""
    naive = _fla_naive()
    x = _draw(12, 2, 128, 2, 8, 6)
    q, k, v, S0, z0 = (torch.from_numpy(x[n]).float() for n in ("q", "k", "v", "S0", "z0"))
    tol = TOLERANCE["float32"]
    # plain, with an initial state
    o_fla, S_fla = naive.naive_recurrent_linear_attn(
        q, k, v, initial_state=S0, output_final_state=True
    )
    o, S = torch_impl.linear_attention_chunkwise(q, k, v, initial_state=S0, output_final_state=True)
    _assert_close((o, S), (o_fla, S_fla), tol)
    # normalised with a positive feature map; fla keeps z as [B, 1, H, K]
    fq, fk = feature_map(q, "elu1"), feature_map(k, "elu1")
    o_fla, (S_fla, z_fla) = naive.naive_recurrent_linear_attn(
        fq, fk, v, initial_state=(S0, z0[:, None]), output_final_state=True, normalize=True
    )
    o, (S, z) = torch_impl.linear_attention_recurrent(
        q,
        k,
        v,
        feature_map="elu1",
        normalize=True,
        initial_state=(S0, z0),
        output_final_state=True,
    )
    _assert_close((o, S, z), (o_fla, S_fla, z_fla[:, 0]), tol)
    # fla's chunk reference (no state, T a multiple of its chunk of 64)
    for normalize in (False, True):
        o_fla = naive.naive_chunk_linear_attn(fq, fk, v, normalize=normalize)
        o, _ = torch_impl.linear_attention_parallel(
            q, k, v, feature_map="elu1", normalize=normalize
        )
        _assert_close(o, o_fla, tol)
