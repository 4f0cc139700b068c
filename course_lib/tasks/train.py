"""Training a :class:`course_lib.nn.TinyLM` on MQAR and measuring its recall.

Glossary of dimension letters:

* ``n`` -- number of examples
* ``B`` -- batch size
* ``T`` -- sequence length
* ``L`` -- vocabulary size

The recipe (close to Zoology's, Arora et al. 2023, at a smaller budget):

* every step draws a fresh batch of MQAR examples from the seeded stream
  ``make_mqar(..., seed=[seed, 0, step])``, so no example is seen twice and the held-out
  set (``seed=[seed, 1]``) is disjoint from the training stream with probability ~1;
* loss: cross-entropy over the answer positions only (targets ``-100`` elsewhere);
* AdamW (Loshchilov & Hutter 2019) with weight decay, a linear warm-up over the first
  ``warmup_frac`` of the steps, then a cosine decay to ``min_lr_frac * lr``;
* every ``eval_every`` steps the held-out recall accuracy is measured; training stops early
  once it reaches ``early_stop_accuracy``, otherwise after the fixed budget of ``steps``;
* the batch of step ``t + 1`` is drawn on the host while a GPU still runs step ``t`` (the
  same stream of batches, so nothing changes on CPU; on a GPU the host's numpy time hides
  behind the device's).

On CPU the run is deterministic for a given seed and thread count: data come from numpy
generators, the model is built by the caller (seed torch before), and nothing else draws
random numbers.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from course_lib.checks import check_positive_int
from course_lib.tasks.mqar import IGNORE_INDEX, MQARConfig, recall_accuracy


@dataclass
class TrainHistory:
    """What :func:`train_mqar` did: losses, held-out accuracies, why it stopped."""

    config: dict[str, Any]
    steps: list[int] = field(default_factory=list)  # steps at which `loss` was recorded
    loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_accuracy: list[float] = field(default_factory=list)
    final_accuracy: float = 0.0
    best_accuracy: float = 0.0
    steps_run: int = 0
    stopped_early: bool = False
    stopped_by_time: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_at(step: int, steps: int, lr: float, warmup_frac: float, min_lr_frac: float) -> float:
    """Linear warm-up for ``warmup = max(1, warmup_frac * steps)`` steps, then cosine decay.

    ``lr_t = lr * (t + 1) / warmup`` while ``t < warmup``, then
    ``lr_t = lr * (m + (1 - m) * (1 + cos(pi * u)) / 2)`` with ``u`` going from 0 to 1 over
    the remaining steps and ``m = min_lr_frac``.
    """
    warmup = max(1, round(warmup_frac * steps))
    if step < warmup:
        return lr * (step + 1) / warmup
    u = (step - warmup) / max(1, steps - warmup)
    return lr * (min_lr_frac + (1.0 - min_lr_frac) * 0.5 * (1.0 + math.cos(math.pi * min(u, 1.0))))


def _as_tensor(x: Any, device: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.long, device=device)


def _batch(
    config: MQARConfig, batch_size: int, seed: int, step: int, device: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training batch of ``step``: ``make_mqar(..., seed=[seed, 0, step])`` on ``device``."""
    x, y = config.make(batch_size, [seed, 0, step])
    return _as_tensor(x, device), _as_tensor(y, device)  # [B, T]


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def evaluate_recall(
    model: torch.nn.Module, inputs: Any, targets: Any, batch_size: int = 256
) -> float:
    """Recall accuracy of ``model`` on held-out examples: the fraction of answers right.

    ``inputs, targets [n, T]`` (numpy or torch, int); the prediction at an answer position
    is the arg-max of the logits; positions with target ``-100`` do not count. The model is
    put in eval mode for the measurement and back in its previous mode afterwards.
    """
    check_positive_int("batch_size", batch_size)
    device = _device_of(model)
    inputs, targets = _as_tensor(inputs, device), _as_tensor(targets, device)
    if inputs.shape != targets.shape or inputs.dim() != 2:
        raise ValueError(
            f"inputs and targets must both be [n, T]; got {tuple(inputs.shape)} and "
            f"{tuple(targets.shape)}"
        )
    was_training = model.training
    model.eval()
    hits, total = 0, 0
    try:
        for start in range(0, inputs.shape[0], batch_size):
            x = inputs[start : start + batch_size]  # [B, T]
            y = targets[start : start + batch_size]  # [B, T]
            pred = model(x).argmax(-1)  # [B, T]
            mask = y != IGNORE_INDEX
            hits += int(((pred == y) & mask).sum())
            total += int(mask.sum())
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("targets holds no answer positions (every entry is -100)")
    return hits / total


def mqar_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the answer positions: ``logits [B, T, L]``, ``targets [B, T]``."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


def _progress(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


def train_mqar(
    model: torch.nn.Module,
    config: MQARConfig,
    steps: int = 1000,
    batch_size: int = 64,
    lr: float = 3e-3,
    device: Any = None,
    progress: bool = True,
    early_stop_accuracy: float | None = 0.99,
    eval_every: int = 50,
    seed: int = 0,
    num_eval: int = 256,
    weight_decay: float = 0.1,
    warmup_frac: float = 0.1,
    min_lr_frac: float = 0.1,
    grad_clip: float = 1.0,
    log_every: int = 10,
    desc: str = "MQAR",
    max_seconds: float | None = None,
) -> TrainHistory:
    """Train ``model`` (tokens ``[B, T]`` -> logits ``[B, T, L]``) on MQAR; return the history.

    Args:
        model: e.g. ``TinyLM(config.vocab_size, d_model, n_layers, mixer=...)``; moved to
            ``device`` when given.
        config: the task's sizes.
        steps: the fixed budget of optimiser steps.
        batch_size: examples per step, drawn fresh from the seeded stream.
        lr: peak learning rate of the warm-up / cosine schedule (:func:`lr_at`).
        device: where to train (default: where the model is).
        progress: show a tqdm bar with the loss and the last held-out accuracy.
        early_stop_accuracy: stop once the held-out accuracy reaches it (``None``: never).
        eval_every: steps between held-out evaluations (also at the last step).
        seed: seeds the data streams (the caller seeds torch before building the model).
        num_eval: held-out examples.
        weight_decay, warmup_frac, min_lr_frac, grad_clip: optimiser settings.
        log_every: steps between recorded losses.
        max_seconds: a wall-clock cap; past it, the run evaluates and stops, and
            ``stopped_by_time`` is set (a safety net: the run is then no longer
            reproducible step for step).

    Returns:
        a :class:`TrainHistory`; ``final_accuracy`` is the held-out accuracy at the end.
    """
    if not isinstance(config, MQARConfig):
        raise TypeError(f"config must be an MQARConfig, got {type(config).__name__}")
    steps = check_positive_int("steps", steps)
    batch_size = check_positive_int("batch_size", batch_size)
    eval_every = check_positive_int("eval_every", eval_every)
    log_every = check_positive_int("log_every", log_every)
    if device is not None:
        model.to(device)
    device = _device_of(model)
    eval_inputs, eval_targets = config.make(check_positive_int("num_eval", num_eval), [seed, 1])

    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(0.9, 0.98),
    )
    history = TrainHistory(config={**config.to_dict(), "steps": steps, "batch_size": batch_size,
                                   "lr": lr, "seed": seed})  # fmt: skip
    bar = _progress(steps, progress, desc)
    start = time.perf_counter()
    model.train()
    accuracy = 0.0
    x, y = _batch(config, batch_size, seed, 0, device)  # [B, T]
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup_frac, min_lr_frac)
        loss = mqar_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if step + 1 < steps:
            # On a GPU the step above is still running: draw the next batch meanwhile.
            x, y = _batch(config, batch_size, seed, step + 1, device)  # [B, T]
        history.steps_run = step + 1
        last = step == steps - 1
        if step % log_every == 0 or last:
            history.steps.append(step + 1)
            history.loss.append(float(loss.detach()))
        out_of_time = max_seconds is not None and time.perf_counter() - start > max_seconds
        stop = False
        if (step + 1) % eval_every == 0 or last or out_of_time:
            accuracy = evaluate_recall(model, eval_inputs, eval_targets)
            history.eval_steps.append(step + 1)
            history.eval_accuracy.append(accuracy)
            if early_stop_accuracy is not None and accuracy >= early_stop_accuracy:
                history.stopped_early = stop = not last
            elif out_of_time and not last:
                history.stopped_by_time = stop = True
        if bar is not None:
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", recall=f"{accuracy:.2f}")
            bar.update(1)
        if stop:
            break
    if bar is not None:
        bar.close()
    history.final_accuracy = accuracy
    history.best_accuracy = max(history.eval_accuracy, default=0.0)
    history.seconds = time.perf_counter() - start
    return history


__all__ = ["TrainHistory", "evaluate_recall", "lr_at", "mqar_loss", "recall_accuracy", "train_mqar"]
