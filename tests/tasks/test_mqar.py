"""MQAR data: the layout of Arora et al. 2023, reproducibility and the loss mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from course_lib.tasks.mqar import (
    FILLER,
    IGNORE_INDEX,
    MQARConfig,
    answer_mask,
    make_mqar,
    mqar_targets,
    query_gap_probabilities,
    recall_accuracy,
    recall_per_example,
)


@st.composite
def sizes(draw: st.DrawFn) -> tuple[int, int, int, int]:
    P = draw(st.integers(1, 12))
    T = draw(st.integers(4 * P - 1, 4 * P + 40))
    L = draw(st.integers(2 * P + 2, 2 * P + 60))
    n = draw(st.integers(1, 5))
    return n, L, T, P


def _pairs(row: np.ndarray, P: int) -> dict[int, int]:
    """Key -> value of the key-value section at the start of an input row."""
    return dict(zip(row[0 : 2 * P : 2].tolist(), row[1 : 2 * P : 2].tolist(), strict=True))


@given(sizes(), st.integers(0, 2**32 - 1))
def test_answers_are_the_values_paired_with_the_queried_keys(size, seed) -> None:
    n, L, T, P = size
    inputs, targets = make_mqar(n, L, T, P, seed)
    assert inputs.shape == targets.shape == (n, T)
    assert inputs.dtype == targets.dtype == np.int64
    for row_in, row_t in zip(inputs, targets, strict=True):
        pairs = _pairs(row_in, P)
        assert len(pairs) == P  # keys distinct
        assert len(set(pairs.values())) == P  # values distinct
        positions = np.flatnonzero(row_t != IGNORE_INDEX)
        assert len(positions) == P  # one answer per pair
        assert positions.min() >= 2 * P  # queries come after the key-value section
        asked = row_in[positions]
        assert sorted(asked.tolist()) == sorted(pairs)  # every key is queried exactly once
        for pos, key in zip(positions, asked, strict=True):
            assert row_t[pos] == pairs[int(key)]  # the answer is the value stored with the key
            if pos + 1 < T:
                assert row_in[pos + 1] == pairs[int(key)]  # ... and is then shown as input
            assert (pos - 2 * P) % 2 == 0  # queries sit on slots of two tokens


@given(sizes(), st.integers(0, 2**32 - 1))
def test_keys_and_values_come_from_disjoint_halves(size, seed) -> None:
    n, L, T, P = size
    inputs, targets = make_mqar(n, L, T, P, seed)
    keys = inputs[:, 0 : 2 * P : 2]
    values = inputs[:, 1 : 2 * P : 2]
    assert keys.min() >= 1 and keys.max() < L // 2
    assert values.min() >= L // 2 and values.max() < L
    answers = targets[targets != IGNORE_INDEX]
    assert answers.min() >= L // 2 and answers.max() < L
    # Outside the pairs and the queries there is only filler.
    rest = inputs[:, 2 * P :]
    is_token = rest != FILLER
    assert is_token.sum() == n * P * 2 - (targets[:, -1] != IGNORE_INDEX).sum()


def test_same_seed_same_data_and_different_seeds_differ() -> None:
    a = make_mqar(8, 64, 64, 8, seed=3)
    b = make_mqar(8, 64, 64, 8, seed=3)
    c = make_mqar(8, 64, 64, 8, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    cfg = MQARConfig(64, 64, 8)
    assert np.array_equal(cfg.make(8, 3)[0], a[0])
    assert not np.array_equal(cfg.make(8, [3, 0, 1])[0], cfg.make(8, [3, 0, 2])[0])


def test_gaps_follow_the_power_law() -> None:
    p = query_gap_probabilities(20, 0.01)
    assert p.shape == (20,) and np.isclose(p.sum(), 1.0)
    assert np.all(np.diff(p) < 0)  # nearer gaps are likelier
    assert np.isclose(p[0] / p[1], 2 ** (1 - 0.01))  # p_g ~ g^(a - 1)
    # Empirically, with one pair per example, the first slot is picked about p_1 of the time.
    _, targets = make_mqar(4000, 16, 41, 1, seed=0, power_a=0.01)
    first_slot = (targets[:, 2] != IGNORE_INDEX).mean()
    assert abs(first_slot - p[0]) < 0.03
    uniform = make_mqar(4000, 16, 41, 1, seed=0, power_a=1.0)[1]
    assert abs((uniform[:, 2] != IGNORE_INDEX).mean() - 1 / 20) < 0.02


def test_loss_mask_only_at_answers() -> None:
    _, targets = make_mqar(4, 32, 30, 5, seed=1)
    mask = answer_mask(targets)
    assert mask.sum() == 4 * 5
    # Cross-entropy with ignore_index counts the answers only: wrong logits elsewhere cost 0.
    L = 32
    logits = torch.full((4, 30, L), -10.0)
    t = torch.as_tensor(targets)
    rows, cols = torch.nonzero(t != IGNORE_INDEX, as_tuple=True)
    logits[rows, cols, t[rows, cols]] = 10.0  # right at every answer, arbitrary elsewhere
    loss = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), t.flatten(), ignore_index=IGNORE_INDEX
    )
    assert float(loss) < 1e-6
    assert recall_accuracy(logits, t) == 1.0
    assert recall_accuracy(logits.numpy(), targets) == 1.0
    logits[rows[0], cols[0]] = 0.0
    logits[rows[0], cols[0], 1] = 1.0  # one answer wrong out of 20
    assert recall_accuracy(logits, t) == pytest.approx(19 / 20)


@pytest.mark.parametrize(
    ("kwargs", "error", "word"),
    [
        ({"seq_len": 10, "num_pairs": 4}, ValueError, "seq_len"),
        ({"vocab_size": 8, "num_pairs": 4}, ValueError, "vocab_size"),
        ({"num_pairs": 0}, ValueError, "num_pairs"),
        ({"power_a": 0.0}, ValueError, "power_a"),
        ({"power_a": "a"}, TypeError, "power_a"),
    ],
)
def test_bad_sizes_are_named(kwargs, error, word) -> None:
    args = {"num_examples": 2, "vocab_size": 32, "seq_len": 32, "num_pairs": 4, "seed": 0}
    args.update(kwargs)
    with pytest.raises(error, match=word):
        make_mqar(**args)
    with pytest.raises(error, match=word):
        MQARConfig(**{k: v for k, v in args.items() if k not in ("num_examples", "seed")})


@given(sizes(), st.integers(0, 2**32 - 1))
def test_targets_can_be_rebuilt_from_the_inputs(size, seed) -> None:
    n, L, T, P = size
    inputs, targets = make_mqar(n, L, T, P, seed)
    assert np.array_equal(mqar_targets(inputs, P), targets)


def test_recall_per_example_averages_to_recall_accuracy() -> None:
    rng = np.random.default_rng(0)
    _, targets = make_mqar(6, 16, 16, 3, seed=0)
    logits = rng.standard_normal((6, 16, 16))
    t = targets.copy()
    rows, cols = np.nonzero(t != IGNORE_INDEX)
    logits[rows[::2], cols[::2], t[rows[::2], cols[::2]]] = 9.0  # every other answer right
    per = recall_per_example(logits, targets)
    assert per.shape == (6,)
    assert np.isclose(per.mean(), recall_accuracy(logits, targets))
    assert per.mean() >= 0.5
