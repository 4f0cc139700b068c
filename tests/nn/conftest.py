"""The nn tests run torch on one thread.

Their tensors are tiny, so a second thread only adds synchronisation; on a shared 2-core
machine the intra-op thread pool spin-waits and the folder runs several times slower.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
