"""Graded exercises of chapter 09, runtime scaling.

Glossary of letters: S series (rows of timings), n measured lengths, T sequence length,
B batch, H heads, K query/key head dimension, V value head dimension, p decode position,
s bytes per number (``itemsize``).

===== ================================== ============================== ========================
id    the learner writes                 checked against                edge cases
===== ================================== ============================== ========================
09.1  ``loglog_slopes(T, t)``            ``bench.analysis.fit_loglog``  two lengths, lengths
                                         row by row                     not powers of two,
                                                                        noisy and exact laws
09.2  ``crossover_lengths(T, t_linear,   ``bench.analysis.crossover_    faster from the start,
      t_softmax)``                       length`` row by row (NaN for   slower throughout, a
                                         no crossing)                   crossing in the last gap
09.3  ``attention_memory_floor(B, T, H,  the bytes ``bench.run.make_    backward pass, K != V,
      K, V, itemsize, bandwidth_GBps,    call`` counts for softmax      bf16 (2 bytes), one
      backward)``                        attention, and ``analysis.     token
                                         memory_floor_ms``
09.4  ``decode_bytes(p, B, H, K, V,      the bytes ``bench.decode``     p = 0, K != V, large p
      itemsize)``                        records for the KV cache and
                                         the fixed state
===== ================================== ============================== ========================

The cases are drawn afresh at every check. Nothing here imports torch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from course_lib.bench import analysis
from course_lib.grading.checks import Case, Exercise, Hint

CHAPTER = "09"
TITLE = "Runtime scaling"


def _lengths(rng: np.random.Generator, n: int, start: int = 32) -> np.ndarray:
    return start * 2.0 ** np.arange(n)  # [n]: 32, 64, 128, ...


def _power_laws(rng: np.random.Generator, T: np.ndarray, S: int, noise: float) -> np.ndarray:
    """``t[s, i] = c_s T_i^{p_s}`` times log-normal noise; ``[S, n]``."""
    c = 10.0 ** rng.uniform(-5, -1, size=(S, 1))
    p = rng.uniform(0.3, 2.2, size=(S, 1))
    return c * T[None] ** p * np.exp(noise * rng.standard_normal((S, T.size)))


# --------------------------------------------------------------------------- 09.1 slopes


def _slopes(T: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.array(
        [analysis.fit_loglog(dict(zip(T.tolist(), row.tolist(), strict=True))) for row in t]
    )


def _slopes_first_last(T: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.log(t[:, -1] / t[:, 0]) / np.log(T[-1] / T[0])


def _slopes_linear_axes(T: np.ndarray, t: np.ndarray) -> np.ndarray:
    Tc = T - T.mean()
    return ((t - t.mean(axis=1, keepdims=True)) @ Tc) / (Tc @ Tc)


def _slope_cases(rng: np.random.Generator) -> list[Case]:
    T6 = _lengths(rng, 6)
    T_odd = np.sort(rng.choice(np.arange(20, 5000), size=7, replace=False)).astype(float)
    T2 = _lengths(rng, 2, start=100)
    return [
        Case("3 noisy power laws at T = 32..1024", {"T": T6, "t": _power_laws(rng, T6, 3, 0.2)}),
        Case("exact power laws", {"T": T6, "t": _power_laws(rng, T6, 4, 0.0)}),
        Case(
            "7 lengths that are not powers of 2", {"T": T_odd, "t": _power_laws(rng, T_odd, 2, 0.3)}
        ),
        Case("two lengths only", {"T": T2, "t": _power_laws(rng, T2, 3, 0.1)}),
        Case(
            "a fixed overhead plus a linear term",
            {"T": T6, "t": (5.0 + 0.01 * T6)[None] * np.exp(0.05 * rng.standard_normal((1, 6)))},
        ),
    ]


SLOPES = Exercise(
    id="09.1",
    title="log-log slopes by least squares",
    function="loglog_slopes",
    points=2,
    reference=_slopes,
    make_cases=_slope_cases,
    hints=(
        Hint(
            _slopes_first_last,
            "your slopes use only the first and the last length: fit a line through ALL the "
            "points (log T, log t) by least squares",
        ),
        Hint(
            _slopes_linear_axes,
            "you fitted t against T on linear axes; the exponent is the slope of log t "
            "against log T",
        ),
    ),
    shape_hint="One slope per row of t: the output has shape [S]",
)


# --------------------------------------------------------------------------- 09.2 crossover


def _crossovers(T: np.ndarray, t_linear: np.ndarray, t_softmax: np.ndarray) -> np.ndarray:
    soft = dict(zip(T.tolist(), t_softmax.tolist(), strict=True))
    out = []
    for row in t_linear:
        T_star, _ = analysis.crossover_length(
            dict(zip(T.tolist(), row.tolist(), strict=True)), soft
        )
        out.append(math.nan if T_star is None else T_star)
    return np.array(out)


def _crossovers_linear_T(T: np.ndarray, t_linear: np.ndarray, t_softmax: np.ndarray) -> np.ndarray:
    out = []
    for row in t_linear:
        d = np.log(row / t_softmax)
        T_star = math.nan
        if d[0] > 0:
            for i in range(1, T.size):
                if d[i] <= 0:
                    T_star = T[i - 1] + d[i - 1] / (d[i - 1] - d[i]) * (T[i] - T[i - 1])
                    break
        out.append(T_star)
    return np.array(out)


def _crossovers_first_past(T: np.ndarray, t_linear: np.ndarray, t_softmax: np.ndarray) -> Any:
    out = []
    for row in t_linear:
        d = np.log(row / t_softmax)
        past = np.flatnonzero(d <= 0)
        out.append(T[past[0]] if d[0] > 0 and past.size else math.nan)
    return np.array(out)


def _crossover_cases(rng: np.random.Generator) -> list[Case]:
    T = _lengths(rng, 7)  # 32 .. 2048
    soft = 10 ** rng.uniform(-5, -4) * T**2  # [n]
    # linear laws a T crossing a_s T = c T^2 at T* = a_s / c, picked inside the range
    T_star = np.exp(rng.uniform(np.log(40), np.log(1800), size=4))
    crossing = (soft[0] / T[0] ** 2) * T_star[:, None] * T[None]  # [4, n]
    noisy = crossing * np.exp(0.05 * rng.standard_normal(crossing.shape))
    fast = 0.5 * soft[None] * np.exp(0.1 * rng.standard_normal((1, T.size)))  # always faster
    slow = 2.0 * soft[None] + 1.0  # slower everywhere
    last_gap = (soft[0] / T[0] ** 2) * np.array([[1900.0]]) * T[None]  # crosses in the last gap
    return [
        Case(
            "four linear laws that cross the quadratic",
            {"T": T, "t_linear": crossing, "t_softmax": soft},
        ),
        Case("the same with 5% noise", {"T": T, "t_linear": noisy, "t_softmax": soft}),
        Case(
            "faster from the start, slower throughout, crossing in the last gap",
            {"T": T, "t_linear": np.concatenate([fast, slow, last_gap]), "t_softmax": soft},
        ),
    ]


CROSSOVER = Exercise(
    id="09.2",
    title="crossover length by log-log interpolation",
    function="crossover_lengths",
    points=3,
    reference=_crossovers,
    make_cases=_crossover_cases,
    hints=(
        Hint(
            _crossovers_linear_T,
            "you interpolated linearly in T; interpolate d = log(t_linear / t_softmax) "
            "linearly in log T (and take exp at the end), which is exact for power laws",
        ),
        Hint(
            _crossovers_first_past,
            "you returned the first measured length where the linear one is faster; "
            "interpolate between that length and the one before it",
        ),
    ),
    shape_hint="One crossover per row of t_linear: the output has shape [S] (NaN where none)",
    nan_hint=(
        "NaN is only for rows with no crossing inside the measured range (faster from the "
        "first length, or slower at every length)"
    ),
)


# --------------------------------------------------------------------------- 09.3 bytes


def _attention_bytes(B, T, H, K, V, itemsize, backward):
    once = itemsize * B * T * H * (2 * K + 2 * V)  # q, k, v read; o written
    return once * (2 if backward else 1)  # + do read; dq, dk, dv written


def _memory_floor(
    B: int, T: np.ndarray, H: int, K: int, V: int, itemsize: int, bandwidth_GBps: float,
    backward: bool,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    n = np.asarray(_attention_bytes(B, T, H, K, V, itemsize, backward), dtype=np.float64)
    return n, np.asarray(analysis.memory_floor_ms(n, bandwidth_GBps), dtype=np.float64)


def _floor_no_output(B, T, H, K, V, itemsize, bandwidth_GBps, backward):
    n = np.asarray(itemsize * B * T * H * (2 * K + V) * (2 if backward else 1), dtype=float)
    return n, n / (bandwidth_GBps * 1e9) * 1e3


def _floor_gib(B, T, H, K, V, itemsize, bandwidth_GBps, backward):
    n = np.asarray(_attention_bytes(B, T, H, K, V, itemsize, backward), dtype=float)
    return n, n / (bandwidth_GBps * 2.0**30) * 1e3


def _floor_forward_only(B, T, H, K, V, itemsize, bandwidth_GBps, backward):
    return _memory_floor(B, T, H, K, V, itemsize, bandwidth_GBps, False)


def _floor_cases(rng: np.random.Generator) -> list[Case]:
    T = 2 ** np.arange(8, 14)  # [n] integer lengths 256 .. 8192

    def sizes(**kw: Any) -> dict[str, Any]:
        base = {
            "B": int(rng.integers(1, 5)), "T": T, "H": int(rng.integers(1, 17)),
            "K": 64, "V": 64, "itemsize": 4, "bandwidth_GBps": float(rng.uniform(20, 5000)),
            "backward": False,
        }  # fmt: skip
        base.update(kw)
        return base

    return [
        Case("forward, float32", sizes()),
        Case("forward and backward", sizes(backward=True)),
        Case("K = 32, V = 128, bf16 (2 bytes)", sizes(K=32, V=128, itemsize=2)),
        Case("one token, T = [1]", sizes(T=np.array([1]), backward=True)),
    ]


FLOOR = Exercise(
    id="09.3",
    title="bytes moved and memory floor of attention",
    function="attention_memory_floor",
    points=2,
    reference=_memory_floor,
    make_cases=_floor_cases,
    output_names=("bytes_moved", "floor_ms"),
    hints=(
        Hint(
            _floor_no_output,
            "you counted the inputs q, k, v but not the output o, which must be written once "
            "(and in the backward pass its gradient do must be read)",
        ),
        Hint(
            _floor_gib,
            "bandwidths are quoted in GB/s = 1e9 bytes per second, not 2**30",
        ),
        Hint(
            _floor_forward_only,
            "with backward=True the backward pass also reads do and writes dq, dk and dv",
        ),
    ),
    shape_hint="Both outputs have one entry per length in T",
)


# --------------------------------------------------------------------------- 09.4 decode


def _decode_bytes(p, B, H, K, V, itemsize):
    cache = np.asarray(itemsize * (p + 1) * B * H * (K + V), dtype=np.float64)
    state = np.full(cache.shape, float(itemsize * B * H * K * V))
    return cache, state


def _decode_p_tokens(p, B, H, K, V, itemsize):
    return _decode_bytes(p - 1, B, H, K, V, itemsize)


def _decode_keys_only(p, B, H, K, V, itemsize):
    cache = np.asarray(itemsize * (p + 1) * B * H * K, dtype=np.float64)
    return cache, _decode_bytes(p, B, H, K, V, itemsize)[1]


def _decode_cases(rng: np.random.Generator) -> list[Case]:
    p = np.array([0, 1, 7, 100, 4095])

    def sizes(**kw: Any) -> dict[str, Any]:
        base = {"p": p, "B": int(rng.integers(1, 9)), "H": int(rng.integers(1, 33)),
                "K": 64, "V": 64, "itemsize": 2}  # fmt: skip
        base.update(kw)
        return base

    return [
        Case("bf16, K = V = 64", sizes()),
        Case("float32, K = 16, V = 48", sizes(K=16, V=48, itemsize=4)),
        Case("long positions", sizes(p=np.array([2**16, 2**20]))),
    ]


DECODE = Exercise(
    id="09.4",
    title="KV cache bytes against a fixed state",
    function="decode_bytes",
    points=2,
    reference=_decode_bytes,
    make_cases=_decode_cases,
    output_names=("kv_cache_bytes", "state_bytes"),
    hints=(
        Hint(
            _decode_p_tokens,
            "at position p the cache holds p + 1 tokens (positions 0..p, the new one included)",
        ),
        Hint(
            _decode_keys_only,
            "the cache holds the values as well as the keys: K + V numbers per head and token",
        ),
    ),
    shape_hint="Both outputs have one entry per position in p",
)


EXERCISES = (SLOPES, CROSSOVER, FLOOR, DECODE)
