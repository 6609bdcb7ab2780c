"""The compact masked optimizer: optimizer state only for the selected entries.

``MaskedAdamW`` keeps dense moments and writes the update back through the mask, so a
5% subnetwork costs as much optimizer memory as full fine-tuning. Here each partly
selected tensor is stored the way sparse fine-tuning methods store it (Ansell et al.
2022 and 2024, SpIEL; "optimizer state only for active weights" in the pruning literature):
``theta = theta0 + scatter(values, indices)`` with ``indices`` the flat positions of
the selected entries (sorted, unique, ``torch.int32``). The moments ``exp_avg`` and
``exp_avg_sq`` have shape ``[k]`` (k = number of selected entries), so optimizer state
and weight decay touch the selected entries only, by construction.

The reference step (``fused=False``) gathers the gradient and the current values at ``indices``, applies the
elementwise AdamW operations of ``MaskedAdamW`` in the same order (decoupled decay,
lerp, addcmul, bias corrections, addcdiv) and scatters the new values back in place.
Entries not selected are never written, so they stay bit-identical. The trajectory
equals ``MaskedAdamW``'s for the same mask value for value (``torch.equal``, NaN in
the same places), but not always bit for bit: torch's CPU kernels run a vectorised
body and a scalar tail, and an entry that lands in the tail on the gathered ``[k]``
array but in the body on the dense tensor (or the reverse) can get a zero of the other
sign or a NaN with other payload bits. No finite nonzero value differs.

**Rounding contract.** ``fused=True``, the default, is the fast path: on the CPU, a partly
selected float32 tensor is updated by our one-pass kernel (``sparsity.kernels.sparse_cpu``: read weight and gradient
at each selected position, update the moments, write the weight, no temporaries);
everything else (dense tensors, GPUs, other dtypes, or no compiler) is gathered and goes
through torch's fused AdamW kernel, ``torch.optim.adamw.adamw(..., fused=True)``, one call
per param group, then scattered back. Its numbers agree with the single-tensor reference
to the rounding that torch's own fused AdamW shows against ``AdamW(foreach=False)``
(tested), not bit for bit; the unselected entries are still never written, bit for bit.
``fused=False`` is the reference step described above, value for value equal to
``MaskedAdamW`` (use it where a trajectory must be reproduced exactly across the two
optimizers). The state has the same layout either way, so a state dict moves freely between
the two paths.

Conventions follow ``MaskedAdamW``: named parameters, a mask validated against them,
param groups, ``step(closure)``, and a ``state_dict`` that carries the selection (as
``indices``). A parameter absent from the mask, or whose mask is all True, trains
densely (plain AdamW); one whose mask is all False holds no state.
:meth:`CompactAdamW.reselect` changes which entries train at a constant count per
tensor, the storage side of dynamic sparsity (RigL, Evci et al. 2020; see
``sparsity.dynamic``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.adamw import adamw as adamw_functional

from sparsity.kernels import sparse_cpu
from sparsity.optim import NamedOptimizer, adamw_defaults, adamw_update
from sparsity.optim_state import remap_by_name
from sparsity.validate import Mask, check_mask

MOMENTS = ("exp_avg", "exp_avg_sq")


class CompactAdamW(NamedOptimizer):
    """AdamW (Loshchilov & Hutter 2019) on the selected entries only, with ``[k]``-sized state.

    ``indices`` maps each partly selected parameter to its selected flat positions
    (int32, sorted, unique) and each frozen one (mask all False) to an empty tensor;
    parameters not in ``indices`` train densely (a mask entry that is all True means
    the same as an absent one and is not kept). ``mask`` rebuilds the dense bool mask
    of the parameters in ``indices``, e.g. for ``sparsity.dynamic.rigl_swap``.
    """

    STATE_KEYS = ("step", "exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: Iterable[Any],
        mask: Mask | None = None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        fused: bool = True,
    ) -> None:
        super().__init__(params, adamw_defaults(lr, betas, eps, weight_decay))
        if not isinstance(fused, bool):
            raise TypeError(f"fused must be True or False, got {fused!r}")
        self.fused = fused
        self.values_grads: dict[str, torch.Tensor] = {}
        """Name -> the ``[k]`` leaf whose ``.grad`` backward fills directly (``sparsity.values_grad``)."""
        self.indices = self._indices_of(check_mask(self._named(), {} if mask is None else mask))

    def _indices_of(self, mask: Mask, arg: str = "mask") -> dict[str, torch.Tensor]:
        """Flat int32 positions of the selected entries of every tensor that is not fully selected."""
        named = self._named()
        indices = {}
        for name, m in mask.items():
            count = int(m.sum())
            if count == m.numel():
                continue
            if m.numel() > torch.iinfo(torch.int32).max:
                raise ValueError(f"{arg}['{name}'] has {m.numel()} entries, too many for int32 indices")
            if count and not named[name].is_contiguous():
                raise ValueError(f"parameter '{name}' is not contiguous: flat indices need a contiguous tensor")
            indices[name] = m.reshape(-1).nonzero().squeeze(1).to(torch.int32)
        return indices

    @property
    def mask(self) -> Mask:
        """The dense bool mask of the parameters in ``indices`` (rebuilt on each access)."""
        named = self._named()
        out = {}
        for name, idx in self.indices.items():
            m = torch.zeros(named[name].numel(), dtype=torch.bool, device=idx.device)
            m[idx] = True
            out[name] = m.view(named[name].shape)
        return out

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One AdamW step: gather the selected entries, update them, scatter them back (the rest is never written)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if self.fused:
                self._fused_group_step(group)
                continue
            for name, p in zip(group["param_names"], group["params"]):
                idx = self.indices.get(name)
                compact = self._values_grad(name)
                if (p.grad is None and compact is None) or (idx is not None and idx.numel() == 0):
                    continue
                if idx is None:
                    p.copy_(adamw_update(p, p.grad, self.state[p], group))
                    continue
                flat = p.view(-1)
                grad = compact if compact is not None else p.grad.reshape(-1).index_select(0, idx)
                new = adamw_update(flat.index_select(0, idx), grad, self.state[p], group)
                flat.index_put_((idx,), new)
        return loss

    def _values_grad(self, name: str) -> torch.Tensor | None:
        """The ``[k]`` gradient of ``name``'s selected entries where backward computed it directly
        (``sparsity.values_grad``), else None (the dense ``p.grad`` is gathered)."""
        anchor = self.values_grads.get(name)
        return None if anchor is None else anchor.grad

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the parameters' gradients and the ``[k]`` values-only gradients."""
        super().zero_grad(set_to_none)
        for anchor in self.values_grads.values():
            anchor.grad = None

    def _fused_group_step(self, group: dict[str, Any]) -> None:
        """The fast path. A partly selected float32 CPU tensor goes through our one-pass kernel
        (``sparsity.kernels.sparse_cpu``); every other tensor is gathered (dense ones go in
        whole) and the group gets one torch fused AdamW call per (device, dtype), then a scatter."""
        batches: dict[tuple[torch.device, torch.dtype], list[tuple[torch.Tensor, ...]]] = {}
        writes = []
        beta1, beta2 = group["betas"]
        for name, p in zip(group["param_names"], group["params"]):
            idx = self.indices.get(name)
            compact = self._values_grad(name)
            if (p.grad is None and compact is None) or (idx is not None and idx.numel() == 0):
                continue
            state = self._fused_state(p, idx)
            if idx is None:
                value, grad = p, p.grad.contiguous()
            else:
                grad = compact if compact is not None else p.grad
                kernel = sparse_cpu.load() if sparse_cpu.usable(p) else None
                if kernel is not None and sparse_cpu.usable(grad):
                    state["step"] += 1
                    kernel.sparse_adamw_(p, grad, idx, state["exp_avg"], state["exp_avg_sq"], group["lr"],
                                         group["weight_decay"], beta1, beta2, group["eps"], state["step"].item(),
                                         compact is not None)
                    continue
                flat = p.view(-1)
                value = flat.index_select(0, idx)
                grad = compact if compact is not None else p.grad.reshape(-1).index_select(0, idx)
                writes.append((flat, idx, value))
            batches.setdefault((p.device, p.dtype), []).append(
                (value, grad, state["exp_avg"], state["exp_avg_sq"], state["step"]))
        for batch in batches.values():
            values, grads, exp_avgs, exp_avg_sqs, steps = (list(t) for t in zip(*batch))
            adamw_functional(values, grads, exp_avgs, exp_avg_sqs, [], steps, fused=True, amsgrad=False,
                             beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
                             eps=group["eps"], maximize=False)
        for flat, idx, value in writes:
            flat.index_put_((idx,), value)

    def _fused_state(self, p: torch.Tensor, idx: torch.Tensor | None) -> dict[str, Any]:
        """``p``'s state, created (zero moments of ``[k]`` or ``p``'s shape) on first use; the step
        counter lives on ``p``'s device, as torch's fused kernels want it."""
        state = self.state[p]
        if not state:
            like = p if idx is None else p.new_empty(idx.numel())
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(like, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(like, memory_format=torch.preserve_format)
        elif state["step"].device != p.device:  # a state saved by the reference path keeps step on the CPU
            state["step"] = state["step"].to(p.device)
        return state

    def state_bytes(self) -> int:
        """Bytes of optimizer state: every tensor in ``state`` (moments, step counters) plus the indices."""
        moments = sum(t.nbytes for s in self.state.values() for t in s.values() if isinstance(t, torch.Tensor))
        return moments + sum(idx.nbytes for idx in self.indices.values())

    def _count(self, indices: dict[str, torch.Tensor], name: str) -> int:
        return indices[name].numel() if name in indices else self._named()[name].numel()

    @torch.no_grad()
    def reselect(self, new_mask: Mask) -> None:
        """Train another set of entries with the same count per tensor (dynamic sparsity).

        Moments of entries selected before and after move to their new positions in the
        compact arrays; newly grown entries start with zero moments and the step counter
        is kept, as in RigL (Evci et al. 2020). A dropped entry keeps its current value.
        """
        if self.values_grads:
            raise ValueError("reselect: values-only gradients (sparsity.values_grad) are computed at a fixed "
                             "selection; remove them (values_grad.remove) before re-selecting")
        named = self._named()
        new_indices = self._indices_of(check_mask(named, new_mask, "new_mask"), "new_mask")
        for name in named:
            old_k, new_k = self._count(self.indices, name), self._count(new_indices, name)
            if old_k != new_k:
                raise ValueError(
                    f"new_mask['{name}'] selects {new_k} entries but '{name}' trains {old_k}: "
                    "reselect keeps the count per tensor (absent from a mask = all entries)"
                )
        for name, new in new_indices.items():
            state = self.state.get(named[name])
            if not state or new.numel() == 0:
                continue
            old = self.indices[name]
            pos = torch.searchsorted(old, new).clamp_(max=old.numel() - 1)
            kept = old[pos] == new
            for key in MOMENTS:
                moved = torch.zeros_like(state[key])
                moved[kept] = state[key][pos[kept]]
                state[key] = moved
        self.indices = new_indices

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus ``indices`` (a copy): the selection travels with the [k]-sized moments."""
        sd = super().state_dict()
        sd["indices"] = {n: idx.clone() for n, idx in self.indices.items()}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore moments and selection, matched by parameter name; a bad state dict raises and changes nothing.
        With values-only gradients installed, the selection of their weights must stay the same (backward computes
        the gradient at the installed positions; other positions would silently get other entries' gradients)."""
        state_dict = dict(state_dict)
        if "indices" not in state_dict:
            raise ValueError("state_dict has no 'indices': it was not saved by CompactAdamW")
        indices = self._check_indices(state_dict.pop("indices"))
        for name in self.values_grads:
            if name not in indices or not torch.equal(indices[name], self.indices[name]):
                raise ValueError(f"state_dict['indices']['{name}'] selects other entries than the ones whose "
                                 "values-only gradient backward computes (sparsity.values_grad): remove them "
                                 "(values_grad.remove), load, then install them again")
        named = self._named()

        def shapes(name: str) -> dict[str, tuple[int, ...]]:
            want = (indices[name].numel(),) if name in indices else tuple(named[name].shape)
            return {key: want for key in MOMENTS}

        super().load_state_dict(remap_by_name(self, state_dict, self.STATE_KEYS, shapes))
        self.indices = indices

    def _check_indices(self, indices: object) -> dict[str, torch.Tensor]:
        """Validate saved indices (known names, int32, 1-D, sorted, unique, in range) and move them to the params."""
        if not isinstance(indices, dict):
            raise TypeError(f"state_dict['indices'] must be a dict, got {type(indices).__name__}")
        named = self._named()
        out = {}
        for name, idx in indices.items():
            arg = f"state_dict['indices']['{name}']"
            if name not in named:
                raise ValueError(f"{arg}: '{name}' is not a parameter of this optimizer")
            if not isinstance(idx, torch.Tensor) or idx.dtype != torch.int32 or idx.ndim != 1:
                raise TypeError(f"{arg} must be a 1-D torch.int32 tensor")
            if idx.numel() and not named[name].is_contiguous():
                raise ValueError(f"parameter '{name}' is not contiguous: flat indices need a contiguous tensor")
            if idx.numel() and (int(idx[0]) < 0 or int(idx[-1]) >= named[name].numel()):
                raise ValueError(f"{arg} holds positions outside [0, {named[name].numel()})")
            if (idx[1:] <= idx[:-1]).any():
                raise ValueError(f"{arg} must be sorted and unique")
            out[name] = idx.to(named[name].device)
        return out
