"""Graded exercises of chapter 02, linear attention.

Glossary of dimension letters: B batch, T sequence length, H heads, K query/key head
dimension (the feature dimension: the maps here keep it), V value head dimension.

===== ==================================== ========================== ==========================
id    the learner writes                   checked against            edge cases
===== ==================================== ========================== ==========================
02.1  ``elu_plus_one(x)`` (numpy)          ``feature_maps.            very negative and very
                                           feature_map(x, "elu1")``   positive entries, 3-d
                                                                      input, float32, x = 0
02.2  ``causal_linear_attention(q, k, v)`` ``numpy_ref.linear_        T=1, odd sizes, K != V,
      (numpy, elu+1, normaliser, prefix    attention_chunkwise``      a long T=400 sequence
      sums)                                (elu1, normalize)          (time limit)
02.3  ``noncausal_linear_attention(q, k,   ``numpy_ref.linear_        T=1, float32 tensors,
      v)`` (torch, elu+1, normaliser,      attention_noncausal``      a long T=20000 sequence
      associativity)                       (elu1, normalize)          (time limit)
===== ==================================== ========================== ==========================

The cases are drawn afresh at every check. torch is imported only when the cases of 02.3
are drawn. In 02.2 and 02.3 the scale ``K ** -0.5`` cancels in the normalised ratio, so the
learner may leave it out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from course_lib.grading.checks import Case, Exercise, Hint
from course_lib.linear_attention import feature_maps, numpy_ref

CHAPTER = "02"
TITLE = "Linear attention"


# --------------------------------------------------------------------------- 02.1 elu + 1


def _elu1(x: np.ndarray) -> np.ndarray:
    return feature_maps.feature_map(x, "elu1")


def _elu1_cases(rng: np.random.Generator) -> list[Case]:
    wide = rng.standard_normal((4, 6)) * 300.0  # exp(x) of the positive ones would overflow
    return [
        Case("random [5, 8]", {"x": rng.standard_normal((5, 8))}),
        Case("3-d [2, 3, 4]", {"x": rng.standard_normal((2, 3, 4))}),
        Case("entries from about -1000 to 1000", {"x": wide}),
        Case("zeros [3]", {"x": np.zeros(3)}),
        Case("float32 input [4, 7]", {"x": rng.standard_normal((4, 7)).astype(np.float32)}),
    ]


def _relu_plus_one(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0) + 1.0


def _elu_only(x: np.ndarray) -> np.ndarray:
    return _elu1(x) - 1.0


def _exp_everywhere(x: np.ndarray) -> np.ndarray:
    return np.exp(x)


ELU1 = Exercise(
    id="02.1",
    title="the elu + 1 feature map",
    function="elu_plus_one",
    points=1,
    reference=_elu1,
    make_cases=_elu1_cases,
    hints=(
        Hint(
            _elu_only,
            "your values are elu(x), one less than expected: the map is elu(x) + 1, so that "
            "every feature is positive",
        ),
        Hint(
            _relu_plus_one,
            "your map is max(x, 0) + 1: for x <= 0, elu(x) + 1 is exp(x), not 1",
        ),
        Hint(
            _exp_everywhere,
            "your map is exp(x) everywhere: for x > 0, elu(x) + 1 is x + 1",
        ),
    ),
    shape_hint="An elementwise map keeps the shape of x",
    nan_hint=(
        "exp(x) overflows for large positive x; only use exp where x <= 0, e.g. "
        "np.exp(np.minimum(x, 0)), or np.where(x > 0, x + 1, np.exp(np.minimum(x, 0)))"
    ),
    time_limit_s=5.0,
)


# --------------------------------------------------------------------------- 02.2 causal


def _qkv(rng: np.random.Generator, B: int, T: int, H: int, K: int, V: int) -> dict[str, Any]:
    return {
        "q": rng.standard_normal((B, T, H, K)),
        "k": rng.standard_normal((B, T, H, K)),
        "v": rng.standard_normal((B, T, H, V)),
    }


def _causal_cases(rng: np.random.Generator) -> list[Case]:
    return [
        Case("B=2, T=9, H=2, K=4, V=3", _qkv(rng, 2, 9, 2, 4, 3)),
        Case("one token, T=1", _qkv(rng, 1, 1, 1, 4, 2)),
        Case("odd sizes B=3, T=7, H=1, K=5, V=1", _qkv(rng, 3, 7, 1, 5, 1)),
        Case("K=2 != V=6, T=12, H=3", _qkv(rng, 1, 12, 3, 2, 6)),
        Case("long sequence T=400, K=V=16", _qkv(rng, 1, 400, 2, 16, 16)),
    ]


def _chunkwise(q: Any, k: Any, v: Any, **options: Any) -> np.ndarray:
    """The causal reference in linear memory (also used on 02.3's long case, as a hint)."""
    return numpy_ref.linear_attention_chunkwise(q, k, v, chunk_size=64, **options)[0]


def _causal(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _chunkwise(q, k, v, feature_map="elu1", normalize=True)


def _causal_no_normaliser(q: Any, k: Any, v: Any) -> np.ndarray:
    return _chunkwise(q, k, v, scale=1.0, feature_map="elu1")


def _causal_no_normaliser_scaled(q: Any, k: Any, v: Any) -> np.ndarray:
    return _chunkwise(q, k, v, feature_map="elu1")


def _causal_no_feature_map(q: Any, k: Any, v: Any) -> np.ndarray:
    return _chunkwise(q, k, v, normalize=True)


def _noncausal_elu1(q: Any, k: Any, v: Any) -> np.ndarray:
    return numpy_ref.linear_attention_noncausal(q, k, v, feature_map="elu1", normalize=True)


def _causal_exclusive(q: Any, k: Any, v: Any) -> np.ndarray:
    """Prefix sums over s < t (the token itself left out); the first token gets 0."""
    fq, fk = _elu1(q), _elu1(k)
    S = np.cumsum(np.einsum("bthk,bthv->bthkv", fk, v), axis=1)  # [B, T, H, K, V]
    z = np.cumsum(fk, axis=1)  # [B, T, H, K]
    S = np.concatenate([np.zeros_like(S[:, :1]), S[:, :-1]], axis=1)
    z = np.concatenate([np.zeros_like(z[:, :1]), z[:, :-1]], axis=1)
    num = np.einsum("bthk,bthkv->bthv", fq, S)
    den = np.einsum("bthk,bthk->bth", fq, z)[..., None]
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


CAUSAL = Exercise(
    id="02.2",
    title="causal linear attention by prefix sums",
    function="causal_linear_attention",
    points=3,
    reference=_causal,
    make_cases=_causal_cases,
    hints=(
        Hint(
            _causal_no_normaliser,
            "your output is the numerator phi(q_t) . S_t alone: divide it by the normaliser "
            "phi(q_t) . z_t with z_t = sum over s <= t of phi(k_s)",
        ),
        Hint(
            _causal_no_normaliser_scaled,
            "your output is K ** -0.5 * phi(q_t) . S_t: divide by the normaliser phi(q_t) . "
            "z_t (the scale then cancels, so you may leave it out)",
        ),
        Hint(
            _causal_no_feature_map,
            "you used q and k as they are: apply phi = elu + 1 to both first",
        ),
        Hint(
            _noncausal_elu1,
            "every token sees every key (the non-causal output): token t may only use keys "
            "and values 0..t, i.e. prefix sums along the time axis (np.cumsum(..., axis=1))",
        ),
        Hint(
            _causal_exclusive,
            "your prefix sums stop at t - 1: token t must also see its own key and value "
            "(sums over s <= t, which is what np.cumsum gives)",
        ),
    ),
    shape_hint="The output is [B, T, H, V]: the layout of q with V in place of K",
    nan_hint=(
        "a denominator was 0: with phi = elu + 1 every feature is positive, so phi(q_t) . "
        "z_t > 0 as long as z_t includes phi(k_t) itself (sum over s <= t)"
    ),
    time_limit_s=10.0,
)


# --------------------------------------------------------------------------- 02.3 torch


def _torch_cases(rng: np.random.Generator) -> list[Case]:
    import torch

    def qkv(B: int, T: int, H: int, K: int, V: int, dtype: Any = torch.float64) -> dict[str, Any]:
        return {n: torch.tensor(x, dtype=dtype) for n, x in _qkv(rng, B, T, H, K, V).items()}

    return [
        Case("B=2, T=9, H=2, K=4, V=3", qkv(2, 9, 2, 4, 3)),
        Case("one token, T=1", qkv(1, 1, 1, 3, 2)),
        Case("odd sizes B=3, T=5, H=1, K=5, V=7", qkv(3, 5, 1, 5, 7)),
        Case("float32 tensors, T=33", qkv(1, 33, 2, 8, 8, torch.float32)),
        Case("long sequence T=20000, K=V=16 (a T x T matrix is 3.2 GB)", qkv(1, 20000, 1, 16, 16)),
    ]


def _noncausal_no_normaliser(q: Any, k: Any, v: Any) -> np.ndarray:
    return numpy_ref.linear_attention_noncausal(q, k, v, scale=1.0, feature_map="elu1")


def _noncausal_no_normaliser_scaled(q: Any, k: Any, v: Any) -> np.ndarray:
    return numpy_ref.linear_attention_noncausal(q, k, v, feature_map="elu1")


def _noncausal_no_feature_map(q: Any, k: Any, v: Any) -> np.ndarray:
    return numpy_ref.linear_attention_noncausal(q, k, v, normalize=True)


NONCAUSAL = Exercise(
    id="02.3",
    title="non-causal linear attention in PyTorch",
    function="noncausal_linear_attention",
    points=3,
    reference=_noncausal_elu1,
    make_cases=_torch_cases,
    hints=(
        Hint(
            _noncausal_no_normaliser,
            "your output is the numerator phi(Q) (phi(K)^T V) alone: divide each row by "
            "phi(q_t) . sum_s phi(k_s)",
        ),
        Hint(
            _noncausal_no_normaliser_scaled,
            "your output is K ** -0.5 * phi(Q) (phi(K)^T V): divide each row by the normaliser "
            "phi(q_t) . sum_s phi(k_s) (the scale then cancels)",
        ),
        Hint(
            _noncausal_no_feature_map,
            "you used q and k as they are: apply phi = elu + 1 to both first "
            "(torch.nn.functional.elu(x) + 1)",
        ),
        Hint(
            _causal,
            "your output is causal (token t sees keys 0..t): here every query sees every key",
        ),
    ),
    shape_hint="The output is [B, T, H, V]: the layout of q with V in place of K",
    nan_hint=(
        "a denominator was 0 or exp overflowed: use torch.nn.functional.elu(x) + 1, which is "
        "positive everywhere and never overflows"
    ),
    time_limit_s=10.0,
)


EXERCISES = (ELU1, CAUSAL, NONCAUSAL)
