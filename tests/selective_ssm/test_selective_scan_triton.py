"""The Triton selective scan (chapter 07) against the float64 references.

On CPU the kernels run in Triton's interpreter: sizes are tiny but awkward (T = 1, 63, 65;
D = 5, 60 with 16 channels per program; N = 4, 16; several checkpoints with a partial
last one). ``gpu``-marked tests run the compiled kernels in bf16 and at long lengths.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

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


def test_decode_steps_continue_a_scan(chunk):
    chunk(4)
    args = draw(1, 6, 3, 2, full=True, seed=2)
    whole, last = ref.selective_scan_sequential(**args, delta_softplus=True,
                                                return_last_state=True)  # fmt: skip
    x = tensors(args, torch.float32)
    cut = 4
    part = {k: (v[:, :cut] if k in ("u", "delta", "B", "C", "z") else v) for k, v in x.items()}
    out, state = tk.selective_scan(**part, delta_softplus=True, return_last_state=True)
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
def test_bad_inputs_rejected_before_launch(name, spoil, error):
    args = tensors(draw(2, 5, 3, 4, full=True), torch.float32)
    spoil(args)
    with pytest.raises(error, match=rf"^{name}\b"):
        tk.selective_scan(**args)


# ---- compiled kernels on a GPU ------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_half_precision(dtype):
    args = draw(2, 300, 200, 16, full=True, seed=3)
    x = tensors(args, dtype, "cuda", requires_grad=True)
    rounded = {k: v.detach().double().cpu().numpy() for k, v in x.items()}
    out0, last0 = ref.selective_scan_sequential(**rounded, delta_softplus=True,
                                                return_last_state=True)  # fmt: skip
    with runtime.poison_outputs():
        out, last = tk.selective_scan(**x, delta_softplus=True, return_last_state=True)
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
