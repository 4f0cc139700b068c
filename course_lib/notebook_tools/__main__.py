"""``python -m course_lib.notebook_tools stamp NB...``: write the setup cell into notebooks."""

from __future__ import annotations

import argparse

import nbformat

from course_lib.notebook_tools import SETUP_TAG, setup_cell_source


def stamp(path: str) -> bool:
    """Make the first code cell of ``path`` the setup cell; True if the file changed."""
    nb = nbformat.read(path, as_version=4)
    source = setup_cell_source()
    first = next((c for c in nb.cells if c.cell_type == "code"), None)
    if first is not None and SETUP_TAG in first.metadata.get("tags", []):
        if first.source == source:
            return False
        first.source = source
    else:
        cell = nbformat.v4.new_code_cell(source, metadata={"tags": [SETUP_TAG]})
        index = nb.cells.index(first) if first is not None else len(nb.cells)
        nb.cells.insert(index, cell)
    nbformat.write(nb, path)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.notebook_tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stamp", help="write the setup cell into notebooks")
    p.add_argument("notebooks", nargs="+")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        print(("stamped " if stamp(path) else "up to date ") + path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
