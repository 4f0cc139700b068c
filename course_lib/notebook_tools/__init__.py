"""Tools for the course's notebooks: the setup cell every chapter starts with.

The repository URL lives here only (:data:`REPO_URL`). Every notebook's first cell is
stamped from :func:`setup_cell_source`; ``tests/test_notebooks_meta.py`` fails when a
notebook's first cell drifts from it. Re-stamp with
``python -m course_lib.notebook_tools stamp notebooks/*.ipynb``.
"""

from __future__ import annotations

REPO_URL = "https://github.com/linearizing-attention/linearizing-attention"
SETUP_TAG = "course-setup"
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}

_SETUP = """# Course setup: on Colab this installs the course; everywhere it reports the device.
import importlib.util
import os
import subprocess
import sys

COURSE_SOURCE = os.environ.get(
    "COURSE_INSTALL_FROM", "git+{url}"
)
on_colab = "google.colab" in sys.modules or os.environ.get("COURSE_ON_COLAB") == "1"
if on_colab and importlib.util.find_spec("course_lib") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", COURSE_SOURCE], check=True)

from course_lib.notebook_tools import setup_report

setup_report()"""


def setup_cell_source() -> str:
    return _SETUP.format(url=REPO_URL)


def setup_report(verbose: bool = False) -> None:
    """Print the device and Triton mode in one line (all versions with ``verbose``)."""
    from course_lib import runtime

    info = runtime.report()
    line = f"device: {info['device']} | Triton: {info['triton_mode']}"
    if "note" in info:
        line += f"\nnote: {info['note']}"
    print(line)
    if verbose:
        for key, value in info.items():
            print(f"{key:>12}: {value}")


def on_gpu() -> bool:
    """True when the notebook runs on a CUDA GPU: chapters pick their sizes with it."""
    from course_lib import runtime

    return runtime.default_device() == "cuda"


def show_source(obj: object) -> None:
    """Display the source of a library function or class as highlighted Python.

    Chapters show the library's code where the code is the lesson, instead of keeping a
    second copy of it in the notebook.
    """
    import inspect

    from IPython.display import Markdown, display

    target = getattr(obj, "fn", obj)  # a @triton.jit kernel keeps its Python function in .fn
    display(Markdown(f"```python\n{inspect.getsource(target).rstrip()}\n```"))
