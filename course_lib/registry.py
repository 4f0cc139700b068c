"""The one registry of implementations: mechanism x backend x form -> callable.

Tests, the benchmark and the scaling widget all iterate this registry, so a new backend or
form is one ``register(...)`` call in its mechanism's ``registrations.py`` and is then
tested against the float64 reference, timed and plotted without further edits.

* A :class:`Mechanism` says how to draw random inputs for it (``make_inputs``) and which
  numpy function is its ground truth (``reference``). ``cases`` name input variants (for
  gated linear attention: which gate); an implementation may support a subset of them.
* An :class:`Impl` points at a function by ``"module:attr"`` string, so the registry can be
  listed without importing torch or Triton; ``kwargs`` are fixed extra arguments (a chunk
  size, a feature map).

Every implementation of a mechanism is called the same way, ``fn(**inputs, **kwargs)``, and
returns either one array or a tuple (output first, final state next, as fla and mamba_ssm do).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

BACKENDS = ("numpy", "torch", "triton")


def _resolve(target: str) -> Callable[..., Any]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Sizes:
    """Dimension sizes for random inputs; each mechanism reads the letters it uses.

    Attention family: ``B T H K V``. SSM family: ``B T D N`` (channels ``D``, state ``N``);
    the Mamba-2 style duality uses ``H`` heads of ``V`` channels with state ``K``.
    """

    B: int = 2
    T: int = 37
    H: int = 2
    K: int = 8
    V: int = 8
    D: int = 6
    N: int = 4


@dataclass(frozen=True)
class Mechanism:
    name: str
    chapter: int
    summary: str
    make_inputs: str  # "module:fn"; fn(rand, sizes, case) -> dict of arrays and options
    reference: str  # "module:fn", the float64 numpy ground truth
    cases: tuple[str, ...] = ("default",)
    fp32_inputs: tuple[str, ...] = ()  # inputs kept in fp32 when others are fp16/bf16
    family: str = "attention"  # "attention" ([B, T, H, D]) or "ssm" ([B, T, D])

    def inputs(self, rand: Any, sizes: Sizes, case: str = "default") -> dict[str, Any]:
        if case not in self.cases:
            raise ValueError(f"case must be one of {self.cases} for {self.name}, got {case!r}")
        return _resolve(self.make_inputs)(rand, sizes, case)

    def reference_fn(self) -> Callable[..., Any]:
        return _resolve(self.reference)


@dataclass(frozen=True)
class Impl:
    mechanism: str
    backend: str
    form: str
    target: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    cases: tuple[str, ...] | None = None  # None: every case of the mechanism
    differentiable: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.mechanism, self.backend, self.form)

    @property
    def name(self) -> str:
        return "/".join(self.key)

    def load(self) -> Callable[..., Any]:
        return _resolve(self.target)

    def supports(self, case: str) -> bool:
        return self.cases is None or case in self.cases

    def __call__(self, **inputs: Any) -> Any:
        return self.load()(**inputs, **self.kwargs)


_MECHANISMS: dict[str, Mechanism] = {}
_IMPLS: dict[tuple[str, str, str], Impl] = {}
_DISCOVERED = {"done": False}


def register_mechanism(mechanism: Mechanism) -> Mechanism:
    if mechanism.name in _MECHANISMS and _MECHANISMS[mechanism.name] != mechanism:
        raise ValueError(f"mechanism {mechanism.name!r} is registered twice")
    _MECHANISMS[mechanism.name] = mechanism
    return mechanism


def register(impl: Impl) -> Impl:
    if impl.backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {impl.backend!r}")
    if impl.mechanism not in _MECHANISMS:
        raise ValueError(f"register mechanism {impl.mechanism!r} before its implementations")
    if impl.key in _IMPLS and _IMPLS[impl.key] != impl:
        raise ValueError(f"{impl.name} is registered twice")
    _IMPLS[impl.key] = impl
    return impl


def _discover() -> None:
    """Import every ``course_lib/<package>/registrations.py`` once."""
    if _DISCOVERED["done"]:
        return
    _DISCOVERED["done"] = True
    import course_lib

    for info in pkgutil.iter_modules(course_lib.__path__):
        if info.ispkg:
            name = f"course_lib.{info.name}.registrations"
            if importlib.util.find_spec(name) is not None:
                importlib.import_module(name)


def mechanisms() -> dict[str, Mechanism]:
    _discover()
    return dict(sorted(_MECHANISMS.items(), key=lambda kv: (kv[1].chapter, kv[0])))


def mechanism(name: str) -> Mechanism:
    _discover()
    if name not in _MECHANISMS:
        raise ValueError(f"unknown mechanism {name!r}; known: {sorted(_MECHANISMS)}")
    return _MECHANISMS[name]


def implementations(
    mechanism: str | None = None, backend: str | None = None, form: str | None = None
) -> list[Impl]:
    """Registered implementations, filtered by any of mechanism, backend and form."""
    _discover()
    order = {m: i for i, m in enumerate(mechanisms())}
    found = [
        impl
        for impl in _IMPLS.values()
        if (mechanism is None or impl.mechanism == mechanism)
        and (backend is None or impl.backend == backend)
        and (form is None or impl.form == form)
    ]
    return sorted(found, key=lambda i: (order[i.mechanism], BACKENDS.index(i.backend), i.form))


def get(mechanism: str, backend: str, form: str) -> Impl:
    _discover()
    key = (mechanism, backend, form)
    if key not in _IMPLS:
        known = [i.name for i in implementations(mechanism)]
        raise ValueError(f"no implementation {'/'.join(key)}; registered: {known}")
    return _IMPLS[key]


def iter_cases(impls: list[Impl] | None = None) -> Iterator[tuple[Impl, str]]:
    """Every (implementation, case) pair it supports: what the registry-wide test runs."""
    for impl in impls if impls is not None else implementations():
        for case in mechanism(impl.mechanism).cases:
            if impl.supports(case):
                yield impl, case
