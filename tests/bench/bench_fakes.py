"""Tiny fake mechanisms for the benchmark tests (registered by a fixture or ``--plugin``).

Glossary: ``B`` batch, ``T`` length, ``H`` heads, ``K`` head dim.

* ``fake_quadratic`` -- ``o_t = sum_{s<=t} (x_t . x_s) x_s``: O(T^2), plays softmax attention.
* ``fake_linear`` -- ``o_t = sum_{s<=t} x_s`` (a prefix sum): O(T), plays a linear mechanism.
  Besides correct numpy and torch versions it has a wrong one (scaled by 1.5), one that
  raises ``MemoryError`` at ``T == OOM_T`` only, and a slow one (sleeps ``SLOW_S``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from course_lib import registry
from course_lib.registry import Impl, Mechanism

OOM_T = 32
SLOW_S = 0.05
_M = "bench_fakes"


def make_inputs(rand: Any, sizes: registry.Sizes, case: str) -> dict[str, Any]:
    return {"x": rand.normal((sizes.B, sizes.T, sizes.H, sizes.K))}  # [B, T, H, K]


def quadratic_np(x: np.ndarray) -> np.ndarray:
    T = x.shape[1]
    scores = np.einsum("bthk,bshk->bhts", x, x) * np.tril(np.ones((T, T)))  # [B, H, T, T]
    return np.einsum("bhts,bshk->bthk", scores, x)


def quadratic_torch(x: Any) -> Any:
    import torch

    T = x.shape[1]
    mask = torch.tril(torch.ones(T, T, dtype=x.dtype, device=x.device))
    scores = torch.einsum("bthk,bshk->bhts", x, x) * mask  # [B, H, T, T]
    return torch.einsum("bhts,bshk->bthk", scores, x)


def cumsum_np(x: np.ndarray) -> np.ndarray:
    return np.cumsum(x, axis=1)


def cumsum_torch(x: Any) -> Any:
    return x.cumsum(1)


def cumsum_wrong(x: Any) -> Any:
    return x.cumsum(1) * 1.5


def cumsum_oom(x: Any) -> Any:
    if x.shape[1] == OOM_T:
        raise MemoryError(f"fake: no memory for T={x.shape[1]}")
    return x.cumsum(1)


def cumsum_slow(x: Any) -> Any:
    time.sleep(SLOW_S)
    return x.cumsum(1)


def register_fakes() -> None:
    registry.mechanisms()  # discover the real ones first
    registry.register_mechanism(
        Mechanism(
            "fake_quadratic",
            90,
            "o_t = sum_s (x_t.x_s) x_s",
            f"{_M}:make_inputs",
            f"{_M}:quadratic_np",
        )
    )
    registry.register_mechanism(
        Mechanism("fake_linear", 91, "o_t = sum_s x_s", f"{_M}:make_inputs", f"{_M}:cumsum_np")
    )
    impls = [
        Impl("fake_quadratic", "numpy", "parallel", f"{_M}:quadratic_np"),
        Impl("fake_quadratic", "torch", "parallel", f"{_M}:quadratic_torch", differentiable=True),
        Impl("fake_linear", "numpy", "scan", f"{_M}:cumsum_np"),
        Impl("fake_linear", "torch", "scan", f"{_M}:cumsum_torch", differentiable=True),
        Impl("fake_linear", "torch", "wrong", f"{_M}:cumsum_wrong", differentiable=True),
        Impl("fake_linear", "torch", "oom", f"{_M}:cumsum_oom", differentiable=True),
        Impl("fake_linear", "torch", "slow", f"{_M}:cumsum_slow"),
    ]
    for impl in impls:
        registry.register(impl)
