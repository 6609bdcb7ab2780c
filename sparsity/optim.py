"""The masked optimizer: only the selected entries of a model ever move.

The naive way to fine-tune a subnetwork is to zero the gradient of frozen entries.
With AdamW that is wrong: decoupled weight decay shrinks every entry whatever its
gradient, and momentum keeps moving an entry after its gradient is gone. Here the
update is computed as usual and then written back only where the mask is True,
``p <- where(mask, p_new, p)``, so a masked-out entry stays bit-identical for any
number of steps, whatever the weight decay, momentum or bias correction.

Conventions follow ``torch.optim``: param groups, ``step()``, ``zero_grad()``,
``state_dict()``/``load_state_dict()`` (the mask travels inside the state dict).
Parameters are given by name, ``model.named_parameters()``, so the mask can be
matched to them. The coverage rule of ``sparsity.validate.Mask`` holds: a parameter
absent from the mask is fully trainable; one whose mask is all False is skipped and
holds no optimizer state. With a full mask the
trajectory equals ``torch.optim.AdamW``/``SGD`` (``foreach=False``) bit for bit.

The optimizer state of a partly masked tensor is still dense here; the compact
variant that stores state only for the selected entries is a separate class.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from sparsity.optim_state import remap_by_name
from sparsity.validate import Mask, check_finite_nonnegative, check_mask


class NamedOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` whose parameters carry names, so a mask can be matched to them.

    Each name must denote one tensor and each tensor one name: a tensor registered twice
    (a tied weight listed under both names) would get two masks and two moment sets.
    ``load_state_dict`` matches the saved state by name (``sparsity.optim_state``), never
    by position. Subclasses say which per-parameter state keys they need
    (``STATE_KEYS``) and the shape of each (``_state_shapes``).
    """

    STATE_KEYS: tuple[str, ...] = ()

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        seen: dict[int, str] = {}
        for group in self.param_groups:
            if "param_names" not in group:
                raise TypeError(
                    f"{type(self).__name__} needs named parameters to match the mask: "
                    "pass model.named_parameters() (or groups of (name, param) pairs)"
                )
            for name, p in zip(group["param_names"], group["params"]):
                if id(p) in seen:
                    raise ValueError(
                        f"parameter '{name}' is the same tensor as '{seen[id(p)]}': "
                        "pass each tensor once (model.named_parameters() drops tied duplicates)"
                    )
                seen[id(p)] = name
        names = [n for g in self.param_groups for n in g["param_names"]]
        if len(set(names)) != len(names):
            raise ValueError(f"parameter name '{next(n for n in names if names.count(n) > 1)}' appears twice")

    def _named(self) -> dict[str, torch.Tensor]:
        return {n: p for g in self.param_groups for n, p in zip(g["param_names"], g["params"])}

    def _state_shapes(self, name: str) -> dict[str, tuple[int, ...]]:
        """The shape every tensor of parameter ``name``'s state must have (dense: the parameter's)."""
        shape = tuple(self._named()[name].shape)
        return {key: shape for key in self.STATE_KEYS if key != "step"}

    def _remapped(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """``state_dict`` checked and re-keyed by parameter name (raises before anything changes)."""
        return remap_by_name(self, state_dict, self.STATE_KEYS, self._state_shapes)


def adamw_defaults(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> dict[str, Any]:
    """AdamW's hyperparameters, checked, as a param-group defaults dict."""
    check_finite_nonnegative(lr, "lr")
    check_finite_nonnegative(eps, "eps")
    check_finite_nonnegative(weight_decay, "weight_decay")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
    return dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


class _MaskedOptimizer(NamedOptimizer):
    """Shared machinery: mask validation, mask in the state dict."""

    def __init__(self, params: Iterable[Any], mask: Mask | None, defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        self._set_mask(self._check_mask({} if mask is None else mask))

    def _check_mask(self, mask: object, arg: str = "mask") -> Mask:
        return check_mask(self._named(), mask, arg)

    def _set_mask(self, mask: Mask) -> None:
        """Keep a private copy of the mask, sorted once into frozen, fully trainable or partial tensors.

        The mask is fixed for the optimizer's life: to change it, build a new optimizer or
        load a state dict (editing the caller's tensors afterwards changes nothing here).
        """
        self.mask = {n: m.clone() for n, m in mask.items()}
        self._frozen = {n for n, m in mask.items() if not m.any()}
        self._partial = {n: m for n, m in mask.items() if n not in self._frozen and not m.all()}

    def _movable(self, group: dict[str, Any]) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
        """(param, mask or None for "all of it") for every param of the group that can move this step."""
        for name, p in zip(group["param_names"], group["params"]):
            if p.grad is not None and name not in self._frozen:
                yield p, self._partial.get(name)

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["mask"] = {n: m.clone() for n, m in self.mask.items()}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore state and mask, matched by parameter name; a bad state dict raises and changes nothing."""
        state_dict = dict(state_dict)
        if "mask" not in state_dict:
            raise ValueError("state_dict has no 'mask': it was not saved by a masked optimizer")
        named = self._named()
        saved_mask = state_dict.pop("mask")
        if not isinstance(saved_mask, dict):
            raise ValueError(f"state_dict['mask'] must be a dict, got {type(saved_mask).__name__}")
        mask = {n: m.to(named[n].device) if n in named and isinstance(m, torch.Tensor) else m for n, m in saved_mask.items()}
        checked = self._check_mask(mask, "state_dict['mask']")
        super().load_state_dict(self._remapped(state_dict))
        self._set_mask(checked)


def _write_back(p: torch.Tensor, new: torch.Tensor, mask: torch.Tensor | None) -> None:
    """Store the new values where the mask allows; masked entries keep their exact bits."""
    if mask is None:
        p.copy_(new)
    else:
        torch.where(mask, new, p, out=p)


def adamw_update(
    value: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]
) -> torch.Tensor:
    """One AdamW update of ``value`` (not modified) with its moments in ``state``; returns the new value.

    The operations and their order are those of ``torch.optim.AdamW(foreach=False)``.
    They are elementwise, so they give the same bits on a gathered ``[k]`` array
    (``CompactAdamW``) as on the dense tensor (``MaskedAdamW``).
    """
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    if not state:
        state["step"] = torch.tensor(0.0)
        state["exp_avg"] = torch.zeros_like(value, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(value, memory_format=torch.preserve_format)
    state["step"] += 1
    step = state["step"].item()
    new = value.mul(1 - lr * wd) if wd != 0 else value.clone()
    state["exp_avg"].lerp_(grad, 1 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step_size = lr / (1 - beta1**step)
    denom = (state["exp_avg_sq"].sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
    new.addcdiv_(state["exp_avg"], denom, value=-step_size)
    return new


class MaskedAdamW(_MaskedOptimizer):
    """AdamW (Loshchilov & Hutter 2019) that moves only the entries selected by ``mask``."""

    STATE_KEYS = ("step", "exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: Iterable[Any],
        mask: Mask | None = None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(params, mask, adamw_defaults(lr, betas, eps, weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p, mask in self._movable(group):
                grad = p.grad if mask is None else torch.where(mask, p.grad, 0.0)
                _write_back(p, adamw_update(p, grad, self.state[p], group), mask)
        return loss

    @torch.no_grad()
    def adaptive_lr(self) -> dict[str, torch.Tensor]:
        """Per-entry step scale ``lr / (sqrt(v_hat) + eps)`` of the last step, by parameter name.

        Adam moves an entry by about this much per unit of (momentum) gradient, so it is
        the threshold scale of a proximal step taken after Adam (Yun et al. 2021, ProxGen):
        ``prox_l1_to_init_(model, ref, {n: lam * a for n, a in opt.adaptive_lr().items()})``.
        Parameters that have not stepped yet are absent.
        """
        scales = {}
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for name, p in zip(group["param_names"], group["params"]):
                state = self.state.get(p)
                if not state:
                    continue
                v_hat = state["exp_avg_sq"] / (1 - beta2 ** state["step"].item())
                scales[name] = group["lr"] / (v_hat.sqrt() + group["eps"])
        return scales


class MaskedSGD(_MaskedOptimizer):
    """SGD with momentum (and optional Nesterov) that moves only the entries selected by ``mask``."""

    STATE_KEYS = ("momentum_buffer",)

    def __init__(
        self,
        params: Iterable[Any],
        mask: Mask | None = None,
        lr: float = 1e-2,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        check_finite_nonnegative(lr, "lr")
        check_finite_nonnegative(momentum, "momentum")
        check_finite_nonnegative(dampening, "dampening")
        check_finite_nonnegative(weight_decay, "weight_decay")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening = 0")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
        super().__init__(params, mask, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
            for p, mask in self._movable(group):
                # Same operations in the same order as torch.optim.SGD(foreach=False).
                grad = p.grad.add(p, alpha=wd) if wd != 0 else p.grad
                if mask is not None:
                    grad = torch.where(mask, grad, 0.0)
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = grad.clone()
                    else:
                        buf.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
                    grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
                _write_back(p, p.add(grad, alpha=-lr), mask)
        return loss
