"""Shared test set-up: fix the Triton mode first, then hypothesis and GPU markers."""

from __future__ import annotations

import pytest

from course_lib import runtime

# Before anything imports triton (fla-core does): on CPU this sets TRITON_INTERPRET=1.
TRITON_MODE = runtime.triton_mode()

if TRITON_MODE != "compiled":
    import torch

    # The unit tests use tiny tensors: one thread avoids the 2-core machine thrashing
    # when notebook kernels or other workers run beside them.
    torch.set_num_threads(1)

try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "course",
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        derandomize=True,
    )
    settings.load_profile("course")
except ImportError:  # pragma: no cover
    pass


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if TRITON_MODE == "compiled":
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (compiled Triton)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
