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

# %% [markdown] lesson=2 minutes=35
# # Assignment 5: Is the network modular? Damage and modularity from an ablation matrix
# **{{points}}**, about 35 minutes.
#
# Lesson 2 finds one subnetwork per task, ablates each in turn and scores every task: an
# *ablation matrix* `scores[i][j]` = score of task j with subnetwork i ablated, beside the
# `baseline[j]` without ablation. A network is modular when ablating a task's subnetwork
# hurts that task and spares the others (Csordás et al. 2021, "Are Neural Nets Modular?").
#
# **Conventions** (the lab's, `sparsity/ablate.py`): plain Python lists of floats in and out;
# `chance[j]` is task j's chance score.
#
# Graded functions may use plain Python (and torch) only; the lab is not there while grading.

# %% tags=["checks"]
from checking import check, load_cases

CASES = load_cases("a5_modular_cases.pt")

# %% [markdown]
# ## Q1 `damage` ({{points:damage}})
# Normalised damage in [0, 1]: `(baseline - score) / (baseline - chance)`, clipped to [0, 1];
# 0 = the score is untouched, 1 = down to chance or below. A task whose baseline is at or
# below chance cannot be damaged: its damage is 0 (no division by zero).

# %% question="damage"
def damage(scores: list[list[float]], baseline: list[float], chance: list[float]) -> list[list[float]]:
    """Per ablated subnetwork (row) and task (column), the normalised damage."""
    ### BEGIN SOLUTION
    return [[min(1.0, max(0.0, (b - s) / (b - c))) if b > c else 0.0 for s, b, c in zip(row, baseline, chance)]
            for row in scores]
    ### END SOLUTION


# %% tags=["checks"]
check(damage, CASES["damage"], name="damage")

# %% [markdown]
# ## Q2 `modularity` ({{points:modularity}})
# With one subnetwork per task (row i belongs to task i): the mean damage of each subnetwork
# to its own task minus the mean damage to the other tasks. 1: perfectly modular; 0: no
# specialisation; below 0: anti-modular. Raise a `ValueError` for fewer than two tasks or a
# matrix that is not square.

# %% question="modularity"
def modularity(damage_matrix: list[list[float]]) -> float:
    """Mean diagonal damage minus mean off-diagonal damage of a square damage matrix."""
    ### BEGIN SOLUTION
    n = len(damage_matrix)
    if n < 2 or any(len(row) != n for row in damage_matrix):
        raise ValueError(f"need a square matrix of at least 2 tasks, got {n} rows")
    diagonal = sum(damage_matrix[i][i] for i in range(n)) / n
    off = sum(damage_matrix[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    return diagonal - off
    ### END SOLUTION


# %% tags=["checks"]
check(modularity, CASES["modularity"], name="modularity")

# %% [markdown] hand_graded="a5.pretraining" points=3
# ## Q3 Reading a matrix ({{points:a5.pretraining}}, graded by hand)
# Lesson 2 measured the modularity of networks trained from scratch and after pretraining.
# A student finds a modularity of 0.35 for one seed and 0.05 for another, with the same
# architecture. Name two reasons the number can differ this much between seeds, and what you
# would report instead of one number.

# %% [markdown]
# ### BEGIN SOLUTION
# The subnetworks are found by pruning from one random initialisation: which units a task
# recruits, and how much two tasks share, depends on the seed, and the damage of a shared
# unit counts against modularity. The measurement is also noisy: a task near chance has a
# small baseline - chance gap, so a small score change is a large normalised damage, and
# clipping at 0 and 1 hides the size of an effect. Report the mean and spread over several
# seeds (and the ablation matrices themselves), not one number; lesson 2 shows pretraining
# makes the structure more consistent across seeds, which is the claim to test.
# ### END SOLUTION

# %% tags=["grading"]
from lessons.checking import Case, Close


def visible_cases():
    return {
        "damage": [
            Case("2 subnetworks x 2 tasks, chance 0.25", ([[0.25, 0.9], [0.8, 0.4]], [0.95, 0.9], [0.25, 0.25]),
                 compare=Close()),
            Case("clipped: a score below chance is damage 1, above baseline damage 0",
                 ([[0.1, 0.99]], [0.9, 0.8], [0.25, 0.25]), compare=Close()),
            Case("a task at chance cannot be damaged (0, no division by zero)", ([[0.2, 0.5]], [0.25, 0.9], [0.25, 0.5]),
                 compare=Close()),
        ],
        "modularity": [
            Case("perfectly modular 2 x 2", ([[1.0, 0.0], [0.0, 1.0]],)),
            Case("3 tasks, some shared damage", ([[0.9, 0.2, 0.1], [0.3, 0.7, 0.0], [0.1, 0.4, 0.8]],),
                 compare=Close()),
        ],
    }


### BEGIN HIDDEN TESTS
def hidden_cases():
    return {
        "damage": [Case("3 x 3 with per-task chance levels",
                        ([[0.3, 0.8, 0.6], [0.7, 0.35, 0.55], [0.75, 0.7, 0.2]], [0.8, 0.75, 0.6], [0.1, 0.33, 0.2]),
                        compare=Close())],
        "modularity": [Case("anti-modular: each ablation hurts the other task", ([[0.1, 0.9], [0.8, 0.0]],),
                            compare=Close(), group="signs"),
                       Case("4 tasks", ([[0.5, 0.1, 0.0, 0.2], [0.0, 0.6, 0.1, 0.1], [0.2, 0.0, 0.9, 0.0],
                                         [0.1, 0.1, 0.1, 0.4]],), compare=Close(), group="signs", points=0)],
    }
### END HIDDEN TESTS
