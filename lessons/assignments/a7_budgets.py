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

# %% [markdown] lesson=5 minutes=40
# # Assignment 7: Fair comparisons: the LoRA-equal budget and the area under a frontier
# **{{points}}**, about 40 minutes.
#
# Lesson 5 compares full fine-tuning, sparse fine-tuning and LoRA on small transformers.
# Two things make that comparison fair: every method trains the **same number of entries**
# (a sparse mask gets exactly as many as a LoRA adapter of rank r would train), and methods
# are compared by their **learning-forgetting frontier**, not one run (Biderman et al. 2024).

# %% tags=["checks"]
from checking import check, load_cases

CASES = load_cases("a7_budgets_cases.pt")

# %% [markdown]
# ## Q1 `lora_equal_count` ({{points:lora_equal_count}})
# A LoRA adapter of rank r on an `m x n` matrix trains `B (m x r)` and `A (r x n)`. Given the
# shapes of the adapted matrices, return the number of entries a sparse mask gets to match
# it: per matrix the adapter's count, but never more than the matrix has (a mask cannot
# select more entries than exist), summed.

# %% question="lora_equal_count"
def lora_equal_count(shapes: list[tuple[int, int]], rank: int) -> int:
    """Total trainable entries of a LoRA-equal sparse budget over matrices of these shapes."""
    ### BEGIN SOLUTION
    if rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank}")
    return sum(min(rank * (m + n), m * n) for m, n in shapes)
    ### END SOLUTION


# %% tags=["checks"]
check(lora_equal_count, CASES["lora_equal_count"], name="lora_equal_count")

# %% [markdown]
# ## Q2 `frontier_area` ({{points:frontier_area}})
# Each run is a point `(retention, target)` in the unit square, higher is better on both.
# The frontier keeps the points no other point beats on both axes; the method's score is the
# area of the union of the boxes `[0, retention] x [0, target]` of its points (points off the
# frontier add nothing, so you may skip computing the frontier itself).

# %% question="frontier_area"
def frontier_area(points: list[tuple[float, float]]) -> float:
    """Area of the union of the boxes [0, x] x [0, y] over the points (x, y)."""
    ### BEGIN SOLUTION
    boxes = sorted(points)
    area, previous_x = 0.0, 0.0
    for i, (x, _) in enumerate(boxes):
        area += (x - previous_x) * max(y for _, y in boxes[i:])
        previous_x = x
    return area
    ### END SOLUTION


# %% tags=["checks"]
check(frontier_area, CASES["frontier_area"], name="frontier_area")

# %% [markdown] hand_graded="a7.budget" points=4
# ## Q3 Matched budgets ({{points:a7.budget}}, graded by hand)
# In lesson 5's fast mode the printed LoRA budget (4,096 entries) and the sparse one
# (1,230) differ. Use your `lora_equal_count` to say when a LoRA-equal mask cannot match the
# adapter's count, and why comparing a method at a budget it was not given is unfair to one
# side. Then: why compare frontiers (areas) rather than each method's best single run?

# %% [markdown]
# ### BEGIN SOLUTION
# The adapter trains r(m + n) entries per matrix; when r(m + n) > mn (small matrices or a
# large rank) the mask is capped at mn, the whole matrix, so the sparse method trains fewer
# entries than LoRA; and a budget that excludes some tensors (embeddings, norms) changes the
# totals too. A method with more trainable entries can fit the target better and forget more,
# so comparing at unequal budgets mixes the method with its capacity. One best run hides the
# trade-off: a higher learning rate buys target score with forgetting. Each method's
# frontier over learning rates and lengths shows every trade-off it can reach; its area
# summarises it, and two methods differ only where their frontiers (over seeds) separate.
# ### END SOLUTION

# %% tags=["grading"]
from lessons.checking import Case, Close


def visible_cases():
    return {
        "lora_equal_count": [
            Case("two 64x64 matrices, rank 4", ([(64, 64), (64, 64)], 4)),
            Case("a 4x6 matrix at rank 8: capped at its 24 entries", ([(4, 6)], 8)),
        ],
        "frontier_area": [
            Case("one point (0.5, 0.8): a box", ([(0.5, 0.8)],), compare=Close()),
            Case("three points, one dominated", ([(0.2, 0.9), (0.6, 0.5), (0.1, 0.4)],), compare=Close()),
        ],
    }


### BEGIN HIDDEN TESTS
def hidden_cases():
    return {
        "lora_equal_count": [Case("a transformer block's shapes at rank 2",
                                  ([(128, 32), (32, 128), (32, 32), (32, 32), (96, 32)], 2))],
        "frontier_area": [Case("unsorted points with equal retentions",
                               ([(0.7, 0.3), (0.3, 0.7), (0.7, 0.2), (0.5, 0.5), (0.9, 0.1)],), compare=Close())],
    }
### END HIDDEN TESTS
