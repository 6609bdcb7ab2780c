"""The benchmark's methods by name: the one place a name like ``"lift_reselect"`` is resolved.

Modelled on PEFT's mapping of a method type to its class: each method is one object
(``scaleup.method_base.Method``) registered here, and config, fine-tuning, results, report and
frontier ask it. Adding a method is one file (a ``Method`` subclass) plus one registration line::

    register_method(MyMethod("mine", "my method"))

after which ``--methods mine`` runs it through the benchmark, its report and frontier figure.
A criterion registered in ``sparsity.registry`` after import is a method too (a mask at the
benchmark's budgets, :class:`~scaleup.method_mask.CriterionMask`), unless a registered method
stands for it (``Method.covers``: ``middle_blocks`` for ``layers``).
"""

from __future__ import annotations

from collections.abc import Iterable

from scaleup.method_base import FAMILIES, Method
from scaleup.method_dense import FullFineTuning, LoRA
from scaleup.method_dynamic import Lift, LiftReselect, RigLMethod
from scaleup.method_mask import CriterionMask, MiddleBlocks, TwoFour, l1_options
from scaleup.method_rosa import RoSA
from scaleup.method_spiel import SpIEL
from sparsity import registry

REGISTRY: dict[str, Method] = {}
"""Name -> registered method, in the order a default run does them."""


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Register ``method`` under ``method.name``; returns it. A name already taken is an error unless ``replace``."""
    if not isinstance(method, Method):
        raise TypeError(f"method must be a scaleup.method_base.Method, got {type(method).__name__}")
    if not isinstance(method.name, str) or not method.name or "|" in method.name or "," in method.name:
        raise ValueError(f"a method's name must be a non-empty string without '|' or ',', got {method.name!r}")
    if method.family not in FAMILIES:
        raise ValueError(f"method {method.name!r}: family must be one of {FAMILIES}, got {method.family!r}")
    if method.name in REGISTRY and not replace:
        raise ValueError(f"method {method.name!r} is already registered (replace=True overrides it)")
    REGISTRY[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a registered method (tests register temporary ones)."""
    if name not in REGISTRY:
        raise KeyError(f"no method {name!r} is registered")
    del REGISTRY[name]


def _criterion_methods() -> dict[str, Method]:
    """A mask method for every registry criterion that no registered method is named after or stands for."""
    covered = {m.covers for m in REGISTRY.values()} | set(REGISTRY)
    return {name: CriterionMask(name) for name in registry.CRITERIA if name not in covered}


def known_methods() -> tuple[str, ...]:
    """Every method the benchmark runs now: the registered ones, then the criteria registered since."""
    return (*REGISTRY, *_criterion_methods())


def get_method(name: str) -> Method:
    """The method called ``name``; an unknown name is an error listing the known ones."""
    if name in REGISTRY:
        return REGISTRY[name]
    extra = _criterion_methods()
    if isinstance(name, str) and name in extra:
        return extra[name]
    raise ValueError(f"method must be one of {known_methods()}, got {name!r}")


def check_methods(methods: Iterable[str]) -> list[str]:
    """The methods, deduplicated in order; unknown names are an error listing the known ones."""
    methods = list(methods)
    known = known_methods()
    unknown = [m for m in methods if m not in known]
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty list from {known}; unknown: {unknown}")
    return list(dict.fromkeys(methods))


def method_color(name: str) -> object:
    """A method's colour in every figure: its own, else tab20 by its place among :func:`known_methods`
    (a method keeps its colour in every panel and figure)."""
    import matplotlib.pyplot as plt

    method = get_method(name)
    if method.color is not None:
        return method.color
    return plt.get_cmap("tab20")(known_methods().index(name) % 20)


register_method(FullFineTuning("full", "full FT"))
register_method(LoRA("lora", "LoRA"))
register_method(Lift())
register_method(LiftReselect())
register_method(RigLMethod())
register_method(CriterionMask("random"))
register_method(CriterionMask("magnitude"))
register_method(CriterionMask("l1_discovered", options=l1_options))
register_method(CriterionMask("gradient"))
register_method(CriterionMask("fisher"))
register_method(CriterionMask("snip"))
register_method(CriterionMask("movement"))
register_method(MiddleBlocks())
register_method(TwoFour())
register_method(RoSA())
register_method(SpIEL())

METHODS = tuple(REGISTRY)
"""The default run, in the order a run does them (the headline comparison first, so a partial run
already answers it). :func:`known_methods` adds every method and criterion registered since."""
