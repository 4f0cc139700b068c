"""Graded exercises of chapter 08, duality (Mamba-2's SSD as gated linear attention).

Glossary of dimension letters: B batch, T sequence length, H heads, P channels per head
(the value width), N state size (the key width); ``...`` any leading dimensions.

===== ===================================== ========================= ============================
id    the learner writes                    checked against           edge cases
===== ===================================== ========================= ============================
08.1  ``ssd_to_gla(x, dt, A, B, C)``        q = C, k = B, v = dt x,   T=1, H=1, N != P (a swap
      (numpy) -> ``(q, k, v, g)``           g = dt A                  of k and v shows)
08.2  ``decay_mask_from_gates(g)`` (numpy,  ``gated_linear_attention. T=1, batched [2, 3, T],
      log gates along the last axis)        numpy_ref.decay_mask``    strong decay (g = -40 a
                                            of the cumulative sum     step: exp(-G) overflows)
08.3  ``ssd_attention_form(x, dt, A, B,     ``duality.numpy_ref.      T=1, float32, strong decay
      C)`` (torch, the quadratic form)      ssd_quadratic``           over T=200
===== ===================================== ========================= ============================

The cases are drawn afresh at every check; torch is imported only when the cases of 08.3
are drawn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from course_lib.duality import numpy_ref as ssd
from course_lib.gated_linear_attention import numpy_ref as gla
from course_lib.grading.checks import Case, Exercise, Hint

CHAPTER = "08"
TITLE = "Duality"


def _ssd_inputs(
    rng: np.random.Generator, B: int, T: int, H: int, N: int, P: int, dt_high: float = 0.5
) -> dict[str, Any]:
    return {
        "x": rng.standard_normal((B, T, H, P)),
        "dt": rng.uniform(0.01, dt_high, (B, T, H)),
        "A": -rng.uniform(0.1, 2.0, H),
        "B": rng.standard_normal((B, T, H, N)) * N**-0.5,
        "C": rng.standard_normal((B, T, H, N)) * N**-0.5,
    }


# --------------------------------------------------------------------------- 08.1 mapping


def _mapping_cases(rng: np.random.Generator) -> list[Case]:
    return [
        Case("B=2, T=7, H=3, N=4, P=5", _ssd_inputs(rng, 2, 7, 3, 4, 5)),
        Case("one step, one head: T=1, H=1", _ssd_inputs(rng, 1, 1, 1, 3, 2)),
        Case("B=1, T=12, H=2, N=8, P=3", _ssd_inputs(rng, 1, 12, 2, 8, 3)),
    ]


def _mapping(x: Any, dt: Any, A: Any, B: Any, C: Any) -> Any:
    return C, B, dt[..., None] * x, dt * A


def _mapping_gate_not_log(x: Any, dt: Any, A: Any, B: Any, C: Any) -> Any:
    return C, B, dt[..., None] * x, np.exp(dt * A)


def _mapping_v_without_dt(x: Any, dt: Any, A: Any, B: Any, C: Any) -> Any:
    return C, B, x, dt * A


def _mapping_q_k_swapped(x: Any, dt: Any, A: Any, B: Any, C: Any) -> Any:
    return B, C, dt[..., None] * x, dt * A


MAPPING = Exercise(
    id="08.1",
    title="SSD parameters as GLA inputs",
    function="ssd_to_gla",
    points=1,
    reference=_mapping,
    make_cases=_mapping_cases,
    output_names=("q", "k", "v", "g"),
    hints=(
        Hint(
            _mapping_gate_not_log,
            "g is the gate itself, exp(dt A); chapter 04's functions take the LOG gate, "
            "g = dt * A (<= 0), and exponentiate it themselves",
        ),
        Hint(
            _mapping_v_without_dt,
            "v is x alone: the SSM writes dt_t B_t x_t, so the value is v = dt[..., None] * x",
        ),
        Hint(
            _mapping_q_k_swapped,
            "q and k are swapped: C reads the state (the query), B writes it (the key)",
        ),
    ),
    shape_hint="q and k are [B, T, H, N], v is [B, T, H, P] and g is [B, T, H]",
    time_limit_s=5.0,
)


# --------------------------------------------------------------------------- 08.2 mask


def _mask_cases(rng: np.random.Generator) -> list[Case]:
    return [
        Case("one head, T=6", {"g": -rng.uniform(0.0, 1.0, 6)}),
        Case("T=1", {"g": -rng.uniform(0.0, 1.0, 1)}),
        Case("batched [2, 3, 9]", {"g": -rng.uniform(0.0, 1.0, (2, 3, 9))}),
        Case("no decay at all (g = 0), T=5", {"g": np.zeros(5)}),
        Case("strong decay, g about -40 a step, T=40", {"g": -rng.uniform(30.0, 50.0, 40)}),
    ]


def _mask(g: Any) -> Any:
    return gla.decay_mask(np.cumsum(g, axis=-1))


def _mask_from_s(g: Any) -> Any:
    G = np.cumsum(g, axis=-1)
    return gla.decay_mask(G) * np.exp(g)[..., None, :]


def _mask_no_causal(g: Any) -> Any:
    G = np.cumsum(g, axis=-1)
    with np.errstate(over="ignore"):
        return np.exp(G[..., :, None] - G[..., None, :])


def _mask_transposed(g: Any) -> Any:
    return np.swapaxes(_mask(g), -1, -2)


MASK = Exercise(
    id="08.2",
    title="the decay mask from cumulative log gates",
    function="decay_mask_from_gates",
    points=2,
    reference=_mask,
    make_cases=_mask_cases,
    hints=(
        Hint(
            _mask_from_s,
            "the product starts one step too early: L[t, s] = alpha_{s+1} ... alpha_t (the "
            "gate of step s acts on the state before x_s is written), so the diagonal is 1",
        ),
        Hint(
            _mask_no_causal,
            "above the diagonal (s > t) the mask must be 0: a step cannot see the future",
        ),
        Hint(_mask_transposed, "the mask is transposed: rows are targets t, columns sources s"),
    ),
    shape_hint="for g [..., T] the mask is [..., T, T]",
    nan_hint=(
        "exp(G_t) * exp(-G_s) overflows when the gates are strong: form the difference "
        "G_t - G_s first, and only where s <= t (above the diagonal it is positive and large)"
    ),
    time_limit_s=5.0,
)


# --------------------------------------------------------------------------- 08.3 quadratic


def _quadratic_cases(rng: np.random.Generator) -> list[Case]:
    import torch

    def t(inputs: dict[str, Any], dtype: Any = torch.float64) -> dict[str, Any]:
        return {k: torch.tensor(v, dtype=dtype) for k, v in inputs.items()}

    return [
        Case("B=2, T=9, H=2, N=4, P=3", t(_ssd_inputs(rng, 2, 9, 2, 4, 3))),
        Case("T=1", t(_ssd_inputs(rng, 1, 1, 3, 2, 2))),
        Case(
            "float32, B=1, T=33, H=2, N=8, P=8",
            t(_ssd_inputs(rng, 1, 33, 2, 8, 8), torch.float32),
        ),
        Case(
            "strong decay over T=200 (dt up to 20)",
            t(_ssd_inputs(rng, 1, 200, 1, 4, 2, dt_high=20.0)),
        ),
    ]


def _quadratic(x: Any, dt: Any, A: Any, B: Any, C: Any) -> Any:
    return ssd.ssd_quadratic(x, dt, A, B, C)[0]


def _quadratic_scores_only(x: Any, dt: Any, A: Any, B: Any, C: Any) -> Any:
    G = np.cumsum(dt * A, axis=1)  # [B, T, H]
    L = gla.decay_mask(np.moveaxis(G, 1, -1))  # [B, H, T, T]
    scores = np.einsum("bthn,bshn->bhts", C, B) * L
    return np.einsum("bhts,bshp->bthp", scores, x)  # dt left out of the value


def _quadratic_no_mask(x: Any, dt: Any, A: Any, B: Any, C: Any) -> Any:
    T = x.shape[1]
    causal = np.tril(np.ones((T, T)))
    scores = np.einsum("bthn,bshn->bhts", C, B) * causal
    return np.einsum("bhts,bsh,bshp->bthp", scores, dt, x)


QUADRATIC = Exercise(
    id="08.3",
    title="the quadratic (attention) form of SSD in PyTorch",
    function="ssd_attention_form",
    points=3,
    reference=_quadratic,
    make_cases=_quadratic_cases,
    hints=(
        Hint(
            _quadratic_scores_only,
            "the values lack the step size: the SSM writes dt_s x_s, so multiply x by dt "
            "(v = dt[..., None] * x)",
        ),
        Hint(
            _quadratic_no_mask,
            "there is no decay: the scores C_t . B_s must be multiplied by the decay mask "
            "L[t, s] = exp(G_t - G_s), G = cumsum(dt * A) over time",
        ),
    ),
    shape_hint="y is [B, T, H, P], like x",
    nan_hint=(
        "exp overflowed: with strong decay exp(-G_s) is huge; exponentiate the difference "
        "G_t - G_s, masked to s <= t before exp (e.g. masked_fill with -inf)"
    ),
    time_limit_s=10.0,
)


EXERCISES = (MAPPING, MASK, QUADRATIC)
