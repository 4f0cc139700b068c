"""Graded exercises of chapter 03, the recurrent view of linear attention.

Glossary of dimension letters: B batch, T sequence length, H heads, K query/key head
dimension, V value head dimension, C chunk length, N number of chunks ``ceil(T / C)``.

===== ===================================== ========================= ==========================
id    the learner writes                    checked against           edge cases
===== ===================================== ========================= ==========================
03.1  ``recurrent_step(q_t, k_t, v_t, S)``  ``numpy_ref.linear_       B=H=K=V=1, K != V, a zero
      (numpy)                               attention_step``          state, large states; the
                                                                      state must not change in
                                                                      place
03.2  ``chunkwise_linear_attention(q, k,    ``numpy_ref.linear_       T=1, C > T, C = T, T not a
      v, initial_state, chunk_size)``       attention_chunkwise``     multiple of C, C=1,
      (torch)                                                         float32
03.3  ``triton_chunk_states(k, v,           the final states of       one chunk, T=1, K and V
      chunk_size)`` (kernel body: the       ``numpy_ref.linear_       not powers of two, T not a
      state entering each chunk)            attention_recurrent``     multiple of C; outputs
                                            on each prefix            poisoned
===== ===================================== ========================= ==========================

The cases are drawn afresh at every check. torch and Triton are imported only when the
cases of 03.2 and 03.3 are drawn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from course_lib.grading.checks import Case, Exercise, Hint
from course_lib.linear_attention import numpy_ref

CHAPTER = "03"
TITLE = "The recurrent view"


# --------------------------------------------------------------------------- 03.1 step


def _step_inputs(
    rng: np.random.Generator, B: int, H: int, K: int, V: int, spread: float = 1.0
) -> dict[str, Any]:
    return {
        "q_t": rng.standard_normal((B, H, K)),
        "k_t": rng.standard_normal((B, H, K)),
        "v_t": rng.standard_normal((B, H, V)),
        "S": rng.standard_normal((B, H, K, V)) * spread,
    }


def _step_cases(rng: np.random.Generator) -> list[Case]:
    zero = _step_inputs(rng, 2, 1, 4, 4)
    zero["S"] = np.zeros_like(zero["S"])
    return [
        Case("B=2, H=3, K=4, V=5", _step_inputs(rng, 2, 3, 4, 5)),
        Case("B=H=K=V=1", _step_inputs(rng, 1, 1, 1, 1)),
        Case("K=8 != V=2", _step_inputs(rng, 1, 2, 8, 2)),
        Case("a zero state (the first token)", zero),
        Case("a large state (many tokens already written)", _step_inputs(rng, 2, 2, 6, 3, 50.0)),
    ]


def _step(q_t: Any, k_t: Any, v_t: Any, S: Any) -> tuple[np.ndarray, np.ndarray]:
    return numpy_ref.linear_attention_step(q_t, k_t, v_t, S)


def _step_read_first(q_t: Any, k_t: Any, v_t: Any, S: Any) -> tuple[np.ndarray, np.ndarray]:
    scale = q_t.shape[-1] ** -0.5
    o = scale * np.einsum("bhkv,bhk->bhv", S, q_t)  # read the state before the write
    return o, S + np.einsum("bhk,bhv->bhkv", k_t, v_t)


def _step_unscaled(q_t: Any, k_t: Any, v_t: Any, S: Any) -> tuple[np.ndarray, np.ndarray]:
    return numpy_ref.linear_attention_step(q_t, k_t, v_t, S, scale=1.0)


def _step_swapped(q_t: Any, k_t: Any, v_t: Any, S: Any) -> tuple[np.ndarray, np.ndarray]:
    """The query used as the write address and the key as the read address."""
    return numpy_ref.linear_attention_step(k_t, q_t, v_t, S, scale=q_t.shape[-1] ** -0.5)


STEP = Exercise(
    id="03.1",
    title="one recurrent decode step",
    function="recurrent_step",
    points=2,
    reference=_step,
    make_cases=_step_cases,
    output_names=("o_t", "S_new"),
    hints=(
        Hint(
            _step_read_first,
            "you read the state before writing the new pair: o_t = scale * S_new^T q_t uses "
            "the state that already holds k_t v_t^T (token t sees itself)",
        ),
        Hint(
            _step_unscaled,
            "o_t is not scaled: multiply S_new^T q_t by K ** -0.5",
        ),
        Hint(
            _step_swapped,
            "q_t and k_t swapped roles: write with the key (S + k_t v_t^T), read with the query",
        ),
    ),
    shape_hint="o_t is [B, H, V] and S_new is [B, H, K, V], like S",
    time_limit_s=5.0,
)


# --------------------------------------------------------------------------- 03.2 chunkwise


def _chunkwise(
    q: Any, k: Any, v: Any, initial_state: Any, chunk_size: int
) -> tuple[np.ndarray, np.ndarray]:
    return numpy_ref.linear_attention_chunkwise(
        q, k, v, initial_state=initial_state, output_final_state=True, chunk_size=chunk_size
    )


def _chunkwise_variant(
    q: Any, k: Any, v: Any, S: Any, C: int, causal_mask: bool = True, update_first: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """A chunkwise form with one known mistake: no mask inside a chunk, or the state of a
    chunk updated before the chunk's output is computed."""
    q = q * q.shape[-1] ** -0.5
    o = np.zeros(v.shape)  # [B, T, H, V]
    for c in range(0, q.shape[1], C):
        qc, kc, vc = q[:, c : c + C], k[:, c : c + C], v[:, c : c + C]  # [B, C, H, .]
        A = np.einsum("bthk,bshk->bhts", qc, kc)  # [B, H, C, C]
        if causal_mask:
            A = A * np.tril(np.ones((qc.shape[1], qc.shape[1])))
        U = np.einsum("bthk,bthv->bhkv", kc, vc)  # [B, H, K, V]
        S_read = S + U if update_first else S
        o[:, c : c + C] = np.einsum("bthk,bhkv->bthv", qc, S_read) + np.einsum(
            "bhts,bshv->bthv", A, vc
        )
        S = S + U
    return o, S


def _chunkwise_no_mask(q: Any, k: Any, v: Any, initial_state: Any, chunk_size: int) -> Any:
    return _chunkwise_variant(q, k, v, initial_state, chunk_size, causal_mask=False)


def _chunkwise_update_first(q: Any, k: Any, v: Any, initial_state: Any, chunk_size: int) -> Any:
    return _chunkwise_variant(q, k, v, initial_state, chunk_size, update_first=True)


def _chunkwise_unscaled(q: Any, k: Any, v: Any, initial_state: Any, chunk_size: int) -> Any:
    return numpy_ref.linear_attention_chunkwise(
        q, k, v, 1.0, initial_state=initial_state, output_final_state=True, chunk_size=chunk_size
    )


def _chunkwise_no_init(q: Any, k: Any, v: Any, initial_state: Any, chunk_size: int) -> Any:
    return numpy_ref.linear_attention_chunkwise(
        q, k, v, output_final_state=True, chunk_size=chunk_size
    )


def _chunkwise_cases(rng: np.random.Generator) -> list[Case]:
    import torch

    def inputs(
        B: int, T: int, H: int, K: int, V: int, C: int, dtype: Any = torch.float64
    ) -> dict[str, Any]:
        arrays = {
            "q": rng.standard_normal((B, T, H, K)),
            "k": rng.standard_normal((B, T, H, K)),
            "v": rng.standard_normal((B, T, H, V)),
            "initial_state": rng.standard_normal((B, H, K, V)),
        }
        out: dict[str, Any] = {n: torch.tensor(x, dtype=dtype) for n, x in arrays.items()}
        out["chunk_size"] = C
        return out

    return [
        Case("B=2, T=37, H=2, K=4, V=3, chunk 8 (last chunk shorter)", inputs(2, 37, 2, 4, 3, 8)),
        Case("T=16, chunk 16 (one full chunk)", inputs(1, 16, 1, 4, 4, 16)),
        Case("one token, T=1, chunk 4", inputs(1, 1, 1, 3, 2, 4)),
        Case("chunk 64 > T=10", inputs(1, 10, 2, 5, 5, 64)),
        Case("chunk 1 (the recurrence itself), T=9", inputs(2, 9, 1, 3, 4, 1)),
        Case("float32 tensors, T=50, chunk 16", inputs(1, 50, 2, 8, 8, 16, torch.float32)),
    ]


CHUNKWISE = Exercise(
    id="03.2",
    title="chunkwise linear attention in PyTorch",
    function="chunkwise_linear_attention",
    points=3,
    reference=_chunkwise,
    make_cases=_chunkwise_cases,
    output_names=("o", "final_state"),
    hints=(
        Hint(
            _chunkwise_no_mask,
            "inside a chunk, token t also sees the later tokens of its chunk: mask the "
            "[C, C] scores with the causal mask (keep s <= t) before multiplying by V_n",
        ),
        Hint(
            _chunkwise_update_first,
            "the chunk's output read the state AFTER adding K_n^T V_n, so the chunk's own "
            "pairs are counted twice: compute O_n from the state entering the chunk, then "
            "update it",
        ),
        Hint(
            _chunkwise_unscaled,
            "the output is not scaled: multiply q by K ** -0.5 (or the output by it)",
        ),
        Hint(
            _chunkwise_no_init,
            "initial_state is ignored: the state entering the first chunk is initial_state, "
            "not zeros",
        ),
    ),
    shape_hint="o is [B, T, H, V] and final_state is [B, H, K, V]",
    time_limit_s=10.0,
)


# --------------------------------------------------------------------------- 03.3 Triton


def _chunk_states(k: Any, v: Any, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``h [B, H, N, K, V]``: the state entering each chunk, and the final state ``[B, H, K,
    V]``; each is the final state of the library's recurrence over a prefix of the tokens."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    N = -(-T // chunk_size)
    states = [np.zeros((B, H, K, V))]
    for n in range(1, N + 1):
        end = min(n * chunk_size, T)
        kp, vp = k[:, :end], v[:, :end]
        _, S = numpy_ref.linear_attention_recurrent(kp, kp, vp, output_final_state=True)
        states.append(S)
    return np.stack(states[:N], axis=2), states[N]


def _chunk_states_after(k: Any, v: Any, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The mistake of storing the state after the chunk's update instead of before."""
    h, final = _chunk_states(k, v, chunk_size)
    after = np.concatenate([h[:, :, 1:], final[:, :, None]], axis=2)
    return after, final


def _triton_cases(rng: np.random.Generator) -> list[Case]:
    import torch

    from course_lib import runtime

    device = runtime.default_device()

    def inputs(B: int, T: int, H: int, K: int, V: int, C: int) -> dict[str, Any]:
        def t(shape: tuple[int, ...]) -> Any:
            return torch.tensor(rng.standard_normal(shape), dtype=torch.float32, device=device)

        return {"k": t((B, T, H, K)), "v": t((B, T, H, V)), "chunk_size": C}

    return [
        Case("B=1, T=40, H=2, K=V=16, chunk 16 (last chunk shorter)", inputs(1, 40, 2, 16, 16, 16)),
        Case("T=16, chunk 16 (one chunk)", inputs(1, 16, 1, 16, 16, 16)),
        Case("one token, T=1, chunk 16", inputs(1, 1, 1, 16, 16, 16)),
        Case("K=5, V=3 (not powers of two), T=20", inputs(2, 20, 1, 5, 3, 16)),
        Case("B=2, T=64, H=1, K=8, V=32, chunk 32", inputs(2, 64, 1, 8, 32, 32)),
    ]


TRITON_STATES = Exercise(
    id="03.3",
    title="the chunk-state kernel in Triton",
    function="triton_chunk_states",
    points=3,
    reference=_chunk_states,
    make_cases=_triton_cases,
    output_names=("states", "final_state"),
    hints=(
        Hint(
            _chunk_states_after,
            "states[:, :, n] holds the state AFTER chunk n: store S before adding the "
            "chunk's k^T v (the state ENTERING chunk n)",
        ),
    ),
    shape_hint="states is [B, H, N, K, V] with N = ceil(T / chunk_size); final_state [B, H, K, V]",
    nan_hint=(
        "part of the output was never written (in this check, outputs start as NaN): store "
        "S into states at every chunk n, before the update, with the tile's mask; or the "
        "padding rows of the last chunk were not loaded as 0 (use other=0.0 with the mask)"
    ),
    time_limit_s=60.0,
    poison=True,
)


EXERCISES = (STEP, CHUNKWISE, TRITON_STATES)
