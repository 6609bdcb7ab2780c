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

# %% [markdown] lesson=8 minutes=40
# # Assignment 9: 2:4 structured sparsity: the pattern and its compressed form
# **{{points}}**, about 40 minutes.
#
# NVIDIA's sparse tensor cores (Ampere and later) multiply a matrix twice as fast when, in
# every group of 4 consecutive entries along the input dimension, at most 2 are nonzero
# (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks"). The hardware stores only
# the 2 kept values of each group and 2-bit positions saying where they were (lesson 8).
#
# **Conventions** (the lab's, `sparsity/two_four.py`): a weight is `[out, in]` like
# `nn.Linear`'s; groups are 4 consecutive inputs of a row; the 2 entries of largest `|w|` are
# kept, ties going to the earlier input.

# %%
import torch

# %% tags=["checks"]
from checking import check, load_cases

CASES = load_cases("a9_two_four_cases.pt")

# %% [markdown]
# ## Q1 `mask_24` ({{points:mask_24}})
# A bool keep-mask of the weight's shape with exactly 2 True in every group of 4 inputs.
# Raise a `ValueError` when the input dimension is not a multiple of 4.

# %% question="mask_24"
def mask_24(weight: torch.Tensor) -> torch.Tensor:
    """The 2 largest-|w| entries of every 4 consecutive inputs (ties to the earlier input)."""
    ### BEGIN SOLUTION
    if weight.ndim != 2 or weight.shape[1] % 4:
        raise ValueError(f"need a [out, in] weight with in a multiple of 4, got {tuple(weight.shape)}")
    groups = weight.detach().abs().reshape(-1, 4)
    best = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :2]
    return torch.zeros(groups.shape, dtype=torch.bool).scatter_(1, best, True).view(weight.shape)
    ### END SOLUTION


# %% tags=["checks"]
check(mask_24, CASES["mask_24"], name="mask_24")

# %% [markdown]
# ## Q2 `compress_24` ({{points:compress_24}})
# Given a weight and its keep-mask, return `(values, meta)`: `values` `[out, in/2]` holds each
# group's 2 kept entries in input order; `meta` `[out, in/4]` (uint8) holds each group's two
# positions (0-3) as `first | (second << 2)`, `first < second`.

# %% question="compress_24"
def compress_24(weight: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2:4 compressed form: the kept values and their in-group positions, 4 bits per group."""
    ### BEGIN SOLUTION
    positions = mask.reshape(-1, 4).nonzero()[:, 1].reshape(-1, 2)
    values = weight.detach().reshape(-1, 4).gather(1, positions).reshape(weight.shape[0], -1)
    meta = (positions[:, 0] | (positions[:, 1] << 2)).to(torch.uint8).reshape(weight.shape[0], -1)
    return values, meta
    ### END SOLUTION


# %% tags=["checks"]
check(compress_24, CASES["compress_24"], name="compress_24")

# %% [markdown] hand_graded="a9.cost" points=3
# ## Q3 What 2:4 costs ({{points:a9.cost}}, graded by hand)
# Storing a 2:4 fp16 matrix compressed takes half the values plus 4 bits per group: what
# fraction of the dense size is that? Lesson 8 measures the accuracy cost of imposing 2:4 on a
# trained model and recovering it: why is a fixed 2:4 pattern harder on accuracy than
# unstructured sparsity at the same 50% density?

# %% [markdown]
# ### BEGIN SOLUTION
# Per group of 4 fp16 values (64 bits): 2 values (32 bits) plus 4 bits of positions = 36 bits,
# 56.25% of the dense size. Unstructured 50% sparsity keeps the largest half of the whole
# matrix; 2:4 must keep exactly 2 of every 4, so a group with 3 or 4 important weights loses
# some while a group of unimportant ones keeps 2: the constraint discards more of what
# matters, so the drop before recovery is larger and recovery (sparse fine-tuning with the
# pattern fixed) has more to repair.
# ### END SOLUTION

# %% tags=["grading"]
from lessons.checking import Case


def visible_cases():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 8, generator=gen)
    return {
        "mask_24": [Case("a 3x8 weight", (weight,)),
                    Case("ties go to the earlier input", (torch.tensor([[1.0, 1.0, 1.0, 0.5, 2.0, -2.0, 2.0, 0.0]]),))],
        "compress_24": [Case("a 3x8 weight with its magnitude mask", (weight, mask_24(weight))),
                        Case("a kept zero is stored (the mask decides, not the values)",
                             (torch.tensor([[0.0, 0.0, 3.0, 0.0]]), torch.tensor([[True, False, True, False]])))],
    }


### BEGIN HIDDEN TESTS
def hidden_cases():
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(5, 16, generator=gen)
    random_keep = torch.rand(5, 4, 4, generator=gen).argsort(-1).argsort(-1) < 2
    return {
        "mask_24": [Case("a 5x16 weight", (weight,)),
                    Case("integer weights with many ties", ((torch.arange(32) % 3 - 1).float().view(2, 16),))],
        "compress_24": [Case("a 5x16 weight with a random 2:4 mask", (weight, random_keep.view(5, 16)))],
    }
### END HIDDEN TESTS
