# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 1: Which layer needs fine-tuning?
#
# When we fine-tune a model, do we need to update **all** of it? A tempting picture for
# language models: early layers map tokens to a latent space, late layers map it back,
# and only the middle does the task-specific "reasoning". If that were true, fine-tuning
# the middle alone would suffice. How could we *test* it? (Ziming Liu, "Fine-tuning with
# sparse updates? A toy teacher-student setup", 2026.)
#
# 1. **Fine-tune every subset of layers** and compare: exponentially many runs.
# 2. **Train normally and look at how far each layer moved.** Cheap, but the optimizer
#    decides how far things move: Adam takes steps of about the learning rate whatever the
#    gradient's size, so a layer that does not *need* to change may still move a lot.
# 3. **Train with a penalty on the distance to the start** (L1, which favours sparse
#    updates) and look again: now moving costs something, and only what the task truly
#    needs should move.
#
# We test 2 and 3 in a world where we *know* the answer.
#
# **By the end you can** explain why raw update sizes mislead under Adam; write the proximal
# L1 step toward the start and each tensor's share of the update yourself; and read a
# penalised run to say which layer a task needed.
#
# **Prerequisites**: PyTorch basics (modules, `named_parameters`, an optimizer step); the
# L1 norm; what Adam does with a gradient (a step of about the learning rate per entry).
#
# **Time**: reading and exercises about 45 min (an estimate). Running, measured on the lab's
# 2-core machine shared with other jobs (`benchmarks/results/lesson_times.md`): about 2 min in
# fast mode (`LAB_FAST=1`), about 11 min in full mode.
#
# **The setup.** A *teacher* MLP (100 -> 20 -> 20 -> 100, ReLU, random weights) labels
# standard-normal inputs. A *student* of the same shape copies the teacher's first and
# third layers and has its second layer re-drawn. The student plays a pretrained model,
# the teacher a fine-tuning data set: **only W2 (and b2) need to change.** The student is
# trained on MSE + lambda * sum |theta - theta_init|, and we record, every step, each
# tensor's L1 distance to the student's own start and to the teacher.
#
# Everything below runs the lab's own code: `toys/teacher_student.py` for the toy,
# `sparsity/` for the penalty, the optimizer and the metrics.

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt
from dataclasses import replace
from IPython.display import display
from tqdm.auto import tqdm

import torch
from lessons.exercises import lesson01 as ex
from lessons.exercises import reveal, yours_or_library
from lessons.exercises.lesson01 import check_prox_l1_step, check_update_shares
from sparsity.fastmode import fast_mode
from sparsity.threads import use_threads
from sparsity.metrics import update_sparsity
from toys.teacher_student import default_config, format_table, label, plot_run, plot_update_shares, train
from toys.widgets import run_on_click, wide

FAST = fast_mode()  # LAB_FAST=1 shrinks the runs so the notebook executes in CI
use_threads()  # one torch thread for the lesson's small models (LAB_THREADS=N: more)
base = default_config(fast=FAST)
print(f"fast mode: {FAST}; {base.steps} steps, widths {base.widths}, Adam lr {base.learning_rate}")

# %% [markdown]
# ## Method 2: train normally (lambda = 0) and look at the update sizes
#
# **Predict before you run.** Only W2 differs from the teacher. With plain Adam and no
# penalty, which weight matrix will hold the largest share of the total L1 change from the
# start: W1, W2 or W3? Write your guess below; the next cells check it.

# %%
prediction = None  # your guess: "W1", "W2" or "W3"

# %%
plain = train(replace(base, lam=0.0))
plot_run(plain)
plt.show()
print(format_table(plain))

# %% [markdown]
# ### Exercise 1.1: each tensor's share of the update (difficulty 1/3, importance 3/3)
# "How far did each layer move?" is the question of method 2. Write it: for every
# parameter, the L1 norm of its change from the start, `sum |theta - theta_0|`, divided by
# the sum of that norm over all parameters. When nothing moved, every share is 0. The check
# compares your function with the lab's (`sparsity.metrics.update_norms`); once it passes,
# the next cell reads this run with *your* function.

# %%
def update_shares(model, start):
    """{parameter name: its share of the model's total L1 change from start}.

    model: an nn.Module; start: {parameter name: tensor} (the weights at the start).
    The shares sum to 1, or are all 0.0 (Python floats) when nothing moved.
    """
    raise NotImplementedError("your code here")


# %% tags=["raises-exception"]
check_update_shares(update_shares)

# %% [markdown]
# <details><summary>Hint</summary>
#
# Loop over `model.named_parameters()`; `(p.detach() - start[name]).abs().sum().item()` is one
# tensor's L1 change. Divide by the total only when the total is above 0.
# </details>
#
# <details><summary>Solution</summary>
#
# ```python
# def update_shares(model, start):
#     l1 = {name: (p.detach() - start[name]).abs().sum().item() for name, p in model.named_parameters()}
#     total = sum(l1.values())
#     return {name: v / total if total > 0 else 0.0 for name, v in l1.items()}
# ```
# </details>
#
# Read the middle panel: did every tensor move? Did the weights that did *not* need to
# change move less than the one that did? The numbers, measured just now with your function
# (or the lab's, until yours passes):

# %%
shares_of = yours_or_library(ex, "update_shares", update_shares)
share0 = {label(name): share for name, share in shares_of(plain.student, plain.init).items()}
others = {k: share0[k] for k in ("W1", "W3")}
verdict = "less" if share0["W2"] < min(others.values()) else "not clearly more" if share0["W2"] < 0.5 else "more"
print(f"lambda = 0: W2 holds {share0['W2']:.0%} of the L1 update; W1 {share0['W1']:.0%}, W3 {share0['W3']:.0%}.")
print(f"W2 moved {verdict} than the layers that needed no change: "
      + ("raw update sizes mislead." if verdict != "more" else "here the raw sizes do point at W2."))
reveal(prediction, max(("W1", "W2", "W3"), key=share0.get), "Which matrix holds the largest share at lambda = 0?")

# %% [markdown]
# ## Method 3: penalise the distance to the start (lambda = 1e-3)

# %%
sparse = train(replace(base, lam=1e-3))
plot_run(sparse)
plt.show()
print(format_table(sparse))

# %% [markdown]
# Watch W1 and W3 in the middle panel: Adam moves everything early, then the penalty pulls
# what the task does not need back toward its start. Where does the update sit at the end,
# and how far did the loss fall? The numbers, measured just now:

# %%
plot_update_shares({"lambda = 0": plain, "lambda = 1e-3": sparse})
plt.show()
print(f"lambda = 1e-3: W2 holds {sparse.update_share['W2']:.1%} of the update; "
      f"MSE fell {sparse.initial_loss / sparse.final_loss:.0f}x ({sparse.initial_loss:.3g} -> {sparse.final_loss:.3g}).")
print(f"test MSE: lambda = 0 {plain.test_loss:.3g}, lambda = 1e-3 {sparse.test_loss:.3g} "
      f"({sparse.test_loss / plain.test_loss:.0f}x the unpenalised run's): the penalty costs fit.")
print(f"W2's distance to the teacher's W2 at the end: {sparse.distance_to_teacher['W2']:.1f} "
      f"(from {sparse.history.to_teacher['W2'][0]:.1f} at the start): it moves toward the teacher without becoming it.")

# %% [markdown]
# **W2 does not converge to the teacher's W2.** It ends only part of the way there (compare
# its distance to the teacher at the end with the one at the start, printed above). Is the
# optimum unique? The loss fell by the factor printed above, but the penalised run's test MSE
# stays above the unpenalised one's: the L1 pull trades fit for a small, local change.
# W2 acts on ReLU features that are sparse and correlated, so many W2 produce nearly the same
# outputs, and the L1 penalty picks one close to the student's own start, not the teacher's.
#
# ## Is it robust? Other seeds
# One seed can be lucky. Here are other teachers and students, same recipe:

# %%
seeds = (0, 1) if FAST else (0, 1, 2, 3)
largest = []
for seed in tqdm(seeds, desc="seeds", leave=False):
    config = replace(base, lam=1e-3, seed=seed)
    run = sparse if config == sparse.config else train(config, progress=False)  # seed 0 is the run above
    largest.append(max(run.update_share, key=run.update_share.get))
    shares = ", ".join(f"{k} {v:.2f}" for k, v in run.update_share.items())
    print(f"seed {seed}: largest share {largest[-1]}; {shares}")
print(f"W2 holds the largest share on {largest.count('W2')} of {len(seeds)} seeds")

# %% [markdown]
# Read the shares seed by seed: does W2 take the largest one every time, and where does the
# rest sit? Where W3 and b3 keep a few percent, the penalised optimum is a small change of
# the output layer plus W2; train longer (the widget below) to see whether it goes away.
# "Only the middle layer moves" is a tendency to check, not a law.
#
# ## The Adam artifact: loss term vs proximal step
# With the penalty as a loss term, Adam normalises its gradient like any other: an entry
# that should sit still instead hops around its start by about the learning rate, so it is
# never *exactly* unchanged. A proximal step (soft-threshold the change toward the start
# after each optimizer step, at Adam's per-entry step size) puts exact zeros there.
#
# ### Exercise 1.2: the proximal L1 step (difficulty 2/3, importance 3/3)
# The proximal operator of `t * |theta - theta_0|_1` (Parikh & Boyd 2014) *soft-thresholds*
# the change: a change smaller than `t` in size becomes exactly 0 (the weight goes back to
# its start), a larger one shrinks by `t` toward the start. Write it for one tensor.

# %%
def prox_l1_step(weight, start, threshold):
    """The weight after one proximal L1 step toward start: a new tensor of weight's shape and dtype.

    Each entry's change d = weight - start becomes sign(d) * max(|d| - threshold, 0).
    threshold: a float >= 0. Do not modify weight in place.
    """
    raise NotImplementedError("your code here")


# %% tags=["raises-exception"]
check_prox_l1_step(prox_l1_step)

# %% [markdown]
# <details><summary>Hint 1</summary>
#
# `torch.sign(d) * (d.abs() - threshold).clamp_min(0)` is the shrunk change; add it back to `start`.
# </details>
#
# <details><summary>Hint 2</summary>
#
# A change exactly equal to the threshold must end exactly at the start: `clamp_min(0)` gives 0 there.
# </details>
#
# <details><summary>Solution</summary>
#
# ```python
# def prox_l1_step(weight, start, threshold):
#     change = weight - start
#     return start + torch.sign(change) * (change.abs() - threshold).clamp_min(0)
# ```
# </details>
#
# Your step at work on the loss-term run: its frozen entries hop around their start by
# about the learning rate, so **one** proximal step with a threshold of one learning rate
# puts most of them back exactly (W2's large change only shrinks a little):

# %%
prox_step = yours_or_library(ex, "prox_l1_step", prox_l1_step)
for name, p in sparse.student.named_parameters():
    once = prox_step(p.detach(), sparse.init[name], base.learning_rate)
    before = (p.detach() == sparse.init[name]).float().mean().item()
    after = (once == sparse.init[name]).float().mean().item()
    print(f"{label(name):>3}: exactly at the start {before:.0%} -> {after:.0%} after one proximal step")

# %% [markdown]
# The lab's training applies that step after *every* Adam step (`penalty="prox"`), with
# Adam's per-entry step size as the threshold. Count the entries that are bit-for-bit
# unchanged at the end:

# %%
prox = train(replace(base, lam=1e-3, penalty="prox"))
for name, run in [("loss term", sparse), ("proximal step", prox)]:
    exact = update_sparsity(run.student, run.init, tol=0.0).per_tensor
    print(f"{name:>14}: share of entries exactly unchanged: "
          + ", ".join(f"{label(k)} {v:.0%}" for k, v in exact.items()))

# %% [markdown]
# ## Try it yourself
# Pick lambda, the optimizer and the number of steps, then press **Train**. (Training
# starts only on the button, so moving a slider costs nothing.) Things to try: lambda =
# 1e-4 and 1e-2; SGD instead of Adam at lambda = 0 (does SGD also move the layers that
# needed no change?); very few steps (has W1 had time to return?).

# %%
lam_slider = widgets.FloatLogSlider(value=1e-3, base=10, min=-5, max=-1, step=0.25, description="lambda",
                                    continuous_update=False, layout=wide())
zero_box = widgets.Checkbox(value=False, description="lambda = 0")
optimizer_buttons = widgets.ToggleButtons(options=["adam", "sgd"], value="adam", description="optimizer")
steps_slider = widgets.IntSlider(value=base.steps, min=100, max=10_000, step=100, description="steps",
                                 continuous_update=False, layout=wide())
train_button = widgets.Button(description="Train", button_style="primary")
output = widgets.Output()
last_run = {}


def on_train():
    """Train with the chosen settings and redraw: what the Train button runs."""
    cfg = replace(base, lam=0.0 if zero_box.value else lam_slider.value, optimizer=optimizer_buttons.value,
                  steps=steps_slider.value)
    result = train(cfg)
    figure = plot_run(result)
    plt.show()
    print(format_table(result))
    last_run.update(result=result, figure=figure)


run_on_click(train_button, output, on_train)
display(widgets.VBox([widgets.HBox([lam_slider, zero_box]), optimizer_buttons, steps_slider, train_button, output]))

# %% [markdown]
# ## Summary: what this run found
# Every sentence below is printed from the numbers above.

# %%
print(f"- At lambda = 0, Adam moved every tensor: W2 held {share0['W2']:.0%} of the L1 update, "
      f"W1 {share0['W1']:.0%}, W3 {share0['W3']:.0%}; raw sizes {'mislead' if verdict != 'more' else 'point at W2 here'}.")
print(f"- With the L1 pull (lambda = 1e-3) W2 held {sparse.update_share['W2']:.0%} of the update, at a cost in fit: "
      f"test MSE {sparse.test_loss:.3g} vs {plain.test_loss:.3g} without it.")
print(f"- W2 held the largest share on {largest.count('W2')} of {len(seeds)} seeds.")
exact = update_sparsity(prox.student, prox.init, tol=0.0).per_tensor
print("- The proximal step leaves exact zeros where the loss term leaves jitter: entries exactly unchanged with it: "
      + ", ".join(f"{label(k)} {v:.0%}" for k, v in exact.items() if k.endswith("weight")) + ".")

# %% [markdown]
# ## Questions to think about
# 1. At lambda = 0, why can the layer that *needed* no change move more than the one that
#    did? What does Adam's per-entry normalisation do to a tiny but consistent gradient?
# 2. Raise lambda until the loss no longer falls. What is the trade-off, and how would you
#    choose lambda for a real model?
# 3. W2 ends far from the teacher's W2. Why is the optimum not unique? (Hint: the rank of
#    the layer-1 features the W2 acts on.)
# 4. Change the widths to 10-50-50-10 (`replace(base, widths=(10, 50, 50, 10))`): now W2
#    has the most entries. Where does the L1 penalty put the update, and why is "where
#    the update goes" a question about costs as much as about need?
# 5. L1 favours *few entries*; the nuclear norm (`sparsity.regularize.nuclear_to_init`)
#    favours *few directions*. Which would you expect to find the layer, and why?
#
# ## What next
# - Lesson 2 finds modular subnetworks by pruning and ablation.
# - Lesson 3 compares ways of *choosing* the weights to fine-tune (magnitude, gradient,
#   Fisher, principal weights) at a fixed budget, and shows the masked-optimizer pitfall.
# - Lessons 5 to 8 scale the same probe up to transformers, RL fine-tuning and 2:4 sparsity.
