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

# %% [markdown] lesson=4 minutes=45
# # Assignment 6: One round of iterative magnitude pruning with rewinding
# **{{points}}**, about 45 minutes. Q1 is given as the papers give it: work out the details.
#
# Lesson 4 prunes a trained network, then retrains the surviving weights with the pattern
# held fixed. Iterative magnitude pruning (IMP) does this in rounds, and *rewinding* restarts
# each round's training from early weights instead of the trained ones.

# %%
import torch

# %% tags=["checks"]
from checking import check, load_cases

CASES = load_cases("a6_prune_rewind_cases.pt")

# %% [markdown]
# ## Q1 `imp_round` ({{points:imp_round}}): from the papers' description
# Frankle & Carbin (2019, "The Lottery Ticket Hypothesis"): *"randomly initialize a neural
# network; train it; prune p% of the parameters, creating a mask m; reset the remaining
# parameters to their values in the initialization"*, and iteratively: *"each round prunes
# p^(1/n)% of the weights that survive the previous round"*. Frankle et al. (2020, "Linear Mode
# Connectivity and the Lottery Ticket Hypothesis") rewind to the weights of an early step
# instead of the initialization. Write one round:
#
# `imp_round(trained, keep, rewind_to, fraction)` takes dicts from tensor name to tensor (the
# trained weights, the current keep-masks (bool), the weights to rewind to) and returns
# `(new_keep, rewound)`. Open the hints one at a time only if you are stuck.
#
# <details><summary>Hint 1: what is pruned</summary>
# Only weight matrices (2-D tensors) are pruned; biases keep every entry (their keep-mask is
# all True) and are rewound too. Prune layer by layer: each matrix loses its own share.</details>
#
# <details><summary>Hint 2: how many, which</summary>
# In each matrix, of the `s` entries that survive (`keep` True), prune the
# `round(fraction * s)` with the smallest `|trained|`; ties go to the earlier entry (flattened
# order), which is what `torch.sort(..., stable=True)` of `|w|` ascending gives.</details>
#
# <details><summary>Hint 3: the rewound weights</summary>
# `rewound[name] = rewind_to[name] * new_keep[name]` (pruned entries are 0); return new
# tensors, leave the inputs unchanged.</details>

# %% question="imp_round"
def imp_round(trained: dict, keep: dict, rewind_to: dict, fraction: float) -> tuple[dict, dict]:
    """One IMP round: prune ``fraction`` of each matrix's surviving entries by |trained|, rewind the rest."""
    ### BEGIN SOLUTION
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    new_keep, rewound = {}, {}
    for name, w in trained.items():
        mask = keep[name].clone()
        if w.ndim >= 2:
            alive = mask.flatten().nonzero().flatten()
            count = round(fraction * alive.numel())
            order = torch.sort(w.detach().abs().flatten()[alive], stable=True).indices[:count]
            flat = mask.flatten()
            flat[alive[order]] = False
            mask = flat.view(w.shape)
        new_keep[name] = mask
        rewound[name] = rewind_to[name] * mask
    return new_keep, rewound
    ### END SOLUTION


# %% tags=["checks"]
check(imp_round, CASES["imp_round"], name="imp_round")

# %% [markdown]
# ## Q2 `sparsity_after` ({{points:sparsity_after}})
# Each round prunes `fraction` of the survivors. After `rounds` rounds, what share of a
# matrix's entries is pruned? (A number; ignore rounding.) IMP papers choose the per-round
# fraction from a target: write `sparsity_after(fraction, rounds)`.

# %% question="sparsity_after"
def sparsity_after(fraction: float, rounds: int) -> float:
    """The pruned share after ``rounds`` rounds that each prune ``fraction`` of the survivors."""
    ### BEGIN SOLUTION
    return 1.0 - (1.0 - fraction) ** rounds
    ### END SOLUTION


# %% tags=["checks"]
check(sparsity_after, CASES["sparsity_after"], name="sparsity_after")

# %% [markdown] hand_graded="a6.rewind" points=3
# ## Q3 Why rewind ({{points:a6.rewind}}, graded by hand)
# Lesson 4 compares recovery from the trained weights with rewinding. Why does rewinding to
# an early step (rather than to the initialization) matter for larger networks, according to
# Frankle et al. 2020, and what does that say about which weights a sparse fine-tune should start from?

# %% [markdown]
# ### BEGIN SOLUTION
# Frankle et al. 2020 find that for larger networks, sparse subnetworks reset to the
# initialization do not train to full accuracy, but reset to weights from early in training
# (after the network has become stable to SGD noise, i.e. linearly mode connected) they do:
# the early weights already hold structure the mask relies on. For sparse fine-tuning this
# says the starting point matters as much as the mask: start from the pretrained (trained)
# weights the mask was chosen on, not from a fresh initialization.
# ### END SOLUTION

# %% tags=["grading"]
from lessons.checking import Case, Close


def imp_case(name, shapes, fraction, seed, density=1.0, points=1, group=""):
    gen = torch.Generator().manual_seed(seed)
    trained = {f"t{i}": torch.randn(s, generator=gen) for i, s in enumerate(shapes)}
    keep = {n: torch.rand(w.shape, generator=gen) < density if w.ndim >= 2 else torch.ones(w.shape, dtype=torch.bool)
            for n, w in trained.items()}
    rewind = {n: torch.randn(w.shape, generator=gen) for n, w in trained.items()}
    return Case(name, (trained, keep, rewind, fraction), points=points, group=group)


def visible_cases():
    return {
        "imp_round": [
            imp_case("one 4x5 matrix and a bias, everything alive, fraction 0.2", [(4, 5), (4,)], 0.2, 0),
            imp_case("two matrices half pruned already, fraction 0.3: round(0.3 * survivors), not of all entries",
                     [(6, 4), (3, 6)], 0.3, 1, density=0.5),
        ],
        "sparsity_after": [Case("20% per round, 3 rounds", (0.2, 3), compare=Close(), points=0, group="rounds"),
                           Case("50% per round, 1 round", (0.5, 1), compare=Close(), group="rounds")],
    }


### BEGIN HIDDEN TESTS
def hidden_cases():
    ties = ({"w": torch.tensor([[1.0, -1.0, 2.0, 1.0], [0.5, -0.5, 3.0, 1.0]])},
            {"w": torch.ones(2, 4, dtype=torch.bool)}, {"w": torch.arange(8.0).view(2, 4)}, 0.5)
    return {
        "imp_round": [
            imp_case("three matrices and biases, fraction 0.45", [(5, 7), (7,), (7, 3), (3,), (2, 3)], 0.45, 7,
                     density=0.8),
            Case("ties: the earlier entry is pruned first", ties),
        ],
        "sparsity_after": [Case("10% per round, 10 rounds", (0.1, 10), compare=Close())],
    }
### END HIDDEN TESTS
