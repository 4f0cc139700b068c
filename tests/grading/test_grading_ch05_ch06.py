"""The graded exercises of chapters 05 (SSMs) and 06 (H3): typical mistakes are named.

Solutions earning full marks and blanks scoring zero are tested for every chapter in
test_every_chapter.py. The solution code is read from the solution notebooks' cells; the
wrong variants are the mistakes each exercise's hints promise to recognise.
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
NOTEBOOKS = {"05": "05_state_space_models.ipynb", "06": "06_h3.ipynb"}
FUNCTIONS = {
    "05.1": "discretize_zoh_diag",
    "05.2": "ssm_kernel_diag",
    "05.3": "fft_causal_conv",
    "06.1": "shift_ssm_fir",
    "06.2": "h3_head_step",
    "06.3": "h3_head",
}


@pytest.fixture(scope="module")
def solutions(tmp_path_factory) -> dict[str, ModuleType]:
    tmp = tmp_path_factory.mktemp("solutions")
    return {ch: chapter_module("solutions", ch, tmp) for ch in NOTEBOOKS}


def test_chapters_are_discovered_with_three_exercises() -> None:
    for chapter in NOTEBOOKS:
        ids = [ex.id for ex in catalog.chapter_exercises(chapter)]
        assert ids == sorted(i for i in FUNCTIONS if i.startswith(chapter))


# ----------------------------------------------------------------------- known mistakes


def _zoh_naive(A, B, dt):  # 0/0 at a = 0
    Abar = np.exp(dt[:, None] * A)
    with np.errstate(all="ignore"):
        return Abar, (Abar - 1) / A * B


def _zoh_euler(A, B, dt):
    return 1 + dt[:, None] * A, dt[:, None] * B


def _kernel_from_lag_one(Abar, Bbar, C, L):
    return np.einsum("dn,dnl->dl", C * Bbar, Abar[:, :, None] ** np.arange(1, L + 1))


def _conv_circular(x, K):
    T = x.shape[1]
    spectrum = torch.fft.rfft(x, dim=1) * torch.fft.rfft(K, n=T, dim=1).T
    return torch.fft.irfft(spectrum, n=T, dim=1)


def _fir_roll(x, kernel):
    return sum(kernel[:, j] * np.roll(x, j, axis=1) for j in range(kernel.shape[1]))


def _step_in_place(q_t, kbar_t, v_t, S, Abar, Bbar, C, D):
    kv = np.einsum("bk,bv->bkv", kbar_t, v_t)
    S *= Abar[:, None, None]
    S += Bbar[:, None, None] * kv[:, None]
    Z = np.einsum("n,bnkv->bkv", C, S) + D * kv
    return np.einsum("bk,bkv->bv", q_t, Z), S


def _step_read_old_state(q_t, kbar_t, v_t, S, Abar, Bbar, C, D):
    kv = np.einsum("bk,bv->bkv", kbar_t, v_t)
    Z = np.einsum("n,bnkv->bkv", C, S) + D * kv
    S_new = Abar[:, None, None] * S + Bbar[:, None, None] * kv[:, None]
    return np.einsum("bk,bkv->bv", q_t, Z), S_new


MISTAKES = [
    ("05.1", _zoh_naive, "limit is dt"),
    ("05.1", _zoh_euler, "forward Euler"),
    ("05.2", _kernel_from_lag_one, "shifted by one lag"),
    ("05.3", _conv_circular, "circular convolution"),
    ("06.1", _fir_roll, "wrapped around"),
    ("06.2", _step_in_place, "changed its input `S` in place"),
    ("06.2", _step_read_old_state, "read from the old state"),
]


@pytest.mark.parametrize(
    ("exercise_id", "fn", "words"), MISTAKES, ids=[m[1].__name__ for m in MISTAKES]
)
def test_known_mistakes_are_named(exercise_id: str, fn, words: str) -> None:
    result = catalog.exercise(exercise_id).run(fn, seed=0)
    assert result.points == 0
    assert any(words in m for m in result.messages), result.report()


def test_missing_shift_in_the_head_is_named(solutions) -> None:
    head = solutions["06"].h3_head

    def no_shift(q, k, v, shift_kernel, Abar, Bbar, C, D):
        identity = torch.zeros_like(shift_kernel)
        identity[:, 0] = 1.0
        return head(q, k, v, identity, Abar, Bbar, C, D)

    result = catalog.exercise("06.3").run(no_shift, seed=0)
    assert result.points == 0
    assert any("shift SSM is missing" in m for m in result.messages), result.report()
