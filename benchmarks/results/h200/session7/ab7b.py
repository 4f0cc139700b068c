"""Session 7 call B: scalar-gate fused forward variants, same process, with fla chunk_simple_gla and the
course's linear attention fused forward. s0 = main (q, k tiles scaled, 8 warps at K=128), s1 = rows
(o and v rows scaled, 4 warps), s2 = o rows scaled + k_dec (4 warps); '+w8' = 8 warps."""
import importlib.util
import torch, torch.nn.functional as F
from triton.testing import do_bench
from course_lib.linear_attention import triton_kernels as LA
def load(name):
    spec = importlib.util.spec_from_file_location(name, f".peers/{name}.py")
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); return m
S0, S1, S2 = load("tk_s0"), load("tk_s1"), load("tk_s2")
S1w8, S2w8 = load("tk_s1"), load("tk_s2")
for m in (S1w8, S2w8):
    m.CONFIG["fused"]["num_warps"] = 8
from fla.ops.simple_gla import chunk_simple_gla
B, H, K = 4, 16, 128
VAR = [("s0 main", S0), ("s1 rows w4", S1), ("s1 rows w8", S1w8), ("s2 orows w4", S2), ("s2 orows w8", S2w8)]
for T in [2048, 4096, 16384, 65536]:
    torch.manual_seed(0)
    q = (torch.randn(B, T, H, K, device="cuda") * K**-0.5).bfloat16()
    k = (torch.randn(B, T, H, K, device="cuda") * K**-0.5).bfloat16()
    v = torch.randn(B, T, H, K, device="cuda").bfloat16()
    g = F.logsigmoid(torch.randn(B, T, H, device="cuda") + 3.0)
    ref = S0.fused_chunk_simple_gla(q, k, v, g)[0].float()
    r = {"fla": do_bench(lambda: chunk_simple_gla(q, k, v, g=g), warmup=5, rep=60)}
    o_fla = chunk_simple_gla(q, k, v, g=g)[0].float()
    line = f"T={T} fla {r['fla']:.3f} (fla vs s0 max|d| {(o_fla - ref).abs().max().item():.2e})"
    for name, m in VAR:
        o = m.fused_chunk_simple_gla(q, k, v, g)[0].float()
        d = (o - ref).abs().max().item()
        t = do_bench(lambda: m.fused_chunk_simple_gla(q, k, v, g), warmup=5, rep=60)
        line += f" | {name} {t:.3f} ({t / r['fla']:.2f}) d={d:.1e}"
    t = do_bench(lambda: LA.fused_chunk_linear_attention(q, k, v), warmup=5, rep=60) if hasattr(LA, "fused_chunk_linear_attention") else float("nan")
    line += f" | linear fused {t:.3f}"
    print(line, flush=True)
    if T in (4096, 16384):
        gv = F.logsigmoid(torch.randn(B, T, H, K, device="cuda") + 3.0)
        tv = [do_bench(lambda: m.fused_chunk_gla(q, k, v, gv), warmup=5, rep=60) for m in (S0, S1, S0, S1)]
        print(f"T={T} vector fused s0/s1/s0/s1: " + " ".join(f"{x:.3f}" for x in tv), flush=True)
for name, m in [("s0", S0), ("s1", S1), ("s2", S2)]:
    for dt, KK in [(torch.float32, 256), (torch.float32, 128), (torch.bfloat16, 256)]:
        q, k, v = (torch.randn(1, 200, 2, KK, device="cuda", dtype=dt) * 0.1 for _ in range(3))
        g = F.logsigmoid(torch.randn(1, 200, 2, device="cuda") + 3.0)
        try:
            o = m.fused_chunk_simple_gla(q, k, v, g)[0]; torch.cuda.synchronize()
            print(name, dt, KK, "ran, finite:", bool(torch.isfinite(o).all()))
        except Exception as e:
            print(name, dt, KK, "FAILED:", type(e).__name__, str(e)[:160])
