"""The benchmark: time and memory against sequence length, for every registered implementation.

Glossary: ``B`` batch, ``T`` sequence length, ``H`` heads, ``K``/``V`` key/value head dims,
``D`` channels, ``N`` state size (as :class:`course_lib.registry.Sizes`).

From a notebook::

    from course_lib.bench import run_benchmark, to_markdown
    results = run_benchmark(mechanisms=["softmax_attention", "linear_attention"],
                            lengths=(256, 512, 1024), mode="both", out_dir="bench_out")

From a shell: ``python -m course_lib.bench --help``. Modules: :mod:`.run` (the run),
:mod:`.timing` (timers, peak memory), :mod:`.peers` (torch SDPA, fla-core, mamba_ssm),
:mod:`.decode` (per-token latency), :mod:`.analysis` (slopes, crossovers, tables),
:mod:`.plots`.
"""

from __future__ import annotations

from course_lib.bench.analysis import (
    crossover,
    crossover_length,
    fit_loglog,
    fit_slope,
    load_results,
    memory_floor_ms,
    slope,
    slope_between,
    summarize,
    times,
    to_markdown,
)
from course_lib.bench.run import run_benchmark, save_results, write_outputs

__all__ = [
    "crossover",
    "crossover_length",
    "fit_loglog",
    "fit_slope",
    "load_results",
    "memory_floor_ms",
    "run_benchmark",
    "save_results",
    "slope",
    "slope_between",
    "summarize",
    "times",
    "to_markdown",
    "write_outputs",
]
