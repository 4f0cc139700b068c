"""``python -m course_lib.notebook_tools stamp NB...``: write the setup cell into notebooks."""

from __future__ import annotations

import argparse

import nbformat

from course_lib.notebook_tools import KERNELSPEC, SETUP_TAG, setup_cell_source


def stamp(path: str) -> bool:
    """Make the first code cell of ``path`` the setup cell; True if the file changed."""
    nb = nbformat.read(path, as_version=4)
    source = setup_cell_source()
    changed = nb.metadata.get("kernelspec") != KERNELSPEC
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    first = next((c for c in nb.cells if c.cell_type == "code"), None)
    if first is not None and SETUP_TAG in first.metadata.get("tags", []):
        if first.source == source and not changed:
            return False
        first.source = source
    else:
        cell = nbformat.v4.new_code_cell(source, metadata={"tags": [SETUP_TAG]})
        index = nb.cells.index(first) if first is not None else len(nb.cells)
        nb.cells.insert(index, cell)
    nbformat.write(nb, path)
    return True


def cell_seconds(nb: nbformat.NotebookNode) -> list[tuple[int, float]]:
    """(cell index, seconds) of every executed code cell, slowest first, from the timing
    metadata nbclient records (``metadata.execution``)."""
    from datetime import datetime

    out = []
    for i, cell in enumerate(nb.cells):
        times = cell.get("metadata", {}).get("execution", {})
        start, end = times.get("iopub.execute_input"), times.get("shell.execute_reply")
        if cell.cell_type == "code" and start and end:
            span = datetime.fromisoformat(end) - datetime.fromisoformat(start)
            out.append((i, span.total_seconds()))
    return sorted(out, key=lambda item: -item[1])


def execute(
    path: str, timeout: int, out_dir: str | None
) -> tuple[float, str | None, list[tuple[int, float]]]:
    """Run a notebook top to bottom in a fresh kernel.

    Returns (seconds, first error or None, per-cell seconds slowest first). A failing
    cell, a cell over ``timeout`` seconds and a kernel that dies are all reported as the
    error, so a run over many notebooks goes on with the next one.
    """
    import time
    from pathlib import Path

    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # a stored notebook keeps its last run's times: drop them, so a
        cell.get("metadata", {}).pop("execution", None)  # cell that never ran shows none
    start = time.perf_counter()
    error = None
    try:
        NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(Path(path).parent)}},
        ).execute()
    except CellExecutionError as exc:
        error = str(exc).strip().splitlines()[-1]
    except CellTimeoutError:
        started = [
            i
            for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and "iopub.execute_input" in c.metadata.get("execution", {})
        ]
        which = f"cell {started[-1]}" if started else "a cell"
        error = f"{which} ran longer than --timeout {timeout} s"
    except DeadKernelError:
        error = "the kernel died (killed from outside, or out of memory)"
    seconds = time.perf_counter() - start
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(Path(out_dir) / Path(path).name))
    return seconds, error, cell_seconds(nb)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.notebook_tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stamp", help="write the setup cell into notebooks")
    p.add_argument("notebooks", nargs="+")
    r = sub.add_parser("run", help="execute notebooks in fresh kernels and report times")
    r.add_argument("notebooks", nargs="+")
    r.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    r.add_argument("--out", default=None, help="folder for the executed copies")
    args = parser.parse_args(argv)
    if args.command == "stamp":
        for path in args.notebooks:
            print(("stamped " if stamp(path) else "up to date ") + path)
        return 0
    failed = 0
    for path in args.notebooks:
        seconds, error, cells = execute(path, args.timeout, args.out)
        failed += error is not None
        slowest = ", ".join(f"cell {i} {s:.1f} s" for i, s in cells[:3])
        status = f"  ERROR {error}" if error else "  ok"
        print(f"{path}: {seconds:.1f} s{status}  (slowest: {slowest or 'none'})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
