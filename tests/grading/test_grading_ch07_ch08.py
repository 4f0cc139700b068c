"""The graded exercises of chapters 07 (selective SSMs) and 08 (duality).

Solutions earning full marks and blanks scoring zero as "not done" are tested for every
chapter in test_every_chapter.py; here, typical learner mistakes, written independently of
the checks' hints, must be named.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from grading_helpers import chapter_module

from course_lib.grading import catalog

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = {"07": "07_selective_ssm_mamba.ipynb", "08": "08_duality.ipynb"}
FUNCTIONS = {
    "07.1": "selective_step",
    "07.2": "combine",
    "07.3": "hillis_steele_scan",
    "07.4": "triton_selective_scan",
    "08.1": "ssd_to_gla",
    "08.2": "decay_mask_from_gates",
    "08.3": "ssd_attention_form",
}


@pytest.fixture(scope="module")
def solutions(tmp_path_factory) -> dict[str, ModuleType]:
    tmp = tmp_path_factory.mktemp("solutions")
    return {ch: chapter_module("solutions", ch, tmp) for ch in NOTEBOOKS}


def test_chapters_are_discovered() -> None:
    for chapter in NOTEBOOKS:
        ids = [ex.id for ex in catalog.chapter_exercises(chapter)]
        assert ids == sorted(i for i in FUNCTIONS if i.startswith(chapter))


# ----------------------------------------------------------------------- known mistakes


def _step_literal_softplus(u_t, delta_t, A, B_t, C_t, state, delta_bias):
    with np.errstate(over="ignore", invalid="ignore"):
        dt = np.log(1 + np.exp(delta_t + delta_bias))  # overflows at 800
        h = np.exp(dt[..., None] * A) * state + (dt * u_t)[..., None] * B_t[:, None]
    return np.einsum("bdn,bn->bd", h, C_t), h


def _step_raw_delta(u_t, delta_t, A, B_t, C_t, state, delta_bias):
    dt = delta_t + delta_bias
    h = np.exp(dt[..., None] * A) * state + (dt * u_t)[..., None] * B_t[:, None]
    return np.einsum("bdn,bn->bd", h, C_t), h


def _combine_backwards(a1, b1, a2, b2):
    return a2 * a1, a1 * b2 + b1


def _scan_cumsum(a, b):
    return torch.cumprod(a, 0), torch.cumsum(b, 0)


def _mapping_exp_gate(x, dt, A, B, C):
    return C, B, dt[..., None] * x, np.exp(dt * A)


def _mask_split(g):
    G = np.cumsum(g, axis=-1)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.tril(np.exp(G)[..., :, None] * np.exp(-G)[..., None, :])


def _mask_no_tril(g):
    G = np.cumsum(g, axis=-1)
    with np.errstate(over="ignore"):
        return np.exp(G[..., :, None] - G[..., None, :])


def _quadratic_plain_linear_attention(x, dt, A, B, C):
    T = x.shape[1]
    causal = torch.tril(torch.ones(T, T, dtype=x.dtype))
    scores = torch.einsum("bthn,bshn->bhts", C, B) * causal
    return torch.einsum("bhts,bshp->bthp", scores, dt[..., None] * x)


MISTAKES = [
    ("07.1", _step_literal_softplus, "np.logaddexp"),
    ("07.1", _step_raw_delta, "raw delta"),
    ("07.2", _combine_backwards, "order is reversed"),
    ("07.3", _scan_cumsum, "plain running sum"),
    ("08.1", _mapping_exp_gate, "LOG gate"),
    ("08.2", _mask_split, "form the difference"),
    ("08.2", _mask_no_tril, "must be 0"),
    ("08.3", _quadratic_plain_linear_attention, "no decay"),
]


@pytest.mark.parametrize(
    ("exercise_id", "fn", "words"), MISTAKES, ids=[m[1].__name__ for m in MISTAKES]
)
def test_known_mistakes_are_named(exercise_id: str, fn, words: str) -> None:
    result = catalog.exercise(exercise_id).run(fn, seed=0)
    assert result.points == 0
    assert any(words in m for m in result.messages), result.report()


def test_triton_kernel_without_carried_state_is_named(solutions) -> None:
    scan = solutions["07"].triton_selective_scan

    def one_step_at_a_time(u, delta, A, B, C):
        # every step from a zero state: the kernel's loop forgot to carry h
        ys = [scan(u[:, t : t + 1], delta[:, t : t + 1], A, B[:, t : t + 1], C[:, t : t + 1])
              for t in range(u.shape[1])]  # fmt: skip
        return torch.cat(ys, dim=1)

    result = catalog.exercise("07.4").run(one_step_at_a_time, seed=0)
    assert result.points == 0
    assert any("not carried" in m for m in result.messages), result.report()
