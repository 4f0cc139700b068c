"""Timing one callable and measuring its peak memory, on CUDA or on the CPU.

Glossary: ``ms`` milliseconds per call (median); ``peak_bytes`` the most memory held during
one call, measured by the method recorded next to it.

* CUDA: ``triton.testing.do_bench(fn, return_mode="median")`` after a warm-up call (which
  also triggers any Triton compilation); peak memory from ``torch.cuda.max_memory_allocated``
  after ``reset_peak_memory_stats`` -- it includes the inputs already on the device.
* CPU: ``torch.utils.benchmark.Timer(...).blocked_autorange()`` median after a warm-up
  call, with as many threads as torch uses. numpy allocations are traced by ``tracemalloc``
  (peak over one call, inputs excluded); the torch CPU allocator keeps no peak counter, so
  torch-on-CPU peak memory is not measured and the JSON says so.

A call that alone exceeds the time budget is not repeated: when the warm-up call is over
the budget, one more call is timed (the first may be compilation or autotuning); if that
one is over too, its time is recorded (``method`` says so) and the caller skips the larger
sizes.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Measurement:
    ms: float  # median milliseconds per call
    method: str  # how ``ms`` was measured
    peak_bytes: int | None  # peak memory of one call (None: not measurable here)
    memory_method: str
    over_budget: bool = False  # the warm-up call alone exceeded the budget

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_oom(err: BaseException) -> bool:
    """True for torch's and Python's out-of-memory errors (and CUDA OOM RuntimeErrors)."""
    if isinstance(err, MemoryError):
        return True
    try:
        import torch

        if isinstance(err, torch.cuda.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _timed_call(fn: Callable[[], Any], device: str) -> float:
    """Milliseconds for one call, synchronised on CUDA."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def peak_memory(fn: Callable[[], Any], device: str, backend: str) -> tuple[int | None, str]:
    """Peak bytes during one call of ``fn`` and the method that measured them."""
    if device.startswith("cuda") and backend != "numpy":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (
            int(torch.cuda.max_memory_allocated()),
            f"torch.cuda.max_memory_allocated over one call (includes the {held} bytes "
            "allocated before it: inputs and caches)",
        )
    if backend == "numpy":
        gc.collect()
        tracemalloc.start()
        try:
            fn()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return int(peak), "tracemalloc peak over one call (numpy allocations, inputs excluded)"
    return None, "not measured (the torch CPU allocator keeps no peak counter)"


def measure(
    fn: Callable[[], Any],
    device: str,
    backend: str = "torch",
    *,
    min_run_time: float = 0.1,
    budget_ms: float | None = None,
    memory: bool = True,
    warmup: bool = True,
) -> Measurement:
    """Median milliseconds per call of ``fn()`` (warm-up first) and its peak memory.

    ``budget_ms``: when the warm-up call and one more call both take longer, the second
    call's time is returned with ``over_budget=True`` and nothing is repeated.
    ``warmup=False`` when the caller already ran it.
    """
    warm_ms = _timed_call(fn, device) if warmup else 0.0  # compilation, caches, allocator
    if budget_ms is not None and warm_ms > budget_ms:
        # The first call may be mostly compilation or autotuning (fla's backward took 76 s
        # on its first call on an H200, then milliseconds): a second call decides.
        again_ms = _timed_call(fn, device)
        if again_ms > budget_ms:
            method = "second call (the first compiles); over the time budget, not repeated"
            none = "not measured (over the time budget)"
            return Measurement(again_ms, method, None, none, True)
    peak, mem_method = peak_memory(fn, device, backend) if memory else (None, "not measured")
    if device.startswith("cuda") and backend != "numpy":
        import triton.testing

        ms = float(triton.testing.do_bench(fn, return_mode="median"))
        return Measurement(ms, "triton.testing.do_bench median", peak, mem_method)
    import torch
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    result = timer.blocked_autorange(min_run_time=min_run_time)
    return Measurement(
        float(result.median) * 1e3,
        f"torch.utils.benchmark.Timer.blocked_autorange median ({torch.get_num_threads()} threads)",
        peak,
        mem_method,
    )
