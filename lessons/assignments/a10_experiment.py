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

# %% [markdown] lesson=1 minutes=75
# # Assignment 10: Run the teacher-student experiment and interpret it
# **{{points}}**, about 75 minutes (two training runs of a few minutes each included).
#
# Lesson 1's question: the student copies W1 and W3 from the teacher and re-initialises W2,
# so only W2 *needs* to change. Which layer does fine-tuning actually move? You run the lab's
# experiment (`toys.teacher_student`, this needs the lab installed: `pip install -e .` in its
# repository), report your numbers, plot them, and explain them.
#
# The graded functions may use torch and matplotlib only (the lab is not there while
# grading): Q1 returns the numbers you measured, typed in.

# %%
import matplotlib.pyplot as plt

# %% tags=["checks"]
from checking import check, load_cases

CASES = load_cases("a10_experiment_cases.pt")

# %% [markdown]
# ## Run it
# The lab's default configuration (100-20-20-100 ReLU MLPs, Adam, 5,000 steps, seed 0),
# without the penalty (`lam=0`) and with an L1 pull toward the start (`lam=1e-3`).
# `update_share` is each tensor's share of the total L1 update.

# %% tags=["explore"]
from toys.teacher_student import default_config, train

runs = {lam: train(default_config(lam=lam), progress=True) for lam in (0.0, 1e-3)}
for lam, run in runs.items():
    print(f"lam={lam:g}: " + ", ".join(f"{n} {s:.3f}" for n, s in run.update_share.items() if n.startswith("W")))

# %% [markdown]
# ## Q1 `measured_share` ({{points:measured_share}})
# Type in what you measured: `measured_share(lam, tensor)` returns the share of the update
# of `tensor` ("W1", "W2" or "W3") in the run with `lam` ("0" or "1e-3"), as printed above.
# The check accepts any value in the range a correct run gives (it does not need 4 digits).

# %% question="measured_share"
def measured_share(lam: str, tensor: str) -> float:
    """The share of the L1 update of ``tensor`` measured in the run with ``lam``."""
    ### BEGIN SOLUTION
    measured = {"0": {"W1": 0.384, "W2": 0.292, "W3": 0.310}, "1e-3": {"W1": 0.0017, "W2": 0.949, "W3": 0.0066}}
    return measured[lam][tensor]
    ### END SOLUTION


# %% tags=["checks"]
check(measured_share, CASES["measured_share"], name="measured_share")

# %% [markdown]
# ## Q2 `plot_shares` ({{points:figure_summary}})
# Draw one run as a bar chart: one bar per weight matrix (labelled "W1", "W2", "W3", in that
# order), the x axis labelled (the tensor), the y axis saying it is the *share* of the
# update, and a title naming lambda and its value. Return the figure. The grader reads your
# figure through `figure_summary` (given; do not change it).

# %% question="figure_summary"
def plot_shares(shares: dict[str, float], lam: str):
    """A bar chart of each weight matrix's share of the update in the run with ``lam``."""
    ### BEGIN SOLUTION
    fig, ax = plt.subplots(figsize=(4, 3))
    names = [n for n in ("W1", "W2", "W3") if n in shares]
    ax.bar(names, [shares[n] for n in names])
    ax.set_xlabel("weight matrix")
    ax.set_ylabel("share of the L1 update")
    ax.set_title(f"update shares, lambda = {lam}")
    return fig
    ### END SOLUTION


def figure_summary(shares: dict[str, float], lam: str) -> dict:
    """What the grader reads from your figure: labels, title, bars."""
    fig = plot_shares(shares, lam)
    fig.canvas.draw()
    ax = fig.axes[0]
    summary = {"x axis labelled": bool(ax.get_xlabel().strip()),
               "y axis says share": "share" in ax.get_ylabel().lower(),
               "title names lambda and its value": ("lambda" in ax.get_title().lower() or "λ" in ax.get_title())
               and lam in ax.get_title(),
               "bar labels": [t.get_text() for t in ax.get_xticklabels()],
               "bar heights": [round(float(p.get_height()), 6) for p in ax.patches]}
    plt.close(fig)
    return summary


# %% tags=["checks"]
check(figure_summary, CASES["figure_summary"], name="figure_summary")

# %% [markdown] hand_graded="a10.interpret" points=6
# ## Q3 Interpret ({{points:a10.interpret}}, graded by hand)
# Using your numbers: (a) at lambda = 0, does the update tell you which layer needed to
# change? Why not (think of what Adam does with a small but consistent gradient)? (b) What
# changes at lambda = 1e-3, and what does the L1 pull do to a tensor whose change does not pay
# for itself? (c) One limitation: is W2 now equal to the teacher's W2? How would you check?

# %% [markdown]
# ### BEGIN SOLUTION
# (a) No: at lambda = 0 the shares were W1 0.38, W2 0.29, W3 0.31 (seed 0), so W2, the only
# layer that needed to change, moves *least*. Adam normalises each entry's step, so every
# entry with a consistent gradient moves about the learning rate per step: W1 and W3 adjust to
# the re-initialised W2 and accumulate as much L1 change as W2 does. (b) With lambda = 1e-3,
# W2 holds 0.95 of the update and W1 / W3 under 0.01: the penalty makes every change cost
# lambda per unit, so changes that do not reduce the loss by more than they cost are pulled
# back to the start, and only the needed one survives. (c) No: the optimum is not unique (the
# seed file reports W2 does not converge to the teacher's); compare the distance of W2 to
# the teacher's W2 (the lab's `distance_to_teacher`) with its distance to init, or the
# function the layer computes on data rather than its entries.
# ### END SOLUTION

# %% tags=["grading"]
from lessons.checking import Case, Within


def visible_cases():
    ranges = {("0", "W1"): (0.25, 0.5), ("0", "W2"): (0.15, 0.4), ("0", "W3"): (0.2, 0.45),
              ("1e-3", "W1"): (0.0, 0.05), ("1e-3", "W2"): (0.85, 1.0), ("1e-3", "W3"): (0.0, 0.05)}
    return {
        "measured_share": [Case(f"lambda={lam}, {tensor}", (lam, tensor),
                                compare=Within(low, high, f"{tensor}'s share at lambda={lam}"),
                                points=3 if (lam, tensor) == ("0", "W1") else 0, group="your measurements")
                           for (lam, tensor), (low, high) in ranges.items()],
        "figure_summary": [Case("lambda=1e-3's shares", ({"W1": 0.002, "W2": 0.949, "W3": 0.007}, "1e-3"), points=2)],
    }


### BEGIN HIDDEN TESTS
def hidden_cases():
    return {"figure_summary": [Case("other shares, lambda=0", ({"W1": 0.4, "W2": 0.25, "W3": 0.35}, "0"), points=2)]}
### END HIDDEN TESTS
