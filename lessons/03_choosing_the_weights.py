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
# # Lesson 3: Choosing the weights
#
# Sparse fine-tuning trains a small subset of a model's weights and freezes the rest. Two
# questions decide whether it works: **which** weights (the *criterion* that scores every
# entry), and **how** the budget is spread (the *scope* of the selection that turns scores into a mask).
# A third, quieter one decides whether the experiment means anything at all: does the
# optimizer really leave the frozen weights alone?
#
# **By the end you can** write a gradient criterion (SNIP) and the top-k selection within a
# budget yourself, compare criteria on a toy whose answer is known, tell the global policy
# from the per-tensor one, and spot the masked-optimizer pitfall.
#
# **Prerequisites**: lesson 1 (the teacher-student toy); gradients with `torch.autograd`;
# `torch.topk` or sorting.
#
# **Time**: reading and exercises about 50 min (an estimate). Running, measured on the lab's
# 2-core machine shared with other jobs (`benchmarks/results/lesson_times.md`): about 2 min in
# fast mode (`LAB_FAST=1`), about 8 min in full mode.
#
# We use lesson 1's teacher-student toy because it **knows the answer**: the student
# copies W1 and W3 from the teacher and has W2 re-drawn, so only W2 needs to change. A
# good criterion should find W2, and training its mask should come close to full
# fine-tuning. The criteria, each read on the student at its start:
#
# | criterion | score of an entry | idea |
# | --- | --- | --- |
# | `random` | uniform | the baseline every criterion must beat |
# | `magnitude` | abs(w) | big weights matter (classic pruning, Han et al. 2015) |
# | `gradient` | abs(sum of g) | where the loss wants change first |
# | `snip` | abs(w * g) | the loss change if the entry were removed (SNIP, Lee et al. 2019) |
# | `fisher` | sum of g^2 over batches | the empirical Fisher: how informative the entry is (FISH mask, Sung et al. 2021) |
# | `movement` | -w * g | entries gradient descent pushes away from zero (Sanh et al. 2020) |
# | `lift` | abs of a rank-r approximation of W | LIFT's principal weights (Liu et al. 2025; lesson 7) |
# | `l1_discovered` | abs(delta) of an L1-to-init run | the subnetwork a sparse update *discovered* (lesson 1's lambda = 1e-3 run) |
# | `layers` | the re-drawn layer fc2 | an oracle that knows the layer but not which of its entries matter |
#
# The **budget** is a share of the weight entries (1%, 5%, 20%; biases stay frozen in the
# sparse runs). Selection is `top_k`, its **scope** either *global* (the best entries anywhere) or
# *per tensor* (the same share of every matrix). `l1_discovered` and `layers` name *sets*: they
# never spend budget outside them, so when the budget is bigger than the set they take all
# of it and the table shows the smaller actual density. Masks are chosen once, at the
# start (RigL, Evci et al. 2020, would re-choose them during training).
#
# All experiment code lives in `toys/teacher_student_criteria.py`; the criteria are looked up by
# name in `sparsity.registry`, so one you register there (`register_criterion`) runs through
# this comparison too. The masked training is `toys.teacher_student.train(cfg, mask=...)` with
# `sparsity.optim.MaskedAdamW`.

# %%
import copy

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from lessons.exercises import lesson03 as ex
from lessons.exercises import reveal, yours_or_library
from lessons.exercises.lesson03 import check_snip_scores, check_top_k
from sparsity import SparseConfig, cosine, fit, masks, sparsify
from sparsity.fastmode import fast_mode
from sparsity.threads import use_threads
from toys import modular_world
from toys import modular_criteria as mc
from toys import optimizer_pitfall as pit
from toys import teacher_student as ts
from toys import teacher_student_criteria as tsc
from toys.criterion_masks import DENSITIES as ALL_DENSITIES
from toys.criterion_masks import INCLUDE
from toys.widgets import LABEL_STYLE, budget_slider, train_panel, wide

FAST = fast_mode()  # LAB_FAST=1: fewer steps, one budget, so the notebook executes in CI
use_threads()  # one torch thread for the lesson's small models (LAB_THREADS=N: more)
cfg = tsc.default_config(fast=FAST)
DENSITIES = (0.05,) if FAST else ALL_DENSITIES
print(f"fast mode: {FAST}; {cfg.steps} Adam steps per run, widths {cfg.widths}, budgets {DENSITIES}")

# %% [markdown]
# ## The reference runs
# Full fine-tuning (every parameter, plain MSE) is the bar to match. The L1 run (lambda =
# 1e-3, applied as a proximal step so that unneeded entries end *exactly* where they
# started) is the discovery run `l1_discovered` reads.

# %%
setup = tsc.prepare(cfg)
l1_support = masks.from_update(setup.l1.student, setup.l1.init, setup.l1_tol, include=INCLUDE)
l1_where = {ts.label(n): int(m.sum()) for n, m in l1_support.items() if m.any()}
print(f"start: test MSE {setup.start_test_loss:.3g}; full fine-tuning: test MSE {setup.full.test_loss:.3g}")
print(f"the L1 run moved {sum(l1_where.values())} of {setup.n_weights} weight entries: {l1_where}")
print(f"W2 holds {setup.chance_share:.1%} of the weight entries: what a random mask puts there")

# %% [markdown]
# ### Exercise 3.1: the SNIP score (difficulty 2/3, importance 3/3)
# SNIP (Lee et al. 2019) scores a weight entry by `abs(w * g)`: the first-order change of the
# loss if the entry were removed. Here `g` is the gradient of the loss **summed over the
# calibration batches**, and only the weight matrices are scored (names ending in `weight`).

# %%
def snip_scores(model, loss_fn, batches):
    """{weight name: abs(w * g)} for every parameter whose name ends in "weight".

    loss_fn(model, batch) returns a scalar loss; g is the sum over batches of its gradient.
    Leave the model's parameters unchanged.
    """
    raise NotImplementedError("your code here")


# %% tags=["raises-exception"]
check_snip_scores(snip_scores)

# %% [markdown]
# <details><summary>Hint</summary>
#
# `torch.autograd.grad(loss, tensors)` returns one gradient per tensor without touching
# `.grad`; add them up over the batches, then multiply by the detached weights.
# </details>
#
# <details><summary>Solution</summary>
#
# ```python
# def snip_scores(model, loss_fn, batches):
#     names = [n for n, _ in model.named_parameters() if n.endswith("weight")]
#     params = dict(model.named_parameters())
#     total = {n: torch.zeros_like(params[n]) for n in names}
#     for batch in batches:
#         grads = torch.autograd.grad(loss_fn(model, batch), [params[n] for n in names])
#         for n, g in zip(names, grads):
#             total[n] += g
#     return {n: (params[n].detach() * total[n]).abs() for n in names}
# ```
# </details>
#
# ### Exercise 3.2: top-k within a budget (difficulty 2/3, importance 3/3)
# Scores become a mask by a *policy*. Write `top_k`: the mask holds, for every parameter of
# the model, a bool tensor; the scored tensors get their top `density` share of entries, the
# others come back all False. The lab's conventions: the count is `round(density * n)` but at
# least 1; with `scope="global"` all scored entries compete together (n = all of them), with
# `"per_tensor"` each scored tensor keeps its own share; ties go to the **earlier** entry (in
# the order of the scores dict, then row-major).

# %%
def top_k(model, scores, density, scope="global"):
    """{name: bool tensor} for every parameter of model; True on the top entries by score."""
    raise NotImplementedError("your code here")


# %% tags=["raises-exception"]
check_top_k(top_k)

# %% [markdown]
# <details><summary>Hint 1</summary>
#
# `torch.sort(flat, descending=True, stable=True).indices[:k]` gives the top k with ties to the
# earlier position (`torch.topk` does not promise that).
# </details>
#
# <details><summary>Hint 2</summary>
#
# Global: `torch.cat` the flattened scores, pick the top k once, then cut the chosen flags back
# into tensors of each score's shape, in the same order.
# </details>
#
# <details><summary>Solution</summary>
#
# ```python
# def top_k(model, scores, density, scope="global"):
#     def top(flat, k):
#         chosen = torch.zeros(flat.numel(), dtype=torch.bool)
#         chosen[torch.sort(flat, descending=True, stable=True).indices[:k]] = True
#         return chosen
#
#     mask = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
#     if scope == "per_tensor":
#         for n, s in scores.items():
#             mask[n] = top(s.flatten().float(), max(1, round(density * s.numel()))).view(s.shape)
#         return mask
#     flat = torch.cat([s.flatten().float() for s in scores.values()])
#     chosen, start = top(flat, max(1, round(density * flat.numel()))), 0
#     for n, s in scores.items():
#         mask[n] = chosen[start:start + s.numel()].view(s.shape)
#         start += s.numel()
#     return mask
# ```
# </details>
#
# Your two functions together pick a SNIP mask at 5% of the student's weights. Where does it
# lie, and is it the mask the comparison below trains as `snip`?

# %%
snip_of = yours_or_library(ex, "snip_scores", snip_scores)
top_k_of = yours_or_library(ex, "top_k", top_k)
your_mask = top_k_of(setup.student, snip_of(setup.student, ts.mse_loss, setup.batches), 0.05)
theirs = tsc.select(setup, "snip", 0.05)
in_w2 = int(your_mask["fc2.weight"].sum()) / sum(int(m.sum()) for m in your_mask.values())
print(f"{in_w2:.0%} of this SNIP mask lies in W2 (a random mask: {setup.chance_share:.0%}); the same mask as the "
      f"comparison's snip at 5%: {all(torch.equal(your_mask[n], theirs[n]) for n in theirs)}")

# %% [markdown]
# ## The comparison
# Every criterion at every budget (global scope): build the mask at the start, train only
# it, measure.
#
# **Predict before you run.** Which will reach the lower test MSE at the 5% budget: `random`
# or `magnitude`? (Magnitude knows only the weights' sizes; W2 was re-drawn at the scale of
# the copied layers.) "x full" is the test MSE over full fine-tuning's; "recovery" the share of
# full fine-tuning's loss reduction the sparse run achieves (1 = as good, above 1 =
# better); "in W2" the share of the mask inside W2; "covers W2" the share of W2 it trains.

# %%
prediction = None  # "random" or "magnitude"

# %%
comparison = tsc.compare(setup, densities=DENSITIES)
display(Markdown(comparison.table()))
lower = min(("random", "magnitude"), key=lambda c: comparison.get(c, 0.05).test_loss)
reveal(prediction, lower, "Lower test MSE at 5%, random or magnitude?")
tsc.plot_comparison(comparison)
plt.show()

# %% [markdown]
# Read the right panel first: which criteria *find* W2? Then the left: does finding it
# pay off in the loss? The measured verdicts, per budget:

# %%
start_criteria = [c for c in tsc.CRITERIA if c not in ("l1_discovered", "layers")]  # read at the start, no training
for d in DENSITIES:
    rows = [r for r in comparison.rows if r.density == d and r.scope == "global"]
    by_loss = sorted(rows, key=lambda r: r.test_loss)
    rnd, mag, l1 = comparison.get("random", d), comparison.get("magnitude", d), comparison.get("l1_discovered", d)
    read_at_start = [r for r in rows if r.criterion in start_criteria]
    best_start = min(read_at_start, key=lambda r: r.test_loss)
    layer_rank = [r.criterion for r in by_loss].index("layers") + 1
    outside = 1 - sum(r.share_needed for r in read_at_start) / len(read_at_start)
    print(f"budget {d:.0%}: share of the mask in W2: " + ", ".join(f"{r.criterion} {r.share_needed:.0%}" for r in rows)
          + f" (chance {setup.chance_share:.0%})")
    print(f"   ranking by test MSE: {' < '.join(r.criterion for r in by_loss)}")
    print(f"   random reaches {rnd.recovery:.0%} of full fine-tuning's gain, magnitude {mag.recovery:.0%}, "
          f"the best ({by_loss[0].criterion}) {by_loss[0].recovery:.0%}")
    layer = comparison.get("layers", d)
    print(f"   test MSE of the best criterion read at the start ({best_start.criterion}) over l1_discovered's: "
          f"{best_start.test_loss / l1.test_loss:.2g}x; the layer oracle ranks #{layer_rank} and trains "
          f"{layer.actual_density:.1%} of the weights")
    print(f"   the criteria read at the start put {outside:.0%} of their masks outside W2 on average; the best "
          f"mask's test MSE over full fine-tuning's: {by_loss[0].test_loss / setup.full.test_loss:.2g}x")

# %% [markdown]
# What to take from it (check each point against the lines above; fast mode runs one budget
# and fewer steps, the full run, `LAB_FAST=0`, all three budgets):
#
# - **Does the gradient family find W2, and do magnitude and LIFT?** Gradient criteria read
#   what the *task* wants; magnitude reads only the weights' scale, and the re-drawn W2 has
#   the scale of the copied W3 (both have fan-in 20), so its picks split between the two
#   (lesson 7 looks at LIFT more closely).
# - **The discovered update as a ranking.** `l1_discovered` trains what an L1-penalised run
#   actually moved. Compare its test MSE with the best criterion read at the start. It is
#   not free: it costs a whole training run first.
# - **Which layer, then which entries.** `layers` picks W2's entries at *random*; given the
#   whole of W2 (the 20% budget covers it) it trains W2 and nothing else.
# - **At a large budget the criteria matter less**: every ranking criterion runs out of good
#   W2 entries and spends most of its budget on W1 and W3.
# - **Does any mask match full fine-tuning?** Sparse runs plateau early; full fine-tuning
#   keeps improving, although the teacher differs from the student only in layer 2. One
#   reading: W2 alone settles in a local optimum that full fine-tuning escapes by moving W1
#   and W3 a little (question 3 asks you to test it). In fast mode full fine-tuning has not
#   converged, so the best masks can look *better* than it: a reminder to compare at
#   convergence.
#
# ## The same run in three lines
# The comparison does nothing a user could not do on their own model with the lab's entry
# point: a `SparseConfig` names the criterion and the budget, `sparsify` scores the model
# (Fisher needs data: the loss and a few batches), freezes what is not selected and builds
# the masked optimizer, and `fit` is the lab's one training loop. Run on the student, this
# reproduces the comparison's Fisher row bit for bit:

# %%
x, y, x_test, y_test = ts.make_data(cfg, setup.teacher)
student = copy.deepcopy(setup.student)
run = sparsify(student, SparseConfig(criterion="fisher", density=0.05, scope="global", lr=cfg.learning_rate),
               loss_fn=ts.mse_loss, batches=setup.batches)
run.print_trainable_parameters()
fit(student, run.optimizer, lambda model, _: torch.nn.functional.mse_loss(model(x), y), cfg.steps,
    schedule=cosine(cfg.learning_rate, cfg.steps), progress=True)
with torch.no_grad():
    test_mse = torch.nn.functional.mse_loss(student(x_test), y_test).item()
fisher_row = comparison.get("fisher", 0.05)
print(f"test MSE {test_mse:.6e}; the comparison's Fisher row at 5%: {fisher_row.test_loss:.6e} "
      f"(identical: {test_mse == fisher_row.test_loss})")

# %% [markdown]
# ## The scope: global vs per tensor
# A per-tensor budget gives every matrix the same share. That is what LIFT and many
# sparse fine-tuning methods do, and it makes "find the layer" impossible by
# construction: whatever the scores, W2 gets at most its own share of the budget (a
# ranking criterion exactly its share; a set criterion may leave part of the other
# matrices' shares unspent, so its mask is smaller).

# %%
per_tensor_criteria = ("fisher", "l1_discovered") if FAST else tsc.CRITERIA
per_tensor = tsc.compare(setup, criteria=per_tensor_criteria, densities=(0.05,), scopes=("per_tensor",))
for row in per_tensor.rows:
    glob = comparison.get(row.criterion, 0.05)
    print(f"{row.criterion:>10} at 5%: in W2 {glob.share_needed:.0%} (global) vs {row.share_needed:.0%} (per tensor); "
          f"test MSE {glob.test_loss:.2e} vs {row.test_loss:.2e}")
tsc.plot_scopes(comparison, per_tensor, 0.05)
plt.show()

# %% [markdown]
# ## Beyond one layer: which criterion finds the right *module*?
# In the teacher-student toy the answer is a whole layer. Lesson 2's modular toy
# (`toys/modular_world.py`) has a finer one. Its input holds four groups of features; task `t1`
# reads group 1 only, and *related* tasks `r0..r3` compose the same groups' features
# differently. A trunk pretrained on the related tasks already computes each group's
# features; fine-tuning it on `t1` should need the **first-layer weights that read group
# 1**: the module. Does a criterion find it (the share of the mask's first-layer entries
# that read group 1, against chance: one group's share of the inputs, printed below), and what does training the mask do to the related
# tasks the trunk was pretrained on (retained accuracy)? `update` ranks entries by how much
# a full fine-tuning run changed them; `module` is the ground truth, in random order.

# %%
MODULAR_CRITERIA = ("fisher", "update", "module") if FAST else mc.MODULAR_CRITERIA
mcfg = modular_world.default_config(fast=True, steps=150) if FAST else modular_world.default_config()
modular_comparison = mc.compare_modular(mcfg, task="t1", criteria=MODULAR_CRITERIA, densities=DENSITIES)
display(Markdown(modular_comparison.table()))
mc.plot_modular(modular_comparison, 0.05)
plt.show()

# %%
m = modular_comparison
print(f"full fine-tuning: {m.task} {m.before_target:.0%} -> {m.full_target:.0%}; related tasks "
      f"{m.before_retained:.0%} -> {m.full_retained:.0%}")
for d in DENSITIES:
    rows = [r for r in m.rows if r.density == d]
    print(f"budget {d:.0%}: fc1 entries in the module: "
          + ", ".join(f"{r.criterion} {r.share_in_module:.0%}" for r in rows) + f" (chance {m.chance_share:.0%})")
    print("   share of the mask in fc1 at all: " + ", ".join(f"{r.criterion} {r.fc1_share:.0%}" for r in rows))
    print("   learned / kept: " + ", ".join(f"{r.criterion} {r.target_acc:.0%} / {r.retained_acc:.0%}" for r in rows))

# %% [markdown]
# What to look for (the fast run is too short to pretrain well, but shows the same placements):
#
# - **Which criteria find the module?** Compare each criterion's share of fc1 entries in the
#   module with chance. Gradient and Fisher scores are largest next to the fresh task head,
#   in fc2: check how little of their mask lies in fc1 at all.
# - **Finding the module is not free of forgetting.** Every hidden unit reads *all* groups,
#   so changing how it reads group 1 changes its output for every task: compare the module
#   oracle's "kept" with full fine-tuning's, and with the masks that stay out of fc1.
#
# The lesson of both toys: "which weights?" has a checkable answer only where the
# structure is known, and even the right weights trade learning against forgetting when
# they are shared.
#
# ## The masked-optimizer pitfall, live
# The obvious way to "train only the mask" is to zero the gradient outside it and call a
# standard optimizer. With AdamW that is wrong: decoupled weight decay shrinks *every*
# weight by `lr * weight_decay` per step, gradient or not, so every frozen entry drifts
# toward zero. (Momentum is the second trap: an entry whose mask is switched off mid-run,
# as in RigL, keeps moving on its momentum.) `MaskedAdamW` computes the usual step and
# writes it back only where the mask is True. Same mask (Fisher, 5%), same data, weight
# decay 0.01:

# %%
pitfall_mask = tsc.select(setup, "fisher", 0.05)
pitfall = pit.masked_optimizer_pitfall(pitfall_mask, cfg, weight_decay=0.01)
display(Markdown(pit.format_pitfall(pitfall)))
naive, masked = pitfall
print(f"the naive way moved {naive.moved} of {naive.frozen} frozen entries (up to {naive.max_abs_delta:.2g}); "
      f"MaskedAdamW moved {masked.moved}.")
pit.plot_pitfall(pitfall)
plt.show()

# %% [markdown]
# A frozen entry that moves breaks the experiment silently: the "5% subnetwork" has in
# fact changed every weight a little, and any claim about what the subnetwork alone can
# do is void. Every sparse run in this lab uses `MaskedAdamW`, and the tests check that
# unselected entries stay bit-identical.
#
# ## Try it yourself
# Pick a criterion, a budget and a scope, then press **Train**: the mask is built at the
# student's start and trained alone; the plot compares its training curve with full
# fine-tuning's and shows where the mask lies. Things to try: `magnitude` vs `fisher` at
# 1%; any criterion with the per-tensor scope; `layers` at 20% (the whole of W2).

# %%
criterion_menu = widgets.Dropdown(options=tsc.CRITERIA, value="fisher", description="criterion")
density_slider = budget_slider()
scope_buttons = widgets.ToggleButtons(options=[("global", "global"), ("per tensor", "per_tensor")], value="global",
                                       description="scope")
rank_slider = widgets.IntSlider(value=4, min=1, max=min(cfg.widths), description="LIFT rank", continuous_update=False,
                                layout=wide(), style=LABEL_STYLE)


def train_and_plot():
    """Select, train and plot with the chosen settings: what the Train button runs."""
    row, result = tsc.evaluate(setup, criterion_menu.value, density_slider.value, scope_buttons.value,
                               lift_rank=rank_slider.value, progress=True)
    figure = tsc.plot_run(row, result, setup)
    plt.show()
    print(f"{row.selected} entries ({row.actual_density:.1%}), {row.share_needed:.0%} in W2; test MSE "
          f"{row.test_loss:.3g} vs full {setup.full.test_loss:.3g} (recovery {row.recovery:.2f})")
    return dict(row=row, result=result, figure=figure)


train_button, output, last_run = train_panel(train_and_plot)
display(widgets.VBox([criterion_menu, density_slider, scope_buttons, rank_slider, train_button, output]))

# %% [markdown]
# ## Summary: what this run found
# Every sentence below is printed from the numbers above.

# %%
for d in DENSITIES:
    rows = [r for r in comparison.rows if r.density == d and r.scope == "global"]
    best_row = min(rows, key=lambda r: r.test_loss)
    finders = [r.criterion for r in rows if r.share_needed > 2 * setup.chance_share]
    print(f"- Budget {d:.0%}: the best mask ({best_row.criterion}) reached {best_row.recovery:.0%} of full fine-tuning's "
          f"gain; criteria putting over twice chance's share of their mask in W2: {', '.join(finders) or 'none'}.")
glob_f, per_f = comparison.get("fisher", 0.05), per_tensor.get("fisher", 0.05, "per_tensor")
print(f"- The per-tensor policy put {per_f.share_needed:.0%} of Fisher's mask in W2 against {glob_f.share_needed:.0%} "
      "with the global one.")
print(f"- Zeroing gradients under plain AdamW moved {naive.moved} of {naive.frozen} frozen entries; "
      f"MaskedAdamW moved {masked.moved}.")

# %% [markdown]
# ## Questions to think about
# 1. Gradient and Fisher read the loss at the start only. Why do they still find W2? When
#    would a score read at the start mislead (think of a layer whose gradient is zero at
#    the start but that needs to change later)?
# 2. Compare magnitude's share of W2 and its recovery with the gradient criteria's (the
#    lines above). In a *pretrained* network, why might large weights be the
#    *wrong* ones to change (they may carry what the model already knows)?
# 3. `layers` at 20% is the whole of W2, fewer entries than the budget allows. Does it beat
#    the other 20% masks, and does it reach full fine-tuning? Test the local-optimum reading:
#    train W2 alone for longer, or start it from the end of a full fine-tuning run.
# 4. `l1_discovered` needs a full training run before it can select anything. When is that
#    still worth it? (Think of re-training a discovered subnetwork on new data, lesson 6.)
# 5. The per-tensor scope cannot find W2. Why do methods use it anyway? (Hint: memory
#    per layer, hardware, and not trusting scores across layers of different scale.)
# 6. Plain AdamW with the gradient zeroed and weight decay 0: do the frozen entries stay
#    put? What if the mask changes during training?
#
# ## What next
# - Lesson 4 prunes and recovers: sparse fine-tuning with a fixed pattern after pruning.
# - Lesson 7 takes a closer look at LIFT's principal weights against plain magnitude.
# - Lesson 6 measures which weights an RL run actually moves and retrains only those,
#   the `l1_discovered` idea at scale.
