"""Session 7 call A: same-process A/B of the GLA forward, main (eager gate check) vs s6-next (pinned-memory check), fla."""
import importlib.util, sys
import torch, torch.nn.functional as F
from triton.testing import do_bench
from course_lib.gated_linear_attention import triton_kernels as NEW
spec = importlib.util.spec_from_file_location("tk_main", ".peers/tk_main.py")
OLD = importlib.util.module_from_spec(spec); spec.loader.exec_module(OLD)
from fla.ops.gla import chunk_gla as fla_gla
B, H, K = 4, 16, 128
for T in [1024, 2048, 4096, 16384]:
    torch.manual_seed(0)
    q = (torch.randn(B, T, H, K, device="cuda") * K**-0.5).bfloat16()
    k = (torch.randn(B, T, H, K, device="cuda") * K**-0.5).bfloat16()
    v = torch.randn(B, T, H, K, device="cuda").bfloat16()
    g = F.logsigmoid(torch.randn(B, T, H, K, device="cuda") + 3.0)
    a = OLD.fused_chunk_gla(q, k, v, g)[0].float(); b = NEW.fused_chunk_gla(q, k, v, g)[0].float()
    same = torch.equal(a, b)
    r = {}
    for rep in range(2):
        r["fla"] = do_bench(lambda: fla_gla(q, k, v, g=g), warmup=5, rep=80)
        r["main fused"] = do_bench(lambda: OLD.fused_chunk_gla(q, k, v, g), warmup=5, rep=80)
        r["next fused"] = do_bench(lambda: NEW.fused_chunk_gla(q, k, v, g), warmup=5, rep=80)
        r["main chunk"] = do_bench(lambda: OLD.chunk_gla(q, k, v, g), warmup=5, rep=80)
        r["next chunk"] = do_bench(lambda: NEW.chunk_gla(q, k, v, g), warmup=5, rep=80)
        print(f"T={T} rep{rep} same={same} " + " ".join(f"{n} {t:.3f} ({t / r['fla']:.2f})" for n, t in r.items()), flush=True)
