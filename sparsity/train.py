"""The one training loop of the lab: ``fit``, its learning-rate schedules and its hooks.

Every experiment, from the teacher-student MLP to GPT pretraining, trains the same way:
for each step, set the schedule's learning rate, take the step's batch, compute the loss,
back-propagate, let the optimizer step, then run the hooks. What differs between
experiments is *data* (which batch, which loss) and *what happens after a step* (a
proximal pull toward the start, a mask re-selection, an evaluation, a checkpoint), so
those are the arguments; the loop itself is written once, in the style of nanoGPT's
single training loop (Karpathy 2022).

A hook (the :class:`Hook` protocol) is an object with at least one of the methods
``before_step(state)`` (after the backward, before the optimizer moves: the gradients are
there, e.g. for RigL's regrowth), ``after_step(state)`` and ``on_end(state)``; :class:`FitState`
says what a hook can read. ``fit`` refuses anything else before the first step: a plain function
(wrap it as :class:`EachStep` or :class:`Every`), an object with none of the methods, or one whose
method name is a near miss of a hook method it lacks (``after_stpe``), which would never be called.
The hooks the lab needs are here: :class:`ProximalL1` and :class:`ProximalNuclear`
(the penalty toward the start as a proximal step, Parikh & Boyd 2014; after Adam with
Adam's own step scale, Yun et al. 2021, ProxGen), :class:`Reselect` (periodic mask
re-selection by fresh scores, LIFT's principal weights, Liu et al. 2025), :class:`RigL`
(drop/grow by movement and gradient, Evci et al. 2020), :class:`EpsBeforeBiasCorrection`
(Adam's epsilon where Kingma & Ba and LIFT put it) and :class:`Every` (evaluate, log or
checkpoint every N steps).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsity.dynamic import ROUNDINGS, rigl_swap
from sparsity.regularize import prox_l1_to_init_, prox_nuclear_to_init_
from sparsity.validate import Mask, TensorDict, check_finite_nonnegative, check_nonnegative_int, check_positive_int

Schedule = Callable[[int], float]
"""A learning-rate schedule: step -> learning rate."""

LossOfBatch = Callable[[nn.Module, Any], "torch.Tensor | tuple[torch.Tensor, Mapping[str, torch.Tensor]]"]
"""``loss_of_batch(model, batch)``: the scalar loss to minimise, or ``(loss, extra)`` where
``extra`` maps names to scalar tensors recorded beside it (e.g. the task loss without a penalty)."""


def constant(lr: float) -> Schedule:
    """The same learning rate at every step."""
    lr = check_finite_nonnegative(lr, "lr")
    return lambda step: lr


def cosine(lr: float, steps: int, warmup: int = 0, floor: float = 0.0) -> Schedule:
    """Linear warm-up over ``warmup`` steps, then cosine decay (Loshchilov & Hutter 2017)
    from ``lr`` to ``floor * lr`` at step ``steps`` (and ``floor * lr`` after it).

    ``floor=0`` is the plain half-cosine ``lr * (1 + cos(pi * t / steps)) / 2`` of the toys;
    GPT pretraining and fine-tuning decay to ``floor=0.1`` after a warm-up.
    """
    lr = check_finite_nonnegative(lr, "lr")
    steps = check_positive_int(steps, "steps")
    warmup = check_nonnegative_int(warmup, "warmup")
    floor = check_finite_nonnegative(floor, "floor")
    if floor > 1:
        raise ValueError(f"floor must be in [0, 1], got {floor}")

    def schedule(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        span = max(1, steps - warmup)
        if floor == 0.0:  # written as the toys have always computed it, for the same bits
            return lr * 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))
        progress = (step - warmup) / span
        return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    return schedule


@dataclass
class FitState:
    """What a hook sees: the step just taken (0-based), the model, the optimizer, the step's
    loss tensor and extra values, the learning rate it ran at, and the history so far."""

    step: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss: torch.Tensor | None = None
    extra: Mapping[str, torch.Tensor] = field(default_factory=dict)
    lr: float | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    bar: Any = None


def _batch_source(batches: Callable[[int], Any] | Iterable[Any] | None) -> Callable[[int], Any]:
    if batches is None:
        return lambda step: None
    if callable(batches):
        return batches
    if isinstance(batches, Iterable):
        iterator = iter(batches)

        def next_batch(step: int) -> Any:
            try:
                return next(iterator)
            except StopIteration:
                raise ValueError(f"batches ran out at step {step}: give at least as many batches as steps, "
                                 "or a function step -> batch") from None

        return next_batch
    raise TypeError(f"batches must be a function step -> batch, an iterable of batches or None, "
                    f"got {type(batches).__name__}")


HOOK_METHODS = ("before_step", "after_step", "on_end")
"""The methods ``fit`` calls on a hook, in the order of a step."""


class Hook(Protocol):
    """What ``fit`` calls on a hook. A hook defines *at least one* of these methods (the protocol lists
    all three; a missing one is simply not called), each taking the :class:`FitState`."""

    def before_step(self, state: FitState) -> None:
        """After the backward, before the optimizer moves."""

    def after_step(self, state: FitState) -> None:
        """After the optimizer's step."""

    def on_end(self, state: FitState) -> None:
        """Once, after the last step."""


def check_hooks(hooks: Iterable[Any]) -> list[Any]:
    """The hooks as a list, each checked to be a :class:`Hook` ``fit`` will actually call: a plain
    function, an object with no hook method, a hook method that is not callable, or a method named
    like a hook method the object lacks (a misspelling, which would silently never run) is a TypeError."""
    if isinstance(hooks, (str, bytes)) or not isinstance(hooks, Iterable):
        raise TypeError(f"hooks must be a list of hook objects, got {type(hooks).__name__}")
    checked = list(hooks)
    for i, hook in enumerate(checked):
        what = f"hooks[{i}] ({type(hook).__name__})"
        present = [m for m in HOOK_METHODS if getattr(hook, m, None) is not None]
        not_callable = [m for m in present if not callable(getattr(hook, m))]
        if not_callable:
            raise TypeError(f"{what}.{not_callable[0]} is not a method")
        lacking = [m for m in HOOK_METHODS if m not in present]
        for attr in dir(hook):
            if attr.startswith("_") or not callable(getattr(hook, attr, None)):
                continue
            near = difflib.get_close_matches(attr, lacking, n=1, cutoff=0.8)
            if near:
                raise TypeError(f"{what} has a method '{attr}', which fit never calls: did you mean '{near[0]}'? "
                                f"(hook methods: {', '.join(HOOK_METHODS)})")
        if not present:
            if callable(hook):
                raise TypeError(f"{what} is a function, not a hook: wrap it as EachStep(fn) to call it after every "
                                "step, or Every(n, fn) after every n-th")
            raise TypeError(f"{what} has none of the hook methods {', '.join(HOOK_METHODS)}: fit would never call it")
    return checked


def _checked_lr(lr: object, step: int, schedule: Schedule) -> float:
    """The learning rate ``schedule`` returned for ``step``, refused unless a finite number >= 0."""
    if isinstance(lr, bool) or not isinstance(lr, Real) or not math.isfinite(lr) or lr < 0:
        name = getattr(schedule, "__qualname__", type(schedule).__name__)
        raise ValueError(f"the schedule {name} returned the learning rate {lr!r} at step {step}: it must be a "
                         "finite number >= 0 (nothing was trained at this step)")
    return float(lr)


def _checked_loss(out: object, step: int) -> tuple[torch.Tensor, Mapping[str, Any]]:
    """``loss_of_batch``'s output split into (scalar loss tensor, extra values), with a TypeError
    naming ``loss_of_batch`` for anything else (a float loss has no gradient to follow)."""
    if isinstance(out, tuple):
        if len(out) != 2:
            raise TypeError(f"loss_of_batch returned a tuple of {len(out)} at step {step}: return a loss or "
                            "(loss, extra)")
        loss, extra = out
        if not isinstance(extra, Mapping):
            raise TypeError(f"loss_of_batch returned (loss, {type(extra).__name__}) at step {step}: extra must map "
                            "names to scalar values")
    else:
        loss, extra = out, {}
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
        got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise TypeError(f"loss_of_batch must return a scalar floating tensor (or (loss, extra)); at step {step} it "
                        f"returned {got}")
    if not loss.requires_grad:
        raise TypeError(f"loss_of_batch returned a loss with no gradient at step {step} (computed under no_grad, "
                        "detached, or every parameter frozen?)")
    for key, v in extra.items():
        scalar = isinstance(v, torch.Tensor) and v.numel() == 1
        if not scalar and (isinstance(v, bool) or not isinstance(v, Real)):
            got = f"a tensor of shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
            raise TypeError(f"loss_of_batch's extra value '{key}' at step {step} is {got}: extra values must be "
                            "scalars (one number per step)")
    return loss, extra


def _call(hooks: Sequence[Any], method: str, state: FitState) -> None:
    for hook in hooks:
        fn = getattr(hook, method, None)
        if fn is not None:
            fn(state)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_of_batch: LossOfBatch,
    steps: int,
    *,
    batches: Callable[[int], Any] | Iterable[Any] | None = None,
    schedule: Schedule | None = None,
    hooks: Iterable[Any] = (),
    start: int = 0,
    progress: bool = False,
    desc: str = "training",
    postfix_every: int = 50,
) -> dict[str, list[float]]:
    """Train ``model`` for steps ``start .. steps - 1``; return the history (``"loss"`` and any
    extra values ``loss_of_batch`` returns, one float per step).

    ``batches`` gives step ``t``'s batch: a function ``t -> batch`` (deterministic data: a
    resumed run sees the same batches), an iterable consumed one per step, or None for
    full-batch losses (``loss_of_batch(model, None)``). ``schedule(t)`` sets every param
    group's learning rate before step ``t`` (None keeps the optimizer's own). The loop
    does not call ``model.train()``: the caller decides the mode. A loss that is not
    finite stops the run with an error naming the step, so a diverged run never passes
    for a trained one.
    """
    steps = check_nonnegative_int(steps, "steps")
    start = check_nonnegative_int(start, "start")
    if start > steps:
        raise ValueError(f"start must be <= steps={steps}, got {start}")
    if not callable(loss_of_batch):
        raise TypeError(f"loss_of_batch must be a function (model, batch) -> loss, got {type(loss_of_batch).__name__}")
    postfix_every = check_positive_int(postfix_every, "postfix_every")
    batch_at = _batch_source(batches)
    hooks = check_hooks(hooks)
    if schedule is not None and not callable(schedule):
        raise TypeError(f"schedule must be a function step -> learning rate, got {type(schedule).__name__}")
    history: dict[str, list[float]] = {"loss": []}
    state = FitState(step=start, model=model, optimizer=optimizer, history=history)
    bar = tqdm(range(start, steps), desc=desc, disable=not progress, leave=False, initial=start, total=steps)
    state.bar = bar
    for step in bar:
        if schedule is not None:
            lr = _checked_lr(schedule(step), step, schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
        loss, extra = _checked_loss(loss_of_batch(model, batch_at(step)), step)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"the loss is {value} at step {step} (lr {optimizer.param_groups[0]['lr']:g}): "
                                     "the run diverged (stopped before this step's update and hooks: nothing of it was applied)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.step, state.loss, state.extra = step, loss, extra
        state.lr = optimizer.param_groups[0]["lr"]
        _call(hooks, "before_step", state)
        optimizer.step()
        _call(hooks, "after_step", state)
        history["loss"].append(value)
        for key, v in extra.items():
            history.setdefault(key, []).append(v.item() if isinstance(v, torch.Tensor) else float(v))
        if progress and step % postfix_every == 0:
            bar.set_postfix(loss=f"{value:.3f}")
    _call(hooks, "on_end", state)
    return history


class ProximalL1:
    """After each step, soft-threshold every tensor of ``reference`` toward it: the proximal step
    of ``lam * ||theta - theta_0||_1`` (entries the task does not push hard enough land exactly
    on their start). With an Adam-type optimizer the threshold is ``lam`` times Adam's own
    per-entry step scale (ProxGen, Yun et al. 2021), else ``lam`` times the learning rate."""

    def __init__(self, reference: TensorDict, lam: float) -> None:
        self.reference = reference
        self.lam = check_finite_nonnegative(lam, "lam")

    def after_step(self, state: FitState) -> None:
        if self.lam == 0:
            return
        opt = state.optimizer
        if hasattr(opt, "adaptive_lr"):
            thresholds = {n: self.lam * a for n, a in opt.adaptive_lr().items() if n in self.reference}
            prox_l1_to_init_(state.model, {n: self.reference[n] for n in thresholds}, thresholds)
        else:
            prox_l1_to_init_(state.model, self.reference, self.lam * opt.param_groups[0]["lr"])


class ProximalNuclear:
    """After each step, shrink the singular values of every matrix's change from ``reference``
    by ``lam * lr``: the proximal step of the nuclear norm (low-rank updates; Cai et al. 2010)."""

    def __init__(self, reference: TensorDict, lam: float) -> None:
        self.reference = reference
        self.lam = check_finite_nonnegative(lam, "lam")

    def after_step(self, state: FitState) -> None:
        if self.lam > 0:
            prox_nuclear_to_init_(state.model, self.reference, self.lam * state.lr)


class Reselect:
    """Every ``every`` steps (after the optimizer's step), hand ``select(model, step)``'s new mask
    to ``optimizer.reselect`` (``CompactAdamW``): periodic re-selection as LIFT does for its
    principal weights (Liu et al. 2025) or RigL for drop/grow (Evci et al. 2020)."""

    def __init__(self, every: int, select: Callable[[nn.Module, int], Mask]) -> None:
        self.every = check_positive_int(every, "every")
        if not callable(select):
            raise TypeError(f"select must be a function (model, step) -> mask, got {type(select).__name__}")
        self.select = select

    def after_step(self, state: FitState) -> None:
        if (state.step + 1) % self.every == 0:
            if not hasattr(state.optimizer, "reselect"):
                raise TypeError(f"Reselect needs an optimizer with reselect(mask) (CompactAdamW), "
                                f"got {type(state.optimizer).__name__}")
            state.optimizer.reselect(self.select(state.model, state.step + 1))


class RigL:
    """RigL's drop/grow (Evci et al. 2020; for fine-tuning, SpIEL, Ansell et al. 2024) every ``every``
    steps, after the backward and before the optimizer moves, so the dense gradient of the unselected
    entries is there to choose what grows (``sparsity.dynamic.rigl_swap``).

    Drop: the selected entries that moved least from ``reference``; grow: the unselected ones with
    the largest gradient. The optimizer must re-select (``CompactAdamW.reselect``); a partly selected
    tensor without a gradient is an error (values-only gradients give none).

    Followed from the paper and its code (google-research/rigl ``SparseRigLOptimizer``, and the
    rigl-torch port), each a documented option with the paper's setting as the default:

    - ``end``: swaps happen at steps ``t = every, 2 * every, ...`` with ``t <= end * steps`` (RigL's
      ``end_step``, 0.75 of training in the paper), and the share swapped decays as RigL's cosine over
      that span, ``fraction * (1 + cos(pi * t / (end * steps))) / 2`` (``drop_fraction_anneal="cosine"``;
      ``fraction``, the paper's alpha, 0.3);
    - ``update_on_swap=False``: a swap step changes the mask *instead of* the weights, as RigL's
      optimizer runs either the mask update or the gradient step. The hook then removes every
      gradient after swapping, so the optimizer (any torch optimizer skips a parameter without a
      gradient) leaves every weight, moment and step count as it was; the grown entries start the
      next step with zero moments (``CompactAdamW.reselect``). The loop's step (and the learning-rate
      schedule) still advances, where RigL's global step does too;
    - ``rounding="floor"``: counts are ``floor(share * k)``, as RigL's int cast (``sparsity.dynamic.ROUNDINGS``).

    :data:`RIGL_LAB_2025` is the lab's first RigL (swaps to the last step with the cosine over all
    ``steps``, the optimizer steps on swap steps too, counts rounded): the committed RigL rows were
    made with it. Simplified from the paper: RigL drops by weight magnitude and may regrow an entry it
    just dropped, grows with zero weights into a sparse network; here, fine-tuning, the drop score is
    the change from ``reference``, a just-dropped entry cannot regrow in the same swap, and a grown
    entry starts from its current (pretrained) value, i.e. a zero change.
    """

    def __init__(self, every: int, steps: int, reference: Mapping[str, torch.Tensor], fraction: float = 0.3, *,
                 end: float = 0.75, update_on_swap: bool = False, rounding: str = "floor") -> None:
        self.every = check_positive_int(every, "every")
        self.steps = check_positive_int(steps, "steps")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        if isinstance(end, bool) or not isinstance(end, (int, float)) or not 0.0 < end <= 1.0:
            raise ValueError(f"end must be a share of the steps in (0, 1], got {end!r}")
        if not isinstance(update_on_swap, bool):
            raise TypeError(f"update_on_swap must be a bool, got {type(update_on_swap).__name__}")
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
        self.reference, self.fraction = reference, float(fraction)
        self.end_step = end * self.steps
        self.update_on_swap, self.rounding = update_on_swap, rounding

    def swaps_at(self, step: int) -> bool:
        """Whether the mask changes before the optimizer's step ``step``."""
        return step > 0 and step % self.every == 0 and step <= self.end_step

    def before_step(self, state: FitState) -> None:
        step = state.step
        if not self.swaps_at(step):
            return
        if not hasattr(state.optimizer, "reselect"):
            raise TypeError(f"RigL needs an optimizer with reselect(mask) (CompactAdamW), "
                            f"got {type(state.optimizer).__name__}")
        mask = state.optimizer.mask
        params = dict(state.model.named_parameters())
        partial = [n for n, m in mask.items() if 0 < int(m.sum()) < m.numel()]
        missing = [n for n in partial if params[n].grad is None]
        if missing:
            raise ValueError(f"RigL grows by the dense gradient, but '{missing[0]}' has none at step {step}")
        deltas = {n: params[n].detach() - self.reference[n] for n in partial}
        grads = {n: params[n].grad for n in partial}
        share = self.fraction * (1 + math.cos(math.pi * step / self.end_step)) / 2
        state.optimizer.reselect(rigl_swap(mask, deltas, grads, share, self.rounding))
        if not self.update_on_swap:
            state.optimizer.zero_grad(set_to_none=True)


RIGL_PAPER = dict(end=0.75, update_on_swap=False, rounding="floor")
""":class:`RigL`'s options as Evci et al. (2020) run it: its defaults."""
RIGL_LAB_2025 = dict(end=1.0, update_on_swap=True, rounding="round")
""":class:`RigL`'s options as the lab first ran it (the committed RigL rows of benchmarks/results)."""
RIGL_SETTINGS = {"paper": RIGL_PAPER, "lab-2025": RIGL_LAB_2025}
"""The named settings of :class:`RigL`'s options (``python -m scaleup.compare --rigl``)."""


class EpsBeforeBiasCorrection:
    """Adam's epsilon added to ``sqrt(v)`` *before* the bias correction, as in Kingma & Ba (2015)'s
    efficient form of Adam and in LIFT's optimizer (Liu et al. 2025): ``theta -= lr * sqrt(1 - b2^t) /
    (1 - b1^t) * m / (sqrt(v) + eps)``. PyTorch adds eps *after* it (``m_hat / (sqrt(v_hat) + eps)``);
    the two agree exactly when torch's eps at step ``t`` is ``eps / sqrt(1 - b2^t)``, which this hook
    sets in every param group before each step. The step ``t`` is the loop's (a fresh optimizer, or one
    resumed with its state at the loop's step).
    """

    def __init__(self, eps: float) -> None:
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
            raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
        self.eps = float(eps)

    def before_step(self, state: FitState) -> None:
        t = state.step + 1
        for group in state.optimizer.param_groups:
            group["eps"] = self.eps / math.sqrt(1 - group["betas"][1] ** t)


class Every:
    """Call ``fn(state)`` after every ``every``-th step (steps ``every - 1``, ``2 * every - 1``, ...),
    and once more at the end if ``at_end``: evaluation, logging, checkpoints."""

    def __init__(self, every: int, fn: Callable[[FitState], None], at_end: bool = False) -> None:
        self.every = check_positive_int(every, "every")
        if not callable(fn):
            raise TypeError(f"fn must be a function of the fit state, got {type(fn).__name__}")
        self.fn, self.at_end = fn, at_end

    def after_step(self, state: FitState) -> None:
        if (state.step + 1) % self.every == 0:
            self.fn(state)

    def on_end(self, state: FitState) -> None:
        if self.at_end and (state.step + 1) % self.every != 0:
            self.fn(state)


class EachStep:
    """Call ``fn(state)`` after every step (a metric recorded along training, a callback)."""

    def __init__(self, fn: Callable[[FitState], None]) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be a function of the fit state, got {type(fn).__name__}")
        self.fn = fn

    def after_step(self, state: FitState) -> None:
        self.fn(state)
