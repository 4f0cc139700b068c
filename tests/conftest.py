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


@pytest.fixture
def record_launches(monkeypatch: pytest.MonkeyPatch):
    """``record(module, capability, fn)``: run ``fn`` with every ``*_kernel`` of the Triton
    ``module`` replaced by a recorder and the GPU reporting compute ``capability`` (what a
    launcher would launch on that GPU; nothing runs). Returns (kernel name, launch
    keywords) per launch."""

    def record(module, capability, fn) -> list[tuple[str, dict]]:
        launches: list[tuple[str, dict]] = []

        class Recorder:
            def __init__(self, name: str) -> None:
                self.name = name

            def __getitem__(self, grid):
                return lambda *args, **kwargs: launches.append((self.name, kwargs))

        with monkeypatch.context() as m:
            for name in dir(module):
                if name.endswith("_kernel"):
                    m.setattr(module, name, Recorder(name))
            m.setattr(runtime, "device_capability", lambda device: capability)
            fn()
        return launches

    return record
