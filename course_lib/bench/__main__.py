"""``python -m course_lib.bench``: time the registry against sequence length.

Writes ``results.json``, ``tables.md`` and ``time_<mode>.png`` (and ``decode.png``) to
``--out``. Letters as in :class:`course_lib.registry.Sizes`: ``B`` batch, ``T`` length,
``H`` heads, ``K = V`` head dim, ``D`` channels, ``N`` state size.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from course_lib.bench.analysis import load_results
from course_lib.bench.run import merge_results, run_benchmark, write_outputs


def _plugin(spec: str) -> None:
    """``module`` or ``module:function``: import it (and call the function) first."""
    module, _, fn = spec.partition(":")
    mod = importlib.import_module(module)
    if fn:
        getattr(mod, fn)()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m course_lib.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--mechanisms", nargs="+", help="default: every registered mechanism")
    p.add_argument("--backends", nargs="+", help="numpy, torch, triton (default: all)")
    p.add_argument("--forms", nargs="+", help="default: every form")
    p.add_argument("--cases", nargs="+", help="input cases (default: one per mechanism)")
    p.add_argument("--lengths", nargs="+", type=int, default=[256, 512, 1024])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--channels", type=int, default=None, help="D; default heads * head-dim")
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"]
    )
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if visible)")
    p.add_argument("--mode", default="fwd", choices=["fwd", "fwdbwd", "both"])
    p.add_argument("--decode", action="store_true", help="also time one decode step")
    p.add_argument(
        "--decode-only", action="store_true", help="time only the decode steps (no forwards)"
    )
    p.add_argument("--no-peers", action="store_true", help="do not time SDPA / fla / mamba")
    p.add_argument(
        "--peers-last",
        action="store_true",
        help="time the peers after the course's series (default: before)",
    )
    p.add_argument("--out", default="bench_out", help="output folder (default: bench_out)")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="RESULTS_JSON",
        help="time nothing: pool these results.json files (parts of one recorded run, one "
        "machine) into --out, with tables and plots",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--budget-ms",
        type=float,
        default=None,
        help="skip longer lengths once one call takes longer "
        "(default: 250 on the CPU, 2000 on CUDA; 0: no budget)",
    )
    p.add_argument("--min-run-time", type=float, default=0.1, help="CPU timer, seconds")
    p.add_argument("--check-length", type=int, default=32, help="T of the correctness check")
    p.add_argument(
        "--include-interpreter",
        action="store_true",
        help="also time Triton in the CPU interpreter (slow, meaningless times)",
    )
    p.add_argument("--baseline", default="softmax_attention")
    p.add_argument(
        "--bandwidth-gbps",
        type=float,
        default=None,
        help="memory bandwidth for the floor column of tables.md",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        help="module[:function] to import first (extra registrations)",
    )
    args = p.parse_args(argv)
    for spec in args.plugin:
        _plugin(spec)
    if args.merge:
        parts = [load_results(path) for path in args.merge]
        merged = merge_results(parts, sources=args.merge)
        files = write_outputs(
            merged, args.out, plots=not args.no_plots, bandwidth_GBps=args.bandwidth_gbps
        )
        print((Path(args.out) / "tables.md").read_text())
        print(f"written to {args.out}: " + ", ".join(sorted(files.values())))
        return 0
    results = run_benchmark(
        mechanisms=args.mechanisms,
        backends=args.backends,
        forms=args.forms,
        lengths=args.lengths,
        batch=args.batch,
        heads=args.heads,
        head_dim=args.head_dim,
        d_state=args.d_state,
        channels=args.channels,
        dtype=args.dtype,
        device=args.device,
        mode=args.mode,
        decode=args.decode,
        peers=not args.no_peers,
        out_dir=args.out,
        progress=not args.no_progress,
        cases=args.cases,
        budget_ms="auto" if args.budget_ms is None else (args.budget_ms or None),
        min_run_time=args.min_run_time,
        check_length=args.check_length,
        include_interpreter=args.include_interpreter,
        baseline=args.baseline,
        plots=not args.no_plots,
        bandwidth_GBps=args.bandwidth_gbps,
        threads=args.threads,
        peers_last=args.peers_last,
        decode_only=args.decode_only,
    )
    print((Path(args.out) / "tables.md").read_text())
    print(f"written to {args.out}: " + ", ".join(sorted(results.get("files", {}).values())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
