# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown] lesson=1 minutes=60
# # Assignment 3: Measuring an update, and which layer needs fine-tuning
# **{{points}}**, about 60 minutes.
#
# The update of a fine-tuning run is `delta = theta - theta_ref`, where `theta_ref` is a
# snapshot of the weights before training (`reference`: a dict from parameter name to
# tensor, possibly covering only some parameters). Lesson 1 asked *which layer needs
# fine-tuning* in a teacher-student toy where the answer is known (only W2 = `fc2.weight`
# had to change), and found that raw update sizes mislead under Adam, while an L1 penalty
# toward the start reveals the layer (Liu 2026). You write the tools of that probe:
#
# | question | points |
# | --- | --- |
# | Q1 `l1_to_init(model, reference)`: sum of `abs(theta - theta_ref)` over the reference's tensors, differentiable | {{points:l1_to_init}} |
# | Q2 `update_shares(model, reference)`: each reference tensor's share of the total L1 update (all 0 if nothing moved) | {{points:update_shares}} |
# | Q3 `update_sparsity(model, reference, tol)`: share of entries with `abs(delta) <= tol`, as `(overall, {name: share})` | {{points:update_sparsity}} |
# | Q4 `which_layer_needs_finetuning(model, reference)`: the weight matrix (2-D) with the largest share | {{points:which_layer_needs_finetuning}} |
#
# Grading: your functions may use **torch only**; the lab's packages are not available while
# grading, and importing them in an answer cell scores that question 0. The hidden checks
# run your probe on the teacher-student toy itself.

# %%
import torch
from torch import nn

# %% tags=["checks"]
from checking import check, load_cases, with_mode

CASES = load_cases("a3_updates_cases.pt")

# %% [markdown]
# ## Q1 `l1_to_init` ({{points:l1_to_init}})
# Only the tensors named in `reference` count. The result must be a scalar tensor you can
# call `.backward()` on (it is used as a penalty: `loss = mse + lam * l1_to_init(...)`).

# %% question="l1_to_init" mode="grad"
def l1_to_init(model: nn.Module, reference: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum |theta - theta_ref| over the tensors of ``reference`` (a differentiable scalar)."""
    ### BEGIN SOLUTION
    params = dict(model.named_parameters())
    return torch.stack([(params[n] - r).abs().sum() for n, r in reference.items()]).sum()
    ### END SOLUTION


# %% tags=["checks"]
# with_mode(fn, "grad") calls your function, then .backward() on its result: value and gradients count.
check(with_mode(l1_to_init, "grad"), CASES["l1_to_init"], name="l1_to_init")

# %% [markdown]
# ## Q2 `update_shares` ({{points:update_shares}})
# Return `{name: l1_of_that_tensor / total_l1}` for the tensors of `reference`, as Python
# floats; every share is 0 when nothing moved.

# %% question="update_shares"
def update_shares(model: nn.Module, reference: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each tensor's share of the model's total L1 update."""
    ### BEGIN SOLUTION
    params = dict(model.named_parameters())
    with torch.no_grad():
        l1 = {n: (params[n] - r).abs().sum().item() for n, r in reference.items()}
    total = sum(l1.values())
    return {n: v / total if total > 0 else 0.0 for n, v in l1.items()}
    ### END SOLUTION


# %% tags=["checks"]
check(update_shares, CASES["update_shares"], name="update_shares")

# %% [markdown]
# ## Q3 `update_sparsity` ({{points:update_sparsity}})
# The share of entries that did **not** move, `abs(delta) <= tol` (inclusive), overall and
# per tensor (Mukherjee et al. 2025 use tol = 1e-5). Return `(overall, per_tensor)`.

# %% question="update_sparsity"
def update_sparsity(
    model: nn.Module, reference: dict[str, torch.Tensor], tol: float = 1e-5
) -> tuple[float, dict[str, float]]:
    """Share of entries with abs(theta - theta_ref) <= tol: overall and per tensor."""
    ### BEGIN SOLUTION
    params = dict(model.named_parameters())
    with torch.no_grad():
        unchanged = {n: int(((params[n].float() - r.float()).abs() <= tol).sum()) for n, r in reference.items()}
    sizes = {n: r.numel() for n, r in reference.items()}
    return sum(unchanged.values()) / sum(sizes.values()), {n: unchanged[n] / sizes[n] for n in reference}
    ### END SOLUTION


# %% tags=["checks"]
check(update_sparsity, CASES["update_sparsity"], name="update_sparsity")

# %% [markdown]
# ## Q4 `which_layer_needs_finetuning` ({{points:which_layer_needs_finetuning}})
# The probe: among the **weight matrices** (2-D tensors) of `reference`, the name of the one
# holding the largest share of the L1 update (the first one if two are equal).

# %% question="which_layer_needs_finetuning" id="which_layer"
def which_layer_needs_finetuning(model: nn.Module, reference: dict[str, torch.Tensor]) -> str:
    """Name of the weight matrix that absorbed the largest share of the update."""
    ### BEGIN SOLUTION
    shares = update_shares(model, reference)
    weights = {n: s for n, s in shares.items() if reference[n].ndim >= 2}
    return max(weights, key=weights.get)
    ### END SOLUTION


# %% tags=["checks"]
check(which_layer_needs_finetuning, CASES["which_layer_needs_finetuning"], name="which_layer_needs_finetuning")

# %% [markdown]
# ## Explore: run the probe on the teacher-student toy
# The student copies W1 and W3 from the teacher; only W2 needs to change. Train it without
# and with the L1 penalty (the lab's `toys.teacher_student.train`) and ask your probe.

# %% tags=["explore"]
from dataclasses import replace

from toys.teacher_student import default_config, train

for lam in (0.0, 1e-3):
    run = train(replace(default_config(), lam=lam, steps=300, n_train=500), progress=False)
    shares = update_shares(run.student, run.init)
    sparsity, _ = update_sparsity(run.student, run.init, tol=1e-3)
    print(f"lambda={lam:g}: probe says {which_layer_needs_finetuning(run.student, run.init)}; "
          f"shares " + ", ".join(f"{n} {s:.2f}" for n, s in shares.items())
          + f"; {sparsity:.0%} of entries unchanged (|delta| <= 1e-3)")

# %% [markdown] hand_graded="a3.adam" points=4
# ## Q5 Why raw update size misleads ({{points:a3.adam}}, graded by hand)
# At lambda = 0 the probe names a layer that needed no change. Why does raw update size
# mislead with Adam, and what does the L1 penalty change? Would the probe be trustworthy
# for a large language model fine-tuned with AdamW?

# %% [markdown]
# ### BEGIN SOLUTION
# Adam normalises each entry's step by its own gradient scale, so every entry with a
# consistent gradient moves by about the learning rate per step, however small that
# gradient is: layers that could help only a little still move as much as the one that
# must change, and big layers accumulate a large L1 just by having many entries. The L1
# penalty makes moving cost something: entries whose gain does not pay for the cost return
# to their start, and what remains is the change the task needs (here W2). For an LLM the
# probe needs the same care: raw AdamW deltas mix need with the optimizer's normalisation
# (and weight decay), so compare with a penalised or proximal run, or a sparsity measure at
# a meaningful tolerance, before concluding which layer matters.
# ### END SOLUTION

# %% tags=["grading"]
from lessons.checking import Case
from toys.teacher_student import make_mlp


def moved(model, seed, scale=0.1, keep=()):
    """(model after a random update, reference = the model before it); ``keep`` names tensors left alone."""
    reference = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n not in keep:
                p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model, reference


def l1_cases(seeds, widths=(5, 4, 3), subset=False, **kwargs):
    cases = []
    for seed in seeds:
        model, reference = moved(make_mlp(widths, "relu", seed), seed + 1, keep=("fc1.bias",))
        if subset:
            reference = {n: r for n, r in reference.items() if n.startswith("fc2")}
        cases.append(Case(f"widths={widths}, seed={seed}, reference keys={sorted(reference)}", (model, reference),
                          kwargs))
    return cases


def tolerance_edge(tol, points):
    """Two deltas, 0.5 and 0.75 (exactly representable): at ``tol`` one of them equals the tolerance."""
    model = make_mlp((3, 2), "relu", 0)
    reference = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model.fc1.weight[0, 0] += 0.5
        model.fc1.weight[1, 1] += 0.75
    return Case(f"3-2 layer, deltas 0.5 and 0.75, tol={tol}: |delta| == tol counts as unchanged (<=)",
                (model, reference), {"tol": tol}, points=points, group="inclusive")


def only_moved(layer, group, points=0):
    """A 5-4-3 MLP in which only ``layer`` moved."""
    keep = tuple(f"{o}.{k}" for o in ("fc1", "fc2", "fc3") if o != layer for k in ("weight", "bias"))
    return Case(f"5-4-3 MLP where only {layer} moved", moved(make_mlp((5, 4, 3), "relu", 1), 2, keep=keep),
                points=points, group=group)


def visible_cases():
    unchanged = moved(make_mlp((5, 4, 3), "relu", 0), 0, scale=0.0)
    return {
        "l1_to_init": [*l1_cases((0,)), *l1_cases((0,), subset=True)],
        "update_shares": [*l1_cases((3,)), Case("nothing moved: every share is 0 (no division by zero)", unchanged,
                                                group="nothing moved"),
                          Case("the same MLP moved", moved(make_mlp((5, 4, 3), "relu", 0), 5), group="nothing moved",
                               points=0)],
        "update_sparsity": [*l1_cases((4,), tol=0.05), tolerance_edge(0.5, 1), tolerance_edge(0.75, 0)],
        "which_layer_needs_finetuning": [only_moved("fc2", "synthetic", 1), only_moved("fc1", "synthetic"),
                                         only_moved("fc3", "synthetic")],
    }


### BEGIN HIDDEN TESTS
def toy_case(lam, group):
    """The teacher-student toy (lesson 1) briefly fine-tuned with L1-to-init strength ``lam``."""
    from dataclasses import replace

    from toys.teacher_student import default_config, train

    result = train(replace(default_config(), lam=lam, steps=300, n_train=500, n_test=100), progress=False)
    return Case(f"teacher-student toy 100-20-20-100 after 300 Adam steps, lambda={lam:g}",
                (result.student, result.init), group=group)


def hidden_cases():
    sparsity_cases = []
    for i, tol in enumerate((1e-5, 0.1, 0.3)):
        model, reference = moved(make_mlp((6, 5, 4), "relu", 30 + i), 40 + i, scale=0.2, keep=("fc2.weight",))
        sparsity_cases.append(Case(f"6-5-4 MLP, fc2.weight unchanged, tol={tol}", (model, reference), {"tol": tol},
                                   points=int(i == 0), group="random"))
    return {
        "l1_to_init": l1_cases((20, 21), widths=(7, 6, 6, 2)),
        "update_shares": l1_cases((22,), widths=(7, 6, 6, 2)),
        "update_sparsity": sparsity_cases,
        "which_layer_needs_finetuning": [toy_case(1e-3, "toy L1"), only_moved("fc3", "toy L1"),
                                         toy_case(0.0, "toy plain"), only_moved("fc1", "toy plain")],
    }
### END HIDDEN TESTS
