"""Graded exercises of chapter 10, the tradeoff in practice (MQAR).

Glossary of dimension letters: n examples, T sequence length, P key-value pairs, L
vocabulary size, D model width, H heads.

===== ================================ ========================= ============================
id    the learner writes               checked against           edge cases
===== ================================ ========================= ============================
10.1  ``mqar_targets(inputs,           ``tasks.mqar.mqar_        one example, one pair, a
      num_pairs)`` (numpy)             targets``                 query in the last position
10.2  ``answer_loss(logits, targets)`` cross-entropy over the    one answer, large logits,
      (torch)                          answers (float64 numpy)   a batch of one
10.3  ``state_numbers(mixer, d_model,  ``tasks.experiment.       every mixer, several heads,
      seq_len, num_heads)`` (numpy)    state_numbers``           T = 1, an array of lengths
===== ================================ ========================= ============================

Cases are drawn afresh at every check. Torch is imported only when 10.2's cases are drawn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from course_lib.grading.checks import Case, Exercise, Hint
from course_lib.tasks import mqar

CHAPTER = "10"
TITLE = "The tradeoff in practice"


# --------------------------------------------------------------------------- 10.1 targets


def _targets_inputs(
    rng: np.random.Generator, n: int, L: int, T: int, P: int, last: bool = False
) -> dict[str, Any]:
    seed = int(rng.integers(2**31))
    if last:  # search for a draw with a query in the very last position
        for s in range(seed, seed + 2000):
            inputs, targets = mqar.make_mqar(n, L, T, P, s, power_a=1.0)
            if (targets[:, -1] != mqar.IGNORE_INDEX).any():
                return {"inputs": inputs, "num_pairs": P}
    return {"inputs": mqar.make_mqar(n, L, T, P, seed)[0], "num_pairs": P}


def _targets_cases(rng: np.random.Generator) -> list[Case]:
    return [
        Case("n=4 examples, L=32, T=32, P=4", _targets_inputs(rng, 4, 32, 32, 4)),
        Case("one example, one pair (T=8)", _targets_inputs(rng, 1, 16, 8, 1)),
        Case("n=3, P=8, T=40", _targets_inputs(rng, 3, 64, 40, 8)),
        Case("a query in the last position", _targets_inputs(rng, 2, 16, 13, 2, last=True)),
    ]


def _targets(inputs: np.ndarray, num_pairs: Any) -> np.ndarray:
    return mqar.mqar_targets(inputs, int(num_pairs))


def _targets_on_values(inputs: np.ndarray, num_pairs: Any) -> np.ndarray:
    """The mistake of marking the position of the value (one too late)."""
    t = mqar.mqar_targets(inputs, int(num_pairs))
    out = np.full_like(t, mqar.IGNORE_INDEX)
    out[:, 1:] = t[:, :-1]
    return out


def _targets_with_pairs(inputs: np.ndarray, num_pairs: Any) -> np.ndarray:
    """The mistake of also asking for the values inside the key-value section."""
    P = int(num_pairs)
    t = mqar.mqar_targets(inputs, P)
    x = np.asarray(inputs).astype(np.int64)
    t[:, 0 : 2 * P : 2] = x[:, 1 : 2 * P : 2]
    return t


TARGETS = Exercise(
    id="10.1",
    title="MQAR answer positions",
    function="mqar_targets",
    points=2,
    reference=_targets,
    make_cases=_targets_cases,
    hints=(
        Hint(
            _targets_on_values,
            "your answers sit one position late, on the value itself: the target of position "
            "t is the token the model must produce NEXT, so mark the position of the repeated "
            "key",
        ),
        Hint(
            _targets_with_pairs,
            "you also put targets inside the key-value section at the start: there the model "
            "cannot know the value yet; only the queries after the first 2P tokens count",
        ),
    ),
    shape_hint="targets has the shape of inputs, [n, T]",
    time_limit_s=10.0,
)


# --------------------------------------------------------------------------- 10.2 loss


def _loss_inputs(rng: np.random.Generator, n: int, L: int, T: int, P: int, spread: float = 1.0):
    import torch

    from course_lib import runtime

    device = runtime.default_device()
    _, targets = mqar.make_mqar(n, L, T, P, int(rng.integers(2**31)))
    logits = rng.standard_normal((n, T, L)) * spread
    return {
        "logits": torch.tensor(logits, dtype=torch.float32, device=device),
        "targets": torch.tensor(targets, dtype=torch.long, device=device),
    }


def _loss_cases(rng: np.random.Generator) -> list[Case]:
    return [
        Case("n=4, T=24, L=32, P=4", _loss_inputs(rng, 4, 32, 24, 4)),
        Case("a batch of one with one answer", _loss_inputs(rng, 1, 8, 6, 1)),
        Case("logits up to about 1e3", _loss_inputs(rng, 3, 16, 16, 3, spread=300.0)),
    ]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _answer_loss(logits: np.ndarray, targets: np.ndarray, everywhere: bool = False) -> np.ndarray:
    t = np.asarray(targets).astype(np.int64)  # [n, T]
    mask = np.ones_like(t, dtype=bool) if everywhere else t != mqar.IGNORE_INDEX
    logp = _log_softmax(np.asarray(logits, dtype=np.float64))  # [n, T, L]
    picked = np.take_along_axis(logp, np.clip(t, 0, None)[..., None], -1)[..., 0]  # [n, T]
    return np.asarray(-(picked * mask).sum() / mask.sum())


def _answer_loss_everywhere(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The mistake of averaging over every position (the -100 ones read as token 0)."""
    return _answer_loss(logits, targets, everywhere=True)


def _answer_loss_sum(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    t = np.asarray(targets).astype(np.int64)
    return _answer_loss(logits, targets) * (t != mqar.IGNORE_INDEX).sum()


LOSS = Exercise(
    id="10.2",
    title="cross-entropy over the answers only",
    function="answer_loss",
    points=2,
    reference=_answer_loss,
    make_cases=_loss_cases,
    hints=(
        Hint(
            _answer_loss_everywhere,
            "you averaged over every position: positions whose target is -100 must be left "
            "out of both the sum and the count (`F.cross_entropy(..., ignore_index=-100)` or "
            "a boolean mask)",
        ),
        Hint(
            _answer_loss_sum,
            "you summed the losses of the answers: divide by the number of answers (a mean)",
        ),
    ),
    shape_hint="the loss is one number: a 0-dimensional tensor (no [1] or [n])",
    nan_hint=(
        "a log of a softmax that under- or overflowed: use `F.log_softmax` or "
        "`F.cross_entropy`, which subtract the maximum first"
    ),
    time_limit_s=10.0,
)


# --------------------------------------------------------------------------- 10.3 state size


def _state_cases(rng: np.random.Generator) -> list[Case]:
    T = np.array(sorted(rng.choice(np.arange(1, 4097), size=5, replace=False)))
    cases = []
    for mixer in ("attention", "linear_attention", "gla", "h3", "mamba"):
        H = int(rng.choice([1, 2, 4]))
        D = 16 * int(rng.integers(1, 9))
        cases.append(
            Case(
                f"{mixer}, D={D}, H={H}",
                {"mixer": mixer, "d_model": D, "seq_len": T.copy(), "num_heads": H},
            )
        )
    cases.append(
        Case(
            "attention at T=1",
            {"mixer": "attention", "d_model": 32, "seq_len": np.array([1]), "num_heads": 2},
        )
    )
    return cases


def _state_numbers(mixer: str, d_model: Any, seq_len: Any, num_heads: Any) -> np.ndarray:
    from course_lib.tasks.experiment import state_numbers

    T = np.asarray(seq_len).astype(np.int64)
    return np.asarray(state_numbers(mixer, int(d_model), T, int(num_heads)), dtype=np.float64)


def _state_no_normaliser(mixer: str, d_model: Any, seq_len: Any, num_heads: Any) -> np.ndarray:
    out = _state_numbers(mixer, d_model, seq_len, num_heads)
    return out - int(d_model) if mixer == "linear_attention" else out


def _state_attention_keys_only(mixer: str, d_model: Any, seq_len: Any, num_heads: Any) -> Any:
    out = _state_numbers(mixer, d_model, seq_len, num_heads)
    return out / 2 if mixer == "attention" else out


def _state_ignores_heads(mixer: str, d_model: Any, seq_len: Any, num_heads: Any) -> Any:
    return _state_numbers(mixer, d_model, seq_len, 1)


STATE = Exercise(
    id="10.3",
    title="state size per mixer",
    function="state_numbers",
    points=2,
    reference=_state_numbers,
    make_cases=_state_cases,
    hints=(
        Hint(
            _state_attention_keys_only,
            "for attention you counted the keys only: the KV cache keeps a key AND a value "
            "per token, 2 T D numbers",
        ),
        Hint(
            _state_no_normaliser,
            "for linear attention you left out the normaliser z (D numbers) that the "
            "normalised form keeps beside S",
        ),
        Hint(
            _state_ignores_heads,
            "the heads do not change your answer: with H heads each state is "
            "(D/H) x (D/H) (or (D/2H) x (D/H) for GLA), and there are H of them",
        ),
    ),
    shape_hint="one number per entry of seq_len: the shape of seq_len",
    time_limit_s=5.0,
)


EXERCISES = (TARGETS, LOSS, STATE)
