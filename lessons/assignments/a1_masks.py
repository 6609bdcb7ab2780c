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
# # Assignment 1: Choosing the weights with a budget
#
# Sparse fine-tuning trains only a chosen subset of a model's entries. Choosing them takes
# two steps (lesson 3): a **criterion** gives every entry a score, and a **selection policy**
# keeps the best-scoring share of the entries, the *density*. Here you write the policy and
# two criteria: **random** (the baseline every criterion must beat) and **magnitude**.
#
# **Conventions** (the lab's, `sparsity/masks.py`):
# - a mask is a dict from parameter name (`model.named_parameters()`) to a bool tensor of
#   the parameter's shape, True = trainable. It covers *every* parameter;
# - only weight matrices (parameters with 2 or more dimensions) are eligible: biases come
#   back all False;
# - the budget is `k = max(1, round(density * n))` entries, with Python's `round`;
#   `scope="global"` counts `n` over all weight entries at once, `scope="per_tensor"` gives
#   every weight matrix its own budget;
# - ties go to the earlier entry (flattened order, tensors in model order): sort the scores
#   with `torch.sort(..., descending=True, stable=True)`.
#
# **Grading.** `python -m lessons.grade` runs your notebook in a sandbox and grades the
# functions `magnitude_mask` (8 points) and `random_mask` (3 points) on visible and hidden
# cases. Your graded functions may use **torch only**: the lab's packages (`sparsity`,
# `toys`, `lessons`) are not available while grading, and importing them in an answer cell
# scores that question 0. Keep everything a function needs inside its answer cells.

# %%
import torch
from torch import nn

# %%
# Lab helpers for trying things out and for the visible checks (not used when grading).
from lessons.assignments.checks import check_magnitude_mask, check_random_mask
from toys.teacher_student import make_mlp

# %% [markdown]
# ## The selection policy: top-k with a budget (a helper, not graded on its own)
# `scores` maps the name of each eligible weight to a float tensor of its shape. Return a
# mask over **all** parameters of `model` that keeps the top `k` scores in the given scope.

# %%
def top_k_mask(model: nn.Module, scores: dict[str, torch.Tensor], density: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """The top ``max(1, round(density * n))`` entries by score, over all scored tensors or per tensor."""
    ### BEGIN SOLUTION
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if scope not in ("global", "per_tensor"):
        raise ValueError(f"scope must be 'global' or 'per_tensor', got {scope!r}")

    def top(s: torch.Tensor, k: int) -> torch.Tensor:
        order = torch.sort(s.flatten(), descending=True, stable=True).indices[:k]
        chosen = torch.zeros(s.numel(), dtype=torch.bool)
        chosen[order] = True
        return chosen.view(s.shape)

    mask = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    if scope == "per_tensor":
        for name, s in scores.items():
            mask[name] = top(s, max(1, round(density * s.numel())))
        return mask
    flat = torch.cat([s.flatten().float() for s in scores.values()])
    chosen = top(flat, max(1, round(density * flat.numel())))
    start = 0
    for name, s in scores.items():
        mask[name] = chosen[start : start + s.numel()].view(s.shape)
        start += s.numel()
    return mask
    ### END SOLUTION


# %% [markdown]
# ## Q1 `magnitude_mask` (8 points)
# Score each weight entry by `|w|` and keep the top share. (Han et al. 2015 prune the
# *smallest*; a magnitude selector trains the *largest*.)

# %%
def magnitude_mask(model: nn.Module, density: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """The largest-|w| entries of the weight matrices, ``density`` of them, globally or per tensor."""
    ### BEGIN SOLUTION
    scores = {n: p.detach().abs() for n, p in model.named_parameters() if p.ndim >= 2}
    return top_k_mask(model, scores, density, scope)
    ### END SOLUTION


# %%
check_magnitude_mask(magnitude_mask)

# %%
### BEGIN HIDDEN TESTS
from lessons.assignments.hidden import run_checks

run_checks("a1.magnitude_mask", magnitude_mask)
### END HIDDEN TESTS

# %% [markdown]
# ## Q2 `random_mask` (3 points)
# Random scores, reproducible from `seed`: one `torch.Generator().manual_seed(seed)`, then
# `torch.rand(w.shape, generator=gen)` for each weight matrix in model order.

# %%
def random_mask(model: nn.Module, density: float, seed: int = 0, scope: str = "global") -> dict[str, torch.Tensor]:
    """A uniformly random ``density`` share of the weight entries, reproducible from ``seed``."""
    ### BEGIN SOLUTION
    gen = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(p.shape, generator=gen) for n, p in model.named_parameters() if p.ndim >= 2}
    return top_k_mask(model, scores, density, scope)
    ### END SOLUTION


# %%
check_random_mask(random_mask)

# %%
### BEGIN HIDDEN TESTS
run_checks("a1.random_mask", random_mask)
### END HIDDEN TESTS

# %% [markdown]
# ## Explore: where does a global budget go?
# A bottleneck MLP (100-20-20-100, lesson 1's shape) has two big matrices and a small one.
# Compare how many entries each weight matrix gets under the two scopes.

# %%
model = make_mlp((100, 20, 20, 100), "relu", seed=0)
for scope in ("global", "per_tensor"):
    mask = magnitude_mask(model, 0.05, scope=scope)
    counts = {n: int(m.sum()) for n, m in mask.items() if m.ndim >= 2}
    print(f"{scope:>10}: " + ", ".join(f"{n} {c}" for n, c in counts.items()))

# %% [markdown]
# ## Question (graded by hand, 0 automatic points)
# Global vs per-tensor budgets: which tensors gain entries under a global magnitude budget,
# and why could that be a bad choice for fine-tuning? (Think of lesson 1: which layer
# *needed* to change, and how its weights are scaled.)

# %% [markdown]
# ### BEGIN SOLUTION
# Under a global budget, tensors whose entries are large in absolute terms win: with the
# lab's LeCun initialisation that is the matrices with the smallest fan-in (here W2 with
# fan-in 20 has entries ~sqrt(5)x larger than W1's), and in real networks any tensor with a
# larger scale (e.g. output projections). The budget follows the scale of the weights, not
# the need for change: a layer with small weights may get almost nothing even if it is the
# one the task needs (lesson 1). Per-tensor budgets guarantee every layer some capacity, at
# the price of spending entries on layers that need none.
# ### END SOLUTION
