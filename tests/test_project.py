"""Project hygiene: lint, the README's commands, CI, and the two install files agree."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _readme_command(label: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {label} -->\s*```(?:bash|sh)?\n(.+?)\n```", text, re.S)
    assert match, f"README.md has no command marked <!-- {label} -->"
    return match.group(1).strip()


def test_ci_runs_the_readme_test_command() -> None:
    command = _readme_command("test-command").splitlines()[-1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert command in ci.splitlines(), f"{command!r} is not a line of .ci/run"
    assert "torch==2.13.0" in ci


def test_ruff_lint_and_format() -> None:
    for args in (["check", "."], ["format", "--check", "."]):
        out = subprocess.run(
            [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stdout + out.stderr


def test_environment_yml_installs_the_project() -> None:
    env = (ROOT / "environment.yml").read_text()
    assert "-e .[test]" in env, "environment.yml must install the project, not its own list"
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    py = re.search(r"python>=([\d.]+)", env)
    assert py and meta["requires-python"] == f">={py.group(1)}"
    assert not re.search(r"^\s*-\s*(numpy|torch|triton|matplotlib|ipywidgets)", env, re.M)


def test_dependencies_are_ranges() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = meta["dependencies"] + [d for ds in meta["optional-dependencies"].values() for d in ds]
    pinned = [d for d in deps if "==" in d.split(";")[0]]
    assert not pinned, f"exact pins: {pinned}"
    triton = [d for d in deps if d.startswith("triton")]
    assert triton and all("platform_system == 'Linux'" in d for d in triton)
