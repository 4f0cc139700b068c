"""Comparing any registered implementation with the float64 reference.

Used by the test-suite, the benchmark's pre-flight check and the exercise checkers:

* :class:`NumpyRand` / :class:`TorchRand` draw the random inputs a mechanism's
  ``make_inputs`` asks for, as float64 numpy arrays or as tensors on a device;
* :func:`to_backend` converts numpy inputs for a backend and dtype;
* :data:`TOLERANCE` is the one table of tolerances, by dtype, on the relative error
  ``||out - ref|| / ||ref||``;
* :func:`compare` runs an implementation and the reference on the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from course_lib.registry import Impl, Sizes, mechanism

# Relative-error bounds by the dtype the implementation computes in. fp32 covers
# Triton's default tf32 dot products (about 3e-4 in practice); fp16/bf16 are operand
# precisions with fp32 accumulation.
TOLERANCE = {
    "float64": 1e-9,
    "float32": 2e-3,
    "float16": 1e-2,
    "bfloat16": 3e-2,
}


class NumpyRand:
    """float64 numpy draws from a seeded generator."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def normal(self, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
        return self.rng.standard_normal(shape) * scale

    def uniform(self, shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
        return self.rng.uniform(low, high, size=shape)


class TorchRand:
    """Draws straight on a device in a dtype (the benchmark's inputs can be gigabytes)."""

    def __init__(self, seed: int = 0, dtype: Any = None, device: Any = "cpu") -> None:
        import torch

        self.torch = torch
        self.dtype = dtype or torch.float32
        self.device = device
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def normal(self, shape: tuple[int, ...], scale: float = 1.0) -> Any:
        t = self.torch.randn(shape, generator=self.gen, device=self.device, dtype=self.dtype)
        return t.mul_(scale)

    def uniform(self, shape: tuple[int, ...], low: float, high: float) -> Any:
        t = self.torch.rand(shape, generator=self.gen, device=self.device, dtype=self.dtype)
        return t.mul_(high - low).add_(low)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def to_backend(
    inputs: dict[str, Any],
    backend: str,
    dtype: str = "float64",
    device: str = "cpu",
    fp32_inputs: tuple[str, ...] = (),
    requires_grad: bool = False,
) -> dict[str, Any]:
    """Convert float64 numpy inputs for ``backend``; options pass through unchanged."""
    if backend == "numpy":
        return dict(inputs)
    import torch

    def convert(name: str, value: Any) -> Any:
        if isinstance(value, (tuple, list)):  # a state pair such as (S, z)
            return type(value)(convert(name, item) for item in value)
        if not (isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.inexact)):
            return value
        complex_ = np.iscomplexobj(value)
        want = "float32" if name in fp32_inputs and dtype in ("float16", "bfloat16") else dtype
        if complex_:
            want = "complex128" if dtype == "float64" else "complex64"
        t = torch.from_numpy(value).to(device=device, dtype=getattr(torch, want))
        if requires_grad and not complex_:
            t.requires_grad_(True)
        return t

    return {name: convert(name, value) for name, value in inputs.items()}


def flatten(outputs: Any) -> list[Any]:
    """An output, or nested tuples of outputs, as a flat list (``None`` kept in place)."""
    if isinstance(outputs, (tuple, list)):
        return [leaf for item in outputs for leaf in flatten(item)]
    return [outputs]


def to_numpy(x: Any) -> Any:
    if x is None or isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if not x.is_complex():
            x = x.double()
        return x.numpy()
    return np.asarray(x)


def rel_error(out: Any, ref: Any) -> float:
    """``||out - ref|| / ||ref||`` in float64; NaN anywhere gives ``inf``.

    Two tensors on one device are compared there (a long GPU test's outputs are gigabytes
    in float64: no host copy); anything else as float64 numpy.
    """
    if _same_device_tensors(out, ref):
        return _rel_error_torch(out, ref)
    out, ref = to_numpy(out), to_numpy(ref)
    if out.shape != ref.shape:
        raise AssertionError(f"shape {out.shape} differs from the reference's {ref.shape}")
    if not np.all(np.isfinite(out)):
        return float("inf")
    denom = max(float(np.linalg.norm(ref)), 1e-30)
    return float(np.linalg.norm(out - ref)) / denom


def _same_device_tensors(a: Any, b: Any) -> bool:
    return hasattr(a, "detach") and hasattr(b, "detach") and a.device == b.device


def _rel_error_torch(out: Any, ref: Any) -> float:
    import torch

    if out.shape != ref.shape:
        raise AssertionError(
            f"shape {tuple(out.shape)} differs from the reference's {tuple(ref.shape)}"
        )
    wide = torch.complex128 if out.is_complex() or ref.is_complex() else torch.float64
    out, ref = out.detach().to(wide), ref.detach().to(wide)
    if not bool(torch.isfinite(out).all()):
        return float("inf")
    denom = max(float(torch.linalg.vector_norm(ref)), 1e-30)
    return float(torch.linalg.vector_norm(out - ref)) / denom


@dataclass
class Comparison:
    impl: str
    case: str
    dtype: str
    errors: list[float]  # one per output (o, then the final state, ...)
    tolerance: float

    @property
    def ok(self) -> bool:
        return all(e <= self.tolerance for e in self.errors)

    def __str__(self) -> str:
        errs = ", ".join(f"{e:.2e}" for e in self.errors)
        return f"{self.impl} [{self.case}, {self.dtype}]: errors {errs} (tol {self.tolerance:g})"


def compare(
    impl: Impl,
    case: str = "default",
    sizes: Sizes | None = None,
    dtype: str = "float64",
    device: str = "cpu",
    seed: int = 0,
    poison: bool = True,
) -> Comparison:
    """Run ``impl`` and its mechanism's float64 reference on the same random inputs."""
    from course_lib.runtime import poison_outputs

    mech = mechanism(impl.mechanism)
    inputs = mech.inputs(NumpyRand(seed), sizes or Sizes(), case)
    ref = flatten(mech.reference_fn()(**inputs))
    args = to_backend(inputs, impl.backend, dtype, device, mech.fp32_inputs)
    if poison and impl.backend != "numpy":
        with poison_outputs():
            got = flatten(impl(**args))
    else:
        got = flatten(impl(**args))
    if len(got) != len(ref):
        raise AssertionError(f"{impl.name} returned {len(got)} outputs, reference {len(ref)}")
    errors = [rel_error(g, r) for g, r in zip(got, ref, strict=True) if r is not None]
    return Comparison(impl.name, case, _dtype_name(dtype), errors, TOLERANCE[_dtype_name(dtype)])


def autograd_nodes(outputs: Any) -> list[Any]:
    """Every node of the autograd graph behind ``outputs`` (a tensor or a nest of them),
    each once: for tests of how a form is differentiated, such as "no per-step index"
    (``SelectBackward0`` over the time axis), whose backward writes a gradient the size of
    the whole indexed tensor at every step."""
    stack = [t.grad_fn for t in flatten(outputs) if getattr(t, "grad_fn", None) is not None]
    seen: set[Any] = set()
    nodes: list[Any] = []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        nodes.append(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return nodes


def indexes_along(nodes: list[Any], size: int) -> int:
    """How many of ``nodes`` take one index of an axis of length ``size`` (``x[:, t]``)."""
    return sum(
        type(n).__name__ == "SelectBackward0" and n._saved_self_sym_sizes[n._saved_dim] == size
        for n in nodes
    )
