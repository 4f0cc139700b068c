"""The Triton forms (CPU interpreter here, compiled on a GPU) against float64.

Two forms: ``chunkwise`` (state kernel writing every chunk's state, then the parallel
output kernel) and ``fused_chunk`` (one forward kernel keeping the state in registers; its
backward recomputes the states and reuses the chunkwise kernels). Outputs, final states
and gradients (dq, dk, dv, d initial_state) at awkward sizes: T = 1 and T around a chunk
boundary, head dims 16, 60 and 100 (not powers of two), with and without the normaliser
and the initial state. Outputs are poisoned with NaN before the kernels run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib import runtime
from course_lib.linear_attention import numpy_ref, torch_impl
from course_lib.linear_attention.feature_maps import feature_map
from course_lib.testing import TOLERANCE, flatten, rel_error

pytestmark = pytest.mark.skipif(not runtime.triton_available(), reason="Triton is not installed")

DEVICE = "cuda" if runtime.triton_mode() == "compiled" else "cpu"

# (B, T, H, K, V, normalize, with_init, chunk_size)
CASES = [
    (1, 1, 1, 16, 16, False, True, 64),
    (1, 63, 2, 16, 12, False, False, 64),
    (1, 65, 1, 60, 20, False, True, 64),
    (2, 65, 1, 16, 7, True, True, 32),
    (1, 63, 1, 60, 5, True, False, 16),
    (1, 1, 1, 60, 3, True, True, 64),
    # several tiles: K = 130 and V = 72 (V + 1 = 131 with the normaliser) span more than
    # one block of the state kernel (64) and of the output kernel (128)
    (1, 17, 1, 130, 72, False, True, 16),
    (1, 40, 1, 72, 130, True, True, 32),
]


def _tk():
    from course_lib.linear_attention import triton_kernels

    return triton_kernels


def _draw(seed, B, T, H, K, V, normalize):
    """q, k (positive when normalising: phi = elu + 1 applied), v, S0, z0, dO, dS, dz."""
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((B, T, H, K)), rng.standard_normal((B, T, H, K))
    if normalize:
        q, k = feature_map(q, "elu1"), feature_map(k, "elu1")
    return {
        "q": q,
        "k": k,
        "v": rng.standard_normal((B, T, H, V)),
        "S0": rng.standard_normal((B, H, K, V)),
        "z0": rng.uniform(0.5, 1.5, (B, H, K)),
        "do": rng.standard_normal((B, T, H, V)),
        "dS": rng.standard_normal((B, H, K, V)),
        "dz": rng.standard_normal((B, H, K)),
    }


def _run(fn, x, normalize, with_init, dtype, **kwargs):
    """Forward, then backward of sum(o * dO) + sum(S_T * dS) (+ sum(z_T * dz))."""
    names = ["q", "k", "v"] + (["S0", "z0"] if normalize else ["S0"]) * with_init
    t = {n: torch.tensor(x[n], dtype=dtype, device=DEVICE, requires_grad=True) for n in names}
    state = None
    if with_init:
        state = (t["S0"], t["z0"]) if normalize else t["S0"]
    o, final = fn(
        t["q"],
        t["k"],
        t["v"],
        normalize=normalize,
        initial_state=state,
        output_final_state=True,
        **kwargs,
    )
    outs = [o, *flatten(final)]
    weights = [x["do"], x["dS"]] + ([x["dz"]] if normalize else [])
    loss = sum(
        (y.double() * torch.from_numpy(w).to(DEVICE)).sum()
        for y, w in zip(outs, weights, strict=True)
    )
    loss.backward()
    return outs, [t[n].grad for n in names]


def _case_id(c) -> str:
    return "B{}-T{}-H{}-K{}-V{}-norm{}-init{}-C{}".format(*c)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_chunk_kernels_against_float64(case) -> None:
    _check_against_float64(_tk().chunk_linear_attention, case)


# The fused forward: one program per (V-block, batch*head) with the whole K in one tile, so
# K = 60 and 100 (tiles 64 and 128, masked) and K = 130 (tile 256); V = 100 and V + 1 = 131
# with the normaliser span two V-blocks of 64; T = 1, 63, 65 end in a partial chunk.
FUSED_CASES = [
    (1, 1, 1, 16, 16, False, True, 64),
    (1, 63, 2, 16, 12, False, False, 64),
    (1, 65, 1, 60, 100, False, True, 64),
    (2, 65, 1, 16, 7, True, True, 32),
    (1, 63, 1, 100, 60, True, False, 16),
    (1, 1, 1, 60, 3, True, True, 64),
    (1, 40, 1, 130, 100, True, True, 32),
]


@pytest.mark.parametrize("case", FUSED_CASES, ids=_case_id)
def test_fused_chunk_against_float64(case) -> None:
    _check_against_float64(_tk().fused_chunk_linear_attention, case)


def test_fused_chunk_wide_keys_fall_back() -> None:
    """K > FUSED_MAX_K: the state would not fit in registers; the chunkwise path runs."""
    K = _tk().FUSED_MAX_K + 4
    _check_against_float64(_tk().fused_chunk_linear_attention, (1, 17, 1, K, 8, False, True, 16))


def test_fused_chunk_falls_back_where_shared_memory_would_overflow(monkeypatch) -> None:
    """fp32 at K = 256 and C = 64 needs more than 227 KB of shared memory fused (sm_90
    compile): the chunkwise kernels run instead, and the result is still right."""
    tk = _tk()
    assert tk._fused_fits(128, 128, 64, 2) and tk._fused_fits(256, 64, 32, 4)
    assert not tk._fused_fits(256, 64, 64, 4) and not tk._fused_fits(260, 8, 16, 2)
    launched = []
    monkeypatch.setattr(tk, "_launch_fused", lambda *a, **kw: launched.append(1) / 0)
    _check_against_float64(tk.fused_chunk_linear_attention, (1, 9, 1, 256, 16, False, True, 64))
    assert not launched


def _fused_forward(K, C, dtype):
    q, v = torch.ones(1, 5, 1, K, dtype=dtype), torch.ones(1, 5, 1, 24, dtype=dtype)
    return lambda: _tk().fused_chunk_linear_attention(q, q, v, chunk_size=C)


def _options(launches):
    keys = ("BT", "BK", "BV", "BP", "BR", "num_warps", "num_stages")
    return [(name, {k: kw[k] for k in keys if k in kw}) for name, kw in launches]


FUSED = "_fused_chunk_fwd_kernel"
STATE, OUTPUT = "_chunk_state_kernel", "_chunk_output_kernel"
# (K, chunk, dtype): the launches CONFIG gives (V = 24), pinned before the pre-Ampere rules
CONFIG_LAUNCHES = {
    (16, 128, torch.float16): [(FUSED, dict(BT=128, BK=16, BV=32, num_warps=4, num_stages=3))],
    (100, 128, torch.float16): [(FUSED, dict(BT=128, BK=128, BV=32, num_warps=4, num_stages=2))],
    (256, 64, torch.float16): [(FUSED, dict(BT=64, BK=256, BV=32, num_warps=8, num_stages=2))],
    (100, 64, torch.float32): [(FUSED, dict(BT=64, BK=128, BV=32, num_warps=4, num_stages=2))],
    (256, 128, torch.float32): [  # fp32 at K = 256: over the H200's shared memory fused
        (STATE, dict(BT=128, BP=64, BR=32, num_warps=4, num_stages=3)),
        (OUTPUT, dict(BT=128, BP=64, BR=32, num_warps=8, num_stages=2)),
    ],
}
# ... and below compute capability 8.0: chunks of at most 64, the fused form only where a
# (q, k, v) chunk takes at most PRE_AMPERE["fused_stage_bytes"]
PRE_AMPERE_LAUNCHES = {
    (16, 128, torch.float16): [(FUSED, dict(BT=64, BK=16, BV=32, num_warps=4, num_stages=3))],
    (100, 128, torch.float16): [(FUSED, dict(BT=64, BK=128, BV=32, num_warps=4, num_stages=3))],
    (256, 64, torch.float16): [
        (STATE, dict(BT=64, BP=64, BR=32, num_warps=4, num_stages=3)),
        (OUTPUT, dict(BT=64, BP=64, BR=32, num_warps=8, num_stages=2)),
    ],
    (100, 64, torch.float32): [
        (STATE, dict(BT=64, BP=64, BR=32, num_warps=4, num_stages=3)),
        (OUTPUT, dict(BT=64, BP=64, BR=32, num_warps=8, num_stages=2)),
    ],
    (256, 128, torch.float32): [
        (STATE, dict(BT=64, BP=64, BR=32, num_warps=4, num_stages=3)),
        (OUTPUT, dict(BT=64, BP=64, BR=32, num_warps=8, num_stages=2)),
    ],
}


def test_launches_unchanged_from_ampere_on(record_launches) -> None:
    """Compute capability 8.0 and newer, and None (interpreter, CPU), launch what CONFIG
    gives: the chunk asked for, the fused form within CONFIG["fused"]["stage_bytes"]."""
    for (K, C, dtype), want in CONFIG_LAUNCHES.items():
        for cap in ((9, 0), (8, 0), (8, 6), None):
            got = _options(record_launches(_tk(), cap, _fused_forward(K, C, dtype)))
            assert got == want, (K, C, dtype, cap)
    for cap in ((9, 0), (8, 0), None):
        assert _tk()._run_chunk_size(128, cap) == 128
        assert not _tk()._fused_fits(256, 64, 64, 4, cap) and _tk()._fused_fits(256, 64, 32, 4, cap)


def test_launches_pre_ampere(record_launches) -> None:
    """Below 8.0 (a T4: 64 KB of shared memory per block) the chunk is cut to 64 and the
    fused form runs only where a (q, k, v) chunk fits the smaller budget."""
    tk = _tk()
    for (K, C, dtype), want in PRE_AMPERE_LAUNCHES.items():
        for cap in ((7, 5), (7, 0)):
            got = _options(record_launches(_tk(), cap, _fused_forward(K, C, dtype)))
            assert got == want, (K, C, dtype, cap)
    budget = tk.PRE_AMPERE["fused_stage_bytes"]
    for K in (16, 64, 128, 256):
        for C in tk.CHUNK_SIZES:
            for itemsize in (2, 4):
                C_run = tk._run_chunk_size(C, (7, 5))
                assert C_run == min(C, tk.PRE_AMPERE["max_chunk"])
                stage = C_run * (2 * max(16, K) + 32) * itemsize  # V = 24 -> BV = 32
                assert tk._fused_fits(K, 24, C_run, itemsize, (7, 5)) == (stage <= budget)


def test_pre_ampere_choice_against_float64(monkeypatch) -> None:
    """The pre-Ampere choice computes the same thing: chunk 128 run as 64, and K = 100 in
    fp32 falling back from the fused form to the chunkwise kernels (interpreter)."""
    monkeypatch.setattr(runtime, "device_capability", lambda device: (7, 5))
    _check_against_float64(_tk().fused_chunk_linear_attention, (1, 70, 1, 100, 20, True, True, 128))
    _check_against_float64(_tk().chunk_linear_attention, (1, 70, 1, 20, 9, False, True, 128))


def test_bf16_refused_below_ampere(monkeypatch) -> None:
    """No bf16 below compute capability 8.0: the launchers say so and name the argument."""
    tk = _tk()
    monkeypatch.setattr(runtime, "device_capability", lambda device: (7, 5))
    q = torch.ones(1, 4, 1, 16, dtype=torch.bfloat16)
    msg = r"q is bfloat16, but this GPU \(compute capability 7\.5\) has no bf16 support"
    for fn in (tk.chunk_linear_attention, tk.fused_chunk_linear_attention):
        with pytest.raises(TypeError, match=msg):
            fn(q, q, q)
    with pytest.raises(TypeError, match="q_t is bfloat16.*use float16 or float32"):
        tk.linear_attention_decode_step(q[:, 0], q[:, 0], q[:, 0], None)


def _check_against_float64(fn, case, dtype=torch.float32) -> None:
    """``fn``'s outputs, final state and gradients against float64, at ``dtype``'s tolerance.

    Inputs are drawn in float64 and rounded to ``dtype``; the reference sees the rounded
    values, so the error measured is the kernels' own.
    """
    B, T, H, K, V, normalize, with_init, C = case
    x = _draw(0, B, T, H, K, V, normalize)
    x = {n: torch.tensor(a).to(dtype).double().numpy() for n, a in x.items()}
    with runtime.poison_outputs():
        outs, grads = _run(fn, x, normalize, with_init, dtype, chunk_size=C)
    assert outs[0].dtype == dtype
    for y in outs[1:]:
        assert y.dtype == torch.float32
    state = None
    if with_init:
        state = (x["S0"], x["z0"]) if normalize else x["S0"]
    ref = numpy_ref.linear_attention_recurrent(
        x["q"],
        x["k"],
        x["v"],
        feature_map=None,
        normalize=normalize,
        initial_state=state,
        output_final_state=True,
    )
    if normalize:  # gradients from float64 autograd of the torch reference
        _, ref_grads = _run(torch_impl.linear_attention_parallel, x, True, with_init, torch.float64)
    else:  # the closed-form reverse recurrences of numpy_ref
        dq, dk, dv, dS0 = numpy_ref.linear_attention_backward(
            x["q"], x["k"], x["v"], x["do"], initial_state=state, d_final_state=x["dS"]
        )
        ref_grads = [dq, dk, dv] + [dS0] * with_init
    tol = TOLERANCE[str(dtype).replace("torch.", "")]
    names = ["o", "S_T", "z_T", "dq", "dk", "dv", "dS0", "dz0"]
    got, want = outs + grads, flatten(ref) + ref_grads
    labels = names[: len(outs)] + names[3 : 3 + len(grads)]
    assert len(got) == len(want)
    for label, g, r in zip(labels, got, want, strict=True):
        err = rel_error(g, r)
        assert err <= tol, f"{label}: relative error {err:.2e} > {tol}"


@pytest.mark.parametrize("form", ["chunkwise", "fused_chunk"])
def test_registered_wrapper_applies_the_feature_map(form) -> None:
    x = _draw(1, 1, 20, 2, 16, 8, False)
    q, k, v = (torch.tensor(x[n], dtype=torch.float32) for n in ("q", "k", "v"))
    S0, z0 = torch.tensor(x["S0"]), torch.tensor(x["z0"])
    with runtime.poison_outputs():
        o, (S, z) = getattr(_tk(), f"linear_attention_{form}")(
            q,
            k,
            v,
            feature_map="elu1",
            normalize=True,
            initial_state=(S0, z0),
            output_final_state=True,
            chunk_size=16,
        )
    ref = numpy_ref.linear_attention_recurrent(
        x["q"],
        x["k"],
        x["v"],
        feature_map="elu1",
        normalize=True,
        initial_state=(x["S0"], x["z0"]),
        output_final_state=True,
    )
    for g, r in zip((o, S, z), flatten(ref), strict=True):
        assert rel_error(g, r) <= TOLERANCE["float32"]


@pytest.mark.parametrize("fn", ["chunk_linear_attention", "fused_chunk_linear_attention"])
def test_non_contiguous_inputs(fn) -> None:
    """Views with other strides (here [B, H, T, K] transposed) are made contiguous first."""
    x = _draw(2, 1, 33, 2, 16, 16, False)
    q, k, v = (
        torch.tensor(x[n], dtype=torch.float32).transpose(1, 2).contiguous().transpose(1, 2)
        for n in ("q", "k", "v")
    )
    assert not q.is_contiguous()
    with runtime.poison_outputs():
        o, _ = getattr(_tk(), fn)(q, k, v, chunk_size=16)
    ref, _ = numpy_ref.linear_attention_recurrent(x["q"], x["k"], x["v"])
    assert rel_error(o, ref) <= TOLERANCE["float32"]


@pytest.mark.parametrize(
    ("B", "H", "K", "V", "with_state"),
    [(2, 2, 60, 20, True), (1, 1, 130, 3, False), (1, 3, 16, 16, True)],
)
def test_decode_step_kernel(B, H, K, V, with_state) -> None:
    rng = np.random.default_rng(3)
    q_t, k_t = rng.standard_normal((B, H, K)), rng.standard_normal((B, H, K))
    v_t, S = rng.standard_normal((B, H, V)), rng.standard_normal((B, H, K, V))
    state = S if with_state else None
    ref_o, ref_S = numpy_ref.linear_attention_step(q_t, k_t, v_t, state, scale=0.3)
    t = [torch.tensor(a, dtype=torch.float32, device=DEVICE) for a in (q_t, k_t, v_t, S)]
    with runtime.poison_outputs():
        o, S_new = _tk().linear_attention_decode_step(
            *t[:3], t[3] if with_state else None, scale=0.3
        )
    assert o.shape == (B, H, V) and S_new.dtype == torch.float32
    assert rel_error(o, ref_o) <= TOLERANCE["float32"]
    assert rel_error(S_new, ref_S) <= TOLERANCE["float32"]


@pytest.mark.parametrize(
    "case",
    [(1, 65, 2, 60, 100, False, True, 32), (1, 63, 1, 16, 20, True, True, 16)],
    ids=_case_id,
)
def test_fused_chunk_fp16(case) -> None:
    """fp16 inputs: the state is cast to fp16 for the tensor-core product q S, as usual."""
    _check_against_float64(_tk().fused_chunk_linear_attention, case, torch.float16)


def test_fused_chunk_matches_chunkwise() -> None:
    """Same inputs, both forms: the outputs, final states and gradients agree."""
    x = _draw(6, 2, 70, 2, 24, 40, False)
    with runtime.poison_outputs():
        fused = _run(_tk().fused_chunk_linear_attention, x, False, True, torch.float32)
        chunk = _run(_tk().chunk_linear_attention, x, False, True, torch.float32)
    for g, r in zip(fused[0] + fused[1], chunk[0] + chunk[1], strict=True):
        assert rel_error(g, r) <= TOLERANCE["float32"]


# ---------------------------------------------------------------- compiled, on a GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("normalize", [False, True])
def test_low_precision_on_gpu(dtype, normalize) -> None:
    if dtype == "bfloat16" and not runtime.supports_bf16():
        pytest.skip("no bf16 on this GPU")
    B, T, H, K, V = 2, 1000, 2, 64, 96
    x = _draw(4, B, T, H, K, V, normalize)
    x = {n: a * (0.5 if n in ("q", "k") and not normalize else 1.0) for n, a in x.items()}
    with runtime.poison_outputs():
        outs, grads = _run(_tk().chunk_linear_attention, x, normalize, True, getattr(torch, dtype))
    assert outs[0].dtype == getattr(torch, dtype)
    ref_outs, ref_grads = _run(
        torch_impl.linear_attention_chunkwise, x, normalize, True, torch.float64
    )
    for g, r in zip(outs + grads, ref_outs + ref_grads, strict=True):
        assert rel_error(g, r) <= TOLERANCE[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("T", [4096 + 17, 65536])
def test_long_sequences_on_gpu(T) -> None:
    B, H, K, V = 1, 2, 128, 128
    x = _draw(5, B, T, H, K, V, False)
    with runtime.poison_outputs():
        outs, grads = _run(_tk().chunk_linear_attention, x, False, True, torch.bfloat16)
    ref_outs, ref_grads = _run(torch_impl.linear_attention_chunkwise, x, False, True, torch.float64)
    for g, r in zip(outs + grads, ref_outs + ref_grads, strict=True):
        assert rel_error(g, r) <= TOLERANCE["bfloat16"]


FORMS = ["chunk_linear_attention", "fused_chunk_linear_attention"]


@pytest.mark.gpu
@pytest.mark.parametrize("fn", FORMS)
@pytest.mark.parametrize(("K", "V"), [(128, 128), (60, 100), (256, 64), (64, 256)])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_head_dims_on_gpu(fn, K, V, dtype) -> None:
    """Every configuration branch of the fused launch (stages, warps, BV) compiles and is
    right: K = 256 (8 warps, BV = 32), fp32 (one pipeline stage), odd K and V."""
    if dtype == "bfloat16" and not runtime.supports_bf16():
        pytest.skip("no bf16 on this GPU")
    B, T, H = 2, 777, 2
    x = _draw(7, B, T, H, K, V, False)
    x = {n: a * (0.5 if n in ("q", "k") else 1.0) for n, a in x.items()}
    with runtime.poison_outputs():
        outs, grads = _run(getattr(_tk(), fn), x, False, True, getattr(torch, dtype))
    ref_outs, ref_grads = _run(torch_impl.linear_attention_chunkwise, x, False, True, torch.float64)
    for g, r in zip(outs + grads, ref_outs + ref_grads, strict=True):
        assert rel_error(g, r) <= TOLERANCE[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("C", [16, 32, 64, 128])
@pytest.mark.parametrize(("K", "V", "dtype"), [(128, 128, "bfloat16"), (256, 64, "float32")])
def test_fused_chunk_sizes_on_gpu(C, K, V, dtype) -> None:
    """Every chunk size compiles (shared memory and registers grow with C and K) and is
    right, up to the largest tiles: C = 128, K = 256 in fp32."""
    if dtype == "bfloat16" and not runtime.supports_bf16():
        pytest.skip("no bf16 on this GPU")
    x = _draw(10, 1, 1000, 2, K, V, True)
    with runtime.poison_outputs():
        outs, grads = _run(
            _tk().fused_chunk_linear_attention, x, True, True, getattr(torch, dtype), chunk_size=C
        )
    ref_outs, ref_grads = _run(torch_impl.linear_attention_chunkwise, x, True, True, torch.float64)
    for g, r in zip(outs + grads, ref_outs + ref_grads, strict=True):
        assert rel_error(g, r) <= TOLERANCE[dtype]


# fp16 range of the normaliser, each case seen on the H200 at T = 65536 and reached here at
# a short T with scaled inputs: (seed, T, input scaled, factor)
# * z = sum of keys passed fp16's 65504 inside the kernels and the outputs went to zero:
#   large keys (z ~ 200 * 440 per entry);
# * den = scale q . z ~ 1e6 put dO / den below fp16's smallest normal 2^-14 on its way into
#   the backward and dq lost its digits (2.6e-2): large queries (o unchanged).
FP16_RANGE = {"z_overflow": (11, 200, "k", 400.0), "dO_over_den_subnormal": (12, 256, "q", 1024.0)}


@pytest.mark.parametrize("case", FP16_RANGE)
@pytest.mark.parametrize("fused", [False, True], ids=["chunkwise", "fused"])
def test_fp16_normaliser_stays_in_range(fused, case) -> None:
    """Outputs, final (S, z) and every gradient match float64 in fp16 where the normaliser's
    sums leave fp16's range unless the kernels scale them."""
    seed, T, name, factor = FP16_RANGE[case]
    x = _draw(seed, 1, T, 1, 16, 16, normalize=True)
    x[name] = x[name] * factor
    fn = _tk().fused_chunk_linear_attention if fused else _tk().chunk_linear_attention
    with runtime.poison_outputs():
        outs, grads = _run(fn, x, True, True, torch.float16, chunk_size=32)
    ref_outs, ref_grads = _run(torch_impl.linear_attention_chunkwise, x, True, True, torch.float64)
    names = ["o", "S_T", "z_T", "dq", "dk", "dv", "dS0", "dz0"]
    for out, g, r in zip(names, outs + grads, ref_outs + ref_grads, strict=True):
        assert torch.isfinite(g).all(), out
        assert rel_error(g, r) <= TOLERANCE["float16"], out


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("T", [1, 4096 + 17, 65536])
def test_fused_chunk_long_sequences_on_gpu(T, normalize, dtype) -> None:
    """The fused form against float64 up to T = 65536 (1024 chunks walked by one program)."""
    if dtype == "bfloat16" and not runtime.supports_bf16():
        pytest.skip("no bf16 on this GPU")
    B, H, K, V = 1, 2, 128, 128
    x = _draw(8, B, T, H, K, V, normalize)
    x = {n: a * (0.5 if n in ("q", "k") and not normalize else 1.0) for n, a in x.items()}
    with runtime.poison_outputs():
        outs, grads = _run(
            _tk().fused_chunk_linear_attention, x, normalize, True, getattr(torch, dtype)
        )
    assert outs[0].dtype == getattr(torch, dtype)
    ref_outs, ref_grads = _run(
        torch_impl.linear_attention_chunkwise, x, normalize, True, torch.float64
    )
    for g, r in zip(outs + grads, ref_outs + ref_grads, strict=True):
        assert rel_error(g, r) <= TOLERANCE[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("T", [4096, 65536])
def test_fused_chunk_matches_chunkwise_at_benchmark_size(T) -> None:
    """The benchmark's shape (bf16, B=4, H=16, K=V=128): both forms agree, forward and
    backward (drawn on the GPU: the float64 reference would need 17 GB of inputs)."""
    if not runtime.supports_bf16():
        pytest.skip("no bf16 on this GPU")
    B, H, K, V = 4, 16, 128, 128
    g = torch.Generator(device=DEVICE).manual_seed(9)

    def draw(*shape, s=1.0):
        return torch.randn(shape, generator=g, device=DEVICE, dtype=torch.float32) * s

    q, k = draw(B, T, H, K, s=K**-0.5), draw(B, T, H, K, s=K**-0.5)
    v, S0, do = draw(B, T, H, V), draw(B, H, K, V), draw(B, T, H, V)
    results = []
    for fn in FORMS:
        leaves = [a.to(torch.bfloat16).requires_grad_() for a in (q, k, v)] + [
            S0.clone().requires_grad_()
        ]
        with runtime.poison_outputs():
            o, S = getattr(_tk(), fn)(*leaves[:3], initial_state=leaves[3], output_final_state=True)
        ((o.float() * do).sum() + S.sum()).backward()
        results.append([o, S] + [a.grad for a in leaves])
    for a, b in zip(*results, strict=True):
        assert torch.isfinite(a).all()
        assert rel_error(a, b) <= TOLERANCE["bfloat16"]  # on the GPU: no host copy


@pytest.mark.gpu
@pytest.mark.parametrize("fn", FORMS)
def test_a_million_tokens_on_gpu(fn) -> None:
    """T = 2^20 in bf16: finite outputs and final state that match the chunked PyTorch
    form run in float64 on the same GPU (forward)."""
    if not runtime.supports_bf16():
        pytest.skip("no bf16 on this GPU")
    B, T, H, K, V = 1, 1 << 20, 1, 64, 64
    g = torch.Generator(device=DEVICE).manual_seed(21)
    q, k, v = (torch.randn(B, T, H, n, generator=g, device=DEVICE) for n in (K, K, V))
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    with runtime.poison_outputs():
        o, S = getattr(_tk(), fn)(q, k, v, output_final_state=True)
    o_ref, S_ref = torch_impl.linear_attention_chunkwise(
        q.double(), k.double(), v.double(), output_final_state=True, chunk_size=64
    )
    for name, got, ref in (("o", o, o_ref), ("final state", S, S_ref)):
        assert torch.isfinite(got).all(), name
        assert rel_error(got, ref) <= TOLERANCE["bfloat16"], name
