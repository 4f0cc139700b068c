"""``python -m course_lib.grading``: generate exercises, check they are in sync, grade.

python -m course_lib.grading generate [--solutions solutions --exercises exercises]
python -m course_lib.grading check-sync [--solutions solutions --exercises exercises]
python -m course_lib.grading grade SUBMISSIONS --out grades.csv [--timeout 60]
                                   [--max-output-bytes N] [--executed DIR] [--jobs N]
"""

from __future__ import annotations

import argparse
import sys

from course_lib.grading.grade import DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_TIMEOUT_S


def _folders(p: argparse.ArgumentParser) -> None:
    p.add_argument("--solutions", default="solutions", help="solution notebooks (the source)")
    p.add_argument("--exercises", default="exercises", help="generated exercise notebooks")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.grading",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _folders(sub.add_parser("generate", help="write exercises/ from solutions/"))
    _folders(sub.add_parser("check-sync", help="exit 1 when exercises/ differs from solutions/"))
    g = sub.add_parser("grade", help="grade a folder of submitted notebooks")
    g.add_argument("submissions", help="folder of NAME.ipynb files or NAME/ subfolders")
    g.add_argument("--out", default="grades.csv", help="CSV to write (default grades.csv)")
    g.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT_S, help="seconds per cell")
    g.add_argument(
        "--max-output-bytes",
        type=int,
        default=DEFAULT_MAX_OUTPUT_BYTES,
        help="output a cell may print before it is cut and its exercise zeroed",
    )
    g.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    g.add_argument("--executed", default=None, help="folder for the executed notebooks")
    g.add_argument("--jobs", type=int, default=1, help="notebooks graded at the same time")
    args = parser.parse_args(argv)

    if args.command == "generate":
        from course_lib.grading.generate import check_in_sync, generate

        for path in generate(args.solutions, args.exercises):
            print(f"wrote {path}")
        orphans = check_in_sync(args.solutions, args.exercises)
        for name in orphans:
            print(f"warning: {args.exercises}/{name} has no solution notebook", file=sys.stderr)
        return 0
    if args.command == "check-sync":
        from course_lib.grading.generate import check_in_sync

        drifted = check_in_sync(args.solutions, args.exercises)
        for name in drifted:
            print(
                f"out of sync: {args.exercises}/{name} (run: python -m course_lib.grading generate)"
            )
        if not drifted:
            print(f"{args.exercises}/ is in sync with {args.solutions}/")
        return 1 if drifted else 0
    from course_lib.grading.grade import main_grade

    return main_grade(args)


if __name__ == "__main__":
    raise SystemExit(main())
