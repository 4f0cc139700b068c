"""``python -m course_lib.notebook_tools run``: errors are reported, the run goes on."""

from __future__ import annotations

import nbformat
import pytest

from course_lib.notebook_tools.__main__ import cell_seconds, execute, main


def _notebook(path, *sources: str) -> str:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in sources]
    nbformat.write(nb, str(path))
    return str(path)


def test_cell_seconds_reads_nbclient_timing() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("text"), nbformat.v4.new_code_cell("1")]
    nb.cells.append(nbformat.v4.new_code_cell("2"))
    nb.cells[1].metadata["execution"] = {
        "iopub.execute_input": "2026-11-28T10:00:00.000000Z",
        "shell.execute_reply": "2026-11-28T10:00:01.500000Z",
    }
    nb.cells[2].metadata["execution"] = {
        "iopub.execute_input": "2026-11-28T10:00:01.600000Z",
        "shell.execute_reply": "2026-11-28T10:00:04.600000Z",
    }
    assert cell_seconds(nb) == [(2, pytest.approx(3.0)), (1, pytest.approx(1.5))]


def test_failing_and_slow_notebooks_are_reported_and_the_run_goes_on(tmp_path, capsys) -> None:
    bad = _notebook(tmp_path / "a_bad.ipynb", "x = 1", "raise ValueError('broken on purpose')")
    slow = _notebook(tmp_path / "b_slow.ipynb", "z = 0", "import time; time.sleep(30)")
    good = _notebook(tmp_path / "c_good.ipynb", "import time; time.sleep(0.3)", "y = 2")
    seconds, error, cells = execute(bad, timeout=60, out_dir=None)
    assert "broken on purpose" in error and seconds > 0
    assert [i for i, _ in cells] == [0, 1] or [i for i, _ in cells] == [1, 0]
    assert main(["run", bad, slow, good, "--timeout", "3"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    assert "ERROR" in out[0] and "ValueError" in out[0]
    assert "ERROR cell 1 ran longer than --timeout 3 s" in out[1]  # names the cell
    assert out[2].startswith(f"{good}: ") and "  ok" in out[2] and "slowest: cell 0" in out[2]


def test_times_stored_from_an_earlier_run_do_not_blame_the_wrong_cell(tmp_path) -> None:
    """A stored notebook carries its last run's timing metadata; after a timeout the cells
    that never ran still had it, so the runner named the last cell and listed old times."""
    path = _notebook(tmp_path / "d_stored.ipynb", "x = 1", "import time; time.sleep(30)", "y = 2")
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        cell.metadata["execution"] = {
            "iopub.execute_input": "2026-11-28T10:00:00.000000Z",
            "shell.execute_reply": "2026-11-28T10:00:01.000000Z",
        }
    nbformat.write(nb, path)
    _, error, cells = execute(path, timeout=3, out_dir=None)
    assert error == "cell 1 ran longer than --timeout 3 s"
    assert [i for i, _ in cells] == [0]  # only the cell that ran to its end
