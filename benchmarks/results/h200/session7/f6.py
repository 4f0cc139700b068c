import torch, torch.nn.functional as F
from course_lib.gated_linear_attention import triton_kernels as G
B, T, H, K = 1, 200, 2, 64
q, k, v = (torch.randn(B, T, H, K, device="cuda") for _ in range(3))
g = F.logsigmoid(torch.randn(B, T, H, K, device="cuda"))
for fn in (G.chunk_gla, G.fused_chunk_gla):
    o = fn(q, k, v, g)[0]; torch.cuda.synchronize(); print(fn.__name__, "good gates ok", bool(torch.isfinite(o).all()))
    for bad in (float("nan"), 0.5, float("-inf")):
        gb = g.clone(); gb[0, 17, 1, 3] = bad
        try:
            fn(q, k, v, gb); print(fn.__name__, bad, "NO ERROR")
        except ValueError as e:
            print(fn.__name__, bad, "ValueError:", str(e)[:90])
