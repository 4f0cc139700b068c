"""Session 7 call C: scalar-gate forwards, main (s0: q, k tiles scaled, 8 warps at K = 128) against the
working tree (rows scaled in the fused walk and the state scan, 4 warps), fla chunk_simple_gla, the course's
linear-attention fused forward; same process."""
import importlib.util
import torch, torch.nn.functional as F
from triton.testing import do_bench
from course_lib.linear_attention import triton_kernels as LA
from course_lib.gated_linear_attention import triton_kernels as NEW
spec = importlib.util.spec_from_file_location("tk_s0", ".peers/tk_s0.py")
S0 = importlib.util.module_from_spec(spec); spec.loader.exec_module(S0)
from fla.ops.simple_gla import chunk_simple_gla
B, H, K = 4, 16, 128
bench = lambda f: do_bench(f, warmup=5, rep=60)
for T in [2048, 4096, 16384, 65536]:
    torch.manual_seed(0)
    q = (torch.randn(B, T, H, K, device="cuda") * K**-0.5).bfloat16()
    k = (torch.randn(B, T, H, K, device="cuda") * K**-0.5).bfloat16()
    v = torch.randn(B, T, H, K, device="cuda").bfloat16()
    g = F.logsigmoid(torch.randn(B, T, H, device="cuda") + 3.0)
    ref = S0.fused_chunk_simple_gla(q, k, v, g)[0].float()
    d = lambda o: f"{(o[0].float() - ref).abs().max().item():.1e}"
    r = [("fla", bench(lambda: chunk_simple_gla(q, k, v, g=g)), d(chunk_simple_gla(q, k, v, g=g)))]
    for name, fn in [("s0 fused", S0.fused_chunk_simple_gla), ("new fused", NEW.fused_chunk_simple_gla),
                     ("s0 chunk", S0.chunk_simple_gla), ("new chunk", NEW.chunk_simple_gla)]:
        r.append((name, bench(lambda: fn(q, k, v, g)), d(fn(q, k, v, g))))
    r.append(("linear fused", bench(lambda: LA.fused_chunk_linear_attention(q, k, v)), "-"))
    print(f"T={T} " + " | ".join(f"{n} {t:.3f} ({t / r[0][1]:.2f}) d={e}" for n, t, e in r), flush=True)
