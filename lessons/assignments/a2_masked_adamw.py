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

# %% [markdown] lesson=3 minutes=40
# # Assignment 2: The masked AdamW step
# **{{points}}**, about 40 minutes.
#
# To fine-tune a subnetwork, the entries outside the mask must **never move**. The naive
# way, zeroing their gradients, is wrong with AdamW: decoupled weight decay shrinks every
# entry whatever its gradient (Loshchilov & Hutter 2019). The lab's `MaskedAdamW`
# (`sparsity/optim.py`) computes the usual update and writes it back only where the mask
# is True, so a frozen entry keeps its exact bits for any number of steps.
#
# **Your task** ({{points:masked_adamw_step}}): one AdamW step for one tensor, with a mask.
#
# `masked_adamw_step(param, grad, mask, state, lr, betas, eps, weight_decay)` returns the
# new value of `param` (do not modify `param` in place). `state` is a dict you own: empty
# on the first call, then whatever you stored in it (the step count and the two moments).
# The update is `torch.optim.AdamW`'s, with bias correction:
#
# ```
# g = grad where mask, else 0          m = beta1 * m + (1 - beta1) * g
# t = t + 1                            v = beta2 * v + (1 - beta2) * g * g
# new = param * (1 - lr * weight_decay) - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)
# ```
# and then **only the masked entries take the new value**: everything else is returned
# bit-identical (`torch.equal`, not merely close).
#
# Grading: your function may use **torch (and math) only**; the lab's packages are not
# available while grading, and importing them in an answer cell scores 0.

# %%
import math

import torch

# %% tags=["checks"]
from checking import check, load_cases, with_mode

CASES = load_cases("a2_masked_adamw_cases.pt")

# %% [markdown]
# ## Q1 `masked_adamw_step` ({{points:masked_adamw_step}})

# %% question="masked_adamw_step" mode="steps"
def masked_adamw_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    mask: torch.Tensor,
    state: dict,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
) -> torch.Tensor:
    """One AdamW step that moves only the entries where ``mask`` is True; returns the new value."""
    ### BEGIN SOLUTION
    beta1, beta2 = betas
    grad = torch.where(mask, grad, 0.0)
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(param)
        state["exp_avg_sq"] = torch.zeros_like(param)
    state["step"] += 1
    step = state["step"]
    new = param.mul(1 - lr * weight_decay) if weight_decay != 0 else param.clone()
    state["exp_avg"].lerp_(grad, 1 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step_size = lr / (1 - beta1**step)
    denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
    new.addcdiv_(state["exp_avg"], denom, value=-step_size)
    return torch.where(mask, new, param)
    ### END SOLUTION


# %% tags=["checks"]
# with_mode(fn, "steps") runs your step over each case's list of gradients, one state dict throughout.
check(with_mode(masked_adamw_step, "steps"), CASES["masked_adamw_step"], name="masked_adamw_step")

# %% [markdown]
# ## Explore: the naive version drifts
# Zero the gradient of the frozen entries and run plain `torch.optim.AdamW`: how far do
# the frozen entries move in 200 steps, with and without weight decay?

# %% tags=["explore"]
gen = torch.Generator().manual_seed(0)
start = torch.randn(50, 50, generator=gen)
keep = torch.rand(50, 50, generator=gen) < 0.05
for wd in (0.0, 0.1):
    naive = torch.nn.Parameter(start.clone())
    opt = torch.optim.AdamW([naive], lr=1e-2, weight_decay=wd)
    mine, state = start.clone(), {}
    for _ in range(200):
        g = torch.randn(50, 50, generator=gen)
        naive.grad = torch.where(keep, g, 0.0)
        opt.step()
        mine = masked_adamw_step(mine, g, keep, state, lr=1e-2, weight_decay=wd)
    drift = (naive.detach() - start)[~keep].abs().max().item()
    exact = torch.equal(mine[~keep], start[~keep])
    print(f"weight_decay={wd}: naive frozen entries moved up to {drift:.4f}; yours unchanged bit for bit: {exact}")

# %% [markdown] hand_graded="a2.why" points=3
# ## Q2 Why a mask, not zero gradients ({{points:a2.why}}, graded by hand)
# Why is zeroing the gradient of the frozen entries not enough with AdamW? Would it be
# enough for SGD with momentum and no weight decay, if the mask never changes? What if the
# mask changes during training (as in RigL or LIFT's reselection)?

# %% [markdown]
# ### BEGIN SOLUTION
# AdamW's decoupled weight decay multiplies every entry by (1 - lr * wd) whatever its
# gradient, so frozen entries shrink toward zero every step. (Without weight decay, a zero
# gradient from the start leaves both moments at zero and the update is exactly 0.) For SGD
# with momentum and no weight decay, a frozen entry whose gradient was always zero has a
# zero momentum buffer, so it does not move: zeroing is enough *if the mask never changes*.
# When the mask changes, an entry that was trainable carries momentum (or Adam moments) into
# its frozen period and keeps moving; the write-back through the mask prevents that, and
# reselection should also reset or mask the state.
# ### END SOLUTION

# %% tags=["grading"]
from lessons.checking import Case, same


def adamw_case(name, shape, steps, density, seed, points=1, compare=None, group="", **hyper):
    gen = torch.Generator().manual_seed(seed)
    param = torch.randn(shape, generator=gen)
    grads = [torch.randn(shape, generator=gen) for _ in range(steps)]
    mask = torch.rand(shape, generator=gen) < density
    return Case(name, (param, grads, mask), dict(hyper), compare=compare(param, mask) if compare else None,
                points=points, group=group)


def visible_cases():
    return {"masked_adamw_step": [
        adamw_case("6x5, 1 step, full mask, weight_decay=0.01: plain torch.optim.AdamW", (6, 5), 1, 1.01, 0,
                   lr=1e-2, weight_decay=0.01),
        adamw_case("6x5, 5 steps, density 0.4, weight_decay=0", (6, 5), 5, 0.4, 1, lr=1e-2, weight_decay=0.0),
        adamw_case("6x5, 5 steps, density 0.4, weight_decay=0.1: weight decay must not touch frozen entries",
                   (6, 5), 5, 0.4, 2, points=2, lr=1e-2, weight_decay=0.1),
    ]}


### BEGIN HIDDEN TESTS
def frozen_bit_identical(param, mask):
    """A value check paired with the property: frozen entries keep their exact bits."""
    def compare(expected, got):
        problem = same(expected, got)
        if problem is None and not torch.equal(got[~mask], param[~mask]):
            return "frozen entries changed in their last bits: return param itself where the mask is False"
        return problem
    return compare


def hidden_cases():
    return {"masked_adamw_step": [
        adamw_case("7x3, 10 steps, density 0.3, lr=3e-2, weight_decay=0.2, betas=(0.8, 0.99)", (7, 3), 10, 0.3, 11,
                   compare=frozen_bit_identical, lr=3e-2, weight_decay=0.2, betas=(0.8, 0.99)),
        adamw_case("2x9, 10 steps, density 0.7, lr=1e-3, eps=1e-6, weight_decay=0.01", (2, 9), 10, 0.7, 12,
                   compare=frozen_bit_identical, lr=1e-3, eps=1e-6, weight_decay=0.01),
        adamw_case("5x4, 3 steps, all-False mask, weight_decay=0.05: nothing moves", (5, 4), 3, 0.0, 13,
                   compare=frozen_bit_identical, group="all frozen", lr=1e-2, weight_decay=0.05),
        adamw_case("5x4, 3 steps, density 0.5, weight_decay=0.05 (with the all-False case)", (5, 4), 3, 0.5, 14,
                   compare=frozen_bit_identical, group="all frozen", points=0, lr=1e-2, weight_decay=0.05),
    ]}
### END HIDDEN TESTS
