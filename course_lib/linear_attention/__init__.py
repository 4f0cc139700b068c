"""Linear attention (chapters 02 and 03): ``S_t = S_{t-1} + phi(k_t) v_t^T``, ``o_t = S_t^T q_t``.

Glossary of dimension letters
-----------------------------
B  batch size
T  sequence length
H  number of heads
K  head dimension of queries and keys (the feature dimension after a feature map)
V  head dimension of values

Modules (imported on demand, so that importing this package loads neither torch nor Triton):

* :mod:`.feature_maps`: ``elu1``, ``relu``, ``identity`` and positive random features
  (numpy and torch);
* :mod:`.numpy_ref`: the float64 ground truth, parallel / recurrent / chunkwise /
  non-causal / one-step forms;
* :mod:`.torch_impl`: the same forms, vectorised and differentiable;
* :mod:`.triton_kernels`: a chunkwise Triton kernel (forward and backward) and a fused
  decode step;
* :mod:`.registrations`: what the registry, tests and benchmark see.
"""

from __future__ import annotations
