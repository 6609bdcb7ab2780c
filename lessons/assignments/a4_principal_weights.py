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
# # Assignment 4: LIFT principal weights vs plain magnitude
#
# LIFT (Liu et al. 2025) picks the weights to fine-tune in two steps: take the best rank-r
# approximation of each weight matrix (truncated SVD), then keep the entries that are
# largest **in that approximation**, a per-tensor top-k. Plain magnitude selection skips
# the low-rank step and, per LIFT, selects much worse (lesson 7).
#
# | question | points |
# | --- | --- |
# | Q1 `low_rank_approximation(weight, rank)`: the best rank-`rank` approximation (Eckart-Young) | 4 |
# | Q2 `principal_mask(model, density, rank)`: LIFT's mask, per-tensor budget `max(1, round(density * n))`, biases frozen | 4 |
# | Q3 `mask_overlap(a, b)`: the Jaccard overlap `|a & b| / |a or b|` of two masks (0 if both are empty) | 3 |
#
# Grading: your functions may use **torch only**; the lab's packages are not available while
# grading, and importing them in an answer cell scores that question 0.

# %%
import torch
from torch import nn

# %%
# Lab helpers for trying things out and for the visible checks (not used when grading).
from lessons.assignments.checks import check_low_rank_approximation, check_mask_overlap, check_principal_mask
from toys.teacher_student import make_mlp


# %% [markdown]
# A per-tensor top-k, given (you wrote the general one in assignment 1). Ties go to the
# earlier entry.

# %%
def top_k_per_tensor(model: nn.Module, scores: dict[str, torch.Tensor], density: float) -> dict[str, torch.Tensor]:
    """In every scored tensor, the top ``max(1, round(density * n))`` entries; other parameters all False."""
    mask = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    for name, s in scores.items():
        k = max(1, round(density * s.numel()))
        order = torch.sort(s.flatten(), descending=True, stable=True).indices[:k]
        chosen = torch.zeros(s.numel(), dtype=torch.bool)
        chosen[order] = True
        mask[name] = chosen.view(s.shape)
    return mask


# %% [markdown]
# ## Q1 `low_rank_approximation` (4 points)
# Use `torch.linalg.svd(weight, full_matrices=False)` and keep the `rank` largest singular
# values. Raise a `ValueError` for a rank outside `[1, min(m, n)]`.

# %%
def low_rank_approximation(weight: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-``rank`` approximation of a 2-D ``weight`` (truncated SVD)."""
    ### BEGIN SOLUTION
    if weight.ndim != 2:
        raise ValueError(f"need a 2-D weight, got shape {tuple(weight.shape)}")
    if not 1 <= rank <= min(weight.shape):
        raise ValueError(f"rank must be in [1, {min(weight.shape)}], got {rank}")
    u, s, vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]
    ### END SOLUTION


# %%
check_low_rank_approximation(low_rank_approximation)

# %%
### BEGIN HIDDEN TESTS
from lessons.assignments.hidden import run_checks

run_checks("a4.low_rank_approximation", low_rank_approximation)
### END HIDDEN TESTS

# %% [markdown]
# ## Q2 `principal_mask` (4 points)
# Score every weight matrix (2-D parameter) by `abs(low_rank_approximation(w, rank))` and
# keep the top share of each.

# %%
def principal_mask(model: nn.Module, density: float, rank: int) -> dict[str, torch.Tensor]:
    """LIFT's principal weights: per-tensor top entries of each matrix's rank-r approximation."""
    ### BEGIN SOLUTION
    scores = {
        n: low_rank_approximation(p.detach(), rank).abs() for n, p in model.named_parameters() if p.ndim >= 2
    }
    return top_k_per_tensor(model, scores, density)
    ### END SOLUTION


# %%
check_principal_mask(principal_mask)

# %%
### BEGIN HIDDEN TESTS
run_checks("a4.principal_mask", principal_mask)
### END HIDDEN TESTS

# %% [markdown]
# ## Q3 `mask_overlap` (3 points)
# Two masks over the same tensors: the Jaccard overlap of their selected entries, a float.

# %%
def mask_overlap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """|a & b| / |a | b| over all tensors; 0.0 when neither selects anything."""
    ### BEGIN SOLUTION
    both = sum(int((a[n] & b[n]).sum()) for n in a)
    either = sum(int((a[n] | b[n]).sum()) for n in a)
    return both / either if either else 0.0
    ### END SOLUTION


# %%
check_mask_overlap(mask_overlap)

# %%
### BEGIN HIDDEN TESTS
run_checks("a4.mask_overlap", mask_overlap)
### END HIDDEN TESTS

# %% [markdown]
# ## Explore: how different are the two selections?
# On lesson 1's student MLP, compare LIFT's mask with plain magnitude at 5% density, for
# several ranks. At full rank the approximation is the matrix itself: the masks coincide.

# %%
model = make_mlp((100, 20, 20, 100), "relu", seed=0)
plain = top_k_per_tensor(model, {n: p.detach().abs() for n, p in model.named_parameters() if p.ndim >= 2}, 0.05)
for rank in (1, 2, 4, 8, 20):
    lift = principal_mask(model, 0.05, rank)
    print(f"rank {rank:>2}: Jaccard overlap with magnitude {mask_overlap(lift, plain):.2f}")

# %% [markdown]
# ## Question (graded by hand, 0 automatic points)
# LIFT reports that plain magnitude selects much worse weights to fine-tune. Looking at the
# overlaps above, which entries does the low-rank step add, and why could they matter more
# for fine-tuning than the largest raw weights?

# %% [markdown]
# ### BEGIN SOLUTION
# At low rank the overlap with magnitude is small: the low-rank step keeps the directions
# carrying most of the matrix's energy (its top singular vectors) and discards the noise-like
# remainder, so the selected entries are those that are large *along the principal
# directions*, concentrated in the rows and columns where the top singular vectors are
# large, rather than individually large entries that may be isolated noise. Updating the
# entries that participate in the principal directions changes what the layer mainly
# computes with few parameters; raw magnitude spreads the budget over outliers of the
# residual. As the rank grows the approximation approaches the matrix and the two masks
# coincide, which is why LIFT uses a small rank.
# ### END SOLUTION
