"""Fixtures for the benchmark tests: fake mechanisms registered only for one test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from course_lib import registry

HERE = Path(__file__).parent
if str(HERE) not in sys.path:  # bench_fakes is resolved by "module:function" strings
    sys.path.insert(0, str(HERE))


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real registry plus the fakes of ``bench_fakes``; restored after the test."""
    import bench_fakes

    registry.mechanisms()  # discover the real registrations before copying
    monkeypatch.setattr(registry, "_MECHANISMS", dict(registry._MECHANISMS))
    monkeypatch.setattr(registry, "_IMPLS", dict(registry._IMPLS))
    bench_fakes.register_fakes()
