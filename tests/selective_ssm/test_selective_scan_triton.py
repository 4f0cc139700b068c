"""The Triton selective scan (chapter 07) against the float64 references.

On CPU the kernels run in Triton's interpreter: sizes are tiny but awkward (T = 1, 63, 65;
D = 5, 60 with 16 channels per program; N = 4, 16; several checkpoints with a partial
last one). The "block_scan" form (:func:`selective_scan_blockwise`) is run with short
blocks of steps and few channels per program, so that these sizes cross several blocks,
checkpoints and channel blocks with partial last ones. The "block_adjoint" form
(:func:`selective_scan_block_adjoint`, the block backward) likewise, with the interpreter's
scan run a cross-section at a time (``fast_scan``). ``gpu``-marked tests run the compiled
kernels in bf16/fp16 and at long lengths.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from course_lib import runtime
from course_lib.selective_ssm import numpy_ref as ref
from course_lib.selective_ssm import torch_impl as ti
from course_lib.testing import TOLERANCE, rel_error

if not runtime.triton_available():  # pragma: no cover - macOS / Windows
    pytest.skip("Triton is not installed", allow_module_level=True)

from course_lib.selective_ssm import triton_kernels as tk

TOL32 = TOLERANCE["float32"]
DEVICE = runtime.default_device()
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


@pytest.fixture
def chunk(monkeypatch):
    """Short checkpoint intervals, so that small T already crosses several of them."""

    def set_chunk(n: int) -> None:
        monkeypatch.setitem(tk.CONFIG["fwd"], "CHUNK", n)

    return set_chunk


@pytest.fixture
def block(monkeypatch):
    """Blocks of ``BL`` steps and ``BD`` channels per program for the block-scan forward."""

    def set_block(BL: int, BD: int) -> None:
        monkeypatch.setitem(tk.CONFIG["block_fwd"], "BLOCK_L", BL)
        monkeypatch.setitem(tk.CONFIG["block_fwd"], "BLOCK_D", BD)

    return set_block


@pytest.fixture
def block_bwd(monkeypatch):
    """Blocks of ``BL`` steps and ``BD`` channels per program for the block backward."""

    def set_block(BL: int, BD: int) -> None:
        monkeypatch.setitem(tk.CONFIG["block_bwd"], "BLOCK_L", BL)
        monkeypatch.setitem(tk.CONFIG["block_bwd"], "BLOCK_D", BD)

    return set_block


FORMS = {  # registry names
    "scan": tk.selective_scan,
    "block_scan": tk.selective_scan_blockwise,
    "block_adjoint": tk.selective_scan_block_adjoint,
}


def draw(b, T, D, N, *, full, seed=0):
    rng = np.random.default_rng(seed)
    args = {
        "u": rng.standard_normal((b, T, D)),
        "A": -rng.uniform(0.2, 1.5, (D, N)),
        "B": rng.standard_normal((b, T, N)),
        "C": rng.standard_normal((b, T, N)),
    }
    if full:
        args.update(
            delta=rng.standard_normal((b, T, D)) * 0.5,
            D=rng.standard_normal(D),
            z=rng.standard_normal((b, T, D)),
            delta_bias=rng.standard_normal(D) * 0.5,
            initial_state=rng.standard_normal((b, D, N)),
        )
    else:
        args["delta"] = rng.uniform(0.05, 1.0, (b, T, D))
    return args


def tensors(args, dtype, device="cpu", requires_grad=False):
    return {
        k: torch.tensor(
            v, dtype=torch.float32 if k == "A" else dtype, device=device
        ).requires_grad_(requires_grad)
        for k, v in args.items()
    }


# (b, T, D, N, full, CHUNK): T = 1 with two batch elements; T = 63 over 4 chunks of 16 (the
# last one partial); T = 65 = 64 + 1 with the default chunk; D = 60 = 3 x 16 + 12 channels
# (four programs, the last one masked) over two chunks.
CASES = [
    (2, 1, 5, 4, True, 16),
    (1, 63, 5, 16, True, 16),
    (1, 65, 5, 16, False, 64),
    (1, 17, 60, 4, True, 16),
]


@pytest.mark.parametrize(("b", "T", "D", "N", "full", "L"), CASES)
def test_forward_and_gradients_match_float64(b, T, D, N, full, L, chunk):
    chunk(L)
    args = draw(b, T, D, N, full=full, seed=T + D)
    soft = {"delta_softplus": True} if full else {}
    out0, last0 = ref.selective_scan_sequential(**args, **soft, return_last_state=True)
    x = tensors(args, torch.float32, DEVICE, requires_grad=True)
    with runtime.poison_outputs():
        out, last = tk.selective_scan(**x, **soft, return_last_state=True)
    assert out.dtype == torch.float32 and last.dtype == torch.float32
    assert rel_error(out, out0) < TOL32
    assert rel_error(last, last0) < TOL32
    # gradients of a loss that uses both outputs, against float64 autograd
    x64 = tensors(args, torch.float64, requires_grad=True)
    o64, l64 = ti.selective_scan_sequential(**x64, **soft, return_last_state=True)
    gen = torch.Generator().manual_seed(0)
    w_out = torch.randn(o64.shape, generator=gen, dtype=torch.float64)
    w_last = torch.randn(l64.shape, generator=gen, dtype=torch.float64)
    want = torch.autograd.grad((o64 * w_out).sum() + (l64 * w_last).sum(), list(x64.values()))
    with runtime.poison_outputs():
        loss = (out * w_out.float().to(DEVICE)).sum() + (last * w_last.float().to(DEVICE)).sum()
        got = torch.autograd.grad(loss, list(x.values()))
    for name, g, w in zip(x, got, want, strict=True):
        assert g.dtype == x[name].dtype, name
        assert rel_error(g, w) < TOL32, name


def test_only_the_last_state_used(chunk):
    chunk(4)
    args = draw(1, 9, 3, 3, full=True, seed=1)  # N = 3: masked state lanes
    x = tensors(args, torch.float32, requires_grad=True)
    x64 = tensors(args, torch.float64, requires_grad=True)
    _, last = tk.selective_scan(**x, delta_softplus=True, return_last_state=True)
    _, l64 = ti.selective_scan_sequential(**x64, delta_softplus=True, return_last_state=True)
    got = torch.autograd.grad(last.sum(), list(x.values()), allow_unused=True)
    want = torch.autograd.grad(l64.sum(), list(x64.values()), allow_unused=True)
    for name, g, w in zip(x, got, want, strict=True):
        if name in ("C", "D", "z"):  # the last state does not depend on them
            assert g is None or float(g.abs().max()) == 0.0, name
        else:
            assert rel_error(g, w) < TOL32, name


def test_without_grad_returns_out_only():
    args = draw(2, 7, 3, 2, full=False)
    x = tensors(args, torch.float32)
    with runtime.poison_outputs():
        out = tk.selective_scan(**x)
    assert isinstance(out, torch.Tensor)
    assert rel_error(out, ref.selective_scan_sequential(**args)) < TOL32


@pytest.mark.parametrize(("b", "D", "N", "full"), [(1, 5, 3, True), (2, 60, 16, False)])
def test_decode_kernel_matches_numpy(b, D, N, full):
    args = draw(b, 1, D, N, full=full, seed=D)
    state = np.random.default_rng(9).standard_normal((b, D, N))
    step = {
        "u_t": args["u"][:, 0], "delta_t": args["delta"][:, 0], "A": args["A"],
        "B_t": args["B"][:, 0], "C_t": args["C"][:, 0], "state": state,
    }  # fmt: skip
    if full:
        step.update(D=args["D"], z_t=args["z"][:, 0], delta_bias=args["delta_bias"],
                    delta_softplus=True)  # fmt: skip
    y0, h0 = ref.selective_scan_step(**step)
    t = {k: (torch.tensor(v, dtype=torch.float32) if isinstance(v, np.ndarray) else v)
         for k, v in step.items()}  # fmt: skip
    with runtime.poison_outputs():
        y, h = tk.selective_scan_decode_step(**t)
    assert rel_error(y, y0) < TOL32 and rel_error(h, h0) < TOL32
    assert float((t["state"] - torch.tensor(state, dtype=torch.float32)).abs().max()) == 0.0


@pytest.mark.parametrize("form", FORMS)
def test_decode_steps_continue_a_scan(form, chunk, block):
    chunk(4)
    block(2, 2)
    args = draw(1, 6, 3, 2, full=True, seed=2)
    whole, last = ref.selective_scan_sequential(**args, delta_softplus=True,
                                                return_last_state=True)  # fmt: skip
    x = tensors(args, torch.float32)
    cut = 4
    part = {k: (v[:, :cut] if k in ("u", "delta", "B", "C", "z") else v) for k, v in x.items()}
    out, state = FORMS[form](**part, delta_softplus=True, return_last_state=True)
    ys = [out]
    for t in range(cut, 6):
        y, state = tk.selective_scan_decode_step(
            x["u"][:, t], x["delta"][:, t], x["A"], x["B"][:, t], x["C"][:, t], state,
            D=x["D"], z_t=x["z"][:, t], delta_bias=x["delta_bias"], delta_softplus=True,
        )  # fmt: skip
        ys.append(y[:, None])
    assert rel_error(torch.cat(ys, 1), whole) < TOL32 and rel_error(state, last) < TOL32


@pytest.mark.parametrize(
    ("name", "spoil", "error"),
    [
        ("u", lambda a: a.update(u=a["u"][0]), ValueError),
        ("C", lambda a: a.update(C=a["C"][:, :-1]), ValueError),
        ("A", lambda a: a.update(A=a["A"][:-1]), ValueError),
        ("initial_state", lambda a: a.update(initial_state=a["initial_state"][0]), ValueError),
        ("delta_softplus", lambda a: a.update(delta_softplus=None), TypeError),
    ],
)
@pytest.mark.parametrize("form", FORMS)
def test_bad_inputs_rejected_before_launch(form, name, spoil, error):
    args = tensors(draw(2, 5, 3, 4, full=True), torch.float32)
    spoil(args)
    with pytest.raises(error, match=rf"^{name}\b"):
        FORMS[form](**args)


# ---- the block-scan forward ("block_scan" form) -----------------------------------------

#: Which optional inputs a case passes: the reference draws them all, ``keep`` filters.
ALL_OPTIONAL = ("D", "z", "delta_bias", "initial_state")


def pick(args, keep):
    """``args`` without the optional inputs that are not in ``keep``."""
    return {k: v for k, v in args.items() if k not in ALL_OPTIONAL or k in keep}


# (b, T, D, N, keep, softplus, CHUNK, BL, BD). T = 1 over two batch elements and two
# channel blocks; T = 23 with N = 16: 6 blocks of 4 (the last has 3 steps) over 3 chunks of
# 8 (the last partial); an odd N = 5 (3 masked state lanes) with D = 6 over two channel
# blocks of 4 (the second with 2 channels) and BL = CHUNK; T = 65 with the default CHUNK = 64 and
# BL = 16 (the last block has 1 step); BL = 16 > CHUNK = 8 (the launcher takes gcd = 8);
# the gate without the skip, bias without softplus, and nothing optional.
BLOCK_CASES = [
    (2, 1, 5, 4, ALL_OPTIONAL, True, 16, 4, 4),
    (1, 23, 3, 16, ALL_OPTIONAL, True, 8, 4, 4),
    (1, 17, 6, 5, ("z", "delta_bias", "initial_state"), True, 8, 8, 4),
    (1, 65, 3, 3, (), False, 64, 16, 4),
    (1, 19, 2, 3, ("D", "delta_bias"), False, 8, 16, 2),
]


@pytest.mark.parametrize(("b", "T", "D", "N", "keep", "soft", "L", "BL", "BD"), BLOCK_CASES)
def test_block_scan_matches_float64_and_scan(b, T, D, N, keep, soft, L, BL, BD, chunk, block):
    chunk(L)
    block(BL, BD)
    args = pick(draw(b, T, D, N, full=True, seed=T + D), keep)
    if not soft:  # a positive step size used as it is
        args["delta"] = np.abs(args["delta"]) + 0.05
    opts = {"delta_softplus": soft, "return_last_state": True}
    out0, last0 = ref.selective_scan_sequential(**args, **opts)
    x = tensors(args, torch.float32, DEVICE, requires_grad=True)
    with runtime.poison_outputs():
        out, last = tk.selective_scan_blockwise(**x, **opts)
        out_s, last_s = tk.selective_scan(**{k: v.detach() for k, v in x.items()}, **opts)
    assert out.dtype == torch.float32 and last.dtype == torch.float32
    assert rel_error(out, out0) < TOL32 and rel_error(last, last0) < TOL32
    assert rel_error(out, out_s.double()) < TOL32 and rel_error(last, last_s.double()) < TOL32
    # gradients through the step-by-step form's backward, from the block form's checkpoints
    x64 = tensors(args, torch.float64, requires_grad=True)
    o64, l64 = ti.selective_scan_sequential(**x64, **opts)
    gen = torch.Generator().manual_seed(1)
    w_out = torch.randn(o64.shape, generator=gen, dtype=torch.float64)
    w_last = torch.randn(l64.shape, generator=gen, dtype=torch.float64)
    want = torch.autograd.grad((o64 * w_out).sum() + (l64 * w_last).sum(), list(x64.values()))
    with runtime.poison_outputs():
        loss = (out * w_out.float().to(DEVICE)).sum() + (last * w_last.float().to(DEVICE)).sum()
        got = torch.autograd.grad(loss, list(x.values()))
    for name, g, w in zip(x, got, want, strict=True):
        assert g.dtype == x[name].dtype, name
        assert rel_error(g, w) < TOL32, name


def test_block_scan_without_grad_needs_no_checkpoint_alignment(chunk, block):
    """Without autograd no checkpoint is stored, so blocks of 8 steps with CHUNK = 4 run
    as they are (T = 13: one full block and a block of 5)."""
    chunk(4)
    block(8, 4)
    args = draw(2, 13, 3, 2, full=True, seed=5)
    x = tensors(args, torch.float32)
    with runtime.poison_outputs():
        out = tk.selective_scan_blockwise(**x, delta_softplus=True)
    assert isinstance(out, torch.Tensor)
    assert rel_error(out, ref.selective_scan_sequential(**args, delta_softplus=True)) < TOL32


@given(
    b=st.integers(1, 2),
    T=st.integers(1, 12),
    D=st.integers(1, 5),
    N=st.integers(1, 5),
    BL=st.sampled_from([2, 4]),
    full=st.booleans(),
)
def test_block_scan_shapes_sweep(b, T, D, N, BL, full):
    """Forward of the block form against the float64 reference over small odd shapes (a
    short sweep: the interpreter runs the scan's combine once per element)."""
    args = draw(b, T, D, N, full=full, seed=T * 7 + D)
    soft = {"delta_softplus": True} if full else {}
    saved = dict(tk.CONFIG["block_fwd"])
    tk.CONFIG["block_fwd"].update(BLOCK_L=BL, BLOCK_D=4)
    try:
        with runtime.poison_outputs():
            out, last = tk.selective_scan_blockwise(
                **tensors(args, torch.float32), **soft, return_last_state=True
            )
    finally:
        tk.CONFIG["block_fwd"].update(saved)
    out0, last0 = ref.selective_scan_sequential(**args, **soft, return_last_state=True)
    assert rel_error(out, out0) < TOL32 and rel_error(last, last0) < TOL32


# ---- the block backward ("block_adjoint" form) ---------------------------------------


@pytest.fixture
def fast_scan(monkeypatch):
    """In the CPU interpreter, ``tl.associative_scan`` with a combine of our own calls it
    once per element (its generic path), and the block backward runs three scans of
    ``BL * BN * BD`` elements per block. This patches that path, for one test, to run the
    same sequential scan a whole cross-section at a time: the combine is elementwise, so
    the results are the same, in a small fraction of the time. Nothing to do when the
    kernels are compiled, or if the interpreter's internals have changed (then slow)."""
    if runtime.triton_mode() != "interpreter":
        return
    from triton.runtime import interpreter

    ops = getattr(interpreter, "ScanOps", None)
    if ops is None or not hasattr(ops, "generic_scan") or not hasattr(ops, "to_tensor"):
        return

    def generic_scan(self, inputs):
        data = [np.moveaxis(x.handle.data, self.axis, 0) for x in inputs]  # scan axis first
        outs = [np.empty_like(d) for d in data]
        acc = None
        for i in range(data[0].shape[0]):
            cur = tuple(
                self.to_tensor(d[i].copy(), x.dtype) for d, x in zip(data, inputs, strict=True)
            )
            if acc is None:
                acc = cur
            else:
                ret = self.combine_fn.fn(*acc, *cur)  # (the steps before, this step)
                acc = ret if isinstance(ret, tuple) else (ret,)
            for o, v in zip(outs, acc, strict=True):
                o[i] = v.handle.data
        return [
            self.to_tensor(np.ascontiguousarray(np.moveaxis(o, 0, self.axis)), x.dtype)
            for o, x in zip(outs, inputs, strict=True)
        ]

    monkeypatch.setattr(ops, "generic_scan", generic_scan)


def loss_grads(out, last, x, w_out, w_last, use):
    """Gradients of ``sum(out w_out) + sum(last w_last)`` (or of one term: ``use``) with
    respect to the tensors of ``x``, zeros for those the loss does not depend on."""
    terms = {"out": (out * w_out).sum(), "last": (last * w_last).sum()}
    loss = terms[use] if use in terms else terms["out"] + terms["last"]
    got = torch.autograd.grad(loss, list(x.values()), allow_unused=True)
    return [torch.zeros_like(v) if g is None else g for v, g in zip(x.values(), got, strict=True)]


def close(got, want, tol):
    """``rel_error(got, want) < tol``, or both exactly zero (a gradient the loss ignores)."""
    if float(want.abs().max()) == 0.0:
        return float(got.abs().max()) == 0.0
    return rel_error(got, want) < tol


# (b, T, D, N, keep, softplus, CHUNK, BL, BD, use): T = 1 over two batch elements and two
# channel blocks (4 + 1); T = 63 over 4 chunks of 16 (the last has 15 steps, its last block
# 7) with D = 20 = 16 + 4 and N = 16; T = 65 = 64 + 1 with the default CHUNK, N = 5 (3
# masked state lanes), nothing optional and only ``out`` used (no gradient of the last
# state); T = 130 over chunks of 32 (the last of 2 steps), the gate without the skip; BL =
# 16 > CHUNK = 8 (the launcher takes gcd = 8) with only the last state used (no ``dout``).
ADJOINT_CASES = [
    (2, 1, 5, 4, ALL_OPTIONAL, True, 16, 8, 4, "both"),
    (1, 63, 20, 16, ALL_OPTIONAL, True, 16, 8, 16, "both"),
    (1, 65, 20, 5, (), False, 64, 8, 16, "out"),
    (1, 130, 6, 4, ("z", "delta_bias", "initial_state"), True, 32, 8, 4, "both"),
    (1, 19, 3, 3, ("D", "delta_bias"), False, 8, 16, 2, "last"),
]


@pytest.mark.parametrize(
    ("b", "T", "D", "N", "keep", "soft", "L", "BL", "BD", "use"), ADJOINT_CASES
)
def test_block_adjoint_matches_float64_and_step_backward(
    b, T, D, N, keep, soft, L, BL, BD, use, chunk, block, block_bwd, fast_scan
):  # fmt: skip
    """Outputs, last state and every gradient against float64 autograd, and the gradients
    against the step-by-step backward's (from the same block forward) to fp32 rounding."""
    chunk(L)
    block(BL, BD)
    block_bwd(BL, BD)
    args = pick(draw(b, T, D, N, full=True, seed=T + D + N), keep)
    if not soft:  # a positive step size used as it is
        args["delta"] = np.abs(args["delta"]) + 0.05
    opts = {"delta_softplus": soft, "return_last_state": True}
    x64 = tensors(args, torch.float64, requires_grad=True)
    o64, l64 = ti.selective_scan_sequential(**x64, **opts)
    gen = torch.Generator().manual_seed(2)
    w_out = torch.randn(o64.shape, generator=gen, dtype=torch.float64)
    w_last = torch.randn(l64.shape, generator=gen, dtype=torch.float64)
    want = loss_grads(o64, l64, x64, w_out, w_last, use)
    x = tensors(args, torch.float32, DEVICE, requires_grad=True)
    w_out, w_last = w_out.float().to(DEVICE), w_last.float().to(DEVICE)
    with runtime.poison_outputs():
        out, last = tk.selective_scan_block_adjoint(**x, **opts)
        got = loss_grads(out, last, x, w_out, w_last, use)
        out_s, last_s = tk.selective_scan_blockwise(**x, **opts)
        got_s = loss_grads(out_s, last_s, x, w_out, w_last, use)
    assert out.dtype == torch.float32 and last.dtype == torch.float32
    assert rel_error(out, o64) < TOL32 and rel_error(last, l64) < TOL32
    for name, g, w, gs in zip(x, got, want, got_s, strict=True):
        assert g.dtype == x[name].dtype, name
        assert close(g, w, TOL32), name
        assert close(g, gs, 1e-5), name  # the same sums, added in another order


def test_block_adjoint_with_the_interpreters_own_scan(chunk, block, block_bwd, request):
    """A small case through the interpreter's own (slow) scan, against float64, and then
    again through ``fast_scan``: the same gradients bit for bit."""
    chunk(4)
    block(4, 2)
    block_bwd(4, 2)
    args = draw(1, 9, 3, 3, full=True, seed=6)
    opts = {"delta_softplus": True, "return_last_state": True}
    x64 = tensors(args, torch.float64, requires_grad=True)
    o64, l64 = ti.selective_scan_sequential(**x64, **opts)
    want = loss_grads(o64, l64, x64, o64.detach(), l64.detach(), "both")
    x = tensors(args, torch.float32, DEVICE, requires_grad=True)
    results = []
    for _ in range(2):
        with runtime.poison_outputs():
            out, last = tk.selective_scan_block_adjoint(**x, **opts)
            got = loss_grads(out, last, x, o64.float().to(DEVICE), l64.float().to(DEVICE),
                             "both")  # fmt: skip
        assert rel_error(out, o64) < TOL32 and rel_error(last, l64) < TOL32
        for name, g, w in zip(x, got, want, strict=True):
            assert rel_error(g, w) < TOL32, name
        results.append(got)
        request.getfixturevalue("fast_scan")
    for name, g, g_fast in zip(x, *results, strict=True):
        assert torch.equal(g, g_fast), name


def test_block_adjoint_half_precision(chunk, block, block_bwd, fast_scan):
    """fp16 inputs (A fp32): gradients come back in fp16, against float64 autograd on the
    rounded inputs and against the step-by-step backward's."""
    chunk(16)
    block(8, 4)
    block_bwd(8, 4)
    args = draw(1, 37, 6, 4, full=True, seed=4)
    opts = {"delta_softplus": True, "return_last_state": True}
    x = tensors(args, torch.float16, DEVICE, requires_grad=True)
    x64 = {k: v.detach().double().cpu().requires_grad_(True) for k, v in x.items()}
    o64, l64 = ti.selective_scan_sequential(**x64, **opts)
    gen = torch.Generator().manual_seed(3)
    w_out = torch.randn(o64.shape, generator=gen, dtype=torch.float64)
    w_last = torch.randn(l64.shape, generator=gen, dtype=torch.float64)
    want = loss_grads(o64, l64, x64, w_out, w_last, "both")
    w_out, w_last = w_out.float().to(DEVICE), w_last.float().to(DEVICE)
    with runtime.poison_outputs():
        out, last = tk.selective_scan_block_adjoint(**x, **opts)
        got = loss_grads(out.float(), last, x, w_out, w_last, "both")
        out_s, last_s = tk.selective_scan_blockwise(**x, **opts)
        got_s = loss_grads(out_s.float(), last_s, x, w_out, w_last, "both")
    assert out.dtype == torch.float16 and rel_error(out, o64) < TOLERANCE["float16"]
    assert rel_error(last, l64) < TOL32
    for name, g, w, gs in zip(x, got, want, got_s, strict=True):
        assert g.dtype == x[name].dtype, name
        assert rel_error(g, w) < TOLERANCE["float16"], name
        assert rel_error(g, gs.double()) < 1e-3, name  # fp32 sums, one fp16 rounding


# ---- compiled kernels on a GPU ------------------------------------------------------


def _skip_without_bf16(dtype) -> None:
    if dtype == torch.bfloat16 and not runtime.supports_bf16():
        pytest.skip("this GPU has no bf16 (compute capability below 8.0)")


@pytest.mark.gpu
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_half_precision(dtype, form):
    _skip_without_bf16(dtype)
    args = draw(2, 300, 200, 16, full=True, seed=3)
    x = tensors(args, dtype, "cuda", requires_grad=True)
    rounded = {k: v.detach().double().cpu().numpy() for k, v in x.items()}
    out0, last0 = ref.selective_scan_sequential(**rounded, delta_softplus=True,
                                                return_last_state=True)  # fmt: skip
    with runtime.poison_outputs():
        out, last = FORMS[form](**x, delta_softplus=True, return_last_state=True)
    name = str(dtype).replace("torch.", "")
    assert out.dtype == dtype and rel_error(out, out0) < TOLERANCE[name]
    assert rel_error(last, last0) < TOL32
    x32 = {k: v.detach().float().requires_grad_(True) for k, v in x.items()}
    o32 = ti.selective_scan_chunked(**x32, delta_softplus=True)
    gout = torch.randn_like(o32)
    want = torch.autograd.grad((o32 * gout).sum(), list(x32.values()))
    got = torch.autograd.grad((out.float() * gout).sum(), list(x.values()))
    for k, g, w in zip(x, got, want, strict=True):
        assert g.dtype == x[k].dtype and rel_error(g, w) < TOLERANCE[name], k


@pytest.mark.gpu
def test_gpu_long_sequence():
    torch.manual_seed(0)
    b, T, D, N = 2, 4099, 96, 16
    x = {
        "u": torch.randn(b, T, D, device="cuda"),
        "delta": torch.randn(b, T, D, device="cuda") * 0.5 - 2.0,
        "A": -torch.rand(D, N, device="cuda") - 0.1,
        "B": torch.randn(b, T, N, device="cuda"),
        "C": torch.randn(b, T, N, device="cuda"),
        "D": torch.randn(D, device="cuda"),
        "z": torch.randn(b, T, D, device="cuda"),
        "delta_bias": torch.randn(D, device="cuda") * 0.1,
    }
    for v in x.values():
        v.requires_grad_(True)
    x64 = {k: v.detach().double().requires_grad_(True) for k, v in x.items()}
    o64, l64 = ti.selective_scan_chunked(**x64, delta_softplus=True, return_last_state=True)
    with runtime.poison_outputs():
        out, last = tk.selective_scan(**x, delta_softplus=True, return_last_state=True)
    assert rel_error(out, o64) < TOL32 and rel_error(last, l64) < TOL32
    gout = torch.randn_like(o64)
    want = torch.autograd.grad((o64 * gout).sum(), list(x64.values()))
    got = torch.autograd.grad((out * gout.float()).sum(), list(x.values()))
    for k, g, w in zip(x, got, want, strict=True):
        assert rel_error(g, w) < TOL32, k


def _long_gpu_inputs(T, dtype, gen):
    """Every input of the scan on the GPU (``A`` stays fp32), requiring gradients:
    B = 2, D = 160 (10 channel blocks of 16), N = 16."""
    b, D, N = 2, 160, 16

    def draw(*shape):
        return torch.randn(*shape, device="cuda", generator=gen)

    x = {
        "u": draw(b, T, D),
        "delta": draw(b, T, D) * 0.5 - 1.0,
        "A": -torch.rand(D, N, device="cuda", generator=gen) - 0.1,
        "B": draw(b, T, N),
        "C": draw(b, T, N),
        "D": draw(D),
        "z": draw(b, T, D),
        "delta_bias": draw(D) * 0.1,
        "initial_state": draw(b, D, N),
    }
    return {k: (v if k == "A" else v.to(dtype)).requires_grad_(True) for k, v in x.items()}


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("dtype", "T"), [(torch.bfloat16, 32768), (torch.float16, 32768), (torch.bfloat16, 4099)]
)
def test_gpu_block_scan_long(dtype, T):
    """The block form at long lengths in half precision: outputs and last state against
    float64 on the rounded inputs and against the step-by-step form, gradients (through the
    shared backward) against the step-by-step form's."""
    _skip_without_bf16(dtype)
    gen = torch.Generator(device="cuda").manual_seed(T)
    x = _long_gpu_inputs(T, dtype, gen)
    x64 = {k: v.detach().double() for k, v in x.items()}
    o64, l64 = ti.selective_scan_chunked(**x64, delta_softplus=True, return_last_state=True)
    with runtime.poison_outputs():
        out, last = tk.selective_scan_blockwise(**x, delta_softplus=True, return_last_state=True)
        out_s, last_s = tk.selective_scan(**x, delta_softplus=True, return_last_state=True)
    name = str(dtype).replace("torch.", "")
    assert out.dtype == dtype and rel_error(out, o64) < TOLERANCE[name]
    assert rel_error(last, l64) < TOL32
    assert rel_error(out.float(), out_s.float()) < TOLERANCE[name]
    assert rel_error(last, last_s.double()) < TOL32
    gout = torch.randn(out.shape, device="cuda", generator=gen, dtype=torch.float32)
    got = torch.autograd.grad((out.float() * gout).sum(), list(x.values()))
    want = torch.autograd.grad((out_s.float() * gout).sum(), list(x.values()))
    for k, g, w in zip(x, got, want, strict=True):
        assert g.dtype == x[k].dtype and rel_error(g.float(), w.float()) < TOLERANCE[name], k


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("dtype", "T"),
    [
        (torch.bfloat16, 32768),
        (torch.float16, 32768),
        (torch.bfloat16, 4099),
        (torch.float32, 4099),
    ],
)
def test_gpu_block_adjoint_long(dtype, T):
    """The block backward at long lengths: gradients against the step-by-step backward's
    on the same inputs (both from the block forward), and in fp32 against float64."""
    _skip_without_bf16(dtype)
    gen = torch.Generator(device="cuda").manual_seed(T + 1)
    x = _long_gpu_inputs(T, dtype, gen)
    opts = {"delta_softplus": True, "return_last_state": True}
    with runtime.poison_outputs():
        out, last = tk.selective_scan_block_adjoint(**x, **opts)
        out_s, last_s = tk.selective_scan_blockwise(**x, **opts)
    name = str(dtype).replace("torch.", "")
    assert out.dtype == dtype and torch.equal(out, out_s) and torch.equal(last, last_s)
    gout = torch.randn(out.shape, device="cuda", generator=gen, dtype=torch.float32)
    glast = torch.randn(last.shape, device="cuda", generator=gen, dtype=torch.float32)
    got = torch.autograd.grad((out.float() * gout).sum() + (last * glast).sum(), list(x.values()))
    want = torch.autograd.grad(
        (out_s.float() * gout).sum() + (last_s * glast).sum(), list(x.values())
    )
    for k, g, w in zip(x, got, want, strict=True):
        assert g.dtype == x[k].dtype and rel_error(g.float(), w.float()) < TOLERANCE[name], k
    if dtype == torch.float32:
        x64 = {k: v.detach().double().requires_grad_(True) for k, v in x.items()}
        o64, l64 = ti.selective_scan_chunked(**x64, **opts)
        want64 = torch.autograd.grad(
            (o64 * gout.double()).sum() + (l64 * glast.double()).sum(), list(x64.values())
        )
        for k, g, w in zip(x, got, want64, strict=True):
            assert rel_error(g, w) < TOL32, k
