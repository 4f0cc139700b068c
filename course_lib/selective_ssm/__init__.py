"""Selective SSMs and the Mamba block (chapter 07; Gu & Dao 2023).

``numpy_ref`` (float64 ground truth: sequential, parallel associative scan, chunked,
decoding step, Mamba block), ``torch_impl`` (the same functions, vectorised and
differentiable) and ``triton_kernels`` (a fused scan kernel with its backward, and a
one-token decoding kernel). Submodules are imported explicitly so that importing this
package loads neither torch nor Triton.
"""
