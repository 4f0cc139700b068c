"""Graded exercises of chapter 04, gated linear attention.

Glossary of dimension letters: B batch, T sequence length, H heads, K query/key head
dimension, V value head dimension. A gate is given in log space, ``g <= 0``; its decay
factor is ``alpha = exp(g)`` in (0, 1].

===== ====================================== ========================= =========================
id    the learner writes                     checked against           edge cases
===== ====================================== ========================= =========================
04.1  ``decay_mask_from_log_gates(g)``       ``numpy_ref.decay_mask``  T=1, no decay (g = 0),
      (numpy; time on the last axis)         of the cumulative gates   batch axes, strong decay
                                                                       (g = -40 per step) that a
                                                                       naive ratio turns to NaN
04.2  ``gated_attention_parallel(q, k, v,    ``numpy_ref.gated_linear_ T=1, a given scale,
      g, scale=None)`` (torch, scalar gate)  attention_parallel``      g = 0, float32, strong
                                                                       decay over 200 steps
04.3  ``triton_decode_step(q_t, k_t, v_t,    ``numpy_ref.gated_linear_ K and V not powers of
      g_t, state)`` (kernel body: decay,     attention_step``          two, B=H=K=V=1, a reset
      write, read)                                                     gate (g = -30); outputs
                                                                       poisoned
===== ====================================== ========================= =========================

The cases are drawn afresh at every check. torch and Triton are imported only when the
cases of 04.2 and 04.3 are drawn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from course_lib.gated_linear_attention import numpy_ref
from course_lib.grading.checks import Case, Exercise, Hint

CHAPTER = "04"
TITLE = "Gated linear attention"


# --------------------------------------------------------------------------- 04.1 decay mask


def _mask(g: np.ndarray) -> np.ndarray:
    """``D[..., i, j] = exp(sum_{j < s <= i} g_s)`` for j <= i, else 0; ``g [..., T]``."""
    return numpy_ref.decay_mask(np.cumsum(g, axis=-1))


def _log_gates(rng: np.random.Generator, shape: tuple[int, ...], low: float = -1.0) -> Any:
    return rng.uniform(low, -0.01, size=shape)


def _mask_cases(rng: np.random.Generator) -> list[Case]:
    return [
        Case("one sequence, T=6", {"g": _log_gates(rng, (6,))}),
        Case("one step, T=1", {"g": _log_gates(rng, (1,))}),
        Case("no decay (g = 0): the causal mask of ones, T=5", {"g": np.zeros(5)}),
        Case("batch axes [2, 3, T=7]", {"g": _log_gates(rng, (2, 3, 7))}),
        Case(
            "strong decay, g about -40 per step, T=60",
            {"g": rng.uniform(-45.0, -35.0, size=(2, 60))},
        ),
    ]


def _mask_no_causal(g: np.ndarray) -> np.ndarray:
    G = np.cumsum(g, axis=-1)
    return np.exp(G[..., :, None] - G[..., None, :])


def _mask_inclusive(g: np.ndarray) -> np.ndarray:
    """The product from j to i (gate of step j included): the diagonal holds alpha_i."""
    return _mask(g) * np.exp(g)[..., None, :]


def _mask_transposed(g: np.ndarray) -> np.ndarray:
    return np.swapaxes(_mask(g), -1, -2)


def _mask_not_cumulative(g: np.ndarray) -> np.ndarray:
    T = g.shape[-1]
    causal = np.tril(np.ones((T, T), dtype=bool))
    return np.where(causal, np.exp(g[..., :, None] - g[..., None, :]), 0.0)


MASK = Exercise(
    id="04.1",
    title="the decay mask from log gates",
    function="decay_mask_from_log_gates",
    points=2,
    reference=_mask,
    make_cases=_mask_cases,
    hints=(
        Hint(
            _mask_no_causal,
            "the entries above the diagonal (key j after query i) must be 0, not "
            "exp(G_i - G_j): a token never sees the future",
        ),
        Hint(
            _mask_inclusive,
            "you included the gate of step j itself: D_ij multiplies the gates of steps "
            "j+1..i only, so the diagonal D_ii is 1 (the pair written at step i is not decayed "
            "yet when it is read at step i)",
        ),
        Hint(
            _mask_transposed,
            "your mask is transposed: rows are queries i, columns are keys j, and the "
            "non-zero part is the lower triangle (j <= i)",
        ),
        Hint(
            _mask_not_cumulative,
            "you used the gates g themselves where the cumulative sums G_t = g_1 + ... + g_t "
            "belong (np.cumsum along the last axis)",
        ),
    ),
    shape_hint="For g [..., T] the mask is [..., T, T]",
    nan_hint=(
        "the strong-decay case overflows when the mask is formed as a ratio of products, "
        "prod(alpha_1..i) / prod(alpha_1..j), or as exp(G_i) * exp(-G_j): form the "
        "difference G_i - G_j first, and only exponentiate where j <= i (set the rest to "
        "-inf, whose exp is 0)"
    ),
    time_limit_s=5.0,
)


# --------------------------------------------------------------------------- 04.2 parallel


def _parallel(q: Any, k: Any, v: Any, g: Any, scale: float | None = None) -> np.ndarray:
    o, _ = numpy_ref.gated_linear_attention_parallel(q, k, v, gk=g, scale=scale)
    return o


def _parallel_variant(
    q: Any, k: Any, v: Any, g: Any, scale: float | None = None, mistake: str = ""
) -> np.ndarray:
    """The scalar-gated parallel form with one known mistake."""
    T, K = q.shape[1], q.shape[-1]
    scale = K**-0.5 if scale is None or mistake == "scale ignored" else scale
    scale = 1.0 if mistake == "unscaled" else scale
    G = np.cumsum(g, axis=1).transpose(0, 2, 1)  # [B, H, T]
    diff = G[..., :, None] - G[..., None, :]  # [B, H, T, T]
    if mistake == "inclusive":
        diff = diff + g.transpose(0, 2, 1)[..., None, :]
    causal = np.tril(np.ones((T, T), dtype=bool))
    D = np.exp(diff) if mistake == "no mask" else np.exp(np.where(causal, diff, -np.inf))
    if mistake == "no decay":
        D = causal.astype(float)
    A = np.einsum("bihk,bjhk->bhij", q, k) * D * scale  # [B, H, T, T]
    return np.einsum("bhij,bjhv->bihv", A, v)  # [B, T, H, V]


def _parallel_no_mask(q: Any, k: Any, v: Any, g: Any, scale: Any = None) -> Any:
    return _parallel_variant(q, k, v, g, scale, "no mask")


def _parallel_inclusive(q: Any, k: Any, v: Any, g: Any, scale: Any = None) -> Any:
    return _parallel_variant(q, k, v, g, scale, "inclusive")


def _parallel_no_decay(q: Any, k: Any, v: Any, g: Any, scale: Any = None) -> Any:
    return _parallel_variant(q, k, v, g, scale, "no decay")


def _parallel_unscaled(q: Any, k: Any, v: Any, g: Any, scale: Any = None) -> Any:
    return _parallel_variant(q, k, v, g, scale, "unscaled")


def _parallel_scale_ignored(q: Any, k: Any, v: Any, g: Any, scale: Any = None) -> Any:
    return _parallel_variant(q, k, v, g, scale, "scale ignored")


def _parallel_cases(rng: np.random.Generator) -> list[Case]:
    import torch

    def inputs(
        B: int, T: int, H: int, K: int, V: int, low: float = -1.0, dtype: Any = torch.float64
    ) -> dict[str, Any]:
        arrays = {
            "q": rng.standard_normal((B, T, H, K)),
            "k": rng.standard_normal((B, T, H, K)),
            "v": rng.standard_normal((B, T, H, V)),
            "g": rng.uniform(low, -0.01, size=(B, T, H)),
        }
        return {n: torch.tensor(x, dtype=dtype) for n, x in arrays.items()}

    zero_gate = inputs(1, 9, 2, 4, 3)
    zero_gate["g"] = torch.zeros_like(zero_gate["g"])
    return [
        Case("B=2, T=11, H=2, K=4, V=3", inputs(2, 11, 2, 4, 3)),
        Case("one token, T=1", inputs(1, 1, 1, 4, 2)),
        Case("scale=0.3 given", {**inputs(1, 8, 1, 8, 4), "scale": 0.3}),
        Case("no decay (g = 0): linear attention", zero_gate),
        Case("float32 tensors, T=33", inputs(1, 33, 2, 8, 8, dtype=torch.float32)),
        Case("strong decay (g down to -30) over T=200", inputs(1, 200, 1, 8, 4, low=-30.0)),
    ]


PARALLEL = Exercise(
    id="04.2",
    title="scalar-gated attention in parallel form (PyTorch)",
    function="gated_attention_parallel",
    points=3,
    reference=_parallel,
    make_cases=_parallel_cases,
    hints=(
        Hint(
            _parallel_no_mask,
            "query i also sees later keys j > i: the decay mask must be 0 above the diagonal "
            "(mask G_i - G_j to -inf there before exp)",
        ),
        Hint(
            _parallel_inclusive,
            "the decay from key j to query i multiplies the gates of steps j+1..i: use "
            "G_i - G_j with G the cumulative sum including step t (so D_ii = 1)",
        ),
        Hint(
            _parallel_no_decay,
            "your output is plain causal linear attention: multiply the scores q_i.k_j by "
            "the decay mask exp(G_i - G_j)",
        ),
        Hint(
            _parallel_unscaled,
            "the scores are not scaled: multiply q.k by `scale`, which is K ** -0.5 when None",
        ),
        Hint(
            _parallel_scale_ignored,
            "the `scale` argument is ignored: use it when it is given, K ** -0.5 only when None",
        ),
    ),
    shape_hint="The output is [B, T, H, V]: the layout of q with V in place of K",
    nan_hint=(
        "the strong-decay case makes exp(G_i) underflow and exp(-G_j) overflow: never split "
        "the mask into exp(G_i) * exp(-G_j); form G_i - G_j (at most 0 where j <= i), mask "
        "the upper triangle to -inf, then exp"
    ),
    time_limit_s=10.0,
)


# --------------------------------------------------------------------------- 04.3 Triton


def _step(q_t: Any, k_t: Any, v_t: Any, g_t: Any, state: Any) -> tuple[np.ndarray, np.ndarray]:
    return numpy_ref.gated_linear_attention_step(q_t, k_t, v_t, state, gk_t=g_t)


def _step_read_first(q_t: Any, k_t: Any, v_t: Any, g_t: Any, state: Any) -> Any:
    _, new_state = _step(q_t, k_t, v_t, g_t, state)
    decayed = np.exp(g_t)[..., None] * state  # [B, H, K, V]
    o = q_t.shape[-1] ** -0.5 * np.einsum("bhkv,bhk->bhv", decayed, q_t)
    return o, new_state


def _step_no_gate(q_t: Any, k_t: Any, v_t: Any, g_t: Any, state: Any) -> Any:
    return numpy_ref.gated_linear_attention_step(q_t, k_t, v_t, state)


def _step_decay_after_write(q_t: Any, k_t: Any, v_t: Any, g_t: Any, state: Any) -> Any:
    new_state = np.exp(g_t)[..., None] * (state + np.einsum("bhk,bhv->bhkv", k_t, v_t))
    o = q_t.shape[-1] ** -0.5 * np.einsum("bhkv,bhk->bhv", new_state, q_t)
    return o, new_state


def _step_gate_without_exp(q_t: Any, k_t: Any, v_t: Any, g_t: Any, state: Any) -> Any:
    new_state = g_t[..., None] * state + np.einsum("bhk,bhv->bhkv", k_t, v_t)
    o = q_t.shape[-1] ** -0.5 * np.einsum("bhkv,bhk->bhv", new_state, q_t)
    return o, new_state


def _triton_cases(rng: np.random.Generator) -> list[Case]:
    import torch

    from course_lib import runtime

    device = runtime.default_device()

    def inputs(B: int, H: int, K: int, V: int, low: float = -1.0) -> dict[str, Any]:
        def t(x: np.ndarray) -> Any:
            return torch.tensor(x, dtype=torch.float32, device=device)

        return {
            "q_t": t(rng.standard_normal((B, H, K))),
            "k_t": t(rng.standard_normal((B, H, K))),
            "v_t": t(rng.standard_normal((B, H, V))),
            "g_t": t(rng.uniform(low, -0.01, size=(B, H, K))),
            "state": t(rng.standard_normal((B, H, K, V))),
        }

    reset = inputs(2, 1, 8, 8)
    reset["g_t"][0, 0, :4] = -30.0  # the first four rows of one head are wiped
    return [
        Case("B=2, H=3, K=V=16", inputs(2, 3, 16, 16)),
        Case("K=5, V=3 (not powers of two)", inputs(1, 2, 5, 3)),
        Case("B=H=K=V=1", inputs(1, 1, 1, 1)),
        Case("K=8 != V=32", inputs(2, 2, 8, 32)),
        Case("a reset gate (g = -30 on some rows)", reset),
    ]


TRITON_STEP = Exercise(
    id="04.3",
    title="a gated decode step in Triton",
    function="triton_decode_step",
    points=3,
    reference=_step,
    make_cases=_triton_cases,
    output_names=("o_t", "new_state"),
    hints=(
        Hint(
            _step_read_first,
            "o_t was read from the state before k_t v_t^T was added: decay, write, THEN read "
            "(token t sees itself)",
        ),
        Hint(
            _step_no_gate,
            "the gate is not applied: multiply each row k of the state by exp(g_t[k]) before "
            "adding k_t v_t^T",
        ),
        Hint(
            _step_decay_after_write,
            "the new pair k_t v_t^T was decayed too: decay the old state first, then add the "
            "new pair at full strength",
        ),
        Hint(
            _step_gate_without_exp,
            "g_t is a LOG gate: the decay factor is tl.exp(g), not g itself",
        ),
    ),
    shape_hint="o_t is [B, H, V] and new_state is [B, H, K, V], like state",
    nan_hint=(
        "part of an output was never written (in this check, outputs start as NaN): store "
        "the whole K x V tile of the new state and the V entries of o_t, with masks that "
        "keep only k < K and v < V; load padding lanes with other=0.0"
    ),
    time_limit_s=60.0,
    poison=True,
)


EXERCISES = (MASK, PARALLEL, TRITON_STEP)
