"""Graded exercises of chapter 01, softmax attention.

Glossary of dimension letters: B batch, T sequence length (queries = keys here), H heads,
K query/key head dimension, V value head dimension, N rows of partial softmax results,
R and C rows and columns of a matrix of logits.

===== ================================ ===================== =====================================
id    the learner writes               checked against       edge cases
===== ================================ ===================== =====================================
01.1  ``stable_softmax(x, axis=-1)``   ``numpy_ref.softmax`` other axis, -inf entries, logits of
                                                             1e4, one element, float32 input
01.2  ``causal_attention(q, k, v,      ``numpy_ref.softmax_  T=1, a given scale, odd sizes, a long
      scale=None)``                    attention``           sequence with scores in the thousands
01.3  ``merge_partials(m1, l1, acc1,   ``numpy_ref.online_   maxima 1600 apart, empty blocks
      m2, l2, acc2)``                  softmax_merge``       (m = -inf, l = 0, acc = 0)
01.4  ``triton_softmax(x)`` (the       ``numpy_ref.softmax`` C not a power of two, one element,
      kernel body)                                           large logits; outputs poisoned
===== ================================ ===================== =====================================

The cases are drawn afresh at every check, so a function cannot pass by remembering
answers. Torch and Triton are imported only when the Triton exercise's cases are drawn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from course_lib.grading.checks import Case, Exercise, Hint
from course_lib.softmax_attention import numpy_ref

CHAPTER = "01"
TITLE = "Softmax attention"


# --------------------------------------------------------------------------- 01.1 softmax


def _softmax_cases(rng: np.random.Generator) -> list[Case]:
    x_masked = rng.standard_normal((4, 6))
    x_masked[rng.random((4, 6)) < 0.4] = -np.inf
    x_masked[:, 0] = rng.standard_normal(4)  # every row keeps at least one finite logit
    return [
        Case("random [3, 5]", {"x": rng.standard_normal((3, 5))}),
        Case("3-d [2, 4, 7], last axis", {"x": rng.standard_normal((2, 4, 7))}),
        Case("axis=0 on [6, 3]", {"x": rng.standard_normal((6, 3)), "axis": 0}),
        Case("one element [1, 1]", {"x": rng.standard_normal((1, 1))}),
        Case("masked logits (-inf) in [4, 6]", {"x": x_masked}),
        Case("large logits (up to about 1e4)", {"x": rng.standard_normal((3, 9)) * 3000.0}),
        Case("float32 input [3, 8]", {"x": rng.standard_normal((3, 8)).astype(np.float32)}),
    ]


def _softmax_wrong_axis(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return numpy_ref.softmax(x, axis=0 if axis in (-1, x.ndim - 1) else -1)


SOFTMAX = Exercise(
    id="01.1",
    title="stable softmax",
    function="stable_softmax",
    points=2,
    reference=numpy_ref.softmax,
    make_cases=_softmax_cases,
    hints=(
        Hint(
            _softmax_wrong_axis,
            "your output is the softmax along another axis: reduce (max and sum) along `axis`",
        ),
    ),
    shape_hint="The softmax keeps the shape of x (reduce with keepdims=True)",
    nan_hint=(
        "exp overflows above about 709 in float64 (88 in float32): subtract the maximum "
        "along `axis` before exp, which leaves the softmax unchanged"
    ),
    time_limit_s=5.0,
)


# --------------------------------------------------------------------------- 01.2 attention


def _attention_inputs(
    rng: np.random.Generator, B: int, T: int, H: int, K: int, V: int, spread: float = 1.0
) -> dict[str, Any]:
    return {
        "q": rng.standard_normal((B, T, H, K)) * spread,
        "k": rng.standard_normal((B, T, H, K)) * spread,
        "v": rng.standard_normal((B, T, H, V)),
    }


def _attention_cases(rng: np.random.Generator) -> list[Case]:
    return [
        Case("B=2, T=7, H=2, K=4, V=3", _attention_inputs(rng, 2, 7, 2, 4, 3)),
        Case("one token, T=1", _attention_inputs(rng, 1, 1, 1, 4, 2)),
        Case("scale=0.3 given", {**_attention_inputs(rng, 1, 9, 3, 8, 8), "scale": 0.3}),
        Case("odd sizes B=3, T=5, H=1, K=5, V=1", _attention_inputs(rng, 3, 5, 1, 5, 1)),
        Case(
            "long sequence T=300 with scores in the thousands",
            _attention_inputs(rng, 1, 300, 1, 16, 4, spread=30.0),
        ),
    ]


def _attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float | None = None
) -> np.ndarray:
    return numpy_ref.softmax_attention(q, k, v, scale=scale, causal=True)


def _attention_no_mask(q: Any, k: Any, v: Any, scale: float | None = None) -> np.ndarray:
    return numpy_ref.softmax_attention(q, k, v, scale=scale, causal=False)


def _attention_unscaled(q: Any, k: Any, v: Any, scale: float | None = None) -> np.ndarray:
    return numpy_ref.softmax_attention(q, k, v, scale=1.0, causal=True)


def _attention_scale_ignored(q: Any, k: Any, v: Any, scale: float | None = None) -> np.ndarray:
    return numpy_ref.softmax_attention(q, k, v, scale=None, causal=True)


def _attention_mask_after_softmax(q: Any, k: Any, v: Any, scale: float | None = None) -> Any:
    s = numpy_ref.attention_scores(q, k, scale, causal=False)  # [B, H, T, T]
    T = s.shape[-1]
    p = numpy_ref.softmax(s, axis=-1) * numpy_ref.causal_mask(T, T)  # rows no longer sum to 1
    return np.einsum("bhts,bshv->bthv", p, v)  # [B, T, H, V]


ATTENTION = Exercise(
    id="01.2",
    title="causal softmax attention",
    function="causal_attention",
    points=3,
    reference=_attention,
    make_cases=_attention_cases,
    hints=(
        Hint(
            _attention_no_mask,
            "your output is attention WITHOUT the causal mask: query t may only look at keys "
            "0..t; set the scores of later keys to -inf before the softmax",
        ),
        Hint(
            _attention_mask_after_softmax,
            "you zeroed the future weights after the softmax, so each row of weights no "
            "longer sums to 1: mask the scores (to -inf) before the softmax instead",
        ),
        Hint(
            _attention_unscaled,
            "the scores are not scaled: multiply q.k by `scale`, which is K ** -0.5 when None",
        ),
        Hint(
            _attention_scale_ignored,
            "the `scale` argument is ignored: use it when it is given, K ** -0.5 only when None",
        ),
    ),
    shape_hint="The output is [B, T, H, V]: the layout of q with V in place of K",
    nan_hint=(
        "either exp overflowed (subtract each query's largest score before exp: the long "
        "case has scores in the thousands) or a query had every key masked (query t must "
        "see keys 0..t, itself included)"
    ),
    time_limit_s=10.0,
)


# --------------------------------------------------------------------------- 01.3 merge


def _partial(s: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(m [N], l [N], acc [N, V])`` of scores ``s [N, n]`` over values ``v [n, V]``."""
    m = s.max(axis=-1)  # [N]
    p = np.exp(s - m[:, None])  # [N, n]
    return m, p.sum(axis=-1), p @ v  # [N], [N], [N, V]


def _merge_inputs(
    rng: np.random.Generator, N: int, V: int, offset1: Any = 0.0, offset2: Any = 0.0
) -> dict[str, Any]:
    n1, n2 = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    s1 = rng.standard_normal((N, n1)) * 2 + np.reshape(offset1, (-1, 1))
    s2 = rng.standard_normal((N, n2)) * 2 + np.reshape(offset2, (-1, 1))
    m1, l1, acc1 = _partial(s1, rng.standard_normal((n1, V)))
    m2, l2, acc2 = _partial(s2, rng.standard_normal((n2, V)))
    return {"m1": m1, "l1": l1, "acc1": acc1, "m2": m2, "l2": l2, "acc2": acc2}


def _merge_cases(rng: np.random.Generator) -> list[Case]:
    sign = rng.choice([-1.0, 1.0], size=6)
    empty = _merge_inputs(rng, 4, 3)
    for m, l, acc, row in (("m1", "l1", "acc1", 0), ("m2", "l2", "acc2", 1)):
        empty[m][row], empty[l][row], empty[acc][row] = -np.inf, 0.0, 0.0
    return [
        Case("random, N=5 rows, V=3", _merge_inputs(rng, 5, 3)),
        Case("one row, V=1", _merge_inputs(rng, 1, 1)),
        Case(
            "block maxima about 1600 apart",
            _merge_inputs(rng, 6, 2, offset1=800.0 * sign, offset2=-800.0 * sign),
        ),
        Case("an empty block (m=-inf, l=0, acc=0) in rows 0 and 1", empty),
    ]


def _merge_no_rescale(m1: Any, l1: Any, acc1: Any, m2: Any, l2: Any, acc2: Any) -> Any:
    return np.maximum(m1, m2), l1 + l2, acc1 + acc2


def _merge_inverted(m1: Any, l1: Any, acc1: Any, m2: Any, l2: Any, acc2: Any) -> Any:
    m = np.maximum(m1, m2)
    a1, a2 = np.exp(m - m1), np.exp(m - m2)
    return m, a1 * l1 + a2 * l2, a1[:, None] * acc1 + a2[:, None] * acc2


MERGE = Exercise(
    id="01.3",
    title="online-softmax merge",
    function="merge_partials",
    points=2,
    reference=numpy_ref.online_softmax_merge,
    make_cases=_merge_cases,
    output_names=("m", "l", "acc"),
    hints=(
        Hint(
            _merge_no_rescale,
            "you added the two sums as they are, but each was computed relative to its own "
            "maximum: multiply l1 and acc1 by exp(m1 - m), and l2 and acc2 by exp(m2 - m)",
        ),
        Hint(
            _merge_inverted,
            "the rescale factor is upside down: it is exp(m1 - m), at most 1, not exp(m - m1)",
        ),
    ),
    shape_hint="m and l are [N] and acc is [N, V], as in the inputs",
    nan_hint=(
        "rescale by exp(m1 - m) and exp(m2 - m), never exp(m1) alone (it overflows); and an "
        "empty block (m = -inf) must get weight exp(-inf) = 0"
    ),
    time_limit_s=5.0,
)


# --------------------------------------------------------------------------- 01.4 Triton


def _triton_cases(rng: np.random.Generator) -> list[Case]:
    import torch

    from course_lib import runtime

    device = runtime.default_device()

    def x(shape: tuple[int, int], spread: float = 1.0) -> Any:
        return torch.tensor(rng.standard_normal(shape) * spread, dtype=torch.float32, device=device)

    return [
        Case("[4, 16]", {"x": x((4, 16))}),
        Case("[3, 37], C not a power of two", {"x": x((3, 37))}),
        Case("one element [1, 1]", {"x": x((1, 1))}),
        Case("[5, 100], logits up to about 1e4", {"x": x((5, 100), 3000.0)}),
    ]


def _softmax_rows(x: np.ndarray) -> np.ndarray:
    return numpy_ref.softmax(x, axis=-1)


def _softmax_rows_zero_padded(x: np.ndarray) -> np.ndarray:
    C = x.shape[-1]
    block = 1 << max(C - 1, 0).bit_length()  # the next power of two, as the kernel's BLOCK
    padded = np.concatenate([x, np.zeros((x.shape[0], block - C))], axis=-1)
    return numpy_ref.softmax(padded, axis=-1)[:, :C]


TRITON_SOFTMAX = Exercise(
    id="01.4",
    title="row-wise softmax in Triton",
    function="triton_softmax",
    points=3,
    reference=_softmax_rows,
    make_cases=_triton_cases,
    hints=(
        Hint(
            _softmax_rows_zero_padded,
            "the padding lanes past the end of the row were loaded as 0 and counted in the "
            "sum: load with `other=-float('inf')` so that they add exp(-inf) = 0",
        ),
    ),
    shape_hint="The output has the shape of x",
    nan_hint=(
        "either a row overflowed (subtract the row's maximum before tl.exp) or part of the "
        "output was never written (in this check, outputs start as NaN): store the whole "
        "row, with the same mask as the load"
    ),
    time_limit_s=60.0,
    poison=True,
)


EXERCISES = (SOFTMAX, ATTENTION, MERGE, TRITON_SOFTMAX)
