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

# %% [markdown]
# # Assignment 3: Measuring an update, and which layer needs fine-tuning
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
# | Q1 `l1_to_init(model, reference)`: sum of `abs(theta - theta_ref)` over the reference's tensors, differentiable | 4 |
# | Q2 `update_shares(model, reference)`: each reference tensor's share of the total L1 update (all 0 if nothing moved) | 3 |
# | Q3 `update_sparsity(model, reference, tol)`: share of entries with `abs(delta) <= tol`, as `(overall, {name: share})` | 3 |
# | Q4 `which_layer_needs_finetuning(model, reference)`: the weight matrix (2-D) with the largest share | 3 |
#
# Grading: your functions may use **torch only**; the lab's packages are not available while
# grading, and importing them in an answer cell scores that question 0. The hidden checks
# run your probe on the teacher-student toy itself.

# %%
import torch
from torch import nn

# %%
# Lab helpers for trying things out and for the visible checks (not used when grading).
from dataclasses import replace

from lessons.assignments.checks import (
    check_l1_to_init,
    check_update_shares,
    check_update_sparsity,
    check_which_layer,
)
from toys.teacher_student import default_config, train

# %% [markdown]
# ## Q1 `l1_to_init` (4 points)
# Only the tensors named in `reference` count. The result must be a scalar tensor you can
# call `.backward()` on (it is used as a penalty: `loss = mse + lam * l1_to_init(...)`).

# %%
def l1_to_init(model: nn.Module, reference: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum |theta - theta_ref| over the tensors of ``reference`` (a differentiable scalar)."""
    ### BEGIN SOLUTION
    params = dict(model.named_parameters())
    return torch.stack([(params[n] - r).abs().sum() for n, r in reference.items()]).sum()
    ### END SOLUTION


# %%
check_l1_to_init(l1_to_init)

# %%
### BEGIN HIDDEN TESTS
from lessons.assignments.hidden import run_checks

run_checks("a3.l1_to_init", l1_to_init)
### END HIDDEN TESTS

# %% [markdown]
# ## Q2 `update_shares` (3 points)
# Return `{name: l1_of_that_tensor / total_l1}` for the tensors of `reference`, as Python
# floats; every share is 0 when nothing moved.

# %%
def update_shares(model: nn.Module, reference: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each tensor's share of the model's total L1 update."""
    ### BEGIN SOLUTION
    params = dict(model.named_parameters())
    with torch.no_grad():
        l1 = {n: (params[n] - r).abs().sum().item() for n, r in reference.items()}
    total = sum(l1.values())
    return {n: v / total if total > 0 else 0.0 for n, v in l1.items()}
    ### END SOLUTION


# %%
check_update_shares(update_shares)

# %%
### BEGIN HIDDEN TESTS
run_checks("a3.update_shares", update_shares)
### END HIDDEN TESTS

# %% [markdown]
# ## Q3 `update_sparsity` (3 points)
# The share of entries that did **not** move, `abs(delta) <= tol` (inclusive), overall and
# per tensor (Mukherjee et al. 2025 use tol = 1e-5). Return `(overall, per_tensor)`.

# %%
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


# %%
check_update_sparsity(update_sparsity)

# %%
### BEGIN HIDDEN TESTS
run_checks("a3.update_sparsity", update_sparsity)
### END HIDDEN TESTS

# %% [markdown]
# ## Q4 `which_layer_needs_finetuning` (3 points)
# The probe: among the **weight matrices** (2-D tensors) of `reference`, the name of the one
# holding the largest share of the L1 update (the first one if two are equal).

# %%
def which_layer_needs_finetuning(model: nn.Module, reference: dict[str, torch.Tensor]) -> str:
    """Name of the weight matrix that absorbed the largest share of the update."""
    ### BEGIN SOLUTION
    shares = update_shares(model, reference)
    weights = {n: s for n, s in shares.items() if reference[n].ndim >= 2}
    return max(weights, key=weights.get)
    ### END SOLUTION


# %%
check_which_layer(which_layer_needs_finetuning)

# %%
### BEGIN HIDDEN TESTS
run_checks("a3.which_layer", which_layer_needs_finetuning)
### END HIDDEN TESTS

# %% [markdown]
# ## Explore: run the probe on the teacher-student toy
# The student copies W1 and W3 from the teacher; only W2 needs to change. Train it without
# and with the L1 penalty (the lab's `toys.teacher_student.train`) and ask your probe.

# %%
for lam in (0.0, 1e-3):
    run = train(replace(default_config(), lam=lam, steps=300, n_train=500), progress=False)
    shares = update_shares(run.student, run.init)
    sparsity, _ = update_sparsity(run.student, run.init, tol=1e-3)
    print(f"lambda={lam:g}: probe says {which_layer_needs_finetuning(run.student, run.init)}; "
          f"shares " + ", ".join(f"{n} {s:.2f}" for n, s in shares.items())
          + f"; {sparsity:.0%} of entries unchanged (|delta| <= 1e-3)")

# %% [markdown]
# ## Question (graded by hand, 0 automatic points)
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
