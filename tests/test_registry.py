"""Registry-wide: every registered implementation against the float64 reference."""

from __future__ import annotations

import pytest

from course_lib import registry, runtime
from course_lib.registry import Sizes
from course_lib.testing import NumpyRand, autograd_nodes, compare, indexes_along, to_backend

# Awkward sizes: T=1, B=1, T not a multiple of any chunk, odd head dims.
SIZES = [
    Sizes(B=1, T=1, H=1, K=3, V=5, D=3, N=2),
    Sizes(B=2, T=37, H=2, K=7, V=5, D=5, N=3),
    Sizes(B=1, T=65, H=3, K=16, V=12, D=4, N=8),
]

CPU_IMPLS = [
    (impl, case)
    for impl, case in registry.iter_cases()
    if impl.backend != "triton" or runtime.triton_available()
]


def _dtypes(impl: registry.Impl) -> list[str]:
    if impl.backend == "numpy":
        return ["float64"]
    if impl.backend == "torch":
        return ["float64", "float32"]
    return ["float32"]  # the interpreter has no bf16; fp16/bf16 are tested on the GPU


def _device(impl: registry.Impl) -> str:
    compiled = impl.backend == "triton" and runtime.triton_mode() == "compiled"
    return "cuda" if compiled else "cpu"


@pytest.mark.parametrize(("impl", "case"), CPU_IMPLS, ids=lambda p: getattr(p, "name", p))
def test_matches_reference(impl: registry.Impl, case: str) -> None:
    sizes = SIZES if impl.backend != "triton" else SIZES[:2]
    for seed, size in enumerate(sizes):
        for dtype in _dtypes(impl):
            result = compare(impl, case, size, dtype=dtype, device=_device(impl), seed=seed)
            assert result.ok, f"{result} at {size}"


GPU_IMPLS = [(i, c) for i, c in registry.iter_cases() if i.backend in ("torch", "triton")]


@pytest.mark.gpu
@pytest.mark.parametrize(("impl", "case"), GPU_IMPLS, ids=lambda p: getattr(p, "name", p))
def test_matches_reference_on_gpu(impl: registry.Impl, case: str) -> None:
    """On CUDA: fp32, fp16 and bf16 (where the GPU has it) at the awkward sizes, and fp64
    for the PyTorch forms (the Triton kernels take no fp64)."""
    dtypes = ["float32", "float16"] + (["bfloat16"] if runtime.supports_bf16("cuda") else [])
    if impl.backend == "torch":
        dtypes.append("float64")
    for seed, size in enumerate(SIZES):
        for dtype in dtypes:
            result = compare(impl, case, size, dtype=dtype, device="cuda", seed=seed)
            assert result.ok, f"{result} at {size}"


def test_every_mechanism_has_numpy_and_torch() -> None:
    for name in registry.mechanisms():
        backends = {impl.backend for impl in registry.implementations(name)}
        assert {"numpy", "torch"} <= backends, f"{name} has only {sorted(backends)}"


TORCH_GRAD_IMPLS = [
    (impl, case)
    for impl, case in registry.iter_cases()
    if impl.backend == "torch" and impl.differentiable
]


@pytest.mark.parametrize(("impl", "case"), TORCH_GRAD_IMPLS, ids=lambda p: getattr(p, "name", p))
def test_torch_forms_do_not_index_per_step(impl: registry.Impl, case: str) -> None:
    """No PyTorch form takes its step t (or chunk n) by an index such as ``x[:, t]``: the
    backward of each index writes a gradient the size of all of ``x``, so T steps cost
    T^2 (found on an H200 as a forward+backward slope of 1.9). Loops take their steps by
    ``unbind``; a few fixed indices (a chunk's last gate) stay far below T."""
    T = 24
    mech = registry.mechanism(impl.mechanism)
    inputs = mech.inputs(NumpyRand(0), Sizes(B=1, T=T, H=2, K=4, V=3, D=3, N=2), case)
    args = to_backend(inputs, "torch", "float64", "cpu", mech.fp32_inputs, requires_grad=True)
    nodes = autograd_nodes(impl(**args))
    assert nodes, f"{impl.name}: no autograd graph"
    assert indexes_along(nodes, T) < T // 2, f"{indexes_along(nodes, T)} indices along T"
