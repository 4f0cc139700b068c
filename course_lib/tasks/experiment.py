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

Command line (``--config cpu`` is small enough for a laptop; ``gpu`` is the recorded H200
grid: every mixer at three widths and three pair counts)::

    python -m course_lib.tasks.experiment --config cpu --out benchmarks/results/mqar_cpu
    python -m course_lib.tasks.experiment --config gpu --out benchmarks/results/mqar_h200

writes ``results.json``, ``recall_vs_pairs.png`` and ``recall_vs_state.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from course_lib.checks import check_choice, check_positive_int
from course_lib.nn import MIXERS, TinyLM
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
    """Everything a grid run needs besides the device; the two presets are :data:`CONFIGS`."""

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
    # The recorded H200 grid: 6 mixers x 3 widths x 3 pair counts at T = 256, each run
    # capped at 7 s so that the 54 runs finish in under 8 minutes.
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
        max_seconds_per_run=7.0,
        learned_positions=True,
    ),
}


def build_model(config: GridConfig, mixer: MixerSpec, width: int) -> TinyLM:
    """A TinyLM of ``config.n_layers`` layers of ``mixer`` at width ``width``.

    With ``config.learned_positions`` the model adds learned absolute position embeddings
    (GPT-2 style, ``max_seq_len = seq_len``) and attention drops its rotary embeddings: in
    our runs attention then learned MQAR's lookup several times sooner.
    """
    kwargs = {name: dict(kw) for name, kw in config.mixer_kwargs.items()}
    if config.learned_positions:
        kwargs.setdefault("attention", {}).setdefault("rotary", False)
    return TinyLM(
        config.vocab_size,
        d_model=width,
        n_layers=config.n_layers,
        mixer=_layers(mixer, config.n_layers),
        num_heads=config.num_heads(mixer, width),
        mlp_ratio=config.mlp_ratio,
        mixer_kwargs=kwargs or None,
        max_seq_len=config.seq_len if config.learned_positions else None,
    )


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
    **options: Any,
) -> dict[str, Any]:
    """Train one model per (mixer, width, pair count) and record recall and state size.

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
        options: further :class:`GridConfig` fields (``eval_every``, ``num_eval``,
            ``mlp_ratio``, ``max_seconds_per_run``, ``lr_by_mixer``, ...).

    Returns:
        ``{"environment": ..., "config": ..., "runs": [...]}``; each run holds ``mixer``
        (its label), ``layers``, ``width``, ``num_pairs``, ``state_size`` (numbers per
        sequence, all layers), ``state_size_per_layer``, ``accuracy`` (held-out recall at
        the end), ``best_accuracy``, ``steps_run``, ``seconds``, ``parameters``.
    """
    base = asdict(config) if config is not None else {}
    base.update(
        mixers=list(mixers), widths=[check_positive_int("widths", w) for w in widths],
        pair_counts=[check_positive_int("pair_counts", p) for p in pair_counts],
        seq_len=seq_len, vocab_size=vocab_size, n_layers=n_layers, steps=steps,
        batch_size=batch_size, lr=lr, seed=seed, **options,
    )  # fmt: skip
    cfg = GridConfig(**base)
    for m in cfg.mixers:
        mixer_label(m)
        _layers(m, cfg.n_layers)
    tasks = {P: MQARConfig(cfg.vocab_size, cfg.seq_len, P) for P in cfg.pair_counts}
    jobs = [(m, w, P) for m in cfg.mixers for w in cfg.widths for P in cfg.pair_counts]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="MQAR grid")
    runs = []
    for i, (mixer, width, P) in enumerate(jobs):
        label = mixer_label(mixer)
        if bar is not None:
            bar.set_postfix_str(f"{label} D={width} P={P}")
        torch.manual_seed(cfg.seed * 1000 + i)
        model = build_model(cfg, mixer, width).to(device)
        history = train_mqar(
            model,
            tasks[P],
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
        runs.append({
            "mixer": label, "layers": _layers(mixer, cfg.n_layers), "width": width,
            "num_pairs": P, "num_heads": cfg.num_heads(mixer, width),
            "state_size": sum(sizes), "state_size_per_layer": sizes,
            "accuracy": history.final_accuracy, "best_accuracy": history.best_accuracy,
            "steps_run": history.steps_run, "stopped_early": history.stopped_early,
            "stopped_by_time": history.stopped_by_time, "seconds": history.seconds,
            "parameters": model.num_parameters(),
            "eval_steps": history.eval_steps, "eval_accuracy": history.eval_accuracy,
        })  # fmt: skip
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    results = {"environment": _environment(device), "config": asdict(cfg), "runs": runs}
    if out_json is not None:
        path = Path(out_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1) + "\n")
    return results


def load_results(path: str | Path) -> dict[str, Any] | None:
    """The results of :func:`run_grid` stored at ``path``, or ``None`` when there are none."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


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
        "--max-seconds", type=float, default=None, help="override the cap on each run's time"
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = CONFIGS[args.config]
    fields = asdict(cfg)
    if args.steps is not None:
        fields["steps"] = args.steps
    if args.max_seconds is not None:
        fields["max_seconds_per_run"] = args.max_seconds
    out = Path(args.out)
    start = time.perf_counter()
    results = run_grid(
        **{k: fields.pop(k) for k in ("mixers", "widths", "pair_counts", "seq_len")},
        device=device,
        out_json=out / "results.json",
        progress=not args.no_progress,
        **fields,
    )
    results["environment"]["config_name"] = args.config
    results["environment"]["total_seconds"] = round(time.perf_counter() - start, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    paths = save_plots(results, out)
    print(accuracy_table(results))
    print(f"wrote {out / 'results.json'}, " + ", ".join(str(p) for p in paths))
    print(f"total {results['environment']['total_seconds']} s on {device}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
