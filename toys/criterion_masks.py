"""Criterion -> mask on a toy model, through the lab's registry: the step every toy comparison shares.

A toy comparison asks "which weights should a sparse fine-tune train?": a criterion scores the
model at its start and a budget cuts the scores to a mask. Criterion names resolve through
``sparsity.registry``, so a criterion registered there (``register_criterion``) runs through
every toy comparison without an edit in ``toys/``. A study may add criteria only it can
define (an oracle only it knows), or its own reading of a registry criterion under the
registry's name (the update of a discovery run it already made), as functions of the registry's
form ``(model, inputs) -> Scores | Selection``.

Selection follows the ``top_k`` policy (``sparsity.config.select_mask``) over the weight
matrices, globally or per tensor. A set criterion (a ``Selection``: the entries an L1 run
moved, the weights of a layer) is ranked inside its set and never spends budget outside
it, with the same scope; when the budget exceeds the set it takes all of it and the study
reports the smaller actual density.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from sparsity import masks, registry
from sparsity.config import SparseConfig, select_mask
from sparsity.eligibility import eligible
from sparsity.registry import Criterion, CriterionInputs, Selection
from sparsity.validate import Mask, check_density, named_params

DENSITIES = (0.01, 0.05, 0.2)
"""Budgets compared by default: 1%, 5% and 20% of the weight entries."""

SCOPES = masks.SCOPES
"""top_k over all matrices at once ("global") or the same share of every matrix ("per_tensor")."""

INCLUDE = "weight"
"""Budgets are spent on weight matrices only (biases stay frozen in sparse runs): LIFT needs matrices."""


def check_choice(value: object, allowed: Sequence[object], arg: str) -> None:
    """A ValueError naming ``arg`` and the allowed values unless ``value`` is one of them."""
    if value not in allowed:
        raise ValueError(f"{arg} must be one of {tuple(allowed)}, got {value!r}")


RENAMED = {"l1_update": "l1_discovered", "layer": "layers"}
"""Former study names of registry criteria -> the registry's name (refused, naming the new one)."""


def resolve(criterion: object, local: Mapping[str, Criterion] | None = None) -> str | Criterion:
    """A study's own criterion (or its own reading of a registry criterion) by name, else a name
    registered in ``sparsity.registry``. A former name (:data:`RENAMED`) is an error naming the new one."""
    local = local or {}
    if isinstance(criterion, str) and criterion in RENAMED and criterion not in registry.CRITERIA:
        raise ValueError(f"criterion {criterion!r} is now called {RENAMED[criterion]!r} (sparsity.registry's name)")
    if isinstance(criterion, str) and criterion in local:
        return local[criterion]
    if not isinstance(criterion, str) or criterion not in registry.CRITERIA:
        known = sorted(set(registry.CRITERIA) | set(local))
        raise ValueError(f"criterion must be one of {known} (sparsity.registry.register_criterion adds one), "
                         f"got {criterion!r}")
    return criterion


def criterion_mask(model: nn.Module, criterion: str | Criterion, density: float, scope: str,
                   inputs: CriterionInputs) -> Mask:
    """The mask ``criterion`` picks on ``model`` at ``density`` (a share of the eligible entries)."""
    check_density(density)
    check_choice(scope, SCOPES, "scope")
    out = registry.score(criterion, model, inputs)
    if isinstance(out, Selection):
        return masks.top_k_within(model, out.scores, out.support, density, scope)
    include = inputs.include if isinstance(inputs.include, str) else tuple(inputs.include)
    return select_mask(model, out, SparseConfig(criterion=criterion, density=density, scope=scope, include=include))


def weight_count(model: nn.Module) -> int:
    """Number of entries a density is a share of: all weight-matrix entries."""
    params = named_params(model)
    return sum(params[n].numel() for n in eligible(model, INCLUDE))


def selected(mask: Mask) -> int:
    """Number of True entries of a mask."""
    return sum(int(m.sum()) for m in mask.values())
