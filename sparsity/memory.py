"""Memory of a training step by category: live tensor bytes, not the process's resident set.

A resident-set peak counts what the C allocator keeps after a free, so it cannot tell a
method that keeps no weight gradient from one that does. This module counts tensors:

* :class:`LiveTensors`, a ``TorchDispatchMode`` that sees every tensor an operator returns,
  keeps one entry per storage (views and in-place results share their base's storage) and
  learns of a storage's end from a weak reference to it; its ``peak`` is the largest sum of
  live storage bytes seen. Memory an operator allocates and frees internally (a BLAS
  workspace) never reaches Python and is not counted; neither is the allocator's rounding.
* :func:`step_memory`, one training step (zero_grad, forward, backward, optimizer step)
  under that tracker, with each category counted once per storage:

  - ``params``: the model's parameters;
  - ``grads``: the ``.grad`` of every parameter after backward, and the ``[k]`` gradients
    of values-only anchors (``sparsity.values_grad``; an optimizer's ``values_grads``);
  - ``optimizer_state``: every tensor the optimizer object holds that is neither a
    parameter nor a gradient (moments, step counters, a compact optimizer's indices,
    anchors), walked through its attributes after the step;
  - ``activations``: what autograd saves for backward during the forward
    (``torch.autograd.graph.saved_tensors_hooks``), parameters excluded. Under activation
    checkpointing (``torch.utils.checkpoint``, non-reentrant) the checkpointed region packs its
    saved tensors with hooks of its own, so this counts what is kept from forward to backward:
    each region's inputs (saved by the checkpoint), not the region's inside, which backward
    recomputes one region at a time; those recomputed tensors are transient and count in the peak;
  - ``peak_bytes``: the largest live total during the step, the tensors that existed before
    it included (parameters, gradients, state, the batch).

On CUDA the peak is the allocator's (``torch.cuda.max_memory_allocated``), the categories
are counted the same way. The idea of splitting a step's memory into parameters, gradients,
optimizer state and activations is the accounting of Rajbhandari et al. 2020 (ZeRO).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def _storage(t: torch.Tensor) -> torch.UntypedStorage:
    return t.untyped_storage()


def unique_bytes(tensors: Iterable[torch.Tensor], exclude: set[int] | None = None) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a storage shared by views counts once),
    leaving out the storages whose ``_cdata`` is in ``exclude``."""
    seen: dict[int, int] = {}
    for t in tensors:
        st = _storage(t)
        if exclude is None or st._cdata not in exclude:
            seen[st._cdata] = st.nbytes()
    return sum(seen.values())


class LiveTensors(TorchDispatchMode):
    """Live tensor storages and their peak, in bytes, while the mode is active.

    ``track(tensors)`` adds tensors that existed before (their storages are then followed to
    their end too). Every operator's tensor outputs are added as they appear; a storage
    leaves the count when its last tensor is gone.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def track(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count these tensors' storages as live from now on (each once)."""
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._add(_storage(t))

    def _add(self, st: torch.UntypedStorage) -> None:
        key = st._cdata
        if key in self.live:
            return
        self.live[key] = st.nbytes()
        self.current += self.live[key]
        self.peak = max(self.peak, self.current)
        self._refs[key] = weakref.ref(st, lambda _ref, key=key: self._free(key))

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)
        self._refs.pop(key, None)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.track(t for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


@dataclass(frozen=True)
class StepMemory:
    """Bytes of one training step by category (see the module docstring for what each holds)."""

    params: int
    grads: int
    optimizer_state: int
    activations: int
    peak_bytes: int


def tensors_in(obj: object, _seen: set[int] | None = None) -> list[torch.Tensor]:
    """Every tensor reachable from ``obj`` through dicts, lists, tuples, sets and object attributes."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        items: Iterable[object] = [*obj.keys(), *obj.values()]
    elif isinstance(obj, (list, tuple, set, frozenset)):
        items = obj
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, nn.Module)):
        items = vars(obj).values()
    else:
        return []
    return [t for item in items for t in tensors_in(item, seen)]


def gradient_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The gradients a step keeps: every parameter's ``.grad`` and the values-only anchors' ``.grad``."""
    leaves = [*model.parameters(), *getattr(optimizer, "values_grads", {}).values()]
    return [p.grad for p in leaves if p.grad is not None]


def optimizer_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Tensors the optimizer holds that are neither parameters nor their gradients."""
    held = {_storage(t)._cdata for t in [*model.parameters(), *gradient_tensors(model, optimizer)]}
    held |= {_storage(p)._cdata for g in optimizer.param_groups for p in g["params"]}
    return [t for t in tensors_in(vars(optimizer)) if _storage(t)._cdata not in held]


def step_memory(model: nn.Module, optimizer: torch.optim.Optimizer, loss_of: Callable[[], torch.Tensor],
                inputs: Iterable[torch.Tensor] = ()) -> StepMemory:
    """Run one training step (``optimizer.zero_grad()``, ``loss_of().backward()``, ``optimizer.step()``)
    and count its memory by category; ``inputs`` (the batch) are counted as live from the start."""
    if not callable(loss_of):
        raise TypeError(f"loss_of must be a callable returning the loss, got {type(loss_of).__name__}")
    params = list(model.parameters())
    param_keys = {_storage(p)._cdata for p in params}
    cuda = any(p.device.type == "cuda" for p in params)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = _storage(t)
        if st._cdata not in param_keys:
            saved[st._cdata] = st.nbytes()
        return t

    tracker = LiveTensors()
    tracker.track([*params, *model.buffers(), *gradient_tensors(model, optimizer),
                   *optimizer_tensors(model, optimizer), *inputs])
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with tracker:
        optimizer.zero_grad()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = loss_of()
        loss.backward()
        del loss
        grads = unique_bytes(gradient_tensors(model, optimizer))
        optimizer.step()
    peak = tracker.peak
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    return StepMemory(params=unique_bytes(params), grads=grads,
                      optimizer_state=unique_bytes(optimizer_tensors(model, optimizer)),
                      activations=sum(saved.values()), peak_bytes=peak)
