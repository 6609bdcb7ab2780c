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

# %% [markdown] lesson=6 minutes=50
# # Assignment 8: Why RL updates look sparse in bf16: the half-ulp predictor
# **{{points}}**, about 50 minutes. Q1 is given as the paper gives it: work out the details.
#
# Mukherjee et al. 2025 (arXiv 2505.11711) find that RL fine-tuning leaves 70-95% of a
# model's bf16 weights bit-identical. Part of the reason is precision: bf16 keeps 8 bits of
# significand (7 stored), so a small update to a large weight rounds back to the same value.
# Lesson 6 measures how much of the sparsity that rounding alone predicts.

# %%
import torch

# %% tags=["checks"]
from checking import check, load_cases

CASES = load_cases("a8_bf16_updates_cases.pt")

# %% [markdown]
# ## Q1 `half_ulp_bf16` ({{points:half_ulp_bf16}}): from the paper's description
# *"An update smaller than half a unit in the last place (ulp) of the bf16 weight is rounded
# away."* Write `half_ulp_bf16(values)`: for each entry, half the gap between its bf16 value
# and the next bf16 number away from zero, as a float32 tensor (0 where the value is 0).
# Open the hints one at a time only if you are stuck.
#
# <details><summary>Hint 1: the ulp of a binary float</summary>
# A float with exponent e (value in [2^e, 2^(e+1))) and p significand bits has
# ulp = 2^(e - p + 1). For bf16, p = 8.</details>
#
# <details><summary>Hint 2: getting the exponent in torch</summary>
# `mantissa, exponent = torch.frexp(x)` gives x = mantissa * 2^exponent with |mantissa| in
# [0.5, 1): the e of hint 1 is `exponent - 1`. Take the exponent of the value *as stored
# in bf16* (`values.to(torch.bfloat16).float()`): rounding can carry into the next power of 2.</details>
#
# <details><summary>Hint 3: putting it together</summary>
# half ulp = 2^(e - p) = `torch.ldexp(torch.ones_like(x), exponent - 1 - 8)`; then 0 where
# the value is 0. Check: a weight of 1.0 has half an ulp of 2^-8.</details>

# %% question="half_ulp_bf16"
def half_ulp_bf16(values: torch.Tensor) -> torch.Tensor:
    """Half a bf16 unit in the last place of each value (float32; 0 where the value is 0)."""
    ### BEGIN SOLUTION
    stored = values.detach().to(torch.bfloat16).float()
    _, exponent = torch.frexp(stored)
    half = torch.ldexp(torch.ones_like(stored), exponent - 9)
    return torch.where(stored == 0, torch.zeros_like(half), half)
    ### END SOLUTION


# %% tags=["checks"]
check(half_ulp_bf16, CASES["half_ulp_bf16"], name="half_ulp_bf16")

# %% [markdown]
# ## Q2 `predicted_unchanged_share` ({{points:predicted_unchanged_share}})
# The rounding predictor: given the weights before (`reference`) and after fine-tuning in
# float32 (`updated`), dicts of tensors with the same names and shapes, the share of all
# entries whose update `|updated - reference|` is **below** half a bf16 ulp of the reference
# value (an entry whose reference is 0 counts only if its update is exactly 0).

# %% question="predicted_unchanged_share"
def predicted_unchanged_share(reference: dict, updated: dict) -> float:
    """Share of entries whose update rounds away in bf16 (below half an ulp of the reference)."""
    ### BEGIN SOLUTION
    below = total = 0
    for name, r in reference.items():
        delta = (updated[name].float() - r.float()).abs()
        below += int((delta < half_ulp_bf16(r)).sum() + ((r == 0) & (delta == 0)).sum())
        total += r.numel()
    return below / total
    ### END SOLUTION


# %% tags=["checks"]
check(predicted_unchanged_share, CASES["predicted_unchanged_share"], name="predicted_unchanged_share")

# %% [markdown] hand_graded="a8.precision" points=4
# ## Q3 Precision or learning? ({{points:a8.precision}}, graded by hand)
# Lesson 6 prints the update sparsity of GRPO, SFT and DPO runs in bf16 and fp32 beside the
# half-ulp prediction. If the measured bf16 sparsity is close to the prediction, what does
# that say about the claim "RL fine-tunes a small subnetwork"? Which two experiment changes
# (learning rate, precision, weight magnitude) would separate rounding from a real sparse
# update, and what would you expect each to show?

# %% [markdown]
# ### BEGIN SOLUTION
# If rounding alone predicts the measured sparsity, the "subnetwork" is mostly an artifact of
# storage precision: the optimizer did propose changes to those entries, but they were
# smaller than half an ulp of large weights and rounded away; it is not evidence that only a
# small set of weights matters. Separate the two by (1) training in fp32 (or keeping fp32
# master weights): rounding-induced sparsity disappears, real sparsity stays; (2) raising the
# learning rate: updates exceed the half ulp and rounding-sparsity falls, while entries with
# zero gradient stay unchanged at any learning rate; and (3) looking at which entries stay
# unchanged by weight magnitude decile: rounding spares large weights first. Mukherjee et al.
# report sparsity persisting beyond precision effects and attribute it mainly to
# in-distribution data; lesson 6 shows how much of it rounding explains at the toy scale.
# ### END SOLUTION

# %% tags=["grading"]
from lessons.checking import Case


def update_case(name, shapes, scale, seed, points=1, group=""):
    gen = torch.Generator().manual_seed(seed)
    reference = {f"t{i}": torch.randn(s, generator=gen) * 4 for i, s in enumerate(shapes)}
    reference["t0"].view(-1)[0] = 0.0
    updated = {n: r + torch.randn(r.shape, generator=gen) * scale for n, r in reference.items()}
    updated["t0"].view(-1)[0] = 0.0
    return Case(name, (reference, updated), points=points, group=group)


def visible_cases():
    return {
        "half_ulp_bf16": [
            Case("1.0, 0.5, 3.0, -6.0 and 0 (0 stays 0)", (torch.tensor([1.0, 0.5, 3.0, -6.0, 0.0]),)),
            Case("1.999 rounds to 2.0 in bf16: take the exponent of the stored value",
                 (torch.tensor([1.999, 1e-3, -250.0]),)),
        ],
        "predicted_unchanged_share": [
            update_case("two tensors, updates ~1e-3 on weights ~4", [(8, 6), (6,)], 1e-3, 0),
            update_case("one tensor, updates ~1e-1: most entries change", [(5, 5)], 1e-1, 1),
        ],
    }


### BEGIN HIDDEN TESTS
def hidden_cases():
    gen = torch.Generator().manual_seed(5)
    return {
        "half_ulp_bf16": [Case("random magnitudes over 12 decades",
                               (torch.randn(40, generator=gen) * 10 ** torch.randint(-6, 6, (40,), generator=gen),),
                               points=2)],
        "predicted_unchanged_share": [update_case("three tensors, updates ~2e-2", [(7, 3), (3,), (4, 4)], 2e-2, 9)],
    }
### END HIDDEN TESTS
