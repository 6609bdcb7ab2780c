"""Check functions for the assignments, in the ARENA style, and the questions they grade.

Each check function takes the student's function, runs it on fixed and random cases and
compares the result with the lab's own code (``sparsity/``), raising an ``AssertionError``
that names the failing check and case::

    from lessons.assignments.checks import check_magnitude_mask
    check_magnitude_mask(magnitude_mask)      # "all 4 visible checks of magnitude_mask passed"

The same :class:`Check` objects are what the autograder (``python -m lessons.grade``) scores:
there the student's function runs in a sandboxed process on the same cases, only its
outputs come back, and ``verify`` compares them with the reference computed by the grader.
The hidden checks live in ``lessons/assignments/hidden.py``, which students do not need.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch
from sparsity import masks
from sparsity.criteria import low_rank_approximation as lab_low_rank_approximation
from sparsity.metrics import mask_overlap, update_norms
from sparsity.metrics import update_sparsity as lab_update_sparsity
from sparsity.optim import MaskedAdamW
from sparsity.regularize import l1_to_init as lab_l1_to_init
from torch import nn
from toys.teacher_student import make_mlp

from lessons.assignments.sandbox import run_case, sanitize

Verify = Callable[["Case", Any], "str | None"]


@dataclass(frozen=True)
class Case:
    """One call of the student's function: ``run_case(fn, mode, args, kwargs)``."""

    name: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    mode: str = "call"


@dataclass(frozen=True)
class Check:
    """A named property worth ``points``: it holds when ``verify`` accepts the output of every case."""

    id: str
    title: str
    points: int
    cases: Callable[[], list[Case]]
    verify: Verify
    hidden: bool = False


@dataclass(frozen=True)
class Question:
    """A function the student implements, graded automatically by its checks.

    ``returns`` names the structure of its output (``lessons.grading.wire.KINDS``), which the
    grader checks before comparing.
    """

    id: str
    function: str
    returns: str
    checks: tuple[Check, ...]

    @property
    def points(self) -> int:
        return sum(c.points for c in self.checks)


@dataclass(frozen=True)
class HandGraded:
    """An open question: the grader lists it (0 automatic points); a person grades the answer."""

    id: str
    prompt: str


@dataclass(frozen=True)
class Assignment:
    name: str
    title: str
    questions: tuple[Question, ...]
    hand_graded: tuple[HandGraded, ...]

    @property
    def points(self) -> int:
        return sum(q.points for q in self.questions)


# ---------------------------------------------------------------- comparing outputs


def mlp(widths: tuple[int, ...], seed: int) -> nn.Sequential:
    """A ReLU MLP with layers fc1, fc2, ... (the teacher-student toy's own constructor)."""
    return make_mlp(widths, "relu", seed)


def moved(model: nn.Module, seed: int, scale: float = 0.1, keep: tuple[str, ...] = ()) -> tuple[nn.Module, dict]:
    """(fine-tuned model, reference): the reference is the model before a random update."""
    reference = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n not in keep:
                p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model, reference


def _is_mask_of(model: nn.Module, out: Any) -> str | None:
    if not isinstance(out, dict):
        return f"expected a dict from parameter name to bool tensor, got {type(out).__name__}"
    for name, p in model.named_parameters():
        if name not in out:
            return f"the mask has no entry for '{name}' (every parameter needs one; biases all False)"
        m = out[name]
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            return f"mask['{name}'] must be a bool tensor, got {getattr(m, 'dtype', type(m).__name__)}"
        if m.shape != p.shape:
            return f"mask['{name}'] has shape {tuple(m.shape)}, the parameter {tuple(p.shape)}"
    extra = set(out) - {n for n, _ in model.named_parameters()}
    if extra:
        return f"the mask has keys that are not parameters: {sorted(extra)}"
    return None


def _same_mask(expected: dict, out: Any, model: nn.Module) -> str | None:
    problem = _is_mask_of(model, out)
    if problem:
        return problem
    for name, want in expected.items():
        got = out[name]
        if not torch.equal(got, want):
            return (
                f"'{name}' selects {int(got.sum())} entries, the lab {int(want.sum())}; "
                f"{int((got ^ want).sum())} entries differ"
            )
    return None


def _budget(density: float, n: int) -> int:
    return max(1, round(density * n))


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.ndim >= 2}


def _close(got: Any, want: torch.Tensor, what: str, rtol: float = 1e-5, atol: float = 1e-6) -> str | None:
    if not isinstance(got, torch.Tensor):
        return f"{what}: expected a tensor, got {type(got).__name__}"
    if got.shape != want.shape:
        return f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    got, want = got.double(), want.double()
    if not torch.allclose(got, want, rtol=rtol, atol=atol):
        err = (got - want).abs().max().item()
        return f"{what}: differs from the lab's result by up to {err:.3g}"
    return None


def _number(got: Any, want: float, what: str, tol: float = 1e-6) -> str | None:
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return f"{what}: expected a number, got {type(got).__name__}"
    if not math.isclose(got, want, rel_tol=tol, abs_tol=tol):
        return f"{what}: got {got:.6g}, expected {want:.6g}"
    return None


# ---------------------------------------------------------------- assignment 1: masks


def magnitude_reference(case: Case) -> dict:
    model, density = case.args[:2]
    return masks.magnitude(model, density, scope=case.kwargs.get("scope", "global"))


def random_reference(case: Case) -> dict:
    model, density = case.args[:2]
    return masks.random(model, density, case.kwargs.get("seed", 0), scope=case.kwargs.get("scope", "global"))


def verify_magnitude(case: Case, out: Any) -> str | None:
    return _same_mask(magnitude_reference(case), out, case.args[0])


def verify_random(case: Case, out: Any) -> str | None:
    return _same_mask(random_reference(case), out, case.args[0])


def mask_cases(
    densities: tuple[float, ...], scopes: tuple[str, ...], widths=(6, 7, 5), model_seed=0, **extra
) -> list[Case]:
    """A case per (density, scope) on a fresh MLP; ``extra`` (e.g. ``seed``) goes to the function."""
    tag = "".join(f", {k}={v}" for k, v in extra.items())
    return [
        Case(f"widths={widths}, density={d}, scope={s}{tag}", (mlp(widths, model_seed), d), {"scope": s, **extra})
        for d in densities for s in scopes
    ]


def verify_structure(case: Case, out: Any) -> str | None:
    model = case.args[0]
    problem = _is_mask_of(model, out)
    if problem:
        return problem
    for name, p in model.named_parameters():
        if p.ndim < 2 and out[name].any():
            return f"'{name}' is a bias: it must stay frozen (all False)"
    return None


def verify_largest(case: Case, out: Any) -> str | None:
    """Every selected |w| is >= every unselected |w| in the same scope, and each scope selects
    some entries but not all (an empty or a full selection says nothing about the order)."""
    problem = verify_structure(case, out)
    if problem:
        return problem
    weights = _weights(case.args[0])
    groups = [list(weights)] if case.kwargs["scope"] == "global" else [[n] for n in weights]
    for names in groups:
        chosen = torch.cat([weights[n].abs().flatten()[out[n].flatten()] for n in names])
        left = torch.cat([weights[n].abs().flatten()[~out[n].flatten()] for n in names])
        if not chosen.numel() or not left.numel():
            return f"in {names}, {'no' if not chosen.numel() else 'every'} entry is selected at density {case.args[1]}"
        if chosen.min() < left.max():
            return f"in {names}, an entry with |w| = {left.max():.4f} is left out while one with {chosen.min():.4f} is selected"
    return None


def verify_budget(case: Case, out: Any) -> str | None:
    problem = verify_structure(case, out)
    if problem:
        return problem
    density, weights = case.args[1], _weights(case.args[0])
    if case.kwargs["scope"] == "global":
        n, got = sum(w.numel() for w in weights.values()), sum(int(out[k].sum()) for k in weights)
        if got != _budget(density, n):
            return f"selects {got} of {n} weight entries; the budget is max(1, round({density} * {n})) = {_budget(density, n)}"
        return None
    for name, w in weights.items():
        got = int(out[name].sum())
        if got != _budget(density, w.numel()):
            return f"'{name}' selects {got} of {w.numel()}; the budget is {_budget(density, w.numel())}"
    return None


def verify_structure_and_budget(case: Case, out: Any) -> str | None:
    """The structure (a property every mask has, even an empty one) paired with the budget (a value)."""
    return verify_structure(case, out) or verify_budget(case, out)


# ---------------------------------------------------------------- assignment 2: masked AdamW


def adamw_reference(case: Case) -> torch.Tensor:
    """Run the lab's MaskedAdamW on one named tensor over the case's gradients."""
    param, grads, mask = case.args
    p = nn.Parameter(param.clone())
    opt = MaskedAdamW([("w", p)], mask={"w": mask.clone()}, **case.kwargs)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


def adamw_case(name: str, shape: tuple[int, int], steps: int, density: float, seed: int, **hyper) -> Case:
    gen = torch.Generator().manual_seed(seed)
    param = torch.randn(shape, generator=gen)
    grads = [torch.randn(shape, generator=gen) for _ in range(steps)]
    mask = torch.rand(shape, generator=gen) < density
    return Case(name, (param, grads, mask), dict(hyper), mode="steps")


def verify_frozen(case: Case, out: Any) -> str | None:
    param, _, mask = case.args
    if not isinstance(out, torch.Tensor) or out.shape != param.shape:
        return f"expected the new parameter, a tensor of shape {tuple(param.shape)}"
    if out.dtype != param.dtype:
        return f"the new parameter has dtype {out.dtype}, expected {param.dtype}"
    moved = ~mask & (out != param)
    if moved.any():
        i = tuple(moved.nonzero()[0].tolist())
        return f"{int(moved.sum())} frozen entries changed, e.g. {i}: {param[i].item():.9g} -> {out[i].item():.9g}"
    return None


def verify_trainable(case: Case, out: Any) -> str | None:
    param, _, mask = case.args
    want = adamw_reference(case)
    if not isinstance(out, torch.Tensor) or out.shape != param.shape:
        return f"expected the new parameter, a tensor of shape {tuple(param.shape)}"
    return _close(out[mask], want[mask], "trainable entries")


def verify_adamw(case: Case, out: Any) -> str | None:
    return verify_trainable(case, out) or verify_frozen(case, out)


# ---------------------------------------------------------------- assignment 3: updates


def verify_l1_value(case: Case, out: Any) -> str | None:
    model, reference = case.args
    want = lab_l1_to_init(model, reference).item()
    if not isinstance(out, torch.Tensor) or out.numel() != 1:
        return f"expected a scalar tensor, got {type(out).__name__}"
    return _number(out.item(), want, "L1 distance", tol=1e-5)


def verify_l1_grad(case: Case, out: Any) -> str | None:
    """The gradient, paired with the value it is the gradient of."""
    model, reference = case.args
    if not isinstance(out, dict) or "grads" not in out:
        return "could not differentiate the result"
    problem = verify_l1_value(case, out.get("value"))
    if problem:
        return problem
    probe = copy.deepcopy(model)
    lab_l1_to_init(probe, reference).backward()
    for name, p in probe.named_parameters():
        want = torch.zeros_like(p) if p.grad is None else p.grad
        got = out["grads"].get(name)
        got = torch.zeros_like(p) if got is None else got
        problem = _close(got, want, f"gradient of '{name}'")
        if problem:
            return problem + " (the gradient of |theta - ref| is sign(theta - ref))"
    return None


def l1_cases(subset: bool, seeds: tuple[int, ...] = (0,), widths=(5, 4, 3)) -> list[Case]:
    cases = []
    for seed in seeds:
        model, reference = moved(mlp(widths, seed), seed + 1, keep=("fc1.bias",))
        if subset:
            reference = {n: r for n, r in reference.items() if n.startswith("fc2")}
        cases.append(Case(f"widths={widths}, seed={seed}, reference keys={sorted(reference)}", (model, reference)))
    return cases


def shares_reference(case: Case) -> dict[str, float]:
    model, reference = case.args
    return {n: u.share for n, u in update_norms(model, reference).items()}


def verify_shares(case: Case, out: Any) -> str | None:
    want = shares_reference(case)
    if not isinstance(out, dict) or set(out) != set(want):
        return f"expected a dict with keys {sorted(want)}, got {sorted(out) if isinstance(out, dict) else type(out).__name__}"
    for name, value in want.items():
        problem = _number(out[name], value, f"share of '{name}'", tol=1e-5)
        if problem:
            return problem
    return None


def sparsity_reference(case: Case) -> tuple[float, dict[str, float]]:
    result = lab_update_sparsity(*case.args, **case.kwargs)
    return result.overall, result.per_tensor


def verify_sparsity(case: Case, out: Any) -> str | None:
    overall, per_tensor = sparsity_reference(case)
    if not isinstance(out, (tuple, list)) or len(out) != 2 or not isinstance(out[1], dict):
        return "expected a pair (overall, per_tensor dict)"
    problem = _number(out[0], overall, "overall update sparsity")
    if problem:
        return problem
    if set(out[1]) != set(per_tensor):
        return f"per_tensor has keys {sorted(out[1])}, expected {sorted(per_tensor)}"
    for name, value in per_tensor.items():
        problem = _number(out[1][name], value, f"update sparsity of '{name}'")
        if problem:
            return problem
    return None


def probe_reference(case: Case) -> str:
    """The weight matrix with the largest share of the L1 update, from the lab's update_norms."""
    model, reference = case.args
    shares = {n: u.share for n, u in update_norms(model, reference).items() if reference[n].ndim >= 2}
    return max(shares, key=shares.get)


def only_moved(layer: str) -> Case:
    """A 5-4-3 MLP in which only ``layer`` moved: each layer in turn, so no constant name passes."""
    keep = tuple(f"{other}.{kind}" for other in ("fc1", "fc2", "fc3") if other != layer for kind in ("weight", "bias"))
    return Case(f"5-4-3 MLP where only {layer} moved", moved(mlp((5, 4, 3), 1), 2, keep=keep))


def verify_probe(case: Case, out: Any) -> str | None:
    want = probe_reference(case)
    if out != want:
        return f"named {out!r}; the weight matrix with the largest share of the update is {want!r}"
    return None


@cache
def toy_run(lam: float) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The teacher-student toy (lesson 1) fine-tuned briefly with L1-to-init strength ``lam``."""
    from dataclasses import replace

    from toys.teacher_student import default_config, train

    result = train(replace(default_config(), lam=lam, steps=300, n_train=500, n_test=100), progress=False)
    return result.student, result.init


def toy_case(lam: float) -> Case:
    model, init = toy_run(lam)
    return Case(f"teacher-student toy 100-20-20-100 after 300 Adam steps, lambda={lam:g}", (model, init))


# ---------------------------------------------------------------- assignment 4: principal weights


def verify_low_rank(case: Case, out: Any) -> str | None:
    return _close(out, lab_low_rank_approximation(*case.args), "rank-r approximation", atol=1e-4)


def verify_has_rank(case: Case, out: Any) -> str | None:
    """Rank r, and the best rank-r approximation: by Eckart & Young (1936) no rank-r matrix is
    closer to W in Frobenius norm than sqrt(sum of the squared singular values after the r-th)."""
    weight, rank = case.args
    if not isinstance(out, torch.Tensor) or out.shape != weight.shape:
        return f"expected a tensor of shape {tuple(weight.shape)}"
    got = int(torch.linalg.matrix_rank(out.double(), rtol=1e-6))
    if got != rank:
        return f"the approximation has rank {got}, expected {rank}"
    error = torch.linalg.matrix_norm(weight.double() - out.double()).item()
    best = torch.linalg.svdvals(weight.double())[rank:].square().sum().sqrt().item()
    if not math.isfinite(error) or error > best * (1 + 1e-4) + 1e-5:
        return f"a rank-{rank} matrix at distance {error:.6g} from W; the best one (Eckart-Young) is at {best:.6g}"
    return None


def low_rank_cases(shapes_ranks: list[tuple[tuple[int, int], int]], seed: int = 0) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    return [Case(f"weight {shape}, rank={r}", (torch.randn(shape, generator=gen), r)) for shape, r in shapes_ranks]


def verify_principal(case: Case, out: Any) -> str | None:
    """The lab's LIFT selection per tensor; near-ties of the scores (below 1e-5) may go either way."""
    model, density, rank = case.args
    problem = verify_structure(case, out)
    if problem:
        return problem
    for name, w in _weights(model).items():
        scores = lab_low_rank_approximation(w, rank).abs().flatten()
        k = _budget(density, w.numel())
        chosen = out[name].flatten()
        if int(chosen.sum()) != k:
            return f"'{name}' selects {int(chosen.sum())} entries; the per-tensor budget is {k}"
        kth = scores.sort(descending=True).values[k - 1]
        if (scores[chosen] < kth - 1e-5).any():
            return f"'{name}' selects an entry whose |rank-{rank} approximation| is below the top {k}"
    return None


def principal_cases(specs: list[tuple[tuple[int, ...], float, int]], seed: int = 0) -> list[Case]:
    return [Case(f"widths={w}, density={d}, rank={r}", (mlp(w, seed + i), d, r)) for i, (w, d, r) in enumerate(specs)]


def verify_overlap(case: Case, out: Any) -> str | None:
    return _number(out, mask_overlap(*case.args).jaccard, "Jaccard overlap")


def overlap_cases(seed: int = 0) -> list[Case]:
    model = mlp((8, 6, 4), seed)
    a = masks.magnitude(model, 0.2, scope="per_tensor")
    b = masks.lift(model, 0.2, 1)
    return [Case("magnitude vs LIFT rank 1 at density 0.2 on an 8-6-4 MLP", (a, b))]


def tolerance_edge_case(tol: float) -> Case:
    """Two deltas, 0.5 and 0.75 (exactly representable): at ``tol`` 0.5 one of them equals the tolerance."""
    model = mlp((3, 2), 0)
    reference = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model.fc1.weight[0, 0] += 0.5
        model.fc1.weight[1, 1] += 0.75
    return Case(f"3-2 layer, one delta exactly 0.5 and one 0.75, tol={tol}", (model, reference), {"tol": tol})


def verify_budget_per_tensor_of_principal(case: Case, out: Any) -> str | None:
    model, density = case.args[:2]
    return verify_budget(Case(case.name, (model, density), {"scope": "per_tensor"}), out)


# ---------------------------------------------------------------- the assignments (visible checks)

ASSIGNMENTS: dict[str, Assignment] = {
    "a1_masks": Assignment(
        "a1_masks",
        "Choosing the weights: random and magnitude masks with a density budget",
        (
            Question("a1.magnitude_mask", "magnitude_mask", "mask", (
                Check("structure", "a bool mask for every parameter, biases frozen, with the budget", 1,
                      lambda: mask_cases((0.3,), ("global",)), verify_structure_and_budget),
                Check("largest", "the selected entries (some, not all) are the largest |w| of their scope", 1,
                      lambda: mask_cases((0.3,), ("global", "per_tensor")), verify_largest),
                Check("budget_global", "global scope: max(1, round(density * n)) entries over all weights", 1,
                      lambda: mask_cases((0.3, 0.45), ("global",)), verify_budget),
                Check("budget_per_tensor", "per-tensor scope: the budget in every weight matrix", 1,
                      lambda: mask_cases((0.3, 0.45), ("per_tensor",)), verify_budget),
            )),
            Question("a1.random_mask", "random_mask", "mask", (
                Check("budget", "a bool mask for every parameter, with the budget", 1,
                      lambda: mask_cases((0.3,), ("global", "per_tensor"), model_seed=3, seed=1), verify_budget),
                Check("lab", "the same mask as the lab's masks.random for the same seed", 1,
                      lambda: mask_cases((0.25,), ("global",), seed=0), verify_random),
            )),
        ),
        (HandGraded("a1.scope", "Global vs per-tensor budgets: which tensors gain entries under a global "
                                "magnitude budget, and why could that be a bad choice for fine-tuning?"),),
    ),
    "a2_masked_adamw": Assignment(
        "a2_masked_adamw",
        "The masked AdamW step: frozen entries never move",
        (
            Question("a2.masked_adamw_step", "masked_adamw_step", "tensor", (
                Check("full_mask", "with a full mask, one step equals torch.optim.AdamW", 1,
                      lambda: [adamw_case("6x5, 1 step, full mask, weight_decay=0.01", (6, 5), 1, 1.01, 0,
                                          lr=1e-2, weight_decay=0.01)], verify_adamw),
                Check("frozen_no_decay", "frozen entries bit-identical, trainable ones as AdamW, after 5 steps "
                      "(weight_decay=0)", 1,
                      lambda: [adamw_case("6x5, 5 steps, density 0.4, weight_decay=0", (6, 5), 5, 0.4, 1,
                                          lr=1e-2, weight_decay=0.0)], verify_adamw),
                Check("frozen_with_decay", "frozen entries bit-identical, trainable ones as AdamW, after 5 steps "
                      "with weight_decay=0.1", 2,
                      lambda: [adamw_case("6x5, 5 steps, density 0.4, weight_decay=0.1", (6, 5), 5, 0.4, 2,
                                          lr=1e-2, weight_decay=0.1)], verify_adamw),
                Check("trainable", "trainable entries follow AdamW (5 steps, weight_decay=0.1)", 1,
                      lambda: [adamw_case("6x5, 5 steps, density 0.4, weight_decay=0.1", (6, 5), 5, 0.4, 2,
                                          lr=1e-2, weight_decay=0.1)], verify_trainable),
            )),
        ),
        (HandGraded("a2.why", "Why is zeroing the gradient of the frozen entries not enough with AdamW? "
                              "Would it be enough for SGD with momentum and no weight decay? Explain."),),
    ),
    "a3_updates": Assignment(
        "a3_updates",
        "Measuring an update: L1 to init, update shares, update sparsity, and which layer needs fine-tuning",
        (
            Question("a3.l1_to_init", "l1_to_init", "scalar", (
                Check("value", "the L1 distance on a fixed case", 1, lambda: l1_cases(False), verify_l1_value),
                Check("gradient", "differentiable, with gradient sign(theta - ref)", 1,
                      lambda: [Case(c.name, c.args, mode="grad") for c in l1_cases(False)], verify_l1_grad),
                Check("subset", "only the reference's tensors count", 1, lambda: l1_cases(True), verify_l1_value),
            )),
            Question("a3.update_shares", "update_shares", "numbers", (
                Check("value", "each tensor's share of the total L1 update", 1,
                      lambda: [Case(c.name, c.args) for c in l1_cases(False, (3,))], verify_shares),
                Check("nothing_moved", "all shares 0 when nothing moved (no division by zero), the right ones "
                      "when something did", 1,
                      lambda: [Case("unchanged 5-4-3 MLP", moved(mlp((5, 4, 3), 0), 0, scale=0.0)),
                               Case("the same MLP moved", moved(mlp((5, 4, 3), 0), 5))], verify_shares),
            )),
            Question("a3.update_sparsity", "update_sparsity", "pair", (
                Check("value", "overall and per-tensor share of unchanged entries", 1,
                      lambda: [Case(c.name + ", tol=0.05", c.args, {"tol": 0.05}) for c in l1_cases(False, (4,))],
                      verify_sparsity),
                Check("inclusive", "an entry with |delta| == tol counts as unchanged", 1,
                      lambda: [tolerance_edge_case(0.5), tolerance_edge_case(0.75)], verify_sparsity),
            )),
            Question("a3.which_layer", "which_layer_needs_finetuning", "name", (
                Check("synthetic", "names the weight matrix holding the largest share of the update", 1,
                      lambda: [only_moved(layer) for layer in ("fc2", "fc1", "fc3")], verify_probe),
            )),
        ),
        (HandGraded("a3.adam", "At lambda = 0 the probe names a layer that needed no change. Why does raw "
                               "update size mislead with Adam, and what does the L1 penalty change?"),),
    ),
    "a4_principal_weights": Assignment(
        "a4_principal_weights",
        "LIFT principal weights: low-rank approximation, then top-k, vs plain magnitude",
        (
            Question("a4.low_rank_approximation", "low_rank_approximation", "tensor", (
                Check("value", "matches the truncated SVD on a fixed matrix", 1,
                      lambda: low_rank_cases([((6, 4), 2)]), verify_low_rank),
                Check("rank", "the approximation has rank r and is the closest rank-r matrix (Eckart-Young)", 1,
                      lambda: low_rank_cases([((6, 4), 2), ((5, 7), 1)]), verify_has_rank),
                Check("full_rank", "rank = min(m, n) gives the matrix back (and rank 1 does not)", 1,
                      lambda: low_rank_cases([((4, 6), 4), ((4, 6), 1)]), verify_low_rank),
            )),
            Question("a4.principal_mask", "principal_mask", "mask", (
                Check("budget", "a bool mask for every parameter with the per-tensor budget, biases frozen", 1,
                      lambda: principal_cases([((8, 6, 4), 0.25, 2)]), verify_budget_per_tensor_of_principal),
                Check("lab", "the lab's LIFT selection (masks.lift) on a fixed model", 1,
                      lambda: principal_cases([((8, 6, 4), 0.25, 1)]), verify_principal),
            )),
            Question("a4.mask_overlap", "mask_overlap", "number", (
                Check("jaccard", "the Jaccard overlap of the LIFT and magnitude masks", 1, overlap_cases, verify_overlap),
            )),
        ),
        (HandGraded("a4.why_low_rank", "LIFT reports that plain magnitude selects much worse weights. Compare the "
                                       "two masks: which entries does the low-rank step add, and why could they "
                                       "matter more for fine-tuning?"),),
    ),
}


# ---------------------------------------------------------------- running checks in a notebook


def assignment(name: str, hidden: Mapping[str, Sequence[Check]] | None = None) -> Assignment:
    """An assignment with its visible checks, plus ``hidden`` ones by question id (grader only:
    ``lessons.assignments.hidden``, which imports this module, passes its own)."""
    if name not in ASSIGNMENTS:
        raise ValueError(f"unknown assignment {name!r}; known: {sorted(ASSIGNMENTS)}")
    visible = ASSIGNMENTS[name]
    if isinstance(hidden, bool):
        raise TypeError("hidden must be the hidden checks by question id, not a bool: "
                        "lessons.assignments.hidden.assignment(name) gives an assignment with them")
    if not hidden:
        return visible
    questions = tuple(
        Question(q.id, q.function, q.returns, q.checks + tuple(hidden.get(q.id, ()))) for q in visible.questions
    )
    return Assignment(visible.name, visible.title, questions, visible.hand_graded)


def question(question_id: str, hidden: Mapping[str, Sequence[Check]] | None = None) -> Question:
    """One question by id (e.g. ``"a1.magnitude_mask"``), with its ``hidden`` checks if given."""
    for name, spec in ASSIGNMENTS.items():
        if any(q.id == question_id for q in spec.questions):
            return next(q for q in assignment(name, hidden).questions if q.id == question_id)
    raise ValueError(f"unknown question {question_id!r}")


def run_checks(question_id: str, fn: Callable, hidden: Mapping[str, Sequence[Check]] | None = None) -> None:
    """Run a question's checks on ``fn`` in this process; raise AssertionError at the first failure."""
    q = question(question_id, hidden)
    checks = [c for c in q.checks if hidden or not c.hidden]
    for check in checks:
        for case in check.cases():
            try:
                out = sanitize(run_case(fn, case.mode, copy.deepcopy(case.args), copy.deepcopy(case.kwargs)))
            except NotImplementedError:
                raise AssertionError(f"{q.function}: not implemented yet") from None
            except Exception as exc:
                raise AssertionError(f"check '{check.title}', case [{case.name}]: raised {type(exc).__name__}: {exc}") from exc
            try:
                problem = check.verify(case, out)
            except Exception as exc:  # a malformed output, e.g. a dict of the wrong things
                problem = f"the output could not be checked ({type(exc).__name__}: {exc})"
            if problem:
                raise AssertionError(f"check '{check.title}', case [{case.name}]: {problem}")
    print(f"all {len(checks)} {'' if hidden else 'visible '}checks of {q.function} passed")


def check_magnitude_mask(fn: Callable) -> None:
    run_checks("a1.magnitude_mask", fn)


def check_random_mask(fn: Callable) -> None:
    run_checks("a1.random_mask", fn)


def check_masked_adamw_step(fn: Callable) -> None:
    run_checks("a2.masked_adamw_step", fn)


def check_l1_to_init(fn: Callable) -> None:
    run_checks("a3.l1_to_init", fn)


def check_update_shares(fn: Callable) -> None:
    run_checks("a3.update_shares", fn)


def check_update_sparsity(fn: Callable) -> None:
    run_checks("a3.update_sparsity", fn)


def check_which_layer(fn: Callable) -> None:
    run_checks("a3.which_layer", fn)


def check_low_rank_approximation(fn: Callable) -> None:
    run_checks("a4.low_rank_approximation", fn)


def check_principal_mask(fn: Callable) -> None:
    run_checks("a4.principal_mask", fn)


def check_mask_overlap(fn: Callable) -> None:
    run_checks("a4.mask_overlap", fn)
