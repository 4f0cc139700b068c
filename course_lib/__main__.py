"""``python -m course_lib``: report device, Triton mode, versions and the registry."""

from __future__ import annotations

import argparse

from course_lib import registry, runtime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib", description=__doc__)
    parser.add_argument("--list", action="store_true", help="also list every implementation")
    args = parser.parse_args(argv)
    for key, value in runtime.report().items():
        print(f"{key:>12}: {value}")
    impls = registry.implementations()
    print(
        f"{'registry':>12}: {len(registry.mechanisms())} mechanisms, {len(impls)} implementations"
    )
    if args.list:
        for impl in impls:
            print(f"{'':>14}{impl.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
