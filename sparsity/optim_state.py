"""Loading a saved optimizer state safely: matched by parameter name, checked before anything changes.

``torch.optim.Optimizer.load_state_dict`` maps saved state to parameters *by position*:
the i-th saved tensor's moments go to the i-th parameter of the new optimizer. Build the
optimizer with the parameters in another order (a refactored model, a different
``named_parameters()`` filter) and every moment lands on the wrong tensor, silently;
for a masked optimizer the mask, checked by name, then no longer matches the moments,
and masked-out entries move. The lab's optimizers carry parameter names, so the saved
state is re-keyed by name here and checked against the optimizer's own parameters:
the same names, the same optimizer kind (AdamW's ``betas`` vs SGD's ``momentum``), every
required per-parameter key present, every moment of the shape the parameter (or its
compact selection) needs. The first mismatch raises a ``ValueError`` naming it, and
the optimizer is left exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

_GROUP_BOOKKEEPING = ("params", "param_names")


def _names_of_saved_groups(groups: object) -> list[list[str]]:
    if not isinstance(groups, list) or not all(isinstance(g, Mapping) for g in groups):
        raise ValueError("state_dict['param_groups'] must be a list of dicts")
    names = []
    for i, g in enumerate(groups):
        group_names = g.get("param_names")
        if not isinstance(group_names, list) or len(group_names) != len(g.get("params", ())):
            raise ValueError(
                f"state_dict['param_groups'][{i}] has no 'param_names' matching its 'params': "
                "it was not saved by an optimizer of named parameters, so its state cannot be matched by name"
            )
        names.append(group_names)
    return names


def _match_groups(saved_names: list[list[str]], own_names: list[list[str]]) -> list[int]:
    """For each of our param groups, the index of the saved group holding exactly the same names."""
    saved_all = [n for g in saved_names for n in g]
    own_all = [n for g in own_names for n in g]
    missing = [n for n in own_all if n not in set(saved_all)]
    if missing:
        raise ValueError(f"state_dict has no state for parameter '{missing[0]}' of this optimizer")
    unknown = [n for n in saved_all if n not in set(own_all)]
    if unknown:
        raise ValueError(f"state_dict holds parameter '{unknown[0]}', which this optimizer does not have")
    by_set = {frozenset(g): i for i, g in enumerate(saved_names)}
    order = []
    for i, g in enumerate(own_names):
        j = by_set.get(frozenset(g))
        if j is None:
            raise ValueError(
                f"param group {i} of this optimizer ({', '.join(g[:3])}, ...) has no saved group with the same parameters"
            )
        order.append(j)
    return order


def _check_kind(saved: Mapping[str, Any], own: Mapping[str, Any], kind: str, group: int) -> None:
    saved_keys = set(saved) - set(_GROUP_BOOKKEEPING)
    own_keys = set(own) - set(_GROUP_BOOKKEEPING)
    if saved_keys != own_keys:
        lacking = sorted(own_keys - saved_keys) or sorted(saved_keys - own_keys)
        raise ValueError(
            f"state_dict['param_groups'][{group}] has hyperparameters {sorted(saved_keys)}, "
            f"but {kind} needs {sorted(own_keys)} (first difference: '{lacking[0]}'): "
            "was it saved by another kind of optimizer?"
        )


def _check_param_state(
    name: str, state: object, required: tuple[str, ...], shapes: Mapping[str, tuple[int, ...]], kind: str
) -> None:
    if not isinstance(state, Mapping):
        raise ValueError(f"state_dict state of '{name}' must be a dict, got {type(state).__name__}")
    if not state:
        return
    for key in required:
        if key not in state:
            raise ValueError(f"state_dict state of '{name}' lacks '{key}', which {kind} needs")
    for key, want in shapes.items():
        value = state.get(key)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"state_dict state of '{name}': '{key}' must be a tensor, got {type(value).__name__}")
        if tuple(value.shape) != want:
            raise ValueError(
                f"state_dict state of '{name}' has {key} of shape {tuple(value.shape)}, but this optimizer needs {want}"
            )


def remap_by_name(
    optimizer: torch.optim.Optimizer,
    state_dict: Mapping[str, Any],
    required: tuple[str, ...],
    moment_shape: Callable[[str], dict[str, tuple[int, ...]]],
) -> dict[str, Any]:
    """Return ``state_dict`` re-keyed so torch's positional loading puts every state on its own parameter.

    ``required`` lists the keys a non-empty per-parameter state must hold (AdamW: ``step``,
    ``exp_avg``, ``exp_avg_sq``); ``moment_shape(name)`` the shape each tensor key of that
    parameter's state must have. Raises ``ValueError`` naming the first mismatch.
    """
    if not isinstance(state_dict, Mapping) or "param_groups" not in state_dict or "state" not in state_dict:
        raise ValueError("state_dict must be a dict with 'state' and 'param_groups', as Optimizer.state_dict() gives")
    saved_groups = state_dict["param_groups"]
    saved_state = state_dict["state"]
    if not isinstance(saved_state, Mapping):
        raise ValueError("state_dict['state'] must be a dict from parameter id to its state")
    kind = type(optimizer).__name__
    saved_names = _names_of_saved_groups(saved_groups)
    own_names = [list(g["param_names"]) for g in optimizer.param_groups]
    order = _match_groups(saved_names, own_names)

    state: dict[int, Any] = {}
    groups = []
    next_id = 0
    for i, (own, j) in enumerate(zip(optimizer.param_groups, order)):
        _check_kind(saved_groups[j], own, kind, j)
        saved_id = dict(zip(saved_names[j], saved_groups[j]["params"]))
        ids = []
        for name in own["param_names"]:
            if saved_id[name] in saved_state:
                param_state = saved_state[saved_id[name]]
                _check_param_state(name, param_state, required, moment_shape(name), kind)
                state[next_id] = param_state
            ids.append(next_id)
            next_id += 1
        group = {k: v for k, v in saved_groups[j].items() if k not in _GROUP_BOOKKEEPING}
        groups.append({**group, "params": ids, "param_names": list(own["param_names"])})
    rest = {k: v for k, v in state_dict.items() if k not in ("state", "param_groups")}
    return {**rest, "state": state, "param_groups": groups}
