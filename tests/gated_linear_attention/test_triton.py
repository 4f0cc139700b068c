"""Triton kernels of gated linear attention against the float64 reference.

On the CPU the kernels run in Triton's interpreter (tiny sizes); tests marked ``gpu`` run
compiled kernels in fp16/bf16 and at long T, and skip here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib import runtime
from course_lib.gated_linear_attention import numpy_ref as R
from course_lib.gated_linear_attention import torch_impl as P
from course_lib.testing import TOLERANCE, rel_error

if not runtime.triton_available():  # pragma: no cover - Linux always has Triton
    pytest.skip("Triton is not installed", allow_module_level=True)

from course_lib.gated_linear_attention import triton_kernels as TK

DEVICE = runtime.default_device()


def _draw(B, T, H, K, V, scalar, seed=0, low=-1.0):
    rng = np.random.default_rng(seed)
    g_shape = (B, T, H) if scalar else (B, T, H, K)
    return {
        "q": rng.standard_normal((B, T, H, K)),
        "k": rng.standard_normal((B, T, H, K)),
        "v": rng.standard_normal((B, T, H, V)),
        "g": rng.uniform(low, -0.01, g_shape),
        "h0": 0.5 * rng.standard_normal((B, H, K, V)),
    }


def _reference(x, do, dht, device="cpu", chunk_size=8):
    """float64: numpy outputs, torch (float64, autograd) gradients of <o, do> + <h_T, dht>.
    Long GPU tests run the torch part on the GPU (still float64) with longer chunks."""
    o, ht = R.gated_linear_attention_recurrent(
        x["q"], x["k"], x["v"], x["g"], initial_state=x["h0"], output_final_state=True
    )
    t = {n: torch.from_numpy(a).to(device).requires_grad_(True) for n, a in x.items()}
    o_t, ht_t = P.gated_linear_attention_chunkwise(
        t["q"],
        t["k"],
        t["v"],
        t["g"],
        initial_state=t["h0"],
        output_final_state=True,
        chunk_size=chunk_size,
    )
    do_t, dht_t = torch.from_numpy(do).to(device), torch.from_numpy(dht).to(device)
    loss = (o_t * do_t).sum() + (ht_t * dht_t).sum()
    grads = torch.autograd.grad(loss, list(t.values()))
    return o, ht, [g.cpu().numpy() for g in grads]


def _triton(x, do, dht, dtype, chunk_size, fused=False):
    if dtype == torch.bfloat16 and not runtime.supports_bf16(DEVICE):
        pytest.skip("no bf16 on this device (a GPU below compute capability 8.0)")
    t = {
        n: torch.from_numpy(a)
        .to(DEVICE, dtype if n in "qkv" else torch.float32)
        .requires_grad_(True)
        for n, a in x.items()
    }
    fn = _function(x["g"].ndim == 3, fused)
    with runtime.poison_outputs():
        o, ht = fn(
            t["q"],
            t["k"],
            t["v"],
            t["g"],
            initial_state=t["h0"],
            output_final_state=True,
            chunk_size=chunk_size,
        )
        loss = (o.float() * torch.from_numpy(do).to(DEVICE)).sum()
        loss = loss + (ht * torch.from_numpy(dht).to(DEVICE)).sum()
        grads = torch.autograd.grad(loss, list(t.values()))
    assert o.dtype == dtype and ht.dtype == torch.float32
    return o, ht, grads


def _function(scalar, fused):
    if fused:
        return TK.fused_chunk_simple_gla if scalar else TK.fused_chunk_gla
    return TK.chunk_simple_gla if scalar else TK.chunk_gla


def _check(
    B,
    T,
    H,
    K,
    V,
    scalar,
    chunk_size,
    dtype=torch.float32,
    seed=0,
    low=-1.0,
    fused=False,
    ref_on_device=False,
):
    x = _draw(B, T, H, K, V, scalar, seed, low)
    for n in "qkv":  # the reference sees the inputs as rounded to the kernel's dtype
        x[n] = torch.from_numpy(x[n]).to(dtype).double().numpy()
    rng = np.random.default_rng(seed + 100)
    do = rng.standard_normal((B, T, H, V))
    dht = rng.standard_normal((B, H, K, V))
    ref_args = (DEVICE, 64) if ref_on_device else ()
    o_ref, ht_ref, g_ref = _reference(x, do, dht, *ref_args)
    o, ht, grads = _triton(x, do, dht, dtype, chunk_size, fused)
    tol = TOLERANCE[str(dtype).replace("torch.", "")]
    names = ["o", "final state", "dq", "dk", "dv", "dh0"]
    got_all, ref_all = [o, ht, *grads[:3], grads[4]], [o_ref, ht_ref, *g_ref[:3], g_ref[4]]
    for name, got, ref in zip(names, got_all, ref_all, strict=True):
        err = rel_error(got, ref)
        assert err <= tol, f"{name}: relative error {err:.2e} > {tol} (T={T}, K={K})"
    err, bound = _dg_error(grads[3], g_ref, x, dtype)
    assert err <= bound, f"dg: error {err:.2e} > {bound:.2e} of its two sums (T={T}, K={K})"


# The unit roundoff of the matmuls behind dq and dk: fp32 runs them in tf32 on tensor
# cores, fp16 keeps 11 bits; bf16 rounds do (and the inputs) to 8 bits.
DG_ROUNDOFF = {torch.float32: 2.0**-11, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def _dg_error(dg, g_ref, x, dtype):
    """dg's error measured against the two sums it is the difference of.

    dg_t = sum_{s>=t} (q_s ⊙ dq_s - k_s ⊙ dk_s) (+ the final-state term): at T = 4100 the
    two sums are ~50 times larger than dg, so a relative error of 2^-11 in dq and dk (tf32)
    is a relative error of ~2.5e-2 in dg in every form (chunk and fused alike, and fp32
    too: 1.4e-2 there, measured on an H200). The bound says what rounding can explain:
    ||dg - dg_ref|| <= u (||R(q ⊙ dq)|| + ||R(k ⊙ dk)||), R the reverse cumulative sum
    over T (and the sum over K for a scalar gate), u the roundoff of the dtype's matmuls. A
    wrong dg (a missing term) is off by ~||dg||, several times more than this allows.
    Returns (error, bound), both relative to ||dg_ref||.
    """
    dq, dk, dg_ref = g_ref[0], g_ref[1], g_ref[3]
    a, b = x["q"] * dq, x["k"] * dk
    if dg_ref.ndim == 3:  # a scalar gate: one number per (t, head)
        a, b = a.sum(-1), b.sum(-1)
    R = lambda y: np.flip(np.cumsum(np.flip(y, 1), 1), 1)  # noqa: E731 - reverse cumsum over T
    scale = (np.linalg.norm(R(a)) + np.linalg.norm(R(b))) / np.linalg.norm(dg_ref)
    return rel_error(dg, dg_ref), DG_ROUNDOFF[dtype] * scale


# (B, T, H, K, V, scalar gate?, chunk): T = 1, one short of a chunk, one past a chunk;
# K = 16 and a K = 60 that pads to 64; off-diagonal sub-chunk tiles need chunk > 16.
AWKWARD = [
    (1, 1, 1, 16, 16, False, 64),
    (1, 63, 1, 60, 20, False, 64),
    (1, 65, 1, 16, 12, True, 32),
    (2, 17, 1, 16, 16, True, 16),
    (1, 20, 1, 80, 16, True, 16),  # a scalar gate's dq/dk kernel splits K = 80 in two
    (1, 40, 2, 100, 24, False, 32),  # vector gate: K = 100 in two key slices, two sub-chunks
    (1, 19, 1, 16, 16, False, 16),  # vector gate, one sub-chunk per chunk (diagonal only)
    (1, 130, 1, 16, 8, False, 128),  # vector gate, eight sub-chunks, a 2-row tail chunk
]


def _awkward_id(s):
    return f"B{s[0]}T{s[1]}H{s[2]}K{s[3]}V{s[4]}" + ("-scalar" if s[5] else "-vector") + f"-C{s[6]}"


@pytest.mark.parametrize("size", AWKWARD, ids=_awkward_id)
def test_chunk_matches_reference_with_gradients(size):
    _check(*size)


@pytest.mark.parametrize("size", AWKWARD, ids=_awkward_id)
def test_fused_chunk_matches_reference_with_gradients(size):
    """The fused forward (state in registers) and its recomputing backward: outputs,
    final state and all gradients, at the same awkward sizes."""
    _check(*size, fused=True)


def test_chunk_strong_decay_is_finite_and_correct():
    """Log gates near -20 per step over a chunk: exp(20 * 30) would overflow fp32."""
    _check(1, 30, 1, 16, 16, False, 32, low=-20.0)


@pytest.mark.parametrize("scalar", [False, True], ids=["vector", "scalar"])
def test_fused_chunk_strong_decay_is_finite_and_correct(scalar):
    """The fused walk's exponents stay <= 0 too: log gates near -20 per step."""
    _check(1, 30, 1, 16, 16, scalar, 32, low=-20.0, fused=True)


@pytest.mark.parametrize("scalar", [False, True], ids=["vector", "scalar"])
def test_chunk_fp16_inputs(scalar):
    """fp16 operands (the interpreter has no bf16), fp32 accumulation: o in fp16."""
    _check(1, 20, 1, 16, 16, scalar, 16, dtype=torch.float16, seed=5)


@pytest.mark.parametrize("scalar", [False, True], ids=["vector", "scalar"])
def test_fused_chunk_fp16_inputs(scalar):
    _check(1, 20, 1, 16, 16, scalar, 16, dtype=torch.float16, seed=5, fused=True)


@pytest.mark.parametrize("scalar", [False, True], ids=["vector", "scalar"])
def test_fused_chunk_agrees_with_chunk_form(scalar):
    """Both forms on the same fp32 inputs, two heads and three chunks with a tail:
    outputs, final state and every gradient agree (the backward is shared code)."""
    x = _draw(1, 36, 2, 20, 12, scalar, seed=11)
    rng = np.random.default_rng(12)
    do = rng.standard_normal((1, 36, 2, 12))
    dht = rng.standard_normal((1, 2, 20, 12))
    o_c, ht_c, g_c = _triton(x, do, dht, torch.float32, 16)
    o_f, ht_f, g_f = _triton(x, do, dht, torch.float32, 16, fused=True)
    names = ["o", "final state", "dq", "dk", "dv", "dg", "dh0"]
    for name, a, b in zip(names, [o_f, ht_f, *g_f], [o_c, ht_c, *g_c], strict=True):
        err = rel_error(a, b)
        assert err <= TOLERANCE["float32"], f"{name}: fused vs chunk {err:.2e}"


@pytest.mark.parametrize("fused", [False, True], ids=["chunk", "fused"])
@pytest.mark.parametrize("scalar", [False, True], ids=["vector", "scalar"])
def test_chunk_without_states(scalar, fused):
    """No initial state, no final state asked for: the other branches of the kernels."""
    x = _draw(1, 19, 1, 16, 8, scalar, seed=7)
    do = np.random.default_rng(8).standard_normal((1, 19, 1, 8))
    t = {n: torch.from_numpy(a).float().requires_grad_(True) for n, a in x.items()}
    fn = _function(scalar, fused)
    with runtime.poison_outputs():
        o, ht = fn(t["q"], t["k"], t["v"], t["g"], chunk_size=16)
        grads = torch.autograd.grad((o * torch.from_numpy(do).float()).sum(), [t["q"], t["g"]])
    assert ht is None
    r = {n: torch.from_numpy(a).requires_grad_(True) for n, a in x.items()}
    o_ref, _ = P.gated_linear_attention_chunkwise(r["q"], r["k"], r["v"], r["g"], chunk_size=8)
    ref = torch.autograd.grad((o_ref * torch.from_numpy(do)).sum(), [r["q"], r["g"]])
    for got, want in zip([o, *grads], [o_ref, *ref], strict=True):
        assert rel_error(got, want) <= TOLERANCE["float32"]


@pytest.mark.parametrize("form", ["triton_chunk", "triton_fused_chunk"])
@pytest.mark.parametrize("scalar", [False, True], ids=["vector", "scalar"])
def test_registry_wrapper_dispatch_and_rejects_gv(form, scalar):
    from course_lib.gated_linear_attention import registrations

    wrapper = getattr(registrations, form)
    x = _small(scalar=scalar)
    o, _ = wrapper(x["q"], x["k"], x["v"], gk=x["g"])
    o_ref, _ = R.gated_linear_attention_recurrent(
        *(x[n].double().numpy() for n in ("q", "k", "v", "g"))
    )
    assert rel_error(o, o_ref) <= TOLERANCE["float32"]
    with pytest.raises(ValueError, match="gv"):
        wrapper(x["q"], x["k"], x["v"], gk=x["g"], gv=x["v"] * 0 - 1)
    with pytest.raises(ValueError, match="gk"):
        wrapper(x["q"], x["k"], x["v"], gk=x["g"][0, 0])


@pytest.mark.parametrize("scalar", [False, True], ids=["vector", "scalar"])
def test_decode_step_matches_numpy(scalar):
    rng = np.random.default_rng(3)
    B, H, K, V = 2, 2, 20, 36
    q, k = rng.standard_normal((2, B, H, K))
    v = rng.standard_normal((B, H, V))
    g = rng.uniform(-2.0, -0.01, (B, H) if scalar else (B, H, K))
    S = rng.standard_normal((B, H, K, V))
    o_ref, S_ref = R.gated_linear_attention_step(q, k, v, S, gk_t=g)
    with runtime.poison_outputs():
        o, S_new = TK.gla_decode_step(
            *(torch.from_numpy(a).float().to(DEVICE) for a in (q, k, v, g, S))
        )
    assert rel_error(o, o_ref) <= TOLERANCE["float32"]
    assert rel_error(S_new, S_ref) <= TOLERANCE["float32"]


def _small(scalar=False):
    x = _draw(1, 5, 1, 16, 16, scalar)
    return {n: torch.from_numpy(a).float() for n, a in x.items()}


def _set_last(g, value):
    """g with its very last entry (last step, last key) replaced: one bad gate is enough."""
    g = g.clone()
    g.view(-1)[-1] = value
    return g


BAD_TRITON = {
    "positive g": (lambda x: x | {"g": x["g"].abs()}, "g"),
    "NaN g": (lambda x: x | {"g": x["g"] * float("nan")}, "g"),
    "one -inf in g": (lambda x: x | {"g": _set_last(x["g"], float("-inf"))}, "g"),
    "one positive gate, last step": (lambda x: x | {"g": _set_last(x["g"], 0.5)}, "g"),
    "g wrong shape": (lambda x: x | {"g": x["g"][..., :-1]}, "g"),
    "k wrong K": (lambda x: x | {"k": x["k"][..., :-1]}, "k"),
    "state wrong shape": (lambda x: x | {"h0": x["h0"][..., :-1]}, "initial_state"),
    "mixed dtypes": (lambda x: x | {"v": x["v"].double()}, "v"),
}


@pytest.mark.parametrize("fused", [False, True], ids=["chunk", "fused"])
@pytest.mark.parametrize("bad", list(BAD_TRITON), ids=list(BAD_TRITON))
def test_chunk_rejects_bad_inputs(bad, fused):
    change, named = BAD_TRITON[bad]
    x = change(_small())
    with pytest.raises((ValueError, TypeError), match=named):
        _function(False, fused)(x["q"], x["k"], x["v"], x["g"], initial_state=x["h0"])


@pytest.mark.parametrize("fused", [False, True], ids=["chunk", "fused"])
def test_chunk_rejects_bad_chunk_size_and_big_heads(fused):
    x = _small()
    vector, scalar = _function(False, fused), _function(True, fused)
    with pytest.raises(ValueError, match="chunk_size"):
        vector(x["q"], x["k"], x["v"], x["g"], chunk_size=48)
    big = torch.zeros(1, 2, 1, 300)
    with pytest.raises(ValueError, match="256"):
        vector(big, big, torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 300) - 0.1)
    with pytest.raises(ValueError, match="g"):  # a vector gate given to the scalar kernel
        scalar(x["q"], x["k"], x["v"], x["g"])


def test_fla_naive_gla_agrees_with_ours():
    """fla-core's own naive recurrence (fp32) against our torch chunkwise form."""
    naive = pytest.importorskip("fla.ops.gla.naive")
    x = _draw(2, 23, 2, 8, 6, scalar=False)
    t = {n: torch.from_numpy(a).float() for n, a in x.items()}
    o_fla, ht_fla = naive.naive_recurrent_gla(
        t["q"], t["k"], t["v"], t["g"], initial_state=t["h0"], output_final_state=True
    )
    o, ht = P.gated_linear_attention_chunkwise(
        t["q"],
        t["k"],
        t["v"],
        t["g"],
        initial_state=t["h0"],
        output_final_state=True,
        chunk_size=8,
    )
    assert rel_error(o, o_fla) <= TOLERANCE["float32"]
    assert rel_error(ht, ht_fla) <= TOLERANCE["float32"]
    o_ref, _ = R.gated_linear_attention_recurrent(
        x["q"], x["k"], x["v"], x["g"], initial_state=x["h0"], output_final_state=True
    )
    assert rel_error(o_fla, o_ref) <= TOLERANCE["float32"]


# ------------------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("scalar", [False, True], ids=["vector", "scalar"])
@pytest.mark.parametrize("K", [64, 100, 128, 256])
def test_gpu_half_precision(dtype, scalar, K):
    _check(2, 333, 3, K, 128 if K != 100 else 96, scalar, 64, dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [False, True], ids=["chunk", "fused"])
@pytest.mark.parametrize("scalar", [False, True], ids=["vector", "scalar"])
@pytest.mark.parametrize("bad", [float("nan"), 0.5, float("-inf")], ids=["nan", "pos", "-inf"])
def test_gpu_rejects_a_bad_gate(bad, scalar, fused):
    """Compiled, the forward's cumulative-sum pass counts the bad gates on the GPU and the
    host reads the count: one bad gate among thousands raises, naming g; with that gate
    put right, the same inputs run and give finite outputs."""
    x = {
        n: torch.from_numpy(a).float().to(DEVICE)
        for n, a in _draw(2, 1000, 3, 64, 32, scalar).items()
    }
    fn = _function(scalar, fused)
    good = x["g"].clone()
    x["g"].view(-1)[good.numel() // 2 + 7] = bad
    with pytest.raises(ValueError, match="g"):
        fn(x["q"], x["k"], x["v"], x["g"], initial_state=x["h0"])
    o, ht = fn(x["q"], x["k"], x["v"], good, initial_state=x["h0"], output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(ht).all()


@pytest.mark.gpu
@pytest.mark.parametrize("scalar", [False, True], ids=["vector", "scalar"])
def test_gpu_long_sequence(scalar):
    _check(1, 4100, 2, 64, 64, scalar, 64, dtype=torch.bfloat16, seed=1)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("scalar", [False, True], ids=["vector", "scalar"])
@pytest.mark.parametrize("K", [64, 100, 128, 256])
def test_gpu_fused_long_sequence(dtype, scalar, K):
    """The fused form against the float64 reference at T = 4100 (65 chunks and a tail);
    the reference's gradients run in float64 on the GPU (minutes on a CPU at K = 256)."""
    V = 128 if K != 100 else 96
    _check(1, 4100, 2, K, V, scalar, 64, dtype=dtype, seed=2, fused=True, ref_on_device=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("scalar", [False, True], ids=["vector", "scalar"])
@pytest.mark.parametrize("K", [64, 100, 128, 256])
def test_gpu_fused_matches_chunk_at_64k(dtype, scalar, K):
    """T = 65536: the fused form against the chunkwise form (a float64 reference that long
    is too slow on the CPU): outputs, final state and gradients. The chunkwise form is
    checked against the reference at T = 4100 above; the two share the backward."""
    V = 128 if K != 100 else 96
    x = _draw(1, 65536, 2, K, V, scalar, seed=3)
    rng = np.random.default_rng(4)
    do = rng.standard_normal((1, 65536, 2, V))
    dht = rng.standard_normal((1, 2, K, V))
    chunk = _triton(x, do, dht, dtype, 64)
    fused = _triton(x, do, dht, dtype, 64, fused=True)
    tol = TOLERANCE[str(dtype).replace("torch.", "")]
    names = ["o", "final state", "dq", "dk", "dv", "dg", "dh0"]
    flat = [(n, a, b) for n, a, b in zip(names[:2], fused[:2], chunk[:2], strict=True)]
    flat += list(zip(names[2:], fused[2], chunk[2], strict=True))
    for name, a, b in flat:
        assert torch.isfinite(a).all(), name
        err = rel_error(a, b)
        assert err <= tol, f"{name}: fused vs chunk {err:.2e} at T = 65536"


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [False, True], ids=["chunk", "fused"])
@pytest.mark.parametrize("scalar", [False, True], ids=["vector", "scalar"])
def test_gpu_matches_fla_chunk_kernels(scalar, fused):
    fla_gla = pytest.importorskip("fla.ops.gla")
    fla_simple = pytest.importorskip("fla.ops.simple_gla")
    if not runtime.supports_bf16():
        pytest.skip("no bf16 on this GPU")
    x = _draw(2, 1000, 4, 128, 128, scalar)
    t = {
        n: torch.from_numpy(a).cuda().to(torch.bfloat16 if n in "qkv" else torch.float32)
        for n, a in x.items()
    }
    ours = _function(scalar, fused)(
        t["q"], t["k"], t["v"], t["g"], initial_state=t["h0"], output_final_state=True
    )
    if scalar:
        theirs = fla_simple.chunk_simple_gla(
            t["q"], t["k"], t["v"], g=t["g"], initial_state=t["h0"], output_final_state=True
        )
    else:
        theirs = fla_gla.chunk_gla(
            t["q"], t["k"], t["v"], g=t["g"], initial_state=t["h0"], output_final_state=True
        )
    for a, b in zip(ours, theirs, strict=True):
        assert rel_error(a, b) <= TOLERANCE["bfloat16"]


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [False, True], ids=["chunk", "fused"])
@pytest.mark.parametrize("scalar", [False, True], ids=["vector", "scalar"])
def test_gpu_a_million_tokens(scalar, fused):
    """T = 2^20 in bf16: finite outputs and final state that match the chunked PyTorch form
    run in float64 on the same GPU (forward; chunks of 16 keep its vector-gate masks to a
    few GB)."""
    if not runtime.supports_bf16():
        pytest.skip("no bf16 on this GPU")
    B, T, H, K, V = 1, 1 << 20, 1, 64, 64
    gen = torch.Generator(device=DEVICE).manual_seed(22)
    q, k, v = (torch.randn(B, T, H, n, generator=gen, device=DEVICE) for n in (K, K, V))
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    g_shape = (B, T, H) if scalar else (B, T, H, K)
    g = torch.nn.functional.logsigmoid(torch.randn(g_shape, generator=gen, device=DEVICE) + 3)
    with runtime.poison_outputs():
        o, ht = _function(scalar, fused)(q, k, v, g, output_final_state=True, chunk_size=64)
    o_ref, ht_ref = P.gated_linear_attention_chunkwise(
        q.double(), k.double(), v.double(), g.double(), output_final_state=True, chunk_size=16
    )
    for name, got, ref in (("o", o, o_ref), ("final state", ht, ht_ref)):
        assert torch.isfinite(got).all(), name
        err = rel_error(got, ref)  # on the GPU: no host copy
        assert err <= TOLERANCE["bfloat16"], f"{name}: {err:.2e} at T = 2^20"


def _forward_backward(scalar, fused, K, dtype, chunk_size=None):
    """A tiny call of one form, forward and backward (the recorded kernels run nothing)."""
    B, T, H, V = 1, 5, 1, 24
    q = torch.ones(B, T, H, K, dtype=dtype, requires_grad=True)
    v = torch.ones(B, T, H, V, dtype=dtype, requires_grad=True)
    g = torch.full((B, T, H) if scalar else (B, T, H, K), -0.1)

    def run():
        o, _ = _function(scalar, fused)(q, q, v, g, chunk_size=chunk_size)
        o.float().sum().backward()

    return run


FORMS = [(scalar, fused) for scalar in (False, True) for fused in (False, True)]


@pytest.mark.parametrize("K", [16, 100, 256])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_launches_unchanged_from_ampere_on(record_launches, dtype, K):
    """Compute capability 8.0 and newer, and None (interpreter, CPU), launch with CONFIG as
    it is: its chunk length, V blocks and pipeline stages."""
    BK = max(16, 1 << (K - 1).bit_length())
    for scalar, fused in FORMS:
        run = _forward_backward(scalar, fused, K, dtype)
        want = record_launches(TK, None, run)
        for cap in ((9, 0), (8, 0), (8, 6)):
            assert record_launches(TK, cap, run) == want, (scalar, fused, cap)
        cfg = TK.CONFIG
        for name, kw in want:
            assert kw.get("BT", cfg["BT"]) == cfg["BT"], name
            if name == "_fused_fwd_kernel":
                f = cfg["fused"]
                esize = torch.tensor([], dtype=dtype).element_size()
                BV = min(f["BV"] if BK <= 128 else f["BV_K256"], 32)  # V = 24
                if scalar and BK > 128 and esize == 4:  # the shared-memory cap
                    BV = min(BV, f["BV_K256_fp32_scalar"])
                assert kw["BV"] == BV
                assert (kw["num_warps"], kw["num_stages"]) == TK._fused_launch_config(
                    cfg["BT"], BK, esize, scalar
                )
            else:
                if "BV" in kw:
                    assert kw["BV"] == min(cfg["BV"] if BK <= 128 else cfg["BV_K256"], 32), name
                if "num_stages" in kw:
                    assert kw["num_stages"] == cfg["stages"], name


@pytest.mark.parametrize("chunk_size", [None, 128])
@pytest.mark.parametrize("K", [16, 100, 256])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_launches_pre_ampere(record_launches, dtype, K, chunk_size):
    """Below 8.0 (a T4: 64 KB of shared memory per block) PRE_AMPERE replaces CONFIG: a
    [BT, BK] tile of the input dtype is at most max_tile_bytes (so BT = 64 for fp16 up to
    K = 128, 32 at fp16 K = 256 or fp32 K = 128, 16 at fp32 K = 256), narrower V blocks
    and one pipeline stage, also when a longer chunk_size is asked for."""
    pre = TK.PRE_AMPERE
    BK = max(16, 1 << (K - 1).bit_length())
    esize = torch.tensor([], dtype=dtype).element_size()
    BT = min(pre["max_BT"], pre["max_tile_bytes"] // (BK * esize))
    BV = min(pre["BV"] if BK <= 128 else pre["BV_K256"], 32)  # V = 24
    assert BT == {(16, 2): 64, (128, 2): 64, (256, 2): 32, (16, 4): 64, (128, 4): 32}.get(
        (BK, esize), 16
    )
    for scalar, fused in FORMS:
        run = _forward_backward(scalar, fused, K, dtype, chunk_size)
        launches = record_launches(TK, (7, 5), run)
        assert launches != record_launches(TK, None, run)
        for name, kw in launches:
            assert kw["BT"] == BT, (name, scalar, fused)
            if "BV" in kw:
                assert kw["BV"] == BV, name
            if "num_stages" in kw:
                assert kw["num_stages"] == 1, name


@pytest.mark.parametrize("fused", [False, True], ids=["chunk", "fused"])
def test_pre_ampere_choice_matches_reference(monkeypatch, fused):
    """The pre-Ampere choice computes the same: fp32 at K = 100 runs in chunks of 32 (with
    chunk_size=128 asked for) and V blocks of 32 (interpreter)."""
    monkeypatch.setattr(runtime, "device_capability", lambda device: (7, 5))
    _check(1, 70, 1, 100, 40, False, 128, fused=fused)


def test_bf16_refused_below_ampere(monkeypatch):
    """No bf16 below compute capability 8.0: the launchers say so and name the argument."""
    monkeypatch.setattr(runtime, "device_capability", lambda device: (7, 5))
    q = torch.ones(1, 4, 1, 16, dtype=torch.bfloat16)
    g = torch.full((1, 4, 1), -0.1)
    msg = r"q is bfloat16, but this GPU \(compute capability 7\.5\) has no bf16 support"
    for fused in (False, True):
        with pytest.raises(TypeError, match=msg):
            _function(True, fused)(q, q, q, g)
    with pytest.raises(TypeError, match="q_t is bfloat16.*use float16 or float32"):
        TK.gla_decode_step(q[:, 0], q[:, 0], q[:, 0], g[:, 0], torch.zeros(1, 1, 16, 16))
    # a bf16 gate or state beside fp32 inputs is refused too, by its own name
    x = torch.ones(1, 4, 1, 16)
    for fused in (False, True):
        with pytest.raises(TypeError, match=r"\bg is bfloat16"):
            _function(True, fused)(x, x, x, g.bfloat16())
        with pytest.raises(TypeError, match="initial_state is bfloat16"):
            h0 = torch.zeros(1, 1, 16, 16, dtype=torch.bfloat16)
            _function(True, fused)(x, x, x, g, initial_state=h0)
    with pytest.raises(TypeError, match="state is bfloat16"):
        state = torch.zeros(1, 1, 16, 16, dtype=torch.bfloat16)
        TK.gla_decode_step(x[:, 0], x[:, 0], x[:, 0], g[:, 0], state)


@pytest.mark.parametrize("rows", [16, 32, 64])
def test_intra_rows_per_program(monkeypatch, rows):
    """The A kernel with 16, 32 or 64 rows of a chunk per program (CONFIG["intra_rows"]):
    eight sub-chunks with a 2-row tail chunk, and K = 60 padded to 64."""
    monkeypatch.setitem(TK.CONFIG, "intra_rows", rows)
    _check(1, 130, 1, 16, 8, False, 128)
    _check(1, 63, 1, 60, 20, False, 64, fused=True)
