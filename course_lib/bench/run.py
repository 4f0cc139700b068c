"""Time every registered implementation (and the installed peers) against sequence length.

Glossary (as :class:`course_lib.registry.Sizes`): ``B`` batch, ``T`` sequence length,
``H`` heads, ``K`` query/key head dim, ``V`` value head dim, ``D`` channels (SSM family),
``N`` state size. A *series* is one implementation on one input case
(``mechanism/backend/form`` with ``[case]`` appended when the mechanism has several cases)
or one peer (``peer:...``).

For each series, :func:`run_benchmark`

1. checks the implementation against the float64 reference on the benchmark's own inputs
   (same dtype, device and distribution) at a small length; a failure is recorded and the
   series is not timed;
2. times it at each length, forward (``fwd``) or forward plus backward (``fwdbwd``, only for
   differentiable implementations: gradients of every floating input for a random
   cotangent of the output);
3. stops a series' longer lengths once one call exceeds the time budget, and moves on to the
   next length after an out-of-memory error, recording why in both cases.

The result is one JSON-able dict (see :func:`run_benchmark`); :mod:`course_lib.bench.analysis`
reads slopes, crossovers and tables from it and :mod:`course_lib.bench.plots` draws it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from course_lib import registry, runtime
from course_lib.bench import peers as peers_mod
from course_lib.bench.timing import is_oom, measure
from course_lib.registry import Impl, Mechanism, Sizes
from course_lib.testing import TOLERANCE, TorchRand, flatten, rel_error

MODES = ("fwd", "fwdbwd")
SCHEMA = 1
# the order series are timed in (peers come before all of them)
BACKEND_ORDER = {"triton": 0, "torch": 1, "numpy": 2}
# Cases timed by default when a mechanism has several (the others multiply the run time
# without changing the comparison): the ones the peers compute; otherwise the first case.
# ``cases=`` picks others (each mechanism keeps the ones it has).
DEFAULT_CASES = {
    "softmax_attention": ("causal",),
    "linear_attention": ("plain",),
    "gated_linear_attention": ("scalar", "vector"),
    "selective_scan": ("full",),
}


# --------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict[str, Any]:
    """Date, host, CPU/GPU names and library versions, for the JSON header."""
    import torch

    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "triton_mode": runtime.triton_mode(),
        "triton": None,
    }
    if info["triton_mode"] != "unavailable":
        import triton

        info["triton"] = triton.__version__
    return info


# --------------------------------------------------------------------------------------
# Inputs and calls
# --------------------------------------------------------------------------------------


def _torch_dtype(name: str) -> Any:
    import torch

    if not isinstance(getattr(torch, name, None), torch.dtype):
        raise ValueError(f"dtype must be a torch dtype name such as 'float32', got {name!r}")
    return getattr(torch, name)


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "is_floating_point")


def _to_numpy64(x: Any) -> Any:
    """A tensor as float64 (complex128) numpy; a dict (a block's parameters) entry by entry."""
    if isinstance(x, dict):
        return {k: _to_numpy64(v) if _is_tensor(v) or isinstance(v, dict) else v
                for k, v in x.items()}  # fmt: skip
    t = x.detach().cpu()
    return (t.to(dtype=_torch_dtype("complex128")) if t.is_complex() else t.double()).numpy()


def draw_inputs(
    mech: Mechanism,
    sizes: Sizes,
    case: str,
    *,
    backend: str,
    dtype: str,
    device: str,
    seed: int = 0,
    requires_grad: bool = False,
) -> dict[str, Any]:
    """The mechanism's inputs drawn with :class:`TorchRand` on ``device``, in ``dtype``.

    Inputs named in ``mech.fp32_inputs`` stay fp32 when ``dtype`` is fp16/bf16. For the
    numpy backend every array becomes float64 numpy (numpy implementations are the float64
    references); for the others floating tensors get ``requires_grad`` when asked.
    """
    import torch

    raw = mech.inputs(TorchRand(seed, dtype=torch.float32, device=device), sizes, case)
    want = _torch_dtype(dtype)
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if _is_tensor(value):
            if value.is_floating_point():
                keep32 = name in mech.fp32_inputs and dtype in ("float16", "bfloat16")
                value = value.to(torch.float32 if keep32 else want).contiguous()
            if backend == "numpy":
                value = _to_numpy64(value)
            elif requires_grad and value.is_floating_point():
                value = value.detach().requires_grad_(True)
        out[name] = value
    return out


def _nbytes(x: Any) -> int:
    if isinstance(x, np.ndarray):
        return int(x.nbytes)
    if _is_tensor(x):
        return int(x.numel() * x.element_size())
    return 0


def _first(outputs: Any) -> Any:
    for leaf in flatten(outputs):
        if leaf is not None:
            return leaf
    raise ValueError("the implementation returned no output")


def make_call(
    fn: Callable[[], Any], inputs: dict[str, Any], mode: str
) -> tuple[Callable[[], Any], int]:
    """The callable to time for ``mode`` and the bytes it must move at least once.

    Runs ``fn`` once (a first warm-up) to learn the output. ``fwd``: inputs read plus outputs
    written. ``fwdbwd``: that plus the cotangent read and one gradient per floating input.
    """
    import torch

    outputs = fn()
    in_bytes = sum(_nbytes(v) for v in inputs.values())
    out_bytes = sum(_nbytes(o) for o in flatten(outputs) if o is not None)
    if mode == "fwd":
        return fn, in_bytes + out_bytes
    leaves = [v for v in inputs.values() if _is_tensor(v) and v.requires_grad]
    if not leaves:
        raise ValueError("no input requires grad: nothing to differentiate")
    out = _first(outputs)
    gen = torch.Generator(device=out.device).manual_seed(1)
    cot = torch.randn(out.shape, generator=gen, device=out.device, dtype=out.dtype)

    def fwdbwd() -> Any:
        o = _first(fn())
        return torch.autograd.grad(o, leaves, cot, allow_unused=True)

    grad_bytes = sum(_nbytes(v) for v in leaves)
    return fwdbwd, in_bytes + out_bytes + _nbytes(cot) + grad_bytes


def _elapsed_ms(start: float, device: str) -> float:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def _free_memory(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------
# Correctness pre-flight
# --------------------------------------------------------------------------------------


def check_impl(
    impl: Impl, case: str, sizes: Sizes, *, dtype: str, device: str, seed: int = 0
) -> dict[str, Any]:
    """Compare ``impl`` with the float64 reference on the benchmark's own inputs.

    The reference gets the same values (after rounding to ``dtype``) as float64 numpy.
    Returns ``{"ok", "errors", "tolerance", "sizes", "dtype", "error"}``.
    """
    mech = registry.mechanism(impl.mechanism)
    compute = "float64" if impl.backend == "numpy" else dtype
    result: dict[str, Any] = {
        "sizes": asdict(sizes),
        "dtype": compute,
        "tolerance": TOLERANCE[compute],
        "errors": [],
        "ok": False,
        "error": None,
    }
    try:
        args = draw_inputs(
            mech, sizes, case, backend=impl.backend, dtype=dtype, device=device, seed=seed
        )
        ref_args = {
            k: _to_numpy64(v) if _is_tensor(v) or isinstance(v, dict) else v
            for k, v in args.items()
        }  # a block's parameter dict too: CUDA tensors inside it reach numpy otherwise
        ref = flatten(mech.reference_fn()(**ref_args))
        if impl.backend == "numpy":
            got = flatten(impl(**args))
        else:
            with runtime.poison_outputs():
                got = flatten(impl(**args))
        if len(got) != len(ref):
            raise AssertionError(f"returned {len(got)} outputs, the reference {len(ref)}")
        errors = [rel_error(g, r) for g, r in zip(got, ref, strict=True) if r is not None]
    except Exception as err:  # the check itself failed: report it, do not time
        result["error"] = f"{type(err).__name__}: {err}"
        return result
    result["errors"] = [e if math.isfinite(e) else None for e in errors]
    result["ok"] = all(math.isfinite(e) and e <= result["tolerance"] for e in errors)
    return result


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def _as_list(x: str | Iterable[str] | None) -> list[str] | None:
    if x is None:
        return None
    return [x] if isinstance(x, str) else list(x)


def _modes(mode: str | Sequence[str]) -> list[str]:
    modes = ["fwd", "fwdbwd"] if mode == "both" else _as_list(mode) or []
    for m in modes:
        if m not in MODES:
            raise ValueError(f"mode must be 'fwd', 'fwdbwd' or 'both', got {m!r}")
    return modes


def series_name(impl: Impl, case: str) -> str:
    """``mechanism/backend/form``, with ``[case]`` when the mechanism has several cases."""
    several = len(registry.mechanism(impl.mechanism).cases) > 1
    return f"{impl.name}[{case}]" if several else impl.name


def select(
    mechanisms: list[str] | None,
    backends: list[str] | None,
    forms: list[str] | None,
    cases: list[str] | None,
) -> list[tuple[Impl, str]]:
    """The (implementation, case) pairs to time."""
    if mechanisms is not None:
        for name in mechanisms:
            registry.mechanism(name)  # unknown names fail here, listing the known ones
    chosen = []
    for impl in registry.implementations():
        if mechanisms is not None and impl.mechanism not in mechanisms:
            continue
        if backends is not None and impl.backend not in backends:
            continue
        if forms is not None and impl.form not in forms:
            continue
        mech = registry.mechanism(impl.mechanism)
        wanted = [c for c in cases or () if c in mech.cases]
        wanted = wanted or list(DEFAULT_CASES.get(mech.name, mech.cases[:1]))
        for case in mech.cases:
            if case in wanted and impl.supports(case):
                chosen.append((impl, case))
    return chosen


def _skip_reason(impl: Impl, include_interpreter: bool) -> str | None:
    if impl.backend != "triton":
        return None
    mode = runtime.triton_mode()
    if mode == "unavailable":
        return "Triton is not installed"
    if mode == "interpreter" and not include_interpreter:
        return "Triton runs in the CPU interpreter here: its times mean nothing (no GPU)"
    return None


def _entry(series: str, mode: str, sizes: Sizes, status: str, **extra: Any) -> dict[str, Any]:
    entry = {
        "series": series,
        "mode": mode,
        "T": sizes.T,
        "sizes": asdict(sizes),
        "status": status,
        "ms": None,
    }
    entry.update(extra)
    return entry


def _time_lengths(
    series: str,
    mode: str,
    lengths: Sequence[int],
    sizes: Sizes,
    build: Callable[[Sizes], tuple[Callable[[], Any], dict[str, Any]]],
    *,
    backend: str,
    device: str,
    budget_ms: float | None,
    min_run_time: float,
    log: Callable[[str], None],
    tick: Callable[[], None],
    log_points: bool = False,
) -> list[dict[str, Any]]:
    """Time one series at every length; stop after a call over budget, go on after OOM.

    With ``log_points`` every measured length is logged as it finishes (a run without a
    progress bar then still shows how far it got)."""
    entries: list[dict[str, Any]] = []
    stop_reason: str | None = None
    for T in lengths:
        size = replace(sizes, T=T)
        if stop_reason is not None:
            entries.append(_entry(series, mode, size, "skipped", reason=stop_reason))
            tick()
            continue
        try:
            fn, inputs = build(size)
            start = time.perf_counter()
            call, io_bytes = make_call(fn, inputs, mode)  # runs fn once: the first warm-up
            first_ms = _elapsed_ms(start, device)
            compiles = device.startswith("cuda") and backend != "numpy"  # first call: JIT
            if budget_ms is not None and first_ms > budget_ms and not compiles:
                stop_reason = (
                    f"one forward call took {first_ms:.0f} ms at T={T}, over the {budget_ms:g} "
                    "ms budget; longer lengths skipped"
                )
                if mode == "fwd":  # that call is the measurement: not repeated
                    entries.append(
                        _entry(
                            series,
                            mode,
                            size,
                            "ok",
                            io_bytes=io_bytes,
                            ms=first_ms,
                            method="one call (over the time budget, not repeated)",
                            peak_bytes=None,
                            memory_method="not measured (over the time budget)",
                            over_budget=True,
                        )
                    )
                else:
                    entries.append(_entry(series, mode, size, "skipped", reason=stop_reason))
                continue  # (the finally clause ticks)
            m = measure(call, device, backend, min_run_time=min_run_time, budget_ms=budget_ms)
            entries.append(_entry(series, mode, size, "ok", io_bytes=io_bytes, **m.as_dict()))
            if log_points:
                log(f"{series} ({mode}) T={T}: {m.ms:.4g} ms")
            if budget_ms is not None and m.ms > budget_ms:
                stop_reason = (
                    f"one call took {m.ms:.0f} ms at T={T}, over the {budget_ms:g} ms budget; "
                    "longer lengths skipped"
                )
        except Exception as err:  # recorded; the next length is tried all the same
            status = "oom" if is_oom(err) else "error"
            reason = f"{type(err).__name__}: {str(err)[:300]}"
            what = "out of memory" if status == "oom" else f"error ({reason})"
            log(f"{what}: {series} ({mode}) at T={T}; going on with the next size")
            entries.append(_entry(series, mode, size, status, reason=reason))
        finally:
            fn = inputs = call = None  # drop references before freeing
            _free_memory(device)
            tick()
    return entries


def run_benchmark(
    mechanisms: str | Iterable[str] | None = None,
    backends: str | Iterable[str] | None = None,
    forms: str | Iterable[str] | None = None,
    lengths: Sequence[int] = (256, 512, 1024),
    batch: int = 2,
    heads: int = 4,
    head_dim: int = 32,
    d_state: int = 16,
    channels: int | None = None,
    dtype: str = "float32",
    device: str | None = None,
    mode: str | Sequence[str] = "fwd",
    decode: bool = False,
    peers: bool = True,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    *,
    cases: str | Iterable[str] | None = None,
    budget_ms: float | str | None = "auto",
    min_run_time: float = 0.1,
    check_length: int = 32,
    include_interpreter: bool = False,
    baseline: str = "softmax_attention",
    plots: bool = True,
    bandwidth_GBps: float | None = None,
    threads: int | None = None,
    seed: int = 0,
    peers_last: bool = False,
    decode_only: bool = False,
) -> dict[str, Any]:
    """Time the registry's implementations against sequence length; return a results dict.

    Sizes: ``Sizes(B=batch, T=length, H=heads, K=V=head_dim, D=channels, N=d_state)`` with
    ``channels = heads * head_dim`` by default. ``mode`` is ``"fwd"``, ``"fwdbwd"`` or
    ``"both"``. Triton in the CPU interpreter is skipped unless ``include_interpreter``.
    ``budget_ms``: once one call of a series takes longer, its longer lengths are skipped
    (``None``: no budget; ``"auto"``: 250 ms on the CPU, 2000 ms on CUDA). ``decode=True``
    adds per-token step latency against position (:mod:`course_lib.bench.decode`). With
    ``out_dir`` the JSON (``results.json``), the plots and the markdown tables
    (``tables.md``) are written there.

    The dict holds ``machine`` (date, CPU/GPU, versions), ``config``, ``series`` (status,
    correctness check and reason for every implementation and peer), ``timings`` (one entry
    per series, mode and length: ``ms``, ``method``, ``peak_bytes``, ``memory_method``,
    ``io_bytes``, ``sizes``), ``peers`` (found / timed / why not), ``ratios`` (impl / peer at
    equal mode and length) and ``analysis`` (slopes and crossovers). ``threads`` sets
    ``torch.set_num_threads`` for the run (restored after): on a busy CPU, 1 is steadier.
    ``decode_only=True`` times only the decode steps (no forward or backward series).
    Peers are timed before the course's series unless ``peers_last`` (useful when a time
    limit would otherwise be spent on a peer's first-call autotuning).
    """
    params = dict(locals())
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _run(**params)
    finally:
        torch.set_num_threads(before)


def _run(
    mechanisms: Any,
    backends: Any,
    forms: Any,
    lengths: Sequence[int],
    batch: int,
    heads: int,
    head_dim: int,
    d_state: int,
    channels: int | None,
    dtype: str,
    device: str | None,
    mode: Any,
    decode: bool,
    peers: bool,
    out_dir: Any,
    progress: bool,
    cases: Any,
    budget_ms: float | str | None,
    min_run_time: float,
    check_length: int,
    include_interpreter: bool,
    baseline: str,
    plots: bool,
    bandwidth_GBps: float | None,
    threads: int | None,
    seed: int,
    peers_last: bool,
    decode_only: bool,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from course_lib.bench import analysis

    device = device or runtime.default_device()
    _torch_dtype(dtype)
    if dtype not in TOLERANCE:
        raise ValueError(f"dtype must be one of {sorted(TOLERANCE)}, got {dtype!r}")
    lengths = sorted({int(t) for t in lengths})
    if not lengths or lengths[0] < 1:
        raise ValueError(f"lengths must be positive integers, got {lengths}")
    modes = _modes(mode)
    if budget_ms == "auto":
        budget_ms = 2000.0 if device.startswith("cuda") else 250.0
    elif budget_ms is not None and not float(budget_ms) > 0:
        raise ValueError(f"budget_ms must be positive, None or 'auto', got {budget_ms!r}")
    sizes = Sizes(
        B=batch,
        T=lengths[0],
        H=heads,
        K=head_dim,
        V=head_dim,
        D=channels or heads * head_dim,
        N=d_state,
    )
    pairs = select(_as_list(mechanisms), _as_list(backends), _as_list(forms), _as_list(cases))
    if decode_only:
        pairs, decode, peers, modes = [], True, False, []
    pairs.sort(key=lambda pair: BACKEND_ORDER.get(pair[0].backend, len(BACKEND_ORDER)))
    mech_names = sorted({impl.mechanism for impl, _ in pairs})
    found = peers_mod.find_peers(device, mech_names) if peers else {}
    timed_peers = [peers_mod.peer(n) for n, info in found.items() if info["timed"]]

    results: dict[str, Any] = {
        "schema": SCHEMA,
        "machine": machine_info(device),
        "config": {
            "lengths": lengths,
            "sizes": asdict(sizes),
            "dtype": dtype,
            "device": device,
            "modes": modes,
            "budget_ms": budget_ms,
            "min_run_time_s": min_run_time,
            "check_length": check_length,
            "baseline": baseline,
            "seed": seed,
            "threads": threads,
        },
        "series": {},
        "timings": [],
        "peers": found,
        "ratios": [],
        "complete": False,
    }
    n_items = (len(pairs) + len(timed_peers)) * len(modes) * len(lengths)
    bar = tqdm(total=n_items, desc="benchmark", unit="point", disable=not progress)
    log = bar.write if progress else print

    def tick() -> None:
        bar.update(1)

    def checkpoint() -> None:
        """Save what is measured so far (``complete: false``): a run stopped from outside
        (a time limit, Ctrl-C) keeps every finished series in ``results.json``."""
        if out_dir is not None:
            results["ratios"] = _ratios(results, timed_peers)
            save_results(results, Path(out_dir) / "results.json")

    def skip_all(name: str, m: str, reason: str) -> None:
        """One ``skipped`` entry per length, with the reason."""
        for T in lengths:
            results["timings"].append(
                _entry(name, m, replace(sizes, T=T), "skipped", reason=reason)
            )
            tick()

    def time_all(name: str, m: str, build: Callable[[Sizes], tuple], backend: str) -> None:
        """Time one series at every length (the budget may skip the longer ones)."""
        results["timings"] += _time_lengths(
            name,
            m,
            lengths,
            sizes,
            build,
            backend=backend,
            device=device,
            budget_ms=budget_ms,
            min_run_time=min_run_time,
            log=log,
            tick=tick,
            log_points=not progress,
        )

    def time_peers() -> None:
        for p in timed_peers:
            bar.set_postfix_str(p.name)
            results["series"][p.name] = {
                "kind": "peer",
                "mechanism": p.mechanism,
                "backend": "peer",
                "form": p.name,
                "case": None,
                "differentiable": p.differentiable,
                "check": None,
                "status": "timed",
                "reason": "",
            }
            for m in modes:
                if m == "fwdbwd" and not p.differentiable:
                    skip_all(p.name, m, "forward only")
                    continue

                def build_peer(size: Sizes, m: str = m, p: peers_mod.Peer = p) -> tuple:
                    import torch

                    rand = TorchRand(seed, dtype=_torch_dtype(dtype), device=device)
                    with torch.no_grad():
                        fn, args = p.build(size, rand, False)
                    if m == "fwdbwd":
                        for t in args.values():
                            if t.is_floating_point():
                                t.requires_grad_(True)
                    return fn, args

                time_all(p.name, m, build_peer, "torch")
            checkpoint()

    def time_impls() -> None:
        check_sizes = replace(sizes, B=1, T=min(check_length, lengths[0]))
        for impl, case in pairs:
            name = series_name(impl, case)
            bar.set_postfix_str(name)
            info: dict[str, Any] = {
                "kind": "impl",
                "mechanism": impl.mechanism,
                "backend": impl.backend,
                "form": impl.form,
                "case": case,
                "differentiable": impl.differentiable,
                "check": None,
                "status": "timed",
                "reason": "",
            }
            results["series"][name] = info
            skip = _skip_reason(impl, include_interpreter)
            if skip is None:
                info["check"] = check_impl(
                    impl, case, check_sizes, dtype=dtype, device=device, seed=seed
                )
                if not info["check"]["ok"]:
                    chk = info["check"]
                    skip = "failed the correctness check: " + (
                        chk["error"] or f"errors {chk['errors']} above tolerance {chk['tolerance']}"
                    )
                    info["status"] = "failed_check"
                    log(f"{name}: {skip}; not timed")
            else:
                info["status"] = "skipped"
            mech = registry.mechanism(impl.mechanism)
            for m in modes:
                reason = skip
                if reason is None and m == "fwdbwd" and not impl.differentiable:
                    reason = "not differentiable: no fwdbwd timing"
                if reason is not None:
                    skip_all(name, m, reason)
                    continue

                def build(
                    size: Sizes, m: str = m, impl: Impl = impl, case: str = case, mech: Any = mech
                ) -> tuple:
                    args = draw_inputs(
                        mech,
                        size,
                        case,
                        backend=impl.backend,
                        dtype=dtype,
                        device=device,
                        seed=seed,
                        requires_grad=m == "fwdbwd",
                    )
                    fn = impl.load()
                    kwargs = dict(impl.kwargs)
                    return (lambda: fn(**args, **kwargs)), args

                time_all(name, m, build, impl.backend)
            if info["status"] != "timed":
                info["reason"] = skip or ""
            checkpoint()

    # by default peers first, then Triton, torch, numpy: a run stopped by a time limit keeps
    # the reference times and the fast kernels, the series that matter most for ratios;
    # peers_last puts the peers after (their autotuning can outlast a short time limit)
    for step in (time_impls, time_peers) if peers_last else (time_peers, time_impls):
        step()
    bar.close()

    results["ratios"] = _ratios(results, timed_peers)
    if decode:
        from course_lib.bench.decode import run_decode

        results["decode"] = run_decode(
            positions=lengths,
            sizes=sizes,
            dtype=dtype,
            device=device,
            min_run_time=min_run_time,
            progress=progress,
            include_interpreter=include_interpreter,
            seed=seed,
        )
    results["analysis"] = analysis.summarize(results)
    results["complete"] = True
    if out_dir is not None:
        write_outputs(results, out_dir, plots=plots, bandwidth_GBps=bandwidth_GBps)
    return results


def _ratios(results: dict[str, Any], timed_peers: list[peers_mod.Peer]) -> list[dict]:
    """``impl ms / peer ms`` for every impl series and matching peer, same mode and length."""
    ok = {
        (e["series"], e["mode"], e["T"]): e["ms"] for e in results["timings"] if e["status"] == "ok"
    }
    out = []
    for name, info in results["series"].items():
        if info["kind"] != "impl":
            continue
        for p in timed_peers:
            if p.mechanism != info["mechanism"] or not p.matches_case(info["case"]):
                continue
            for (s, m, T), ms in ok.items():
                peer_ms = ok.get((p.name, m, T))
                if s == name and peer_ms:
                    out.append(
                        {"series": name, "peer": p.name, "mode": m, "T": T, "ratio": ms / peer_ms}
                    )
    return out


def merge_results(parts: Sequence[Mapping[str, Any]], sources: Sequence[str] = ()) -> dict:
    """Pool several benchmark results of one machine into one (parts of a recorded run).

    Series, timings and peers are joined; where two parts timed the same series, mode and
    length, the later part's point wins. Lengths and modes are the union; the ratios and
    the analysis are recomputed over the pooled points, so a ratio may pair an
    implementation and a peer timed by different parts (``notes`` names the parts). Parts
    must share device, GPU and dtype: pooling two machines would make every ratio wrong.
    """
    from course_lib.bench import analysis

    if not parts:
        raise ValueError("parts must hold at least one results dict")
    first = parts[0]
    for i, r in enumerate(parts[1:], 1):
        for key in ("device", "gpu"):
            if r["machine"].get(key) != first["machine"].get(key):
                raise ValueError(
                    f"parts[{i}] ran on {key} {r['machine'].get(key)!r}, parts[0] on "
                    f"{first['machine'].get(key)!r}: results of different machines do not pool"
                )
        if r["config"].get("dtype") != first["config"].get("dtype"):
            raise ValueError(
                f"parts[{i}] has dtype {r['config'].get('dtype')!r}, not "
                f"{first['config'].get('dtype')!r}"
            )
    points: dict[tuple, dict] = {}
    series: dict[str, Any] = {}
    peers: dict[str, Any] = {}
    modes: list[str] = []
    decode = None
    for r in parts:
        series.update(r["series"])
        for e in r["timings"]:
            points[(e["series"], e["mode"], int(e["T"]))] = e
        for name, info in r.get("peers", {}).items():
            if info.get("timed") or name not in peers:
                peers[name] = info
        modes += [m for m in r["config"].get("modes", []) if m not in modes]
        decode = r.get("decode") or decode
    config = dict(first["config"])
    config["modes"] = sorted(modes, key=("fwd", "fwdbwd").index)
    config["lengths"] = sorted({T for _, _, T in points})
    names = list(sources) or [f"part {i}" for i in range(len(parts))]
    out: dict[str, Any] = {
        "schema": first.get("schema", SCHEMA),
        "machine": first["machine"],
        "config": config,
        "series": series,
        "timings": list(points.values()),
        "peers": peers,
        "notes": [f"merged from {', '.join(names)}"]
        + [n for r in parts for n in r.get("notes", [])],
        "complete": all(r.get("complete", False) for r in parts),
    }
    if decode is not None:
        out["decode"] = decode
    timed = [peers_mod.peer(n) for n, info in peers.items() if info.get("timed")]
    out["ratios"] = _ratios(out, timed)
    out["analysis"] = analysis.summarize(out)
    return out


def _clean(x: Any) -> Any:
    """Non-finite floats become None, so the JSON stays standard."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def save_results(results: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(results), indent=1, allow_nan=False) + "\n")
    return path


def write_outputs(
    results: dict[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    plots: bool = True,
    bandwidth_GBps: float | None = None,
) -> dict[str, str]:
    """``results.json``, ``tables.md`` and the plots in ``out_dir``; returns their paths."""
    from course_lib.bench import analysis

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"json": str(save_results(results, out / "results.json"))}
    (out / "tables.md").write_text(analysis.to_markdown(results, bandwidth_GBps=bandwidth_GBps))
    written["markdown"] = str(out / "tables.md")
    if plots:
        from course_lib.bench import plots as plots_mod

        written.update(plots_mod.save_plots(results, out))
    results.setdefault("files", {}).update(written)
    return written
