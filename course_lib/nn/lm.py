"""A tiny decoder-only language model whose token mixer is any mechanism of the course.

Glossary of dimension letters:

* ``B`` -- batch size
* ``T`` -- sequence length
* ``D`` -- model width (``d_model``)
* ``L`` -- vocabulary size (``vocab_size``)

The model is the usual pre-norm residual stack (as GPT-2 and Mamba's language models)::

    x_0 = Embed(tokens) (+ PosEmbed(t) if max_seq_len)   # [B, T, D]
    x_l = x_{l-1} + Mixer_l(Norm(x_{l-1}))               # token mixing (attention, SSM, ...)
    x_l = x_l + MLP_l(Norm(x_l))                         # per-token MLP (optional)
    logits = Norm(x_n) W_head                            # [B, T, L], W_head = Embed^T if tied

``mixer`` picks the token mixer of every layer, or, as a list, of each layer (hybrids such
as ``["mamba", "attention"]``, in the spirit of Waleffe et al. 2024). ``step`` runs one
token through every layer with a :class:`~course_lib.nn.cache.ModelCache`, so decoding costs
what each mixer's recurrent form costs, and ``cache.nbytes`` shows the KV cache growing
while the recurrent states stay fixed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks import check_choice, check_positive_int
from course_lib.nn._common import check_backend
from course_lib.nn.cache import ModelCache

MIXERS = ("attention", "linear_attention", "gla", "h3", "mamba")
NORMS = ("rms", "layer")


class RMSNorm(nn.Module):
    """``y = x / sqrt(mean(x^2) + eps) * weight`` over the last axis (Zhang & Sennrich 2019)."""

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(kind: str, d_model: int) -> nn.Module:
    check_choice("norm", kind, NORMS)
    return RMSNorm(d_model) if kind == "rms" else nn.LayerNorm(d_model)


def make_mixer(
    name: str, d_model: int, num_heads: int = 1, backend: str = "torch", **kwargs: Any
) -> nn.Module:
    """A token mixer by name; ``kwargs`` go to its constructor."""
    check_choice("mixer", name, MIXERS)
    if name == "attention":
        from course_lib.nn.attention import MultiHeadAttention

        return MultiHeadAttention(d_model, num_heads, backend=backend, **kwargs)
    if name == "linear_attention":
        from course_lib.nn.linear_attention import LinearAttention

        return LinearAttention(d_model, num_heads, backend=backend, **kwargs)
    if name == "gla":
        from course_lib.nn.gla import GatedLinearAttention

        return GatedLinearAttention(d_model, num_heads, backend=backend, **kwargs)
    if name == "h3":
        from course_lib.nn.h3 import H3Block

        return H3Block(d_model, num_heads, backend=backend, **kwargs)
    from course_lib.nn.mamba import MambaBlock

    return MambaBlock(d_model, backend=backend, **kwargs)


class MLP(nn.Module):
    """``y = GELU(x W_1 + b_1) W_2 + b_2`` with hidden width ``ratio * D``."""

    def __init__(self, d_model: int, ratio: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, ratio * d_model)
        self.fc2 = nn.Linear(ratio * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """One pre-norm residual layer: mixer, then (optionally) an MLP."""

    def __init__(self, mixer: nn.Module, d_model: int, mlp_ratio: int, norm: str) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, d_model)
        self.mixer = mixer
        self.norm2 = make_norm(norm, d_model) if mlp_ratio else None
        self.mlp = MLP(d_model, mlp_ratio) if mlp_ratio else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x))  # [B, T, D]
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x

    def step(self, x_t: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        y, cache = self.mixer.step(self.norm1(x_t), cache)  # [B, D]
        x_t = x_t + y
        if self.mlp is not None:
            x_t = x_t + self.mlp(self.norm2(x_t))
        return x_t, cache


def _check_tokens(tokens: Any, name: str, ndim: int, vocab_size: int) -> None:
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor of token ids, got {type(tokens).__name__}")
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.dim() != ndim:
        want = "[B, T]" if ndim == 2 else "[B]"
        raise ValueError(
            f"{name} must have {ndim} dimensions {want}, got shape {tuple(tokens.shape)}"
        )
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(
            f"{name} must hold ids in [0, {vocab_size}), got values in "
            f"[{int(tokens.min())}, {int(tokens.max())}]"
        )


class TinyLM(nn.Module):
    """A small causal language model: ``tokens [B, T] -> logits [B, T, L]``.

    Args:
        vocab_size: ``L``.
        d_model: width ``D``.
        n_layers: number of residual layers.
        mixer: one of ``"attention"``, ``"linear_attention"``, ``"gla"``, ``"h3"``,
            ``"mamba"`` for every layer, or a list with one name per layer (a hybrid).
        num_heads: heads of the attention-family mixers and H3.
        mlp_ratio: hidden width of the MLP as a multiple of ``D``; 0 drops the MLPs (as
            Mamba's language models do).
        norm: ``"rms"`` (RMSNorm) or ``"layer"`` (LayerNorm).
        tie_weights: the output head reuses the embedding matrix.
        mixer_kwargs: extra constructor arguments per mixer name (a ``backend`` here
            overrides ``backend`` for that mixer), e.g.
            ``{"linear_attention": {"feature_map": "relu"}, "mamba": {"d_state": 8}}``.
        max_seq_len: if given, learned absolute position embeddings for positions
            ``0 .. max_seq_len - 1`` are added to the token embeddings (as GPT-2 does); mixers
            without a sense of order of their own (linear attention) need them to copy by
            position. ``None``: no position embeddings.
        backend: ``"torch"`` or ``"triton"`` for every mixer's sequence function.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 64,
        n_layers: int = 2,
        mixer: str | list[str] | tuple[str, ...] = "attention",
        num_heads: int = 1,
        mlp_ratio: int = 4,
        norm: str = "rms",
        tie_weights: bool = True,
        mixer_kwargs: dict[str, dict[str, Any]] | None = None,
        max_seq_len: int | None = None,
        backend: str = "torch",
    ) -> None:
        super().__init__()
        self.vocab_size = check_positive_int("vocab_size", vocab_size)
        self.d_model = check_positive_int("d_model", d_model)
        self.n_layers = check_positive_int("n_layers", n_layers)
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, int) or mlp_ratio < 0:
            raise ValueError(f"mlp_ratio must be a non-negative int, got {mlp_ratio!r}")
        check_choice("norm", norm, NORMS)
        check_backend(backend)
        self.mixers = self._mixer_names(mixer, n_layers)
        mixer_kwargs = dict(mixer_kwargs or {})
        for name in mixer_kwargs:
            check_choice("mixer_kwargs key", name, MIXERS)
        self.embedding = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.max_seq_len = (
            None if max_seq_len is None else check_positive_int("max_seq_len", max_seq_len)
        )
        self.pos_embedding = None
        if self.max_seq_len is not None:
            self.pos_embedding = nn.Embedding(self.max_seq_len, d_model)
            nn.init.normal_(self.pos_embedding.weight, std=0.02)
        self.layers = nn.ModuleList(
            Block(
                make_mixer(
                    name, d_model, num_heads, **{"backend": backend, **mixer_kwargs.get(name, {})}
                ),
                d_model,
                mlp_ratio,
                norm,
            )
            for name in self.mixers
        )
        self.norm_f = make_norm(norm, d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_weights:
            self.head.weight = self.embedding.weight

    @staticmethod
    def _mixer_names(mixer: Any, n_layers: int) -> list[str]:
        if isinstance(mixer, str):
            return [check_choice("mixer", mixer, MIXERS)] * n_layers
        if not isinstance(mixer, (list, tuple)):
            raise TypeError(f"mixer must be a name or a list of names, got {type(mixer).__name__}")
        if len(mixer) != n_layers:
            raise ValueError(f"mixer lists {len(mixer)} layers but n_layers={n_layers}")
        return [check_choice("mixer", m, MIXERS) for m in mixer]

    def _check_position(self, last: int, name: str) -> None:
        if self.max_seq_len is not None and last >= self.max_seq_len:
            raise ValueError(
                f"{name} reaches position {last}, past max_seq_len={self.max_seq_len} of the "
                "learned position embeddings"
            )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, T]`` (integer ids) -> ``logits [B, T, L]``."""
        _check_tokens(tokens, "tokens", 2, self.vocab_size)
        x = self.embedding(tokens)  # [B, T, D]
        if self.pos_embedding is not None:
            self._check_position(tokens.shape[1] - 1, "tokens")
            x = x + self.pos_embedding.weight[: tokens.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm_f(x))  # [B, T, L]

    def init_cache(
        self, batch_size: int, device: Any = None, dtype: torch.dtype | None = None
    ) -> ModelCache:
        """Empty caches for every layer (device and dtype default to the model's)."""
        p = self.embedding.weight
        device = p.device if device is None else device
        dtype = p.dtype if dtype is None else dtype
        return ModelCache(
            [layer.mixer.init_cache(batch_size, device, dtype) for layer in self.layers]
        )

    def step(self, token: torch.Tensor, cache: ModelCache) -> tuple[torch.Tensor, ModelCache]:
        """One token per sequence, ``token [B]`` -> ``(logits [B, L], cache)``."""
        _check_tokens(token, "token", 1, self.vocab_size)
        if not isinstance(cache, ModelCache) or len(cache) != self.n_layers:
            raise TypeError("cache must be the ModelCache from this model's init_cache(...)")
        x_t = self.embedding(token)  # [B, D]
        if self.pos_embedding is not None:
            self._check_position(cache.position, "token")
            x_t = x_t + self.pos_embedding.weight[cache.position]
        for i, layer in enumerate(self.layers):
            x_t, cache.layers[i] = layer.step(x_t, cache.layers[i])
        cache.position += 1
        return self.head(self.norm_f(x_t)), cache  # [B, L]

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding with :meth:`step`: ``prompt [B, P]`` (or ``[P]``) -> ``[B, P + new]``.

        The prompt is fed one token at a time through the recurrent forms, then each new
        token is the arg-max of the last logits.
        """
        squeeze = isinstance(prompt, torch.Tensor) and prompt.dim() == 1
        if squeeze:
            prompt = prompt[None]
        _check_tokens(prompt, "prompt", 2, self.vocab_size)
        if prompt.shape[1] == 0:
            raise ValueError("prompt must hold at least one token")
        if (
            isinstance(max_new_tokens, bool)
            or not isinstance(max_new_tokens, int)
            or max_new_tokens < 0
        ):
            raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
        cache = self.init_cache(prompt.shape[0])
        for t in range(prompt.shape[1]):
            logits, cache = self.step(prompt[:, t], cache)  # [B, L]
        out = [prompt]
        for i in range(max_new_tokens):
            token = logits.argmax(-1)  # [B]
            out.append(token[:, None])
            if i < max_new_tokens - 1:  # the last token's logits are not needed
                logits, cache = self.step(token, cache)
        tokens = torch.cat(out, dim=1)  # [B, P + new]
        return tokens[0] if squeeze else tokens

    def num_parameters(self, exclude_embedding: bool = False) -> int:
        """Number of trainable numbers (a tied head is counted once)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embedding.weight.numel() if exclude_embedding else n
