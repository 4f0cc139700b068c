"""``nn.Module`` blocks of every mechanism and a tiny language model built from them.

Glossary of dimension letters: ``B`` batch, ``T`` sequence length, ``D`` model width
(``d_model``); each module's docstring lists the letters it adds.

Every block maps ``x [B, T, D] -> y [B, T, D]`` with ``forward`` (the parallel or chunkwise
training form) and decodes one token with ``step(x_t [B, D], cache) -> (y_t [B, D], cache)``
after ``cache = block.init_cache(batch_size, device, dtype)``; the two agree position by
position. Blocks call the functional implementations of their mechanism (``backend="torch"``
by default, or the registered Triton kernel with ``backend="triton"``).

* :class:`MultiHeadAttention` -- softmax attention, growing :class:`KVCache`
* :class:`LinearAttention` -- Katharopoulos et al. 2020, fixed :class:`StateCache`
* :class:`GatedLinearAttention` -- Yang et al. 2023
* :class:`H3Block` -- Fu et al. 2023 (H3)
* :class:`MambaBlock` -- Gu & Dao 2023
* :class:`TinyLM` -- embedding, pre-norm residual layers of any of these, tied head
"""

from __future__ import annotations

from course_lib.nn.attention import MultiHeadAttention, rotary_embedding
from course_lib.nn.cache import KVCache, ModelCache, StateCache
from course_lib.nn.gla import GatedLinearAttention
from course_lib.nn.h3 import H3Block
from course_lib.nn.linear_attention import LinearAttention
from course_lib.nn.lm import MIXERS, RMSNorm, TinyLM, make_mixer
from course_lib.nn.mamba import MambaBlock

__all__ = [
    "MIXERS",
    "GatedLinearAttention",
    "H3Block",
    "KVCache",
    "LinearAttention",
    "MambaBlock",
    "ModelCache",
    "MultiHeadAttention",
    "RMSNorm",
    "StateCache",
    "TinyLM",
    "make_mixer",
    "rotary_embedding",
]
