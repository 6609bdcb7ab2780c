"""The registry of mask criteria by name: the one place a name like ``"lift"`` is resolved.

Every driver (the entry point :func:`sparsity.wrap.sparsify`, the toy comparisons, the GPT
benchmark, the 2:4 conversion) asks this registry for a criterion, so adding one is one
function plus one line::

    def my_score(model, inputs):                     # inputs: a CriterionInputs
        return {n: p.detach().abs() ** 2 for n, p in model.named_parameters() if n in inputs.names(model)}

    register_criterion("squared_magnitude", my_score)

after which ``SparseConfig(criterion="squared_magnitude")`` and every experiment accept it.

A criterion returns either scores (``{name: tensor}``, higher = more deserving; a *ranking*)
or a :class:`Selection`: scores plus a *support*, the set the budget must stay inside (the
entries an L1 run moved, the weights of chosen layers). Selection by budget is the masks
module's job; a criterion only scores.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sparsity import criteria
from sparsity.eligibility import eligible, match_parameters
from sparsity.optim import MaskedAdamW
from sparsity.regularize import snapshot
from sparsity.train import ProximalL1
from sparsity.validate import Mask, TensorDict

Scores = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Selection:
    """Scores ranked only inside ``support`` (a bool mask): a criterion that names a set."""

    scores: Scores
    support: Mask


@dataclass
class CriterionInputs:
    """What a criterion may use. ``loss_fn(model, batch)`` and ``batches`` for the gradient
    criteria; ``include``: the parameter kinds to score (see ``sparsity.eligibility``);
    ``seed`` for random ones; ``options``: criterion-specific settings (LIFT's ``rank``, the
    L1 run's ``lam`` ...); ``train(model, optimizer, hooks)`` runs the experiment's own
    training loop on the target, for criteria that learn their set (``l1_discovered``)."""

    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None
    batches: list[Any] | None = None
    include: str | Iterable[str] = "weight"
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    train: Callable[[nn.Module, torch.optim.Optimizer, list[Any]], None] | None = None
    reference: TensorDict | None = None

    def names(self, model: nn.Module) -> list[str]:
        """The eligible parameter names of ``model``."""
        return eligible(model, self.include)

    def option(self, name: str, criterion: str) -> Any:
        if name not in self.options:
            raise ValueError(f"criterion {criterion!r} needs the option {name!r} (e.g. SparseConfig(options={{"
                             f"'{name}': ...}}))")
        return self.options[name]

    def data(self, criterion: str) -> tuple[Callable[[nn.Module, Any], torch.Tensor], list[Any]]:
        if self.loss_fn is None or self.batches is None:
            raise ValueError(f"criterion {criterion!r} needs gradients: pass loss_fn(model, batch) and batches")
        return self.loss_fn, self.batches


Criterion = Callable[[nn.Module, CriterionInputs], "Scores | Selection"]


@dataclass(frozen=True)
class Entry:
    """A registered criterion: its scoring function, whether it needs data, one line of doc, and the
    label reports and figures show (the name unless given) and the option names it reads (None: not
    declared, so not checked)."""

    name: str
    score: Criterion
    needs_data: bool
    doc: str
    label: str = ""
    options: frozenset[str] | None = None

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Refuse option names this criterion does not read (a typo or a setting meant for another
        criterion would otherwise be silently ignored), naming the ones it does."""
        if self.options is None:
            return
        unknown = sorted(set(options) - self.options)
        if unknown:
            takes = f"takes the options {sorted(self.options)}" if self.options else "takes no options"
            raise ValueError(f"criterion {self.name!r} {takes}; got unknown option(s) {unknown} in options")


CRITERIA: dict[str, Entry] = {}
"""Name -> registered criterion."""


def register_criterion(name: str, score: Criterion, *, needs_data: bool = False, doc: str = "", label: str = "",
                       replace: bool = False, options: Iterable[str] | None = None) -> Entry:
    """Register ``score(model, inputs) -> Scores | Selection`` under ``name`` (shown as ``label``, default
    the name); returns its entry. ``options`` names the settings it reads from ``inputs.options`` (``()``
    for none), so ``sparsify`` refuses any other; None leaves them unchecked."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"name must be a non-empty string without surrounding spaces, got {name!r}")
    if not callable(score):
        raise TypeError(f"score must be a function (model, inputs) -> scores, got {type(score).__name__}")
    if name in CRITERIA and not replace:
        raise ValueError(f"criterion {name!r} is already registered (replace=True overrides it)")
    if options is not None:
        options = frozenset(options)
        if not all(isinstance(o, str) for o in options):
            raise TypeError(f"options must be option names (strings), got {sorted(map(repr, options))}")
    CRITERIA[name] = Entry(name, score, needs_data, doc or (score.__doc__ or "").strip().split("\n")[0], label or name,
                           options)
    return CRITERIA[name]


def unregister_criterion(name: str) -> None:
    """Remove a registered criterion (tests register temporary ones)."""
    if name not in CRITERIA:
        raise KeyError(f"no criterion {name!r} is registered")
    del CRITERIA[name]


def get_criterion(criterion: str | Criterion) -> Entry:
    """The registry entry for a name, or an ad-hoc entry for a callable ``(model, inputs) -> scores``."""
    if callable(criterion):
        name = getattr(criterion, "__name__", "custom")
        return Entry(name, criterion, needs_data=False, doc=(criterion.__doc__ or "").strip(), label=name)
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {sorted(CRITERIA)} or a function (model, inputs) -> scores; "
                         f"got {criterion!r}")
    return CRITERIA[criterion]


def score(criterion: str | Criterion, model: nn.Module, inputs: CriterionInputs | None = None) -> Scores | Selection:
    """Run a criterion on ``model``; the result is checked to be scores or a Selection."""
    entry = get_criterion(criterion)
    out = entry.score(model, inputs or CriterionInputs())
    if not isinstance(out, (Selection, Mapping)):
        raise TypeError(f"criterion {entry.name!r} returned {type(out).__name__}, not scores or a Selection")
    return out


# --------------------------------------------------------------------------------------
# The lab's criteria
# --------------------------------------------------------------------------------------


def _gradient_based(name: str) -> Criterion:
    fn = getattr(criteria, name)

    def score_fn(model: nn.Module, inputs: CriterionInputs) -> Scores:
        loss_fn, batches = inputs.data(name)
        return fn(model, loss_fn, batches, inputs.include)

    score_fn.__doc__ = fn.__doc__
    return score_fn


def _lift(model: nn.Module, inputs: CriterionInputs) -> Scores:
    return criteria.lift(model, inputs.option("rank", "lift"), inputs.include, inputs.options.get("method", "svd"))


def _layers(model: nn.Module, inputs: CriterionInputs) -> Selection:
    """Random order inside the named layers (option ``layers``: names or glob patterns)."""
    chosen = set(match_parameters(model, inputs.option("layers", "layers")))
    s = criteria.random(model, inputs.seed, inputs.include)
    return Selection(s, {n: torch.full_like(v, n in chosen, dtype=torch.bool) for n, v in s.items()})


def _l1_discovered(model: nn.Module, inputs: CriterionInputs) -> Selection:
    """The entries a fine-tuning run with a proximal L1 pull to the start moved (options ``lam``, ``lr``)."""
    if inputs.train is None:
        raise ValueError("criterion 'l1_discovered' needs inputs.train(model, optimizer, hooks): the run it learns from")
    names = set(inputs.names(model))
    run = copy.deepcopy(model).train()
    reference = inputs.reference if inputs.reference is not None else snapshot(model)
    mask = {n: torch.full_like(p, n in names, dtype=torch.bool) for n, p in run.named_parameters()}
    opt = MaskedAdamW(run.named_parameters(), mask=mask, lr=inputs.option("lr", "l1_discovered"), weight_decay=0.0)
    ref = {n: reference[n] for n in names}
    inputs.train(run, opt, [ProximalL1(ref, inputs.option("lam", "l1_discovered"))])
    s = criteria.update(run, ref, include=inputs.include)
    return Selection(s, {n: v > 0 for n, v in s.items()})


register_criterion("random", lambda model, inputs: criteria.random(model, inputs.seed, inputs.include),
                   doc=criteria.random.__doc__.split("\n")[0], options=())
register_criterion("magnitude", lambda model, inputs: criteria.magnitude(model, inputs.include),
                   doc=criteria.magnitude.__doc__.split("\n")[0], options=())
for _name, _label in (("gradient", "gradient"), ("fisher", "Fisher"), ("snip", "SNIP"), ("movement", "movement")):
    register_criterion(_name, _gradient_based(_name), needs_data=True, label=_label, options=())
register_criterion("lift", _lift, doc=criteria.lift.__doc__.split("\n")[0], label="LIFT", options=("rank", "method"))
register_criterion("layers", _layers, label="whole layers", options=("layers",))
register_criterion("l1_discovered", _l1_discovered, needs_data=True, label="L1-discovered", options=("lam", "lr"))
