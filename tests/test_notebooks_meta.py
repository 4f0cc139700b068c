"""Every notebook starts with the stamped setup cell; every chapter exists; none is empty."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from course_lib.notebook_tools import KERNELSPEC, setup_cell_source

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(
    p for folder in ("notebooks", "solutions", "exercises") for p in (ROOT / folder).glob("*.ipynb")
)


def test_every_chapter_exists() -> None:
    numbers = {p.name[:2] for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert numbers >= {f"{n:02d}" for n in range(10)}, sorted(numbers)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_setup_cell_and_kernel(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert first.source == setup_cell_source(), (
        f"re-stamp: python -m course_lib.notebook_tools stamp {path.relative_to(ROOT)}"
    )
    assert nb.metadata.get("kernelspec") == KERNELSPEC
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 3


@pytest.mark.parametrize(
    "path", [p for p in NOTEBOOKS if p.parent.name != "exercises"], ids=lambda p: p.name
)
def test_stored_executed(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert all(c.execution_count for c in code), f"{path.name} is not stored executed"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name} stores an error output"
