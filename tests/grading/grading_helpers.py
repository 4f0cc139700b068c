"""Shared by the grading tests: the pilot notebooks and their solution code as modules.

Glossary: a *solution cell* holds ``### BEGIN SOLUTION`` regions; a *check cell* calls
``check("NN.M", fn)``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import nbformat

ROOT = Path(__file__).resolve().parents[2]
SOLUTIONS = ROOT / "solutions"
EXERCISES = ROOT / "exercises"
PILOT = "01_softmax_attention.ipynb"


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def cell(nb: nbformat.NotebookNode, cell_id: str) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.get("id") == cell_id)


def solution_module(tmp_path: Path, cell_ids: tuple[str, ...]) -> ModuleType:
    """The pilot's cells ``cell_ids`` written to a file and imported (Triton's ``jit`` needs
    the source in a file, so ``exec`` of a string would not do)."""
    nb = read(SOLUTIONS / PILOT)
    source = "import numpy as np\n\n" + "\n\n".join(cell(nb, i).source for i in cell_ids)
    path = tmp_path / f"pilot_{abs(hash(cell_ids))}.py"
    path.write_text(source + "\n")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CHAPTER_PRELUDE = """import numpy as np
import torch

from course_lib import runtime

runtime.require_triton()
import triton
import triton.language as tl
"""


def chapter_module(folder: str, chapter: str, tmp_path: Path) -> ModuleType:
    """Every solution-role cell of ``folder/NN_*.ipynb`` written to one file and imported.

    ``folder`` is ``"solutions"`` or ``"exercises"``; the tests thereby follow the notebooks.
    """
    (notebook,) = (ROOT / folder).glob(f"{chapter}_*.ipynb")
    cells = [
        c.source
        for c in read(notebook).cells
        if c.metadata.get("course_lib", {}).get("role") == "solution"
    ]
    assert cells, f"{folder}/{notebook.name}: no solution cells"
    path = tmp_path / f"{folder}_{chapter}.py"
    path.write_text(CHAPTER_PRELUDE + "\n\n" + "\n\n".join(cells) + "\n")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
