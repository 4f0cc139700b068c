"""The experiment of chapter 10: recall against number of pairs and state size, per mixer.

Glossary of dimension letters:

* ``D`` -- model width (``d_model``); it sets every mixer's state size
* ``T`` -- sequence length
* ``P`` -- key-value pairs of the MQAR task
* ``H`` -- heads
* ``K``, ``V`` -- key and value head dimensions
* ``N`` -- SSM state size per channel (Mamba's ``d_state``, H3's ``state_size``)
* ``W`` -- width of Mamba's convolution, length of H3's shift filter

For every mixer (or hybrid, a list of mixers, one per layer), every width ``D`` and every
number of pairs ``P``, a fresh :class:`course_lib.nn.TinyLM` is trained on MQAR
(:func:`course_lib.tasks.train.train_mqar`) and its held-out recall is recorded with the
size of the state it carries while reading, the numbers a decoder keeps per sequence at
position ``T`` (:func:`state_size`):

=================== ================================= ================================
mixer               what is kept                      numbers per layer
=================== ================================= ================================
attention           every key and value (KV cache)    ``T * H * (K + V) = 2 T D``
linear attention    ``S [H, K, V]`` and ``z [H, K]``  ``D^2 / H + D``
GLA                 ``S [H, K, V]``, ``K = D / 2H``   ``D^2 / 2H``
H3                  shift buffer, ``S [H, N, K, K]``  ``D W + 2 N D^2 / H`` (complex)
Mamba               conv window, ``h [2D, N]``        ``2 D W + 2 D N``
=================== ================================= ================================

Only attention's entry grows with ``T``; that is the trade the chapter measures (Arora et
al. 2023 plot the same axes). The sizes are read off the models' own decode caches, so
they follow whatever options a mixer is built with.

Every mixer gets the same training budget in steps (``GridConfig.steps``), and a run stops
early only when it reaches the recall target; a wall-clock cap (``max_seconds_per_run``) is
at most a safety net, and a run it cuts says so (``stopped_by_time``).

Command line (``--config cpu`` is small enough for a laptop)::

    python -m course_lib.tasks.experiment --config cpu --out benchmarks/results/mqar_cpu

writes ``results.json``, ``recall_vs_pairs.png`` and ``recall_vs_state.png`` to ``--out``.
``results.json`` is rewritten (atomically) after every finished run; ``"complete"`` says
whether the whole grid is in it, so a command killed midway leaves every finished run on
disk. ``--resume`` keeps the runs already in ``results.json`` (when it was made with the same
config; another config is an error naming the options that differ) and trains only the
missing ones; without it the grid starts afresh and the file is replaced. ``--mixers`` (labels
such as ``gla`` or ``mamba+attention``) and ``--widths`` run part of the grid; the plots are
drawn from whatever the file holds.

``gpu`` is the recorded H200 grid (6 mixers x 3 widths x 3 pair counts, T = 256), run one
mixer per command so that each command fits in 10 minutes, all into the same folder::

    OUT=benchmarks/results/mqar_h200
    python -m course_lib.tasks.experiment --config gpu --out $OUT --resume --mixers attention
    python -m course_lib.tasks.experiment --config gpu --out $OUT --resume --mixers linear_attention
    python -m course_lib.tasks.experiment --config gpu --out $OUT --resume --mixers gla
    python -m course_lib.tasks.experiment --config gpu --out $OUT --resume --mixers h3
    python -m course_lib.tasks.experiment --config gpu --out $OUT --resume --mixers mamba
    python -m course_lib.tasks.experiment --config gpu --out $OUT --resume --mixers mamba+attention

The tiny models leave most of an H200 idle, so the slices can also run side by side, each
into its own folder, and be joined afterwards (``benchmarks/h200.sh`` part ``mqar`` does
this; ``--resume`` from the joined file then trains only what is missing)::

    python -m course_lib.tasks.experiment --out $OUT --merge A/results.json B/results.json

If a command is killed (a time limit), run the same command again: it trains only the runs
of its mixer that are not in the file yet. A slice can also be split further, e.g.
``--mixers h3 --widths 32 64`` then ``--mixers h3 --widths 128``. The last command prints
``grid complete``; ``--resume`` with no ``--mixers`` finishes whatever is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from course_lib.checks import check_choice, check_positive_int
from course_lib.nn import MIXERS, TinyLM
from course_lib.nn._common import check_backend
from course_lib.nn.cache import KVCache
from course_lib.tasks.mqar import MQARConfig
from course_lib.tasks.train import train_mqar

MixerSpec = str | Sequence[str]

#: Colours and markers per mixer, shared by the plots so that a mixer looks the same in each.
STYLE = {
    "attention": ("tab:blue", "o"),
    "linear_attention": ("tab:orange", "s"),
    "gla": ("tab:green", "^"),
    "h3": ("tab:purple", "D"),
    "mamba": ("tab:red", "v"),
}


def mixer_label(mixer: MixerSpec) -> str:
    """``"gla"`` for a single mixer, ``"mamba+attention"`` for a hybrid (layer order)."""
    if isinstance(mixer, str):
        return check_choice("mixer", mixer, MIXERS)
    if not isinstance(mixer, (list, tuple)) or not mixer:
        raise TypeError(f"mixer must be a name or a non-empty list of names, got {mixer!r}")
    return "+".join(check_choice("mixer", m, MIXERS) for m in mixer)


def _layers(mixer: MixerSpec, n_layers: int) -> list[str]:
    if isinstance(mixer, str):
        return [mixer] * n_layers
    if len(mixer) != n_layers:
        raise ValueError(f"hybrid {list(mixer)} lists {len(mixer)} layers, n_layers={n_layers}")
    return list(mixer)


def state_size(model: TinyLM, seq_len: int) -> list[int]:
    """Numbers each layer of ``model`` keeps per sequence after reading ``seq_len`` tokens.

    Fixed-size states are measured from ``model.init_cache(1)`` (complex numbers count as
    two); a :class:`~course_lib.nn.cache.KVCache` holds ``H * (K + V)`` numbers per token,
    so ``seq_len * H * (K + V)``.
    """
    T = check_positive_int("seq_len", seq_len)
    sizes = []
    for cache in model.init_cache(1, device="cpu", dtype=torch.float32):
        if isinstance(cache, KVCache):
            _, H, K, V = cache.shape
            sizes.append(T * H * (K + V))
        else:
            sizes.append(cache.nbytes // 4)  # float32 = 4 bytes; complex64 = 2 numbers
    return sizes


def state_numbers(
    mixer: str,
    d_model: int,
    seq_len: Any,
    num_heads: int = 1,
    d_state: int = 16,
    d_conv: int = 4,
) -> Any:
    """The table above as a formula: numbers one layer keeps after ``seq_len`` tokens.

    ``seq_len`` may be an array (the result broadcasts). Default options of the course's
    blocks: linear attention normalised (``z`` kept), GLA with ``K = D / 2H``, H3 with
    ``N = W = d_state``, Mamba with ``expand = 2``. Each head has ``D / H`` channels.
    """
    check_choice("mixer", mixer, MIXERS)
    D, H, N = d_model, num_heads, d_state
    T = seq_len
    if mixer == "attention":
        return 2 * T * D
    if mixer == "linear_attention":
        fixed = D * D // H + D
    elif mixer == "gla":
        fixed = D * (D // 2) // H
    elif mixer == "h3":
        fixed = D * N + 2 * N * D * D // H
    else:
        fixed = 2 * D * d_conv + 2 * D * N
    return fixed + 0 * T


@dataclass
class GridConfig:
    """Everything a grid run needs besides the device; the two presets are :data:`CONFIGS`.

    ``cuda_backends`` maps a mixer name to the backend its blocks use when the grid trains
    on CUDA (``{"gla": "triton"}``: the registered Triton kernel); on any other device, and
    for mixers not listed, the blocks run their torch forms. ``max_seconds_per_run`` caps a
    run's wall-clock time (``None``: no cap); a run it cuts is marked ``stopped_by_time``.
    """

    mixers: list[MixerSpec]
    widths: list[int]
    pair_counts: list[int]
    seq_len: int
    vocab_size: int
    n_layers: int = 2
    steps: int = 500
    batch_size: int = 64
    lr: float = 3e-3
    lr_by_mixer: dict[str, float] = field(default_factory=dict)
    eval_every: int = 50
    num_eval: int = 256
    early_stop_accuracy: float = 0.99
    mlp_ratio: int = 0
    head_dim: dict[str, int] = field(default_factory=lambda: {"h3": 8})
    mixer_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    cuda_backends: dict[str, str] = field(default_factory=dict)
    max_seconds_per_run: float | None = None
    learned_positions: bool = False
    seed: int = 0

    def num_heads(self, mixer: MixerSpec, width: int) -> int:
        """Heads of a model: ``width / head_dim`` for mixers listed in ``head_dim``, else 1."""
        dims = [self.head_dim[m] for m in _layers(mixer, self.n_layers) if m in self.head_dim]
        return max(1, width // min(dims)) if dims else 1

    def lr_for(self, mixer: MixerSpec) -> float:
        return self.lr_by_mixer.get(mixer_label(mixer), self.lr)


CONFIGS: dict[str, GridConfig] = {
    # A few minutes on a laptop CPU: four mixers, two widths, two pair counts, T = 24.
    "cpu": GridConfig(
        mixers=["attention", "linear_attention", "gla", "mamba"],
        widths=[16, 32],
        pair_counts=[2, 4],
        seq_len=24,
        vocab_size=24,
        steps=250,
        batch_size=32,
        lr=3e-3,
        eval_every=25,
        num_eval=128,
    ),
    # The recorded H200 grid: 6 mixers x 3 widths x 3 pair counts at T = 256, the same budget
    # of 1500 steps of 256 examples for every mixer (a run stops early only at 0.99 recall).
    # On CUDA linear attention, GLA and Mamba run their Triton kernels; H3 (FFT) and attention
    # stay torch. One mixer's slice (9 runs) is meant to fit in one 10-minute command:
    # * measured, first H200 run (GPU shared with other jobs, torch forms, B = 256): 14-22 ms
    #   per attention step, about the host's time to draw a batch (17 ms here), which
    #   train_mqar now draws while the device runs the previous step;
    # * measured, this 2-core CPU (torch forms, B = 32, ms per step at D = 32/64/128, loaded
    #   machine): attention 390-1180, linear attention 51/89/239, H3 279/794/1993, GLA
    #   1400/5500/6000, Mamba ~10000 (D = 32, 64): the last two are the pure-PyTorch chunked
    #   forms the Triton kernels replace (H200 benchmark: the Triton scan reads 4 x 2048 x 4096
    #   channel-steps forward in 1.9 ms; one layer here has at most 256 x 256 x 256);
    # * assumed: on an unshared H200 no mixer's step exceeds ~35 ms at these sizes (H3 at
    #   D = 128 moves ~40 GB per step through its FFTs: ~15 ms at half the H200's 4.8 TB/s).
    # So a run that never reaches the target takes <= 1500 x 35 ms + 15 evaluations ~ 55 s,
    # and a slice <= 9 x 55 s plus start-up and Triton compilation, under 10 minutes (the
    # smaller widths are cheaper; attention stops early). max_seconds_per_run is only a
    # safety net: 240 s lets one run always finish inside a 10-minute command, so --resume
    # always makes progress on a slower machine; a run it cuts says stopped_by_time.
    "gpu": GridConfig(
        mixers=["attention", "linear_attention", "gla", "h3", "mamba", ["mamba", "attention"]],
        widths=[32, 64, 128],
        pair_counts=[8, 16, 32],
        seq_len=256,
        vocab_size=256,
        steps=1500,
        batch_size=256,
        lr=3e-3,
        eval_every=100,
        num_eval=512,
        cuda_backends={"linear_attention": "triton", "gla": "triton", "mamba": "triton"},
        max_seconds_per_run=240.0,
        learned_positions=True,
    ),
}


def _on_cuda(device: Any) -> bool:
    return torch.device(device).type == "cuda"


def build_model(config: GridConfig, mixer: MixerSpec, width: int, device: Any = "cpu") -> TinyLM:
    """A TinyLM of ``config.n_layers`` layers of ``mixer`` at width ``width``, on ``device``.

    With ``config.learned_positions`` the model adds learned absolute position embeddings
    (GPT-2 style, ``max_seq_len = seq_len``) and attention drops its rotary embeddings: in
    our runs attention then learned MQAR's lookup several times sooner. On CUDA the blocks
    of the mixers in ``config.cuda_backends`` switch to that backend (their ``backend``
    attribute picks the sequence function at every call); elsewhere they stay torch.
    """
    kwargs = {name: dict(kw) for name, kw in config.mixer_kwargs.items()}
    if config.learned_positions:
        kwargs.setdefault("attention", {}).setdefault("rotary", False)
    layers = _layers(mixer, config.n_layers)
    if _on_cuda(device):  # a per-mixer backend overrides TinyLM's shared one
        for name, backend in config.cuda_backends.items():
            kwargs.setdefault(name, {})["backend"] = check_backend(backend)
    model = TinyLM(
        config.vocab_size,
        d_model=width,
        n_layers=config.n_layers,
        mixer=layers,
        num_heads=config.num_heads(mixer, width),
        mlp_ratio=config.mlp_ratio,
        mixer_kwargs=kwargs or None,
        max_seq_len=config.seq_len if config.learned_positions else None,
    )
    return model.to(device)


def block_backends(model: TinyLM) -> list[str]:
    """The backend each layer's mixer runs (``"torch"`` or ``"triton"``)."""
    return [layer.mixer.backend for layer in model.layers]


def _environment(device: Any) -> dict[str, Any]:
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def _json_roundtrip(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(obj))


def _run_key(mixer: str, width: int, num_pairs: int) -> tuple[str, int, int]:
    return (mixer, int(width), int(num_pairs))


def _config_differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``"name (file: a, now: b)"`` for every config field that differs."""
    names = list(wanted) + [k for k in stored if k not in wanted]
    return [
        f"{k} (file: {stored.get(k, '<missing>')!r}, now: {wanted.get(k, '<missing>')!r})"
        for k in names
        if stored.get(k, "<missing>") != wanted.get(k, "<missing>")
    ]


def _kept_runs(path: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs stored at ``path`` for a resumed grid; an error if the config differs."""
    stored = load_results(path)
    if stored is None:
        return []
    differences = _config_differences(stored.get("config", {}), config)
    if differences:
        raise ValueError(
            f"resume: {path} holds a grid made with another config; it differs in "
            + "; ".join(differences)
            + ". Run with the options that made it, or without resume (or with another "
            "out folder) to start afresh."
        )
    return list(stored.get("runs", []))


def write_results(results: dict[str, Any], path: str | Path) -> Path:
    """Write ``results`` as JSON to ``path`` atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def _check_subset(name: str, chosen: Sequence[Any] | None, allowed: list[Any]) -> set[Any]:
    """The values of ``chosen`` (default: all of ``allowed``); each must be in ``allowed``."""
    if chosen is None:
        return set(allowed)
    if isinstance(chosen, (str, int)):
        chosen = [chosen]
    chosen = list(chosen)
    if not chosen:
        raise ValueError(f"{name} must name at least one of {allowed}, got none")
    for c in chosen:
        if c not in allowed:
            raise ValueError(f"{name}: {c!r} is not in this grid; choose from {allowed}")
    return set(chosen)


def _train_one(
    cfg: GridConfig,
    index: int,
    mixer: MixerSpec,
    width: int,
    task: MQARConfig,
    device: Any,
    where: str,
) -> dict[str, Any]:
    """Train the grid's run number ``index`` and return its record (``where``: the device)."""
    torch.manual_seed(cfg.seed * 1000 + index)  # by position in the whole grid
    model = build_model(cfg, mixer, width, device)
    history = train_mqar(
        model,
        task,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr_for(mixer),
        progress=False,
        early_stop_accuracy=cfg.early_stop_accuracy,
        eval_every=cfg.eval_every,
        seed=cfg.seed,
        num_eval=cfg.num_eval,
        max_seconds=cfg.max_seconds_per_run,
    )
    sizes = state_size(model, cfg.seq_len)
    return {
        "mixer": mixer_label(mixer), "layers": _layers(mixer, cfg.n_layers), "width": width,
        "num_pairs": task.num_pairs, "num_heads": cfg.num_heads(mixer, width),
        "backends": block_backends(model), "device": where,
        "state_size": sum(sizes), "state_size_per_layer": sizes,
        "accuracy": history.final_accuracy, "best_accuracy": history.best_accuracy,
        "steps_run": history.steps_run, "stopped_early": history.stopped_early,
        "stopped_by_time": history.stopped_by_time, "seconds": history.seconds,
        "parameters": model.num_parameters(),
        "eval_steps": history.eval_steps, "eval_accuracy": history.eval_accuracy,
    }  # fmt: skip


def run_grid(
    mixers: Sequence[MixerSpec],
    widths: Sequence[int],
    pair_counts: Sequence[int],
    seq_len: int,
    vocab_size: int = 64,
    *,
    n_layers: int = 2,
    steps: int = 500,
    batch_size: int = 64,
    lr: float = 3e-3,
    device: Any = "cpu",
    out_json: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
    config: GridConfig | None = None,
    resume: bool = False,
    only_mixers: Sequence[str] | None = None,
    only_widths: Sequence[int] | None = None,
    config_name: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train one model per (mixer, width, pair count) and record recall and state size.

    ``out_json`` is rewritten (atomically) after every finished run, with ``"complete"``
    false until every run of the grid is in it; a grid killed midway leaves its finished
    runs on disk.

    Args:
        mixers: names from :data:`course_lib.nn.MIXERS` or lists of them (hybrids).
        widths: model widths ``D``.
        pair_counts: numbers of key-value pairs ``P``.
        seq_len, vocab_size: the MQAR task (``vocab_size`` must exceed ``2 max(P) + 1``).
        n_layers, steps, batch_size, lr: the models and their training budget.
        device: where to train.
        out_json: where to write the results (also returned).
        progress: a tqdm bar over the runs.
        seed: seeds the model initialisations and the data.
        config: a :class:`GridConfig` to take every other setting from; the explicit
            arguments above override its fields.
        resume: keep the runs already in ``out_json`` and train only the missing ones; the
            file must have been made with the same config (else a ``ValueError`` naming the
            fields that differ). Without it the grid starts afresh and the file is replaced.
        only_mixers: labels (:func:`mixer_label`) of the mixers to train in this call, a
            part of the grid; the config (and a resumed file) still covers all of them.
        only_widths: likewise, the widths to train in this call.
        config_name: stored as ``environment["config_name"]``.
        options: further :class:`GridConfig` fields (``eval_every``, ``num_eval``,
            ``mlp_ratio``, ``max_seconds_per_run``, ``cuda_backends``, ...).

    Returns:
        ``{"environment", "config", "complete", "runs_expected", "runs"}``, the contents of
        ``out_json``; runs are in grid order, each holds ``mixer`` (its label), ``layers``,
        ``width``, ``num_pairs``, ``backends``, ``device``, ``state_size`` (numbers per
        sequence, all layers), ``state_size_per_layer``, ``accuracy`` (held-out recall at the
        end), ``best_accuracy``, ``steps_run``, ``stopped_early``, ``stopped_by_time``,
        ``seconds``, ``parameters``.
    """
    start = time.perf_counter()
    base = asdict(config) if config is not None else {}
    base.update(
        mixers=list(mixers), widths=[check_positive_int("widths", w) for w in widths],
        pair_counts=[check_positive_int("pair_counts", p) for p in pair_counts],
        seq_len=seq_len, vocab_size=vocab_size, n_layers=n_layers, steps=steps,
        batch_size=batch_size, lr=lr, seed=seed, **options,
    )  # fmt: skip
    cfg = GridConfig(**base)
    labels = [mixer_label(m) for m in cfg.mixers]
    for m in cfg.mixers:
        _layers(m, cfg.n_layers)
    for name, backend in cfg.cuda_backends.items():
        check_choice("cuda_backends key", name, MIXERS)
        check_backend(backend)
    run_labels = _check_subset("only_mixers", only_mixers, labels)
    run_widths = _check_subset("only_widths", only_widths, cfg.widths)
    tasks = {P: MQARConfig(cfg.vocab_size, cfg.seq_len, P) for P in cfg.pair_counts}
    jobs = [(m, w, P) for m in cfg.mixers for w in cfg.widths for P in cfg.pair_counts]
    order = {_run_key(mixer_label(m), w, P): i for i, (m, w, P) in enumerate(jobs)}
    cfg_json = _json_roundtrip(asdict(cfg))

    if resume and out_json is None:
        raise ValueError("resume needs out_json, the results.json to resume")
    runs = {}
    if resume:
        for r in _kept_runs(Path(out_json), cfg_json):
            runs[_run_key(r["mixer"], r["width"], r["num_pairs"])] = r
    env = _environment(device)
    if config_name is not None:
        env["config_name"] = config_name

    def snapshot() -> dict[str, Any]:
        """The results so far, in grid order; written to ``out_json``."""
        kept = [runs[key] for key in sorted(runs, key=order.__getitem__)]
        env["total_seconds"] = round(time.perf_counter() - start, 1)  # this call's time
        results = {
            "environment": env,
            "config": cfg_json,
            "complete": all(key in runs for key in order),
            "runs_expected": len(order),
            "runs": kept,
        }
        if out_json is not None:
            write_results(results, out_json)
        return results

    todo = [
        (i, m, w, P)
        for i, (m, w, P) in enumerate(jobs)
        if mixer_label(m) in run_labels
        and w in run_widths
        and _run_key(mixer_label(m), w, P) not in runs
    ]
    results = snapshot()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="MQAR grid")
    for i, mixer, width, P in todo:
        label = mixer_label(mixer)
        if bar is not None:
            bar.set_postfix_str(f"{label} D={width} P={P}")
        where = env.get("gpu") or env["device"]
        runs[_run_key(label, width, P)] = _train_one(cfg, i, mixer, width, tasks[P], device, where)
        results = snapshot()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return results


def load_results(path: str | Path) -> dict[str, Any] | None:
    """The results of :func:`run_grid` stored at ``path``, or ``None`` when there are none."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def merge_results(paths: Sequence[str | Path], out_json: str | Path) -> dict[str, Any]:
    """Join the runs of grid slices trained side by side (one command per mixer) into one file.

    Every file must hold the same config (an error names the file and the options that
    differ); a run may be in several files (slices resumed from one joined file) only with
    the same record, otherwise it is an error. The runs are written in grid order with
    ``complete`` recomputed; ``environment`` is the first file's, with ``merged_from`` (the
    files) and ``total_seconds`` the longest slice's (the slices ran at the same time).
    """
    if not paths:
        raise ValueError("paths must name at least one results.json to merge")
    loaded = []
    for p in paths:
        stored = load_results(p)
        if stored is None:
            raise ValueError(f"paths: {p} holds no results.json")
        loaded.append((Path(p), stored))
    config = loaded[0][1]["config"]
    mixers = config["mixers"]
    order = {
        _run_key(mixer_label(m), w, P): i
        for i, (m, w, P) in enumerate(
            (m, w, P) for m in mixers for w in config["widths"] for P in config["pair_counts"]
        )
    }
    runs: dict[tuple[str, int, int], dict[str, Any]] = {}
    for path, stored in loaded:
        differences = _config_differences(stored["config"], config)
        if differences:
            raise ValueError(f"paths: {path} holds another config; it differs in "
                             + "; ".join(differences))  # fmt: skip
        for r in stored["runs"]:
            key = _run_key(r["mixer"], r["width"], r["num_pairs"])
            if key in runs and runs[key] != r:
                raise ValueError(f"paths: the run {key} differs between two files ({path})")
            runs[key] = r
    env = dict(loaded[0][1]["environment"])
    env["total_seconds"] = max(s["environment"].get("total_seconds", 0.0) for _, s in loaded)
    env["merged_from"] = [str(p) for p, _ in loaded]
    results = {
        "environment": env,
        "config": config,
        "complete": all(key in runs for key in order),
        "runs_expected": len(order),
        "runs": [runs[key] for key in sorted(runs, key=order.__getitem__)],
    }
    write_results(results, out_json)
    return results


# --------------------------------------------------------------------------- tables and plots


def accuracy_table(results: dict[str, Any], width: int | None = None) -> str:
    """A text table: one row per mixer (at ``width``, default the largest), one column per P.

    Accuracies are rounded to two decimals.
    """
    runs = results["runs"]
    width = max(r["width"] for r in runs) if width is None else width
    pairs = sorted({r["num_pairs"] for r in runs})
    mixers = list(dict.fromkeys(r["mixer"] for r in runs))
    head = f"{'mixer (D=' + str(width) + ')':<24}" + "".join(f"{'P=' + str(p):>7}" for p in pairs)
    lines = [head]
    for m in mixers:
        cells = []
        for p in pairs:
            acc = [
                r["accuracy"]
                for r in runs
                if (r["mixer"], r["width"], r["num_pairs"]) == (m, width, p)
            ]
            cells.append(f"{acc[0]:>7.2f}" if acc else f"{'-':>7}")
        lines.append(f"{m:<24}" + "".join(cells))
    return "\n".join(lines)


def _style(label: str) -> tuple[str, str, str]:
    if "+" in label:
        return "black", "*", "--"
    color, marker = STYLE.get(label, ("gray", "x"))
    return color, marker, "-"


def plot_recall_vs_pairs(results: dict[str, Any], title: str = "") -> Any:
    """One panel per width: held-out recall against the number of pairs, a line per mixer."""
    import matplotlib.pyplot as plt

    runs = results["runs"]
    widths = sorted({r["width"] for r in runs})
    mixers = list(dict.fromkeys(r["mixer"] for r in runs))
    fig, axes = plt.subplots(1, len(widths), figsize=(4.2 * len(widths), 3.6), sharey=True,
                             squeeze=False)  # fmt: skip
    for ax, width in zip(axes[0], widths, strict=True):
        for m in mixers:
            pts = sorted((r["num_pairs"], r["accuracy"]) for r in runs
                         if r["mixer"] == m and r["width"] == width)  # fmt: skip
            if pts:
                color, marker, line = _style(m)
                ax.plot(*zip(*pts, strict=True), marker=marker, color=color, linestyle=line,
                        label=m)  # fmt: skip
        ax.set_xticks(sorted({r["num_pairs"] for r in runs}))
        ax.set_title(f"width D = {width}")
        ax.set_xlabel("key-value pairs P")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out recall accuracy")
    axes[0][-1].legend(fontsize=8, loc="lower left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_recall_vs_state(results: dict[str, Any], num_pairs: int | None = None,
                         title: str = "") -> Any:  # fmt: skip
    """Recall against state size (numbers per sequence, log axis) at ``num_pairs`` pairs.

    Each mixer is a line through its widths; ``num_pairs`` defaults to the largest.
    """
    import matplotlib.pyplot as plt

    runs = results["runs"]
    P = max(r["num_pairs"] for r in runs) if num_pairs is None else num_pairs
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for m in dict.fromkeys(r["mixer"] for r in runs):
        pts = sorted((r["state_size"], r["accuracy"]) for r in runs
                     if r["mixer"] == m and r["num_pairs"] == P)  # fmt: skip
        if pts:
            color, marker, line = _style(m)
            ax.plot(*zip(*pts, strict=True), marker=marker, color=color, linestyle=line, label=m)
    ax.set_xscale("log")
    ax.set_xlabel("state size at the last token (numbers per sequence, all layers)")
    ax.set_ylabel("held-out recall accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title or f"recall against state size, P = {P} pairs")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_plots(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``recall_vs_pairs.png`` and ``recall_vs_state.png`` to ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    where = results["environment"].get("gpu") or results["environment"].get("device", "")
    paths = []
    for name, fig in (
        ("recall_vs_pairs.png", plot_recall_vs_pairs(results, f"MQAR recall ({where})")),
        ("recall_vs_state.png", plot_recall_vs_state(results)),
    ):
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        paths.append(out / name)
    return paths


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.tasks.experiment",
        description="Train tiny models of every mixer on MQAR; write results.json and plots.",
    )
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    parser.add_argument("--out", required=True, help="folder for results.json and the plots")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--steps", type=int, default=None, help="override the step budget")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="override the safety cap on each run's wall-clock time",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in OUT/results.json (same config) and train the rest",
    )
    parser.add_argument(
        "--mixers", nargs="+", default=None, metavar="LABEL",
        help="train only these mixers of the config (labels, e.g. gla mamba+attention)",
    )  # fmt: skip
    parser.add_argument(
        "--widths", nargs="+", type=int, default=None, metavar="D",
        help="train only these widths of the config",
    )  # fmt: skip
    parser.add_argument(
        "--merge", nargs="+", default=None, metavar="FILE",
        help="train nothing: join these results.json files (slices run side by side) into OUT",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.merge:
        results = merge_results(args.merge, out / "results.json")
        paths = save_plots(results, out) if results["runs"] else []
        state = "grid complete" if results["complete"] else "grid incomplete"
        print(f"merged {len(args.merge)} files into {out / 'results.json'}: {state}, "
              f"{len(results['runs'])} of {results['runs_expected']} runs")  # fmt: skip
        return 0

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if _on_cuda(device):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    fields = asdict(CONFIGS[args.config])
    if args.steps is not None:
        fields["steps"] = args.steps
    if args.max_seconds is not None:
        fields["max_seconds_per_run"] = args.max_seconds
    results = run_grid(
        **{k: fields.pop(k) for k in ("mixers", "widths", "pair_counts", "seq_len")},
        device=device,
        out_json=out / "results.json",
        progress=not args.no_progress,
        resume=args.resume,
        only_mixers=args.mixers,
        only_widths=args.widths,
        config_name=args.config,
        **fields,
    )
    runs = results["runs"]
    paths = save_plots(results, out) if runs else []
    if runs:
        print(accuracy_table(results))
    cut = [f"{r['mixer']} D={r['width']} P={r['num_pairs']}" for r in runs if r["stopped_by_time"]]
    if cut:
        print(
            f"cut by the time cap ({results['config']['max_seconds_per_run']} s): " + ", ".join(cut)
        )
    print(f"wrote {out / 'results.json'}" + "".join(f", {p}" for p in paths))
    state = "grid complete" if results["complete"] else "grid incomplete"
    print(f"{state}: {len(runs)} of {results['runs_expected']} runs; this command "
          f"{results['environment']['total_seconds']} s on {device}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
