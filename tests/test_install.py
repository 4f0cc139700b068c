"""Set-up as a learner meets it: the README's lab command and the Colab setup cell."""

from __future__ import annotations

import os
import re
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from course_lib.notebook_tools import REPO_URL, setup_cell_source

ROOT = Path(__file__).resolve().parents[1]


def test_readme_lab_command_opens_the_notebooks() -> None:
    text = (ROOT / "README.md").read_text()
    cmd = re.search(r"<!-- lab-command -->\s*```bash\n(.+?)\n```", text, re.S).group(1)
    assert REPO_URL in cmd, "the README clones the repository the setup cell installs from"
    assert "pip install -e ." in cmd and cmd.rstrip().endswith("jupyter lab notebooks/")
    assert sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))[0].startswith("00_")
    out = subprocess.run(
        [sys.executable, "-m", "jupyterlab", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip()[0] == "4", out.stdout + out.stderr


@pytest.mark.slow
def test_colab_setup_cell_installs_the_course(tmp_path: Path) -> None:
    """Given the Colab signal, the first cell pip-installs the course, then reports."""
    venv = tmp_path / "colab"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The fresh environment sees this one's packages (torch, numpy, ...) but not course_lib:
    # a .pth line adds the directory without running the editable-install hooks in it.
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    parents = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    Path(purelib, "parent_env.pth").write_text("\n".join(sorted(parents)) + "\n")
    check = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('course_lib'))"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert check.stdout.strip() == "None", "course_lib must not be importable before the cell"
    env = dict(os.environ, COURSE_ON_COLAB="1", COURSE_INSTALL_FROM=str(ROOT))
    env.pop("PYTHONPATH", None)
    cell = setup_cell_source() + "\nimport course_lib\nprint('installed at', course_lib.__file__)\n"
    out = subprocess.run(
        [str(python), "-c", cell], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "device: cpu" in out.stdout or "device: cuda" in out.stdout
    assert f"installed at {venv}" in out.stdout, out.stdout


def test_setup_cell_does_not_install_outside_colab(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("COURSE_ON_COLAB",)}
    env["COURSE_INSTALL_FROM"] = str(tmp_path / "no-such-package")  # would fail if used
    out = subprocess.run(
        [sys.executable, "-c", setup_cell_source()], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("device: ")
