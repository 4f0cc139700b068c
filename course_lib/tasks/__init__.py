"""Synthetic tasks that train the course's tiny models: multi-query associative recall.

Glossary of dimension letters: ``n`` examples, ``T`` sequence length, ``P`` key-value
pairs, ``L`` vocabulary size, ``D`` model width.

* :mod:`.mqar` -- the MQAR data of Arora et al. 2023 (Zoology): :func:`make_mqar`,
  :class:`MQARConfig`, :func:`mqar_targets`, :func:`recall_accuracy`.
* :mod:`.train` -- :func:`train_mqar` and :func:`evaluate_recall` for a
  :class:`course_lib.nn.TinyLM` with any mixer.
* :mod:`.experiment` -- the grid of chapter 10 (mixers x widths x pair counts), its state
  sizes, JSON and plots; ``python -m course_lib.tasks.experiment --config cpu|gpu --out DIR``.

Importing this package loads numpy only; torch comes with :mod:`.train` and
:mod:`.experiment`.
"""

from __future__ import annotations

from course_lib.tasks.mqar import (
    IGNORE_INDEX,
    MQARConfig,
    answer_mask,
    make_mqar,
    mqar_targets,
    query_gap_probabilities,
    recall_accuracy,
    recall_per_example,
)

__all__ = [
    "IGNORE_INDEX",
    "MQARConfig",
    "answer_mask",
    "make_mqar",
    "mqar_targets",
    "query_gap_probabilities",
    "recall_accuracy",
    "recall_per_example",
]
