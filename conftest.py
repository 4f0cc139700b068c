"""Root pytest set-up: notebooks are always checked with nbval and the sanitize file.

Kept here rather than in ``addopts`` so that ``pytest -p no:nbval tests/...`` still works.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("nbval"):
        config.option.nbval = True
        config.option.nbval_current_env = True  # the kernel of the interpreter running pytest
        if not config.option.nbval_sanitize_with:
            config.option.nbval_sanitize_with = str(ROOT / "tests" / "nbval_sanitize.cfg")
