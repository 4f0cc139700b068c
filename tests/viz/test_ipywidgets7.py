"""The widgets under Colab's ipywidgets 7: installed into a side folder for one subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import ipywidgets, numpy as np
assert ipywidgets.__version__.startswith("7."), ipywidgets.__version__
from IPython.core.interactiveshell import InteractiveShell
InteractiveShell.instance()
from course_lib import viz
moves = {"StateMatrixViewer": ("t", 5), "GatingDecayExplorer": ("strength", 0.6),
         "SSMFilterViewer": ("a_re", -2.0), "SelectivityViewer": ("log10_dt_other", 0.5),
         "RuntimeScalingExplorer": ("mode", "fwdbwd")}
for name, (control, value) in moves.items():
    w = getattr(viz, name)()
    w.show()
    before = {k: v.copy() for k, v in w.data().items()}
    w.controls[control].value = value
    assert any(not np.array_equal(before[k], v) for k, v in w.data().items()), name
    print("ok", name, ipywidgets.__version__)
"""


@pytest.mark.slow
def test_widgets_work_with_ipywidgets_7(tmp_path: Path) -> None:
    target = tmp_path / "ipyw7"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
               "ipywidgets>=7.7,<8", "widgetsnbextension>=3.6,<4", "jupyterlab_widgets>=1,<2",
               "ipython_genutils"]  # fmt: skip
    subprocess.run(install, check=True, capture_output=True)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])
    )
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("ok ") == SCRIPT.count(": (")
