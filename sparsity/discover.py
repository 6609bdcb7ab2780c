"""Subnetwork discovery: which weights does one function of a network live in?

Two ways, both returning an ordinary mask (``{name: bool tensor}``, True = in the subnetwork):

* :func:`magnitude_mask`, pruning after fine-tuning on the one function: keep the top
  ``density`` entries by the size of the *weights* (magnitude pruning, Han et al. 2015,
  applied per subtask) or of the *update* since a reference (the task's "core
  parameters": the entries that moved most when fine-tuning on it, as in core-parameter
  isolation, Wang et al. 2025, and the RL subnetworks of Mukherjee et al. 2025);
* :func:`learn_mask`, a learned mask with the weights frozen (Csordás et al. 2021, "Are
  Neural Nets Modular?"): every entry gets a trainable logit; each step samples a binary
  mask from a Gumbel-sigmoid (a relaxed Bernoulli; Jang et al. 2017, Maddison et al. 2017)
  and passes gradients straight through the hard threshold (Bengio et al. 2013); the loss
  is the task loss of the masked network plus ``sparsity`` times the expected share of
  kept entries (an L1 penalty on the keep probabilities, i.e. a relaxed L0 as in Louizos
  et al. 2018). The entries with a positive logit at the end form the subnetwork, whose
  density comes out of the optimisation rather than being set in advance.

And two ways to reshape a found subnetwork:

* :func:`exclusive`, the part of each subnetwork no other one uses: ablating a
  subnetwork's shared entries would damage every function that shares them, so the
  modularity test ablates the exclusive parts;
* :func:`whole_units`, every unit the subnetwork touches with its whole fan-in (all its
  incoming weights and its bias). A unit's activation depends on *every* incoming weight:
  freezing only the subnetwork's entries still lets training write new signals into its
  units through the others, which is how fine-tuning on a new task interferes with an
  old one (freezing whole units is how PackNet, Mallya & Lazebnik 2018, keeps old tasks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from sparsity import masks as masks_lib
from sparsity.train import fit
from sparsity.validate import (
    Mask,
    TensorDict,
    check_density,
    check_finite_nonnegative,
    check_mask,
    check_module,
    check_positive_int,
    check_reference,
    named_params,
)


def _check_names(model: nn.Module, names: Sequence[str] | None) -> list[str]:
    params = named_params(model)
    if names is None:
        return list(params)
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"names must be a sequence of parameter names, got {names!r}")
    names = list(names)
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ValueError(f"names holds unknown parameter(s) {unknown} (known: {', '.join(params)})")
    if not names:
        raise ValueError("names is empty: no tensor to search")
    return names


def magnitude_mask(
    model: nn.Module,
    density: float,
    *,
    names: Sequence[str] | None = None,
    reference: TensorDict | None = None,
) -> Mask:
    """The top ``density`` entries of the tensors ``names`` (default all) by ``|theta|`` or ``|theta - reference|``.

    Run it after fine-tuning on one function. Without ``reference`` it is magnitude pruning
    (what the function keeps large, best after sparse-weight training); with the weights
    before fine-tuning as ``reference`` it selects the function's *core parameters*, the
    entries that moved most. The budget is global over ``names``; other tensors come back
    all False.
    """
    density = check_density(density)
    names = _check_names(model, names)
    params = named_params(model)
    if reference is not None:
        reference = check_reference(params, reference)
        missing = [n for n in names if n not in reference]
        if missing:
            raise ValueError(f"reference has no entry for {missing}")
    with torch.no_grad():
        scores = {n: (params[n] - reference[n]).abs() if reference is not None else params[n].abs() for n in names}
    return masks_lib.top_k(model, scores, density)


def exclusive(subnetworks: Mapping[str, Mask]) -> dict[str, Mask]:
    """Each mask minus every entry that any other mask also selects."""
    if not isinstance(subnetworks, Mapping) or len(subnetworks) < 2:
        raise ValueError("subnetworks must map at least two names to masks")
    first = next(iter(subnetworks.values()))
    for key, m in subnetworks.items():
        check_mask(first, m, f"subnetworks['{key}']")
        if set(m) != set(first):
            raise ValueError(f"subnetworks['{key}'] covers different tensors from the first mask")
    out = {}
    for key, m in subnetworks.items():
        others = [o for k, o in subnetworks.items() if k != key]
        out[key] = {n: t & ~torch.stack([o[n] for o in others]).any(0) for n, t in m.items()}
    return out


def whole_units(model: nn.Module, mask: Mask) -> Mask:
    """Close a mask over units: every output unit with a selected weight or bias gets its whole fan-in.

    A unit is one output of a module with a weight of two or more dimensions (a row of a
    linear layer's weight, an output channel of a convolution) and its bias entry.
    Tensors of other modules are returned unchanged.
    """
    params = named_params(model)
    out = {n: m.clone() for n, m in check_mask(params, mask).items()}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        weight, bias = f"{prefix}weight", f"{prefix}bias"
        if weight not in out or out[weight].ndim < 2:
            continue
        rows = out[weight].flatten(1).any(1)
        if bias in out:
            rows |= out[bias]
            out[bias] = rows.clone()
        out[weight][rows] = True
    return out


@dataclass
class LearnedMask:
    """A learned subnetwork: the mask, its density over the searched tensors, and the training curves."""

    mask: Mask
    names: list[str]
    density: float
    per_tensor_density: dict[str, float]
    task_loss: list[float]
    expected_density: list[float]


def learn_mask(
    model: nn.Module,
    loss_fn: Callable[[Callable[..., torch.Tensor]], torch.Tensor],
    *,
    names: Sequence[str] | None = None,
    steps: int = 500,
    lr: float = 0.05,
    sparsity: float = 1.0,
    init_logit: float = 3.0,
    temperature: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> LearnedMask:
    """Learn a binary mask over the tensors ``names`` (default all) with the weights frozen.

    ``loss_fn(forward)`` returns the task loss of the masked network, where ``forward(*args)``
    runs the model with the sampled mask applied (``loss_fn`` draws its own batch).
    ``sparsity`` weighs the expected density against the task loss; logits start at
    ``init_logit`` (keep probability sigmoid(3) = 0.95: the full network, which solves the
    task) and are trained with Adam at ``lr``. Deterministic given ``seed``. The model's
    parameters are never modified.
    """
    check_module(model)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (forward -> loss), got {type(loss_fn).__name__}")
    steps = check_positive_int(steps, "steps")
    lr = check_finite_nonnegative(lr, "lr")
    sparsity = check_finite_nonnegative(sparsity, "sparsity")
    temperature = check_finite_nonnegative(temperature, "temperature")
    if temperature == 0:
        raise ValueError("temperature must be > 0")
    if isinstance(init_logit, bool) or not isinstance(init_logit, (int, float)) or not math.isfinite(init_logit):
        raise ValueError(f"init_logit must be a finite number, got {init_logit!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    names = _check_names(model, names)
    params = {n: p.detach() for n, p in named_params(model).items()}
    devices = {params[n].device for n in names}
    if len(devices) > 1:
        raise ValueError(f"the tensors in names must be on one device, got {sorted(map(str, devices))}")
    # One flat vector of logits for all searched entries: one sampling and one Adam update per step.
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    logits = torch.full((sum(sizes),), float(init_logit), device=devices.pop(), requires_grad=True)
    gen = torch.Generator(device=logits.device).manual_seed(seed)

    def loss_of_batch(model: nn.Module, batch: None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # The trained tensor is ``logits`` (the model stays frozen): sample a mask, run the masked model.
        u = torch.rand(logits.shape, generator=gen, device=logits.device).clamp(1e-6, 1 - 1e-6)
        soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)
        sampled = (soft > 0.5).to(soft.dtype) + soft - soft.detach()  # straight-through estimator
        masked = dict(params)
        for n, m, shape in zip(names, sampled.split(sizes), shapes):
            masked[n] = params[n] * m.view(shape).to(params[n].dtype)

        def forward(*args: object, **kwargs: object) -> torch.Tensor:
            return functional_call(model, masked, args, kwargs)

        task = loss_fn(forward)
        expected = torch.sigmoid(logits).mean()
        return task + sparsity * expected, {"task": task.detach(), "expected": expected.detach()}

    history = fit(model, torch.optim.Adam([logits], lr=lr), loss_of_batch, steps, progress=progress,
                  desc="learning mask")
    mask = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in params.items()}
    for n, logit, shape in zip(names, logits.detach().split(sizes), shapes):
        mask[n] = (logit > 0).view(shape)
    total = sum(sizes)
    kept = sum(int(mask[n].sum()) for n in names)
    return LearnedMask(
        mask=mask,
        names=names,
        density=kept / total,
        per_tensor_density={n: float(mask[n].float().mean()) for n in names},
        task_loss=history["task"],
        expected_density=history["expected"],
    )
