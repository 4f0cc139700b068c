"""Multi-query associative recall (MQAR), the synthetic task of Arora et al. 2023 (Zoology).

Glossary of dimension letters:

* ``n`` -- number of examples
* ``T`` -- sequence length (``seq_len``), the length of ``inputs`` and ``targets``
* ``P`` -- key-value pairs per example (``num_pairs``)
* ``S`` -- query slots after the key-value section, ``(T + 1 - 2P) // 2``
* ``L`` -- vocabulary size (``vocab_size``)

An example opens with ``P`` key-value pairs, ``k_1 v_1 k_2 v_2 ... k_P v_P``. Later every
key comes back once as a *query*, followed by its value; the model must produce the value
when it reads the repeated key. Everything else is the filler token ``0``::

    sequence:  k1 v1 k2 v2 k3 v3 | 0 0 k2 v2 0 0 0 0 k1 v1 k3 v3 0 0 ...
    inputs:    the sequence without its last token        [n, T]
    targets:   the sequence shifted left by one, -100 except where the input is a query
               key: there the target is that key's value   [n, T]

So the loss (cross-entropy with ``ignore_index=-100``) counts only the ``P`` answers per
example. Vocabulary: ``0`` is the filler, keys are drawn from the lower half
``[1, L/2)`` and values from the upper half ``[L/2, L)``, so a key can never be mistaken
for a value; within an example the keys are distinct (each question has one answer) and so
are the values.

Where the queries go: query slot ``s`` (``s = 0 .. S-1``) puts its key at position
``2P + 2s`` and its value right after it, so the *gap* between the end of the key-value
section and the query is ``g = s + 1`` slots. The ``P`` slots are drawn without
replacement with probability proportional to ``g^(a - 1)`` (``a = power_a``, 0.01 in
Zoology): a power law that puts most queries close after the pairs and a few very far
away, like the recall distances in natural text. Sampling without replacement is done for
all examples at once with the Gumbel top-``k`` trick: the ``P`` largest of
``log p_g + Gumbel noise`` are a sample without replacement in proportion to ``p``
(Kool et al. 2019).

A model that keeps every token (softmax attention) can look the key up; a model with a
fixed-size state must have written all ``P`` pairs into that state when it reads the
query, which is what chapter 10 measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from course_lib.checks import check_positive_int

IGNORE_INDEX = -100
FILLER = 0

SeedLike = int | Sequence[int]


def _check_power(power_a: Any) -> float:
    if isinstance(power_a, bool) or not isinstance(power_a, (int, float)):
        raise TypeError(f"power_a must be a number in (0, 1], got {type(power_a).__name__}")
    if not 0.0 < float(power_a) <= 1.0:
        raise ValueError(f"power_a must be in (0, 1], got {power_a}")
    return float(power_a)


def check_mqar_sizes(vocab_size: int, seq_len: int, num_pairs: int) -> int:
    """Validate the sizes; return the number of query slots ``S = (T + 1 - 2P) // 2``."""
    L = check_positive_int("vocab_size", vocab_size)
    T = check_positive_int("seq_len", seq_len)
    P = check_positive_int("num_pairs", num_pairs)
    if P > L // 2 - 1:
        raise ValueError(
            f"num_pairs={P} needs {P} distinct keys from [1, {L // 2}): vocab_size must be at "
            f"least {2 * P + 2}, got {L}"
        )
    slots = (T + 1 - 2 * P) // 2
    if slots < P:
        raise ValueError(
            f"seq_len={T} is too short for num_pairs={P}: the pairs take {2 * P} tokens and "
            f"the {P} queries another {2 * P}, so seq_len must be at least {4 * P - 1}"
        )
    return slots


def query_gap_probabilities(num_slots: int, power_a: float = 0.01) -> np.ndarray:
    """``p_g`` proportional to ``g^(a - 1)`` for gaps ``g = 1 .. S``: ``[S]``, sums to 1."""
    S = check_positive_int("num_slots", num_slots)
    a = _check_power(power_a)
    g = np.arange(1, S + 1, dtype=np.float64)  # [S]
    w = g ** (a - 1.0)
    return w / w.sum()


def _distinct_tokens(rng: np.random.Generator, n: int, k: int, low: int, high: int) -> np.ndarray:
    """``[n, k]`` tokens from ``[low, high)``, distinct within each row."""
    scores = rng.random((n, high - low))  # [n, high - low]
    idx = np.argpartition(scores, k - 1, axis=1)[:, :k]  # the k smallest scores: a random set
    # Ordered by score, the set comes in a uniformly random order.
    idx = np.take_along_axis(idx, np.argsort(np.take_along_axis(scores, idx, 1), 1), 1)
    return idx + low  # [n, k]


def make_mqar(
    num_examples: int,
    vocab_size: int,
    seq_len: int,
    num_pairs: int,
    seed: SeedLike,
    power_a: float = 0.01,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``num_examples`` MQAR examples (see the module docstring for the layout).

    Args:
        num_examples: ``n``.
        vocab_size: ``L``; token 0 is the filler, keys come from ``[1, L/2)``, values from
            ``[L/2, L)``.
        seq_len: ``T``, at least ``4P - 1``.
        num_pairs: ``P`` key-value pairs, each queried once.
        seed: seed of the ``numpy.random.Generator`` (an int or a sequence of ints); the
            same seed gives the same examples.
        power_a: exponent ``a`` of the gap distribution ``p_g ~ g^(a - 1)``.

    Returns:
        ``(inputs [n, T], targets [n, T])``, both int64; ``targets`` is ``-100`` except at
        the ``P`` query positions of each example, where it holds the queried key's value.
    """
    n = check_positive_int("num_examples", num_examples)
    S = check_mqar_sizes(vocab_size, seq_len, num_pairs)
    L, T, P = vocab_size, seq_len, num_pairs
    p = query_gap_probabilities(S, power_a)  # [S]
    rng = np.random.default_rng(seed)

    keys = _distinct_tokens(rng, n, P, 1, L // 2)  # [n, P]
    values = _distinct_tokens(rng, n, P, L // 2, L)  # [n, P]
    gumbel = -np.log(-np.log(rng.random((n, S))))  # [n, S]
    perturbed = np.log(p) + gumbel  # [n, S]
    slots = np.argpartition(-perturbed, P - 1, axis=1)[:, :P]  # [n, P], gap g = slot + 1
    order = np.argsort(rng.random((n, P)), axis=1)  # [n, P], which pair each slot asks for

    seq = np.full((n, T + 1), FILLER, dtype=np.int64)  # [n, T + 1]
    rows = np.arange(n)[:, None]  # [n, 1]
    seq[:, 0 : 2 * P : 2] = keys
    seq[:, 1 : 2 * P : 2] = values
    query_pos = 2 * P + 2 * slots  # [n, P]
    asked = np.take_along_axis(keys, order, axis=1)  # [n, P]
    answer = np.take_along_axis(values, order, axis=1)  # [n, P]
    seq[rows, query_pos] = asked
    seq[rows, query_pos + 1] = answer

    inputs = seq[:, :T].copy()  # [n, T]
    targets = np.full((n, T), IGNORE_INDEX, dtype=np.int64)  # [n, T]
    targets[rows, query_pos] = answer
    return inputs, targets


def answer_mask(targets: Any) -> Any:
    """``True`` where a target counts (the answers), ``False`` where it is ``-100``."""
    return targets != IGNORE_INDEX


def recall_accuracy(logits: Any, targets: Any) -> float:
    """Fraction of answer positions whose arg-max prediction is the right value.

    ``logits [n, T, L]`` and ``targets [n, T]``, numpy arrays or torch tensors; positions
    with target ``-100`` are left out, so the accuracy is over the answers only.
    """
    mask = answer_mask(targets)
    if int(mask.sum()) == 0:
        raise ValueError("targets holds no answer positions (every entry is -100)")
    hits = (logits.argmax(-1) == targets) & mask  # [n, T]
    return float(hits.sum()) / float(mask.sum())


def mqar_targets(inputs: Any, num_pairs: int) -> np.ndarray:
    """Rebuild the targets of MQAR inputs: where the answers are, and what they are.

    ``inputs [n, T]`` (ints) opening with ``num_pairs`` key-value pairs. After the pairs,
    a position holding one of its example's keys is a query; its target is the value paired
    with that key. Every other position gets ``-100``. Returns ``targets [n, T]`` int64,
    equal to the targets :func:`make_mqar` drew with these inputs.
    """
    x = np.asarray(inputs).astype(np.int64)  # [n, T]
    P = int(num_pairs)
    keys, values = x[:, 0 : 2 * P : 2], x[:, 1 : 2 * P : 2]  # [n, P]
    later = x[:, 2 * P :]  # [n, T - 2P]
    hit = later[:, :, None] == keys[:, None, :]  # [n, T - 2P, P]: which key sits there
    answer = np.einsum("ntp,np->nt", hit.astype(np.int64), values)  # [n, T - 2P]
    targets = np.full(x.shape, IGNORE_INDEX, dtype=np.int64)
    targets[:, 2 * P :] = np.where(hit.any(-1), answer, IGNORE_INDEX)
    return targets


def recall_per_example(logits: Any, targets: Any) -> np.ndarray:
    """Per example, the fraction of its answers predicted right (arg-max of the logits).

    ``logits [n, T, L]``, ``targets [n, T]`` with ``-100`` where nothing is asked; returns
    ``[n]`` float64. Averaged over examples with equal answer counts it is
    :func:`recall_accuracy`.
    """
    logits, targets = np.asarray(logits), np.asarray(targets).astype(np.int64)
    mask = targets != IGNORE_INDEX  # [n, T]
    hits = (logits.argmax(-1) == targets) & mask  # [n, T]
    return hits.sum(-1) / np.maximum(mask.sum(-1), 1)  # [n]


@dataclass(frozen=True)
class MQARConfig:
    """The sizes of an MQAR task; ``make(num_examples, seed)`` draws examples of it."""

    vocab_size: int = 64
    seq_len: int = 64
    num_pairs: int = 8
    power_a: float = 0.01

    def __post_init__(self) -> None:
        check_mqar_sizes(self.vocab_size, self.seq_len, self.num_pairs)
        _check_power(self.power_a)

    def make(self, num_examples: int, seed: SeedLike) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs [n, T], targets [n, T])`` of :func:`make_mqar` with these sizes."""
        return make_mqar(
            num_examples, self.vocab_size, self.seq_len, self.num_pairs, seed, self.power_a
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
