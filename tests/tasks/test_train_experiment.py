"""Training on MQAR, recall evaluation, state sizes and the grid, at tiny sizes on CPU."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from course_lib.nn import TinyLM
from course_lib.tasks.experiment import (
    CONFIGS,
    GridConfig,
    accuracy_table,
    build_model,
    load_results,
    main,
    mixer_label,
    run_grid,
    save_plots,
    state_numbers,
    state_size,
)
from course_lib.tasks.mqar import IGNORE_INDEX, MQARConfig
from course_lib.tasks.train import evaluate_recall, lr_at, train_mqar

# The learning bound: a 2-layer softmax-attention TinyLM (D = 32) reaches this held-out
# recall on MQAR with 2 pairs, T = 16, within STEPS steps (seeded, CPU). A random value is
# right 1/8 of the time, a guess between the two values seen 1/2. (Guessing the value not
# yet answered gives 0.75; exact lookup, near 1.0, needs a longer budget than a unit test.)
RECALL_BOUND = 0.7
STEPS = 250


def test_lr_schedule_warms_up_then_decays() -> None:
    lrs = [lr_at(s, 100, 1.0, 0.1, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_evaluate_recall_counts_answer_positions_only() -> None:
    class Oracle(torch.nn.Module):
        """Predicts the answers from a lookup table: right where the target is known."""

        def __init__(self, targets: np.ndarray, L: int, wrong: int) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            t = torch.as_tensor(targets)
            self.logits = torch.zeros(*t.shape, L)
            rows, cols = torch.nonzero(t != IGNORE_INDEX, as_tuple=True)
            self.logits[rows, cols, t[rows, cols]] = 1.0
            r, c = rows[:wrong], cols[:wrong]
            self.logits[r, c] = 0.0
            self.logits[r, c, 0] = 1.0  # the filler: wrong

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            start = int(x[0, 0].item())  # a batch is identified by where it starts
            return self.logits[start : start + x.shape[0]]

    inputs, targets = MQARConfig(16, 16, 2).make(6, 0)
    inputs = np.tile(np.arange(6)[:, None], (1, 16))  # row i starts with token i
    model = Oracle(targets, 16, wrong=3)
    assert evaluate_recall(model, inputs, targets, batch_size=4) == pytest.approx(9 / 12)
    assert model.training  # mode restored


def test_softmax_attention_learns_recall() -> None:
    torch.manual_seed(0)
    cfg = MQARConfig(vocab_size=16, seq_len=16, num_pairs=2)
    model = TinyLM(cfg.vocab_size, d_model=32, n_layers=2, mixer="attention", mlp_ratio=0)
    history = train_mqar(
        model, cfg, steps=STEPS, batch_size=32, lr=3e-3, progress=False, eval_every=25, seed=0
    )
    assert history.final_accuracy >= RECALL_BOUND, history.eval_accuracy
    held_out = cfg.make(128, seed=12345)
    assert evaluate_recall(model, *held_out) >= RECALL_BOUND - 0.05
    assert history.loss[-1] < 0.5 * history.loss[0]


def test_training_is_reproducible_on_cpu() -> None:
    cfg = MQARConfig(vocab_size=16, seq_len=12, num_pairs=2)

    def run() -> list[float]:
        torch.manual_seed(1)
        model = TinyLM(cfg.vocab_size, d_model=16, n_layers=1, mixer="attention", mlp_ratio=0)
        h = train_mqar(model, cfg, steps=6, batch_size=8, progress=False, eval_every=3, seed=2)
        return h.loss + h.eval_accuracy

    assert run() == run()


@pytest.mark.parametrize("mixer", ["attention", "linear_attention", "gla", "h3", "mamba"])
def test_state_size_matches_the_formula_and_the_decode_cache(mixer: str) -> None:
    D, T, H = 16, 10, 2
    torch.manual_seed(0)
    model = TinyLM(32, d_model=D, n_layers=1, mixer=mixer, num_heads=H, mlp_ratio=0)
    (size,) = state_size(model, T)
    formula = {
        "attention": 2 * T * D,
        "linear_attention": D * D // H + D,
        "gla": D * (D // 2) // H,
        "h3": D * 16 + 2 * 16 * D * D // H,  # shift W = N = 16, complex S [H, N, K, K]
        "mamba": 2 * D * 4 + 2 * D * 16,
    }[mixer]
    assert size == formula
    assert state_numbers(mixer, D, T, num_heads=H) == size
    # What decoding really holds after T tokens (complex numbers as two).
    cache = model.init_cache(1)
    for t in range(T):
        _, cache = model.step(torch.tensor([t % 32]), cache)
    assert cache.nbytes // 4 == size


def test_grid_runs_end_to_end_and_writes_json_and_plots(tmp_path) -> None:
    out = tmp_path / "grid"
    results = run_grid(
        ["attention", "gla", ["mamba", "attention"]],
        widths=[8, 16],
        pair_counts=[1, 2],
        seq_len=12,
        vocab_size=12,
        steps=3,
        batch_size=4,
        device="cpu",
        out_json=out / "results.json",
        progress=False,
        eval_every=2,
        num_eval=8,
    )
    assert len(results["runs"]) == 3 * 2 * 2
    stored = load_results(out)
    assert stored == json.loads(json.dumps(results))
    labels = {r["mixer"] for r in stored["runs"]}
    assert labels == {"attention", "gla", "mamba+attention"}
    for r in stored["runs"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["steps_run"] <= 3
        assert r["state_size"] == sum(r["state_size_per_layer"])
    attn = {r["width"]: r["state_size"] for r in stored["runs"] if r["mixer"] == "attention"}
    assert attn == {8: 2 * 2 * 12 * 8, 16: 2 * 2 * 12 * 16}  # 2 layers x 2 T D
    paths = save_plots(stored, out)
    assert all(p.exists() and p.stat().st_size > 1000 for p in paths)
    table = accuracy_table(stored)
    assert "mamba+attention" in table and "P=2" in table


def test_cli_writes_results(tmp_path, monkeypatch) -> None:
    tiny = GridConfig(mixers=["linear_attention"], widths=[8], pair_counts=[1], seq_len=8,
                      vocab_size=8, steps=2, batch_size=2, eval_every=1, num_eval=4)  # fmt: skip
    monkeypatch.setitem(CONFIGS, "cpu", tiny)
    assert main(["--config", "cpu", "--out", str(tmp_path), "--no-progress"]) == 0
    stored = load_results(tmp_path / "results.json")
    assert stored["environment"]["config_name"] == "cpu"
    assert (tmp_path / "recall_vs_state.png").exists()
    assert load_results(tmp_path / "missing") is None


def test_gpu_config_covers_every_mixer_at_three_widths_and_pair_counts() -> None:
    gpu = CONFIGS["gpu"]
    labels = {mixer_label(m) for m in gpu.mixers}
    assert {"attention", "linear_attention", "gla", "h3", "mamba"} <= labels
    assert any("+" in label for label in labels)  # a hybrid
    assert len(gpu.widths) >= 3 and len(gpu.pair_counts) >= 3
    assert 256 <= gpu.seq_len <= 512
    # The time cap keeps the whole grid under 8 minutes.
    runs = len(gpu.mixers) * len(gpu.widths) * len(gpu.pair_counts)
    assert gpu.max_seconds_per_run is not None and runs * (gpu.max_seconds_per_run + 1) < 480
    for m in gpu.mixers:  # every model of the grid can be built
        model = build_model(gpu, m, min(gpu.widths))
        assert math.isfinite(sum(state_size(model, gpu.seq_len)))
        if gpu.learned_positions:
            assert model.pos_embedding is not None
            assert all(not getattr(layer.mixer, "rotary", False) for layer in model.layers)


def test_bad_mixer_is_named() -> None:
    with pytest.raises(ValueError, match="mixer"):
        mixer_label("transformer")
    with pytest.raises(ValueError, match="n_layers"):
        run_grid([["gla"]], [8], [1], seq_len=8, vocab_size=8, steps=1, progress=False)
