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

# %% [markdown] lesson=3 minutes=45
# # Assignment 1: Choosing the weights with a budget
# **{{points}}**, about 45 minutes.
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
# - the budget is `k = max(1, round(density * n))` entries, with Python's `round`, not `int`;
#   `scope="global"` counts `n` over all weight entries at once, `scope="per_tensor"` gives
#   every weight matrix its own budget;
# - ties go to the earlier entry (flattened order, tensors in model order): sort the scores
#   with `torch.sort(..., descending=True, stable=True)`.
#
# **Grading.** Your graded functions may use **torch only** (the lab's packages are not
# there while grading); keep everything a function needs inside its answer cells. The check
# cells run the visible cases; hidden cases (other shapes, ties, tiny budgets) are graded later.

# %%
import torch
from torch import nn

# %% tags=["checks"]
from checking import check, load_cases

CASES = load_cases("a1_masks_cases.pt")

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
# ## Q1 `magnitude_mask` ({{points:magnitude_mask}})
# Score each weight entry by `|w|` and keep the top share. (Han et al. 2015 prune the
# *smallest*; a magnitude selector trains the *largest*.)

# %% question="magnitude_mask"
def magnitude_mask(model: nn.Module, density: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """The largest-|w| entries of the weight matrices, ``density`` of them, globally or per tensor."""
    ### BEGIN SOLUTION
    scores = {n: p.detach().abs() for n, p in model.named_parameters() if p.ndim >= 2}
    return top_k_mask(model, scores, density, scope)
    ### END SOLUTION


# %% tags=["checks"]
check(magnitude_mask, CASES["magnitude_mask"], name="magnitude_mask")

# %% [markdown]
# ## Q2 `random_mask` ({{points:random_mask}})
# Random scores, reproducible from `seed`: one `torch.Generator().manual_seed(seed)`, then
# `torch.rand(w.shape, generator=gen)` for each weight matrix in model order.

# %% question="random_mask"
def random_mask(model: nn.Module, density: float, seed: int = 0, scope: str = "global") -> dict[str, torch.Tensor]:
    """A uniformly random ``density`` share of the weight entries, reproducible from ``seed``."""
    ### BEGIN SOLUTION
    gen = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(p.shape, generator=gen) for n, p in model.named_parameters() if p.ndim >= 2}
    return top_k_mask(model, scores, density, scope)
    ### END SOLUTION


# %% tags=["checks"]
check(random_mask, CASES["random_mask"], name="random_mask")

# %% [markdown]
# ## Explore: where does a global budget go?
# A bottleneck MLP (100-20-20-100, lesson 1's shape) has two big matrices and a small one.
# Compare how many entries each weight matrix gets under the two scopes (this cell uses the lab).

# %% tags=["explore"]
from toys.teacher_student import make_mlp

model = make_mlp((100, 20, 20, 100), "relu", seed=0)
for scope in ("global", "per_tensor"):
    mask = magnitude_mask(model, 0.05, scope=scope)
    counts = {n: int(m.sum()) for n, m in mask.items() if m.ndim >= 2}
    print(f"{scope:>10}: " + ", ".join(f"{n} {c}" for n, c in counts.items()))

# %% [markdown] hand_graded="a1.scope" points=3
# ## Q3 Global vs per-tensor budgets ({{points:a1.scope}}, graded by hand)
# Run the cell above. Which weight matrices gain entries under a global magnitude budget and
# which lose them, and why (think of how the lab initialises each layer)? In lesson 1 the
# task needed W2 to change: does the global budget serve that task well here? Use the counts.

# %% [markdown]
# ### BEGIN SOLUTION
# Measured on lesson 1's 100-20-20-100 MLP at density 0.05: global magnitude gives fc1 3,
# fc2 36, fc3 181 entries; per-tensor gives 100, 20, 100. With LeCun initialisation an entry's
# scale is 1/sqrt(fan-in): fc2 and fc3 (fan-in 20) have entries about sqrt(5) = 2.2x larger than
# fc1's (fan-in 100), so they win the global contest and fc1 is nearly starved. The budget follows
# the weights' scale, not the need for change: W2, the layer the task needs, does gain (36 vs 20),
# but fc3, which needs no change, takes 181 of the 220 entries, and fc1 gets almost nothing.
# Per-tensor budgets give every layer a share, at the price of spending entries where none are
# needed. Full marks: the counts, the fan-in explanation, and that W2 gains but most of the
# budget goes to fc3 (an answer claiming W2 is starved contradicts the measurement).
# ### END SOLUTION

# %% tags=["grading"]
from lessons.checking import Case
from toys.teacher_student import make_mlp


def mask_cases(widths, densities, scopes, model_seed=0, **extra):
    """A case per (density, scope) on a fresh MLP; ``extra`` (e.g. ``seed``) goes to the function."""
    tag = "".join(f", {k}={v}" for k, v in extra.items())
    return [Case(f"widths={widths}, density={d}, scope={s}{tag}", (make_mlp(widths, "relu", model_seed), d),
                 {"scope": s, **extra}) for d in densities for s in scopes]


def visible_cases():
    return {
        "magnitude_mask": [
            *mask_cases((6, 7, 5), (0.3,), ("global", "per_tensor")),
            Case("the budget is round(0.45 * 77) = 35, not int(34.65) = 34: use round()",
                 (make_mlp((6, 7, 5), "relu", 0), 0.45), {"scope": "global"}),
            Case("per tensor: round(0.45 * 42) = 19 and round(0.45 * 35) = 16, not int(): use round()",
                 (make_mlp((6, 7, 5), "relu", 0), 0.45), {"scope": "per_tensor"}),
        ],
        "random_mask": mask_cases((6, 7, 5), (0.25,), ("global",), seed=0),
    }


### BEGIN HIDDEN TESTS
def tie_model():
    model = make_mlp((4, 4, 2), "relu", 0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_((torch.arange(p.numel()) % 5 - 2).float().view(p.shape))
    return model


def hidden_cases():
    return {
        "magnitude_mask": [
            *mask_cases((9, 5, 7), (0.17,), ("global",), model_seed=100),
            *mask_cases((4, 11, 3), (0.62,), ("per_tensor",), model_seed=101),
            Case("integer weights with ties go to the earlier entry, density=0.5, global", (tie_model(), 0.5),
                 {"scope": "global"}),
            Case("a tiny budget still selects max(1, round(0.001 * 35)) = 1 entry per tensor",
                 (make_mlp((5, 7), "relu", 4), 0.001), {"scope": "per_tensor"}),
        ],
        "random_mask": [
            *mask_cases((10, 10), (0.093,), ("global",), model_seed=102, seed=11),
            *mask_cases((3, 8, 8, 2), (0.35,), ("per_tensor",), model_seed=103, seed=12),
        ],
    }
### END HIDDEN TESTS
