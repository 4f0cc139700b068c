"""The FlashAttention-style Triton kernel against the float64 numpy reference.

Glossary: B batch, T queries, S keys, H heads, K query/key head dim, V value head dim.

On CPU these run in Triton's interpreter at small, awkward sizes (T=1, 63, 65; head dims
16 and 60, padded to 64 inside); the test marked ``gpu`` runs compiled at real sizes in
fp16/bf16 and is skipped without a CUDA GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib import runtime
from course_lib.softmax_attention import numpy_ref, torch_impl
from course_lib.testing import TOLERANCE, rel_error

if not runtime.triton_available():
    pytest.skip("Triton is not installed", allow_module_level=True)

from course_lib.softmax_attention import triton_kernels as tk

DEVICE = "cuda" if runtime.triton_mode() == "compiled" else "cpu"


def _inputs(seed, B, T, S, H, K, V):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, T, H, K))
    k = rng.standard_normal((B, S, H, K))
    v = rng.standard_normal((B, S, H, V))
    do = rng.standard_normal((B, T, H, V))
    return q, k, v, do


def _leaf(x, dtype):
    return torch.tensor(x, dtype=dtype, device=DEVICE, requires_grad=True)


def _run(q, k, v, do, dtype, causal, scale=None):
    """Forward and backward through the kernel, every output poisoned with NaN first."""
    tq, tk_, tv = (_leaf(x, dtype) for x in (q, k, v))
    with runtime.poison_outputs():
        o = tk.flash_attention(tq, tk_, tv, scale=scale, causal=causal)
        o.backward(torch.tensor(do, dtype=dtype, device=DEVICE))
    return o, tq.grad, tk_.grad, tv.grad


CASES = [
    # (T, S, K, V, causal)
    (1, 37, 16, 16, True),  # decode: one query against a KV cache, sees every key
    (1, 20, 60, 60, False),
    (63, 63, 60, 60, True),
    (65, 65, 16, 16, False),
    (65, 65, 60, 24, True),  # V != K
    (
        65,
        95,
        16,
        60,
        True,
    ),  # after a 30-token cache: a row's reach ends one key short of a block edge
    (65, 33, 60, 16, False),  # more queries than keys
]


@pytest.mark.parametrize(("T", "S", "K", "V", "causal"), CASES)
def test_outputs_and_gradients_match_numpy(T, S, K, V, causal):
    q, k, v, do = _inputs(T * 1000 + S, 1, T, S, 2, K, V)
    o, dq, dk, dv = _run(q, k, v, do, torch.float32, causal)
    assert o.dtype == dq.dtype == dk.dtype == dv.dtype == torch.float32
    tol = TOLERANCE["float32"]
    assert rel_error(o, numpy_ref.softmax_attention(q, k, v, causal=causal)) <= tol
    want = numpy_ref.softmax_attention_backward(q, k, v, do, causal=causal)
    for name, got, ref in zip(("dq", "dk", "dv"), (dq, dk, dv), want, strict=True):
        assert rel_error(got, ref) <= tol, name


def test_lse_and_scale():
    q, k, v, _ = _inputs(7, 2, 40, 45, 1, 20, 8)
    tq, tk_, tv = (torch.tensor(x, dtype=torch.float32) for x in (q, k, v))
    with runtime.poison_outputs():
        o, lse = tk.flash_attention_forward(tq, tk_, tv, scale=0.3, causal=True)
    assert lse.shape == (2, 40, 1) and lse.dtype == torch.float32
    assert rel_error(lse, numpy_ref.attention_lse(q, k, scale=0.3)) <= TOLERANCE["float32"]
    ref = numpy_ref.softmax_attention(q, k, v, scale=0.3)
    assert rel_error(o, ref) <= TOLERANCE["float32"]
    assert rel_error(numpy_ref.softmax_attention(q, k, v), ref) > 1e-2  # scale matters


def test_fp16_in_interpreter_or_gpu():
    q, k, v, do = _inputs(8, 1, 33, 33, 2, 16, 16)
    o, dq, dk, dv = _run(q, k, v, do, torch.float16, causal=True)
    assert o.dtype == dq.dtype == torch.float16
    tol = TOLERANCE["float16"]
    assert rel_error(o, numpy_ref.softmax_attention(q, k, v)) <= tol
    want = numpy_ref.softmax_attention_backward(q, k, v, do)
    for name, got, ref in zip(("dq", "dk", "dv"), (dq, dk, dv), want, strict=True):
        assert rel_error(got, ref) <= tol, name


def test_config_override_small_blocks(monkeypatch):
    """Blocks of 16 (many loop trips, a 1-row tail) give the same answer; bad ones are named."""
    monkeypatch.setitem(tk.CONFIG, "fwd", {"BLOCK_T": 16, "BLOCK_S": 16})
    monkeypatch.setitem(tk.CONFIG, "bwd", {"BLOCK_T": 16, "BLOCK_S": 32})
    q, k, v, do = _inputs(9, 1, 33, 47, 1, 16, 16)  # reaches end 1 short of block edges
    o, dq, dk, dv = _run(q, k, v, do, torch.float32, causal=True)
    tol = TOLERANCE["float32"]
    assert rel_error(o, numpy_ref.softmax_attention(q, k, v)) <= tol
    want = numpy_ref.softmax_attention_backward(q, k, v, do)
    for got, ref in zip((dq, dk, dv), want, strict=True):
        assert rel_error(got, ref) <= tol
    monkeypatch.setitem(tk.CONFIG, "fwd", {"BLOCK_T": 24})
    with pytest.raises(ValueError, match="BLOCK_T"):
        tk.flash_attention(*(torch.tensor(x, dtype=torch.float32) for x in (q, k, v)))


def test_gpu_config_table(monkeypatch):
    """The H200 table is looked up by padded head dim; fp32 tiles shrink to fit shared memory."""
    monkeypatch.setattr(tk.runtime, "triton_mode", lambda: "compiled")
    monkeypatch.setattr(tk, "CONFIG", {})
    assert tk.launch_config("fwd", 64, 64)["BLOCK_T"] == 128
    assert tk.launch_config("fwd", 128, 64) == tk.GPU_CONFIGS["fwd"][128]
    for pass_ in ("fwd", "bwd"):
        for d in (16, 32, 64, 128, 256):
            for dtype in (torch.float16, torch.float32):
                cfg = tk.launch_config(pass_, d, d, dtype)
                esize = 2 if dtype == torch.float16 else 4
                need = tk.shared_memory_estimate(cfg, d, d, esize)
                assert need <= tk.SHARED_MEMORY_BUDGET, (pass_, d, dtype)
                assert cfg["num_stages"] >= 1 and cfg["BLOCK_S"] >= 16
                if dtype == torch.float16:  # the table is written for 2-byte inputs
                    table = tk.GPU_CONFIGS[pass_]
                    assert cfg == table[min(key for key in table if key >= d)]
    assert tk.launch_config("fwd", 256, 256, torch.float32) != tk.GPU_CONFIGS["fwd"][256]


def _config_as_before(pass_, BLOCK_K, BLOCK_V, dtype):
    """The choice before the pre-Ampere table: GPU_CONFIGS shrunk by _fit_shared_memory."""
    table = tk.GPU_CONFIGS[pass_]
    d = max(BLOCK_K, BLOCK_V)
    cfg = dict(table[min((key for key in table if key >= d), default=max(table))])
    tk._fit_shared_memory(cfg, BLOCK_K, BLOCK_V, torch.tensor([], dtype=dtype).element_size())
    return cfg


def test_config_unchanged_from_ampere_on(monkeypatch):
    """Compute capability >= 8.0 (and None) keeps exactly the H200 table's choice."""
    monkeypatch.setattr(tk.runtime, "triton_mode", lambda: "compiled")
    monkeypatch.setattr(tk, "CONFIG", {})
    for pass_ in ("fwd", "bwd"):
        for d in (16, 32, 64, 128, 256):
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                want = _config_as_before(pass_, d, d, dtype)
                for cap in ((9, 0), (8, 0), (8, 6), None):
                    assert tk.launch_config(pass_, d, d, dtype, cap) == want, (pass_, d, cap)
                assert tk.launch_config(pass_, d, d, dtype) == want


def test_config_pre_ampere(monkeypatch):
    """Below 8.0 (T4: sm_75, 64 KB shared memory) the smaller table is used unshrunk."""
    monkeypatch.setattr(tk.runtime, "triton_mode", lambda: "compiled")
    monkeypatch.setattr(tk, "CONFIG", {})
    for pass_ in ("fwd", "bwd"):
        table = tk.GPU_CONFIGS_PRE_AMPERE[pass_]
        for d in (16, 32, 60, 64, 100, 128, 256):
            pad = tk._head_block(d)
            for dtype in (torch.float16, torch.float32):
                cfg = tk.launch_config(pass_, pad, pad, dtype, (7, 5))
                assert cfg == table[min(key for key in table if key >= pad)], (pass_, d)
    monkeypatch.setitem(tk.CONFIG, "fwd", {"BLOCK_T": 16})  # overrides still apply
    assert tk.launch_config("fwd", 64, 64, torch.float16, (7, 5))["BLOCK_T"] == 16
    monkeypatch.setattr(tk.runtime, "triton_mode", lambda: "interpreter")
    assert tk.launch_config("bwd", 64, 64, torch.float16, (7, 5)) == tk.INTERPRETER_CONFIG


def _t32(*shape):
    return torch.zeros(shape, dtype=torch.float32, device=DEVICE)


BAD = [
    ("q numpy", lambda: (np.zeros((1, 4, 1, 16)), _t32(1, 4, 1, 16), _t32(1, 4, 1, 16)),
     TypeError, "q"),
    ("float64", lambda: tuple(_t32(1, 4, 1, 16).double() for _ in range(3)), TypeError, "q"),
    ("K > 256", lambda: (_t32(1, 4, 1, 300), _t32(1, 4, 1, 300), _t32(1, 4, 1, 8)),
     ValueError, "q"),
    ("V > 256", lambda: (_t32(1, 4, 1, 8), _t32(1, 4, 1, 8), _t32(1, 4, 1, 257)),
     ValueError, "v"),
    ("k head dim", lambda: (_t32(1, 4, 1, 16), _t32(1, 4, 1, 8), _t32(1, 4, 1, 16)),
     ValueError, "k"),
    ("causal T > S", lambda: (_t32(1, 5, 1, 16), _t32(1, 4, 1, 16), _t32(1, 4, 1, 16)),
     ValueError, "causal"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "make", "exc", "name"), BAD, ids=[b[0] for b in BAD])
def test_bad_input(case, make, exc, name):
    q, k, v = make()
    with pytest.raises(exc, match=name):
        tk.flash_attention(q, k, v)


@pytest.mark.skipif(runtime.triton_mode() != "interpreter", reason="interpreter only")
def test_bf16_refused_in_interpreter():
    x = torch.zeros((1, 4, 1, 16), dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="bfloat16"):
        tk.flash_attention(x, x, x)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    ("T", "S", "K", "causal"),
    [
        (4096, 4096, 64, True),
        (4096, 4096, 128, False),
        (1, 4096, 128, True),  # decode against a long cache
        (1000, 1500, 96, True),  # non power-of-two head dim, tails
        (777, 777, 256, True),
        (2049, 2049, 40, False),
    ],
)
def test_compiled_low_precision_long(dtype, T, S, K, causal):
    """Compiled kernel in fp16/bf16 against a float64 reference on the GPU."""
    if dtype == "bfloat16" and not runtime.supports_bf16():
        pytest.skip("this GPU has no bf16 (compute capability below 8.0)")
    gen = torch.Generator(device="cuda").manual_seed(T + K)
    B, H = 2, 4
    q64, k64, v64, do64 = (
        torch.randn(shape, generator=gen, device="cuda", dtype=torch.float64)
        for shape in ((B, T, H, K), (B, S, H, K), (B, S, H, K), (B, T, H, K))
    )
    tdt = getattr(torch, dtype)
    q, k, v = (x.to(tdt).requires_grad_(True) for x in (q64, k64, v64))
    with runtime.poison_outputs():
        o = tk.flash_attention(q, k, v, causal=causal)
        o.backward(do64.to(tdt))
    # the reference sees the same rounded inputs, in float64
    ref64 = [x.detach().double().requires_grad_(True) for x in (q, k, v)]
    o_ref = torch_impl.softmax_attention(*ref64, causal=causal)
    o_ref.backward(do64.to(tdt).double())
    tol = TOLERANCE[dtype]
    assert o.dtype == tdt
    assert rel_error(o, o_ref) <= tol
    for name, got, want in zip(("dq", "dk", "dv"), (q, k, v), ref64, strict=True):
        assert rel_error(got.grad, want.grad) <= tol, name
