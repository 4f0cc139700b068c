"""Training on MQAR, recall evaluation, state sizes and the grid, at tiny sizes on CPU."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch

from course_lib.nn import TinyLM
from course_lib.tasks import experiment
from course_lib.tasks.experiment import (
    CONFIGS,
    GridConfig,
    accuracy_table,
    block_backends,
    build_model,
    load_results,
    main,
    merge_results,
    mixer_label,
    run_grid,
    save_plots,
    state_numbers,
    state_size,
)
from course_lib.tasks.mqar import IGNORE_INDEX, MQARConfig
from course_lib.tasks.train import TrainHistory, evaluate_recall, lr_at, train_mqar
from course_lib.testing import TOLERANCE

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
    labels = [mixer_label(m) for m in gpu.mixers]
    assert set(labels) == {"attention", "linear_attention", "gla", "h3", "mamba", "mamba+attention"}
    assert gpu.widths == [32, 64, 128] and len(gpu.pair_counts) == 3 and gpu.seq_len == 256
    # The blocks with Triton kernels use them on CUDA; H3 and attention stay torch.
    assert gpu.cuda_backends == {"linear_attention": "triton", "gla": "triton", "mamba": "triton"}
    for m in gpu.mixers:  # every model of the grid can be built
        model = build_model(gpu, m, min(gpu.widths))
        assert math.isfinite(sum(state_size(model, gpu.seq_len)))
        assert set(block_backends(model)) == {"torch"}  # on CPU
        if gpu.learned_positions:
            assert model.pos_embedding is not None
            assert all(not getattr(layer.mixer, "rotary", False) for layer in model.layers)


def _fake_training(calls: list[dict], fail_after: int | None = None, train=None):
    """A stand-in for train_mqar that records its arguments and can fail like a killed
    command after ``fail_after`` runs; it trains with ``train`` when given, else fakes it."""

    def fake(model, task, **kwargs):
        if fail_after is not None and len(calls) == fail_after:
            raise RuntimeError("killed")
        calls.append({"model": model, "num_pairs": task.num_pairs, **kwargs})
        if train is not None:
            return train(model, task, **kwargs)
        return TrainHistory(config={}, steps_run=kwargs["steps"], final_accuracy=0.5)

    return fake


def test_gpu_config_gives_every_mixer_the_same_step_budget(monkeypatch) -> None:
    gpu = CONFIGS["gpu"]
    calls: list[dict] = []
    monkeypatch.setattr(experiment, "train_mqar", _fake_training(calls))
    fields = asdict(gpu)
    results = run_grid(
        **{k: fields.pop(k) for k in ("mixers", "widths", "pair_counts", "seq_len")},
        progress=False,
        **fields,
    )
    assert len(calls) == len(results["runs"]) == 6 * 3 * 3 and results["complete"]
    assert {c["steps"] for c in calls} == {gpu.steps}
    assert {c["batch_size"] for c in calls} == {gpu.batch_size}
    assert {c["early_stop_accuracy"] for c in calls} == {gpu.early_stop_accuracy}
    # A time cap, if any, is a safety net: longer than a tenth of the 10-minute command and
    # short enough that one run always finishes inside one.
    caps = {c["max_seconds"] for c in calls}
    assert caps == {gpu.max_seconds_per_run}
    assert gpu.max_seconds_per_run is None or 60 <= gpu.max_seconds_per_run <= 480
    per_mixer = {label: sum(r["mixer"] == label for r in results["runs"]) for label in
                 {r["mixer"] for r in results["runs"]}}  # fmt: skip
    assert set(per_mixer.values()) == {9}


def test_on_cuda_the_triton_blocks_are_switched_on(monkeypatch) -> None:
    monkeypatch.setattr(experiment, "_on_cuda", lambda device: True)
    gpu = CONFIGS["gpu"]
    want = {
        "attention": ["torch", "torch"],
        "linear_attention": ["triton", "triton"],
        "gla": ["triton", "triton"],
        "h3": ["torch", "torch"],
        "mamba": ["triton", "triton"],
        "mamba+attention": ["triton", "torch"],
    }
    for m in gpu.mixers:
        assert block_backends(build_model(gpu, m, 32)) == want[mixer_label(m)]


def test_a_triton_block_computes_what_its_torch_form_does(monkeypatch) -> None:
    """Linear attention's Triton kernel (the CPU interpreter here) inside a grid model."""
    cfg = GridConfig(mixers=["linear_attention"], widths=[16], pair_counts=[2], seq_len=20,
                     vocab_size=16, cuda_backends={"linear_attention": "triton"})  # fmt: skip
    x = torch.as_tensor(MQARConfig(16, 20, 2).make(2, 0)[0])
    out = {}
    for on_cuda in (False, True):
        monkeypatch.setattr(experiment, "_on_cuda", lambda device, flag=on_cuda: flag)
        torch.manual_seed(0)
        model = build_model(cfg, "linear_attention", 16)
        assert set(block_backends(model)) == {"triton" if on_cuda else "torch"}
        out[on_cuda] = model(x).detach()
    err = float((out[True] - out[False]).norm() / out[False].norm())
    assert err < TOLERANCE["float32"]


TINY = dict(widths=[8], pair_counts=[1, 2], seq_len=8, vocab_size=8, steps=2, batch_size=2,
            eval_every=1, num_eval=4, progress=False, device="cpu")  # fmt: skip
TINY_MIXERS = ["attention", "linear_attention", ["mamba", "attention"]]


def test_a_killed_grid_leaves_its_finished_runs_and_resume_completes_it(
    tmp_path, monkeypatch
) -> None:
    path = tmp_path / "results.json"
    real = experiment.train_mqar
    done: list[dict] = []
    monkeypatch.setattr(experiment, "train_mqar", _fake_training(done, 4, train=real))
    with pytest.raises(RuntimeError, match="killed"):
        run_grid(TINY_MIXERS, out_json=path, **TINY)
    stored = load_results(path)
    assert len(done) == 4 and len(stored["runs"]) == 4
    assert stored["complete"] is False and stored["runs_expected"] == 6
    assert not (tmp_path / "results.json.tmp").exists()

    again: list[dict] = []
    monkeypatch.setattr(experiment, "train_mqar", _fake_training(again, train=real))
    results = run_grid(TINY_MIXERS, out_json=path, resume=True, **TINY)
    assert len(again) == 2  # only the missing runs were trained
    assert results["complete"] is True and load_results(path) == json.loads(json.dumps(results))
    assert results["runs"][:4] == stored["runs"]  # kept as they were, in grid order
    keys = [(r["mixer"], r["width"], r["num_pairs"]) for r in results["runs"]]
    assert keys == [(mixer_label(m), 8, p) for m in TINY_MIXERS for p in (1, 2)]
    # Resuming a complete grid trains nothing.
    run_grid(TINY_MIXERS, out_json=path, resume=True, **TINY)
    assert len(again) == 2


def test_a_part_of_the_grid_trains_the_same_runs_as_the_whole(tmp_path) -> None:
    """Runs are seeded by their place in the whole grid, not by the order they ran in."""
    mixers = ["attention", "linear_attention"]
    whole = run_grid(mixers, out_json=tmp_path / "a.json", **TINY)
    part = run_grid(mixers, out_json=tmp_path / "b.json", only_mixers=["linear_attention"], **TINY)
    assert len(part["runs"]) == 2 and not part["complete"]
    skip = ("seconds",)  # wall-clock time differs

    def same(r: dict) -> dict:
        return {k: v for k, v in r.items() if k not in skip}

    assert [same(r) for r in whole["runs"][2:]] == [same(r) for r in part["runs"]]


def test_resume_with_another_config_is_an_error_naming_the_option(tmp_path) -> None:
    path = tmp_path / "results.json"
    run_grid(["linear_attention"], out_json=path, **TINY)
    with pytest.raises(ValueError, match=r"resume.*steps \(file: 2, now: 3\)"):
        run_grid(["linear_attention"], out_json=path, resume=True, **{**TINY, "steps": 3})
    with pytest.raises(ValueError, match="pair_counts"):
        run_grid(["linear_attention"], out_json=path, resume=True,
                 **{**TINY, "pair_counts": [1]})  # fmt: skip
    with pytest.raises(ValueError, match="out_json"):
        run_grid(["linear_attention"], resume=True, **TINY)
    # Without resume the grid starts afresh and replaces the file.
    results = run_grid(["linear_attention"], out_json=path, **{**TINY, "steps": 3})
    assert load_results(path)["config"]["steps"] == 3 and results["complete"]


def test_the_mixer_filter_trains_only_those_mixers(tmp_path, monkeypatch) -> None:
    path = tmp_path / "results.json"
    calls: list[dict] = []
    monkeypatch.setattr(experiment, "train_mqar", _fake_training(calls))
    results = run_grid(TINY_MIXERS, out_json=path, only_mixers=["mamba+attention"], **TINY)
    assert [c["model"].mixers for c in calls] == [["mamba", "attention"]] * 2
    assert {r["mixer"] for r in results["runs"]} == {"mamba+attention"}
    assert results["complete"] is False and results["config"]["mixers"][0] == "attention"
    run_grid(TINY_MIXERS, out_json=path, resume=True, only_mixers=["attention"], **TINY)
    stored = load_results(path)
    assert [r["mixer"] for r in stored["runs"]] == ["attention"] * 2 + ["mamba+attention"] * 2
    assert len(calls) == 4
    with pytest.raises(ValueError, match="only_mixers.*gla"):
        run_grid(TINY_MIXERS, out_json=path, resume=True, only_mixers=["gla"], **TINY)
    with pytest.raises(ValueError, match="only_widths"):
        run_grid(TINY_MIXERS, out_json=path, resume=True, only_widths=[16], **TINY)


def test_a_run_cut_by_the_time_cap_says_so(tmp_path) -> None:
    results = run_grid(["attention"], out_json=tmp_path / "r.json",
                       **{**TINY, "steps": 5, "max_seconds_per_run": 1e-9})  # fmt: skip
    for r in load_results(tmp_path / "r.json")["runs"]:
        assert r["stopped_by_time"] and r["steps_run"] == 1
    assert results["complete"]


def test_cli_runs_the_grid_in_parts(tmp_path, monkeypatch, capsys) -> None:
    tiny = GridConfig(mixers=["attention", "linear_attention"], widths=[8], pair_counts=[1],
                      seq_len=8, vocab_size=8, steps=2, batch_size=2, eval_every=1,
                      num_eval=4)  # fmt: skip
    monkeypatch.setitem(CONFIGS, "cpu", tiny)
    args = ["--config", "cpu", "--out", str(tmp_path), "--no-progress", "--resume"]
    assert main([*args, "--mixers", "linear_attention"]) == 0
    assert "grid incomplete: 1 of 2" in capsys.readouterr().out
    assert [r["mixer"] for r in load_results(tmp_path)["runs"]] == ["linear_attention"]
    assert (tmp_path / "recall_vs_pairs.png").exists()
    assert main([*args, "--mixers", "attention"]) == 0
    assert "grid complete: 2 of 2" in capsys.readouterr().out
    stored = load_results(tmp_path)
    assert [r["mixer"] for r in stored["runs"]] == ["attention", "linear_attention"]
    with pytest.raises(ValueError, match="steps"):
        main([*args, "--steps", "3"])


def test_bad_mixer_is_named() -> None:
    with pytest.raises(ValueError, match="mixer"):
        mixer_label("transformer")
    with pytest.raises(ValueError, match="n_layers"):
        run_grid([["gla"]], [8], [1], seq_len=8, vocab_size=8, steps=1, progress=False)


def test_slices_trained_apart_merge_into_the_whole_grid(tmp_path) -> None:
    a = run_grid(TINY_MIXERS, out_json=tmp_path / "a/results.json", only_mixers=["attention"],
                 **TINY)  # fmt: skip
    b = run_grid(TINY_MIXERS, out_json=tmp_path / "b/results.json",
                 only_mixers=["mamba+attention", "linear_attention"], **TINY)  # fmt: skip
    parts = [tmp_path / "b/results.json", tmp_path / "a"]
    merged = merge_results(parts, tmp_path / "m/results.json")
    assert merged["complete"] and merged["runs_expected"] == 6
    assert load_results(tmp_path / "m") == json.loads(json.dumps(merged))
    keys = [(r["mixer"], r["num_pairs"]) for r in merged["runs"]]
    assert keys == [(mixer_label(m), p) for m in TINY_MIXERS for p in (1, 2)]  # grid order
    assert merged["runs"][:2] == a["runs"] and merged["runs"][2:] == b["runs"]
    assert merged["environment"]["merged_from"] == [str(p) for p in parts]
    # Resuming from the merged file trains nothing more.
    again = run_grid(TINY_MIXERS, out_json=tmp_path / "m/results.json", resume=True, **TINY)
    assert again["runs"] == merged["runs"]
    # A slice made with another config, or one run in two files, is refused.
    run_grid(["attention"], out_json=tmp_path / "c/results.json", **{**TINY, "steps": 3})
    with pytest.raises(ValueError, match=r"paths: .*c.*steps"):
        merge_results([tmp_path / "a", tmp_path / "c"], tmp_path / "x.json")
    # The same run in two files is kept once when the records agree, refused when they don't.
    assert (
        merge_results([tmp_path / "a", tmp_path / "m"], tmp_path / "y.json")["runs"]
        == merged["runs"]
    )
    other = load_results(tmp_path / "a")
    other["runs"][0]["accuracy"] += 0.5
    experiment.write_results(other, tmp_path / "d/results.json")
    with pytest.raises(ValueError, match="differs between two files"):
        merge_results([tmp_path / "a", tmp_path / "d"], tmp_path / "x.json")
    with pytest.raises(ValueError, match="paths: .*nothing"):
        merge_results([tmp_path / "nothing"], tmp_path / "x.json")


def test_cli_merge_joins_files_and_draws_the_plots(tmp_path, capsys) -> None:
    run_grid(TINY_MIXERS, out_json=tmp_path / "a/results.json", only_mixers=["attention"], **TINY)
    run_grid(TINY_MIXERS, out_json=tmp_path / "b/results.json",
             only_mixers=["linear_attention"], **TINY)  # fmt: skip
    out = tmp_path / "joined"
    assert main(["--out", str(out), "--merge", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "grid incomplete, 4 of 6 runs" in capsys.readouterr().out
    assert len(load_results(out)["runs"]) == 4 and (out / "recall_vs_pairs.png").exists()
