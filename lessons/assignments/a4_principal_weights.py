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

# %% [markdown] lesson=7 minutes=60
# # Assignment 4: LIFT principal weights vs plain magnitude
# **{{points}}**, about 60 minutes. Q2 is given as the paper gives it: work out the details.
#
# LIFT (Liu et al. 2025) chooses which weights to fine-tune from a low-rank view of each
# weight matrix; plain magnitude selection skips that view and, per LIFT, selects much worse
# (lesson 7).
#
# | question | points |
# | --- | --- |
# | Q1 `low_rank_approximation(weight, rank)`: the best rank-`rank` approximation (Eckart-Young) | {{points:low_rank_approximation}} |
# | Q2 `principal_mask(model, density, rank)`: LIFT's mask, from the paper's description | {{points:principal_mask}} |
# | Q3 `mask_overlap(a, b)`: the Jaccard overlap `|a & b| / |a or b|` of two masks (0 if both are empty) | {{points:mask_overlap}} |
#
# Grading: your functions may use **torch only**; the lab's packages are not available while
# grading, and importing them in an answer cell scores that question 0.

# %%
import torch
from torch import nn

# %% tags=["checks"]
from checking import check, load_cases

CASES = load_cases("a4_principal_weights_cases.pt")


# %% [markdown]
# A per-tensor top-k (not graded on its own): bring your `top_k_mask` from assignment 1 and
# call it with `scope="per_tensor"`, or write it again. Ties go to the earlier entry.

# %%
def top_k_per_tensor(model: nn.Module, scores: dict[str, torch.Tensor], density: float) -> dict[str, torch.Tensor]:
    """In every scored tensor, the top ``max(1, round(density * n))`` entries; other parameters all False."""
    ### BEGIN SOLUTION
    mask = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    for name, s in scores.items():
        k = max(1, round(density * s.numel()))
        order = torch.sort(s.flatten(), descending=True, stable=True).indices[:k]
        chosen = torch.zeros(s.numel(), dtype=torch.bool)
        chosen[order] = True
        mask[name] = chosen.view(s.shape)
    return mask
    ### END SOLUTION


# %% [markdown]
# ## Q1 `low_rank_approximation` ({{points:low_rank_approximation}})
# Use `torch.linalg.svd(weight, full_matrices=False)` and keep the `rank` largest singular
# values. Raise a `ValueError` for a rank outside `[1, min(m, n)]`.

# %% question="low_rank_approximation"
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


# %% tags=["checks"]
check(low_rank_approximation, CASES["low_rank_approximation"], name="low_rank_approximation")

# %% [markdown]
# ## Q2 `principal_mask` ({{points:principal_mask}}): from the paper's description
# LIFT's own words (Liu et al. 2025, "LIFT the Veil for the Truth: Principal Weights Emerge
# after Rank Reduction for Reasoning-Focused Supervised Fine-Tuning"): *"we first perform
# low-rank approximation on each weight matrix [...] and then select the Principal Weights,
# the top-k parameters with the largest magnitude in the low-rank approximated matrix; only
# those are updated."* Turn that into `principal_mask(model, density, rank)`, following this
# lab's mask conventions (assignment 1). Open the hints one at a time only if you are stuck.
#
# <details><summary>Hint 1: what is scored?</summary>
# Every weight matrix (a parameter with 2 dimensions) gets a score per entry; biases are not
# eligible and come back all False.</details>
#
# <details><summary>Hint 2: the score</summary>
# The score of an entry is the absolute value of that entry in the rank-`rank` approximation
# of its own matrix (your Q1), not of the original weight.</details>
#
# <details><summary>Hint 3: the budget</summary>
# LIFT selects per matrix: each weight matrix keeps its own top `max(1, round(density * n))`
# entries (`top_k_per_tensor` above does exactly this).</details>

# %% question="principal_mask"
def principal_mask(model: nn.Module, density: float, rank: int) -> dict[str, torch.Tensor]:
    """LIFT's principal weights: per-tensor top entries of each matrix's rank-r approximation."""
    ### BEGIN SOLUTION
    scores = {
        n: low_rank_approximation(p.detach(), rank).abs() for n, p in model.named_parameters() if p.ndim >= 2
    }
    return top_k_per_tensor(model, scores, density)
    ### END SOLUTION


# %% tags=["checks"]
check(principal_mask, CASES["principal_mask"], name="principal_mask")

# %% [markdown]
# ## Q3 `mask_overlap` ({{points:mask_overlap}})
# Two masks over the same tensors: the Jaccard overlap of their selected entries, a float.

# %% question="mask_overlap"
def mask_overlap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """|a & b| / |a | b| over all tensors; 0.0 when neither selects anything."""
    ### BEGIN SOLUTION
    both = sum(int((a[n] & b[n]).sum()) for n in a)
    either = sum(int((a[n] | b[n]).sum()) for n in a)
    return both / either if either else 0.0
    ### END SOLUTION


# %% tags=["checks"]
check(mask_overlap, CASES["mask_overlap"], name="mask_overlap")

# %% [markdown]
# ## Explore: how different are the two selections?
# On lesson 1's student MLP, compare LIFT's mask with plain magnitude at 5% density, for
# several ranks. At full rank the approximation is the matrix itself: the masks coincide.

# %% tags=["explore"]
from toys.teacher_student import make_mlp

model = make_mlp((100, 20, 20, 100), "relu", seed=0)
plain = top_k_per_tensor(model, {n: p.detach().abs() for n, p in model.named_parameters() if p.ndim >= 2}, 0.05)
for rank in (1, 2, 4, 8, 20):
    lift = principal_mask(model, 0.05, rank)
    print(f"rank {rank:>2}: Jaccard overlap with magnitude {mask_overlap(lift, plain):.2f}")

# %% [markdown] hand_graded="a4.why_low_rank" points=4
# ## Q4 What the low-rank step adds ({{points:a4.why_low_rank}}, graded by hand)
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

# %% tags=["grading"]
from lessons.checking import Case, Close
from toys.teacher_student import make_mlp


def low_rank_cases(shapes_ranks, seed=0, group=""):
    gen = torch.Generator().manual_seed(seed)
    """A case per (shape, rank); in a ``group`` only the first case carries the group's one point."""
    return [Case(f"weight {shape}, rank={r}", (torch.randn(shape, generator=gen), r), compare=Close(1e-4, 1e-5),
                 points=int(i == 0 or not group), group=group) for i, (shape, r) in enumerate(shapes_ranks)]


def principal_cases(specs, seed=0, group=""):
    return [Case(f"widths={w}, density={d}, rank={r}", (make_mlp(w, "relu", seed + i), d, r), group=group)
            for i, (w, d, r) in enumerate(specs)]


def overlap_case(model, name, a_density=0.2, rank=1, points=1, group=""):
    """LIFT rank-``rank`` vs per-tensor magnitude masks of ``model``."""
    magnitude = top_k_per_tensor(model, {n: p.detach().abs() for n, p in model.named_parameters() if p.ndim >= 2},
                                 a_density)
    return Case(name, (magnitude, principal_mask(model, a_density, rank)), points=points, group=group)


def visible_cases():
    return {
        "low_rank_approximation": [*low_rank_cases([((6, 4), 2), ((5, 7), 1)]),
                                   *low_rank_cases([((4, 6), 4), ((4, 6), 1)], group="full rank")],
        "principal_mask": principal_cases([((8, 6, 4), 0.25, 2), ((8, 6, 4), 0.25, 1)]),
        "mask_overlap": [overlap_case(make_mlp((8, 6, 4), "relu", 0),
                                      "magnitude vs LIFT rank 1 at density 0.2 on an 8-6-4 MLP")],
    }


### BEGIN HIDDEN TESTS
def hidden_cases():
    small = make_mlp((3, 2), "relu", 0)
    empty = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in small.named_parameters()}
    return {
        "low_rank_approximation": low_rank_cases([((9, 5), 3), ((3, 8), 2), ((10, 10), 1)], seed=5, group="random"),
        "principal_mask": principal_cases([((9, 7, 5), 0.1, 2), ((6, 12, 4), 0.3, 3)], seed=9),
        "mask_overlap": [
            overlap_case(make_mlp((9, 7, 5), "relu", 4), "magnitude vs LIFT rank 2 at density 0.3", 0.3, 2),
            Case("two all-False masks overlap 0 (no division by zero)", (empty, dict(empty)), group="empty"),
            overlap_case(make_mlp((8, 6, 4), "relu", 1), "paired with overlapping masks", points=0, group="empty"),
        ],
    }
### END HIDDEN TESTS
