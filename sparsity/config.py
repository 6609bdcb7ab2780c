"""``SparseConfig``: what to fine-tune, in one declarative object, and the budget rule that
turns a criterion's scores into a mask.

In the spirit of PEFT's ``LoraConfig`` (Mangrulkar et al. 2022): the config names a
criterion (by its registry name or as a function), a budget (a density, a LoRA-equal rank
or an N:M pattern), where the budget may be spent (parameter kinds, global or per tensor),
how the selected entries are stored (a dense mask or compact indices) and the optimizer's
settings; :func:`sparsity.wrap.sparsify` applies it to a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from sparsity import masks
from sparsity.eligibility import KINDS, eligible, match_parameters
from sparsity.registry import Criterion, Selection, Scores, get_criterion
from sparsity.validate import Mask, check_density, check_finite_nonnegative, check_positive_int, named_params

STORAGES = ("compact", "dense")


@dataclass(frozen=True)
class SparseConfig:
    """How to make a model sparse-trainable.

    criterion: a registered name (``sparsity.registry.CRITERIA``: random, magnitude, gradient,
        fisher, snip, movement, lift, layers, l1_discovered, ...) or a function
        ``(model, inputs) -> scores``.
    density: the share of eligible entries to train; or
    lora_rank: train as many entries per matrix as a rank-``r`` LoRA adapter has, ``r * (m + n)``; or
    n_m: ``(n, m)``, ``n`` of every ``m`` consecutive entries of a row (2:4 for sparse tensor cores).
        Exactly one of the three budgets is given (density 0.05 if none is).
    scope: "per_tensor" (every tensor gets the density) or "global" (one ranking over all).
    include: the parameter kinds the budget may spend on (``sparsity.eligibility.KINDS`` or "all").
    targets: names, module prefixes or glob patterns (``sparsity.eligibility.match_parameters``)
        that narrow the budget to some modules, like PEFT's ``target_modules``: e.g.
        ``("*.attn.*", "*.mlp.*")``; None spends it on every parameter of the ``include`` kinds.
    storage: "compact" (``CompactAdamW``: state for the selected entries only) or "dense"
        (``MaskedAdamW``: full-size state, the entries outside the mask never move).
    fused: compact storage only. None (default) or True: ``CompactAdamW``'s fast path (one-pass CPU
        kernel, torch's fused AdamW elsewhere), equal to the reference step to rounding, not bit for
        bit; False: the reference step (value for value ``MaskedAdamW``'s).
    values_grad: compact storage only: backward computes the selected entries' gradient of the
        partly trained ``nn.Linear`` weights directly and keeps no dense one (``sparsity.values_grad``;
        SpIEL, Ansell et al. 2024). None (default): on float32 CPU layers, each layer taking the
        sampled product where it was measured faster and the dense one then gathered elsewhere, when
        the selection is fixed (no ``reselect_every``); True: the sampled product on every partly
        trained float32 ``nn.Linear`` (not with ``reselect_every``); False: autograd's dense gradient.
    rebuild_inputs: a values-only gradient layer whose input is a GELU's, a LayerNorm's or an RMSNorm's
        output keeps no copy of it: backward rebuilds it from the tensors that step keeps anyway
        (``sparsity.rebuilt_inputs``), for one GELU or norm per layer in backward, and after a GELU
        it runs the GELU's backward in place on its own input gradient; the gradients are bit for bit
        the same. None (default): wherever values-only gradients are installed; True:
        the same, refused where there can be none (``values_grad=False``); False: layers keep their inputs.
    options: criterion settings, e.g. ``{"rank": 8}`` for LIFT, ``{"layers": ["blocks.2"]}``.
    reselect_every: re-score and re-select every K steps during training (LIFT, Liu et al. 2025,
        re-selects its principal weights periodically); None selects once. Needs compact storage.
    lr, betas, eps, weight_decay: the AdamW settings of the optimizer built for the mask.
    seed: for random criteria.
    """

    criterion: str | Criterion = "magnitude"
    density: float | None = None
    lora_rank: int | None = None
    n_m: tuple[int, int] | None = None
    scope: str = "per_tensor"
    include: str | tuple[str, ...] = "weight"
    targets: tuple[str, ...] | None = None
    storage: str = "compact"
    fused: bool | None = None
    values_grad: bool | None = None
    rebuild_inputs: bool | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    reselect_every: int | None = None
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        get_criterion(self.criterion)
        given = [k for k in ("density", "lora_rank", "n_m") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one budget: density, lora_rank or n_m (got {', '.join(given)})")
        if not given:
            object.__setattr__(self, "density", 0.05)
        if self.density is not None:
            check_density(self.density, "density")
        if self.lora_rank is not None:
            check_positive_int(self.lora_rank, "lora_rank")
        if self.n_m is not None:
            if (not isinstance(self.n_m, tuple) or len(self.n_m) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in self.n_m)
                    or not 0 < self.n_m[0] <= self.n_m[1]):
                raise ValueError(f"n_m must be a pair of ints (n, m) with 0 < n <= m, got {self.n_m!r}")
        if self.scope not in masks.SCOPES:
            raise ValueError(f"scope must be one of {masks.SCOPES}, got {self.scope!r}")
        kinds = (self.include,) if isinstance(self.include, str) else tuple(self.include)
        if not kinds or any(k not in KINDS and k != "all" for k in kinds):
            raise ValueError(f"include must name kinds among {KINDS} or be 'all', got {self.include!r}")
        if self.targets is not None and (not isinstance(self.targets, tuple) or not self.targets
                                         or not all(isinstance(t, str) and t for t in self.targets)):
            raise ValueError(f"targets must be a non-empty tuple of name patterns, got {self.targets!r}")
        if self.storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {self.storage!r}")
        if not isinstance(self.options, Mapping):
            raise TypeError(f"options must be a mapping, got {type(self.options).__name__}")
        if self.reselect_every is not None:
            check_positive_int(self.reselect_every, "reselect_every")
            if self.storage != "compact":
                raise ValueError("reselect_every needs storage='compact' (CompactAdamW.reselect moves the moments)")
            if self.n_m is not None:
                raise ValueError("reselect_every keeps per-tensor counts; it is not defined for an N:M budget")
        if self.fused is not None and not isinstance(self.fused, bool):
            raise TypeError(f"fused must be None, True or False, got {self.fused!r}")
        if self.fused and self.storage != "compact":
            raise ValueError("fused=True is CompactAdamW's fast path: it needs storage='compact'")
        if self.values_grad is not None and not isinstance(self.values_grad, bool):
            raise TypeError(f"values_grad must be None, True or False, got {self.values_grad!r}")
        if self.values_grad and (self.storage != "compact" or self.reselect_every is not None):
            raise ValueError("values_grad=True needs storage='compact' and a fixed selection (no reselect_every)")
        if self.rebuild_inputs is not None and not isinstance(self.rebuild_inputs, bool):
            raise TypeError(f"rebuild_inputs must be None, True or False, got {self.rebuild_inputs!r}")
        if self.rebuild_inputs and (self.values_grad is False or self.storage != "compact"
                                    or self.reselect_every is not None):
            raise ValueError("rebuild_inputs=True rebuilds the inputs of values-only gradient layers: it needs "
                             "values_grad None or True, storage='compact' and a fixed selection (no reselect_every)")
        for name in ("lr", "eps", "weight_decay"):
            check_finite_nonnegative(getattr(self, name), name)

    @property
    def budget(self) -> str:
        """The budget in words, e.g. 'density 0.05', 'LoRA-equal rank 4', '2:4'."""
        if self.n_m is not None:
            return f"{self.n_m[0]}:{self.n_m[1]}"
        if self.lora_rank is not None:
            return f"LoRA-equal rank {self.lora_rank}"
        return f"density {self.density:g}"


def budget_names(model: nn.Module, config: SparseConfig) -> list[str]:
    """The parameters the budget may spend on: the ``include`` kinds, narrowed to ``targets``."""
    names = eligible(model, config.include)
    if config.targets is None:
        return names
    matched = set(match_parameters(model, config.targets))
    chosen = [n for n in names if n in matched]
    if not chosen:
        raise ValueError(f"targets {config.targets} match no parameter of the kinds include={config.include!r}")
    return chosen


def budget_count(model: nn.Module, config: SparseConfig) -> int:
    """How many eligible entries the budget allows: per tensor ``max(1, round(d * numel))``
    for a density, ``min(r * (m + n), numel)`` per matrix for a LoRA-equal rank."""
    params = named_params(model)
    names = budget_names(model, config)
    if config.lora_rank is not None:
        return sum(min(config.lora_rank * sum(params[n].shape), params[n].numel()) for n in names)
    if config.density is not None:
        return sum(max(1, round(config.density * params[n].numel())) for n in names)
    raise ValueError(f"budget_count is not defined for an N:M budget ({config.budget})")


def select_mask(model: nn.Module, scores: Scores | Selection, config: SparseConfig) -> Mask:
    """The mask the budget of ``config`` selects from a criterion's output.

    A ranking is cut by the budget (top-k per tensor or globally; LoRA-equal per matrix; N:M
    per group). A :class:`Selection` spends the budget's count globally inside its support
    (fewer entries when the set is smaller). Every parameter of the model is in the mask;
    those outside ``config.targets`` are frozen.
    """
    names = set(budget_names(model, config))
    if config.targets is not None and isinstance(scores, Selection):
        scores = Selection({n: s for n, s in scores.scores.items() if n in names},
                           {n: s for n, s in scores.support.items() if n in names})
    elif config.targets is not None:
        scores = {n: s for n, s in scores.items() if n in names}
    if isinstance(scores, Selection):
        if config.n_m is not None:
            raise ValueError("a set criterion (a Selection) cannot be cut into an N:M pattern")
        n_weights = sum(named_params(model)[n].numel() for n in names)
        mask = masks.top_k_within(model, scores.scores, scores.support, budget_count(model, config) / n_weights,
                                  "global")
    elif config.n_m is not None:
        mask = masks.n_m(model, scores, *config.n_m)
    elif config.lora_rank is not None:
        mask = masks.lora_equal(model, scores, config.lora_rank)
    else:
        mask = masks.top_k(model, scores, config.density, config.scope)
    if not any(m.any() for m in mask.values()):
        raise ValueError(f"criterion {get_criterion(config.criterion).name!r} selected no entry to train "
                         f"at {config.budget}")
    return mask
