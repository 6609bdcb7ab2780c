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
# # Lesson 2: Modular subnetworks: find them, ablate them, protect them
#
# If fine-tuning a *small* subnetwork can match fine-tuning everything, the function we
# fine-tune must live in a small part of the network. Do networks even keep their functions
# apart? Three claims from the literature, tested here in a world where we know the answer:
#
# 1. A network trained on a compositional task splits it into **separate subnetworks**:
#    ablating one damages only its own function (Csordás et al. 2021, "Are Neural Nets
#    Modular?"; Lepori et al. 2023, "Break It Down").
# 2. **Pretraining** makes that modular structure more consistent across seeds (Lepori et al.).
# 3. **Freezing a task's core parameters** while fine-tuning on another task reduces
#    interference and forgetting compared with full fine-tuning (core-parameter isolation,
#    Wang et al. 2025).
#
# **By the end you can** find a task's subnetwork by learning a mask, test it by ablation,
# compute the exclusive part of several subnetworks and the modularity score yourself, and
# say when freezing a task's core protects it.
#
# **Prerequisites**: lesson 1; classification accuracy and chance level; binary masks over
# weights (`{name: bool tensor}`).
#
# **Time**: reading and exercises about 45 min (an estimate). Running, measured on the lab's
# 2-core machine shared with other jobs (`benchmarks/results/lesson_times.md`): about 3 min in
# fast mode (`LAB_FAST=1`), about 11 min in full mode.
#
# **The world.** The input has one group of features per task (how many groups and
# features: printed by the first cell; fast mode uses fewer tasks). Each group has its own
# *primitives* (random projections). Task `t_k` reads group k only and answers with 2 parity
# bits of its primitives' signs, e.g. [sign(p0) == sign(p1)] and [sign(p2) == sign(p3)]: 4
# classes, chance printed below. Parities need hidden units, so the shared trunk (two ReLU layers) must
# compute every task's features; each task has its own output head. *Related* tasks `r_k`
# combine the same primitives differently: pretraining on them teaches the trunk the
# primitives without the target labels. Ground truth: `t_k` needs only group k's inputs;
# nothing forces the trunk to keep the tasks apart.
#
# **Finding a task's subnetwork** (`sparsity.discover.learn_mask`): freeze the weights and
# learn a binary mask over the trunk that keeps the task working while removing as many
# entries as possible (a Gumbel-sigmoid mask with straight-through gradients, plus a penalty
# on the expected share of kept entries). Heads are left out of the search: head k belongs
# to task k by construction, finding it would prove nothing.
#
# Everything below runs the lab's code: `toys.modular` for the world, the experiments and
# their figures, `sparsity/` for discovery, ablation, the masked optimizer and the overlap
# metric, and the lab's one training loop (`sparsity.train.fit`) for every run.

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display

from lessons.exercises import lesson02 as ex
from lessons.exercises import reveal, yours_or_library
from lessons.exercises.lesson02 import check_exclusive, check_modularity
from sparsity.ablate import ablate
from sparsity.fastmode import fast_mode
from sparsity.threads import use_threads
from toys import modular_isolation, modular_plots, modular_report, modular_training, modular_world
from toys.widgets import run_on_click, wide

FAST = fast_mode()  # LAB_FAST=1 shrinks the runs so the notebook executes in CI
use_threads()  # one torch thread for the lesson's small models (LAB_THREADS=N: more)
cfg = modular_world.default_config(fast=FAST)
print(f"fast mode: {FAST}; {cfg.n_tasks} tasks (input: {cfg.n_tasks} groups of {cfg.group_size} features), "
      f"trunk {cfg.hidden}, {cfg.steps} training steps, {cfg.mask_steps} mask steps, {cfg.n_seeds} seeds per arm; "
      f"chance {cfg.chance:.2f}")

# %% [markdown]
# ## Run the experiment
# One call trains every network, learns every mask and runs the fine-tuning comparison
# (about 2 min in fast mode on the lab's loaded 2-core machine, more in full mode: the header
# gives the lesson's times). The rest of the lesson reads its results.
#
# **Predict before you run.** Networks trained from different random seeds, and networks
# fine-tuned from one shared pretrained trunk: will the *pretrained* networks' subnetworks for
# the same task overlap more across seeds (Jaccard index) than the random-init ones? Answer
# "yes" or "no"; section 2 checks it.

# %%
prediction = None  # "yes" or "no"

# %%
report = modular_report.run(cfg)
print(modular_report.format_report(report))

# %% [markdown]
# ## 1. The ablation matrix
# Row i: the **exclusive** part of task i's learned subnetwork (the entries no other task's
# subnetwork uses) is zeroed; column j: task j's accuracy then. Shared entries are left in
# place: ablating them would hit every task that shares them, which says nothing about
# specialisation. A modular network gives a dark diagonal (own task down to chance) and a
# bright rest. The **modularity score** is the mean damage on the diagonal minus the mean
# damage off it, damage being the share of the way from the task's accuracy to chance
# (1 = perfectly modular, 0 = no specialisation).
#
# ### Exercise 2.1: the modularity score (difficulty 2/3, importance 2/3)
# Write it from the ablation matrix. `scores[i][j]` is task j's accuracy with subnetwork i
# ablated, `baseline[j]` task j's accuracy without ablation. The *damage* to task j is
# `(baseline[j] - scores[i][j]) / (baseline[j] - chance)`, clipped to [0, 1] (0 when the
# baseline is not above chance: there was nothing to damage). The score is the mean damage
# on the diagonal minus the mean damage off it.

# %%
def modularity(scores, baseline, chance):
    """Mean normalised damage of each subnetwork to its own task minus the mean to the others (a float).

    scores: list of n lists of n floats; baseline: list of n floats; chance: a float.
    """
    raise NotImplementedError("your code here")


# %% tags=["raises-exception"]
check_modularity(modularity)

# %% [markdown]
# <details><summary>Hint</summary>
#
# Build the n x n damage matrix first with `min(1.0, max(0.0, ...))`, then average `d[i][i]`
# over n entries and `d[i][j]` (i != j) over n * (n - 1) entries.
# </details>
#
# <details><summary>Solution</summary>
#
# ```python
# def modularity(scores, baseline, chance):
#     n = len(baseline)
#     d = [[min(1.0, max(0.0, (b - s) / (b - chance))) if b > chance else 0.0
#           for s, b in zip(row, baseline)] for row in scores]
#     diagonal = sum(d[i][i] for i in range(n)) / n
#     off = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
#     return diagonal - off
# ```
# </details>
#
# The figure's titles below carry each network's modularity, computed with your function
# (or the lab's, until yours passes):

# %%
modularity_of = yours_or_library(ex, "modularity", modularity)
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
for ax, arm in zip(axes, ("random init", "pretrained")):
    seed0 = report.runs[arm][0]
    score = modularity_of([list(row) for row in seed0.matrix.scores], list(seed0.matrix.baseline), cfg.chance)
    modular_plots.plot_ablation_matrix(seed0.matrix, cfg.chance, ax, f"{arm}, seed 0: modularity {score:.2f}")
fig.tight_layout()
plt.show()
checks = report.checks()
for arm in ("random init", "pretrained"):
    print(f"{arm}: ablated task falls to at most {checks[f'{arm}: own task after ablation, max']:.2f} "
          f"(chance {cfg.chance:.2f}); every other task keeps at least "
          f"{checks[f'{arm}: other tasks retained, min share']:.0%} of its accuracy")

# %% [markdown]
# How big are the subnetworks, and does each one suffice on its own? The mask learner
# reports the density it ended at (it is not set in advance: the penalty and the task loss
# negotiate it). Below, the learning curves of the random-init network's masks, then each
# task scored with *only* its subnetwork left in the trunk (the rest zeroed): a subnetwork
# that is both sufficient (this) and necessary (the matrix's diagonal) is the task's module.

# %%
seed0 = report.runs["random init"][0]
modular_plots.plot_mask_learning(seed0)
plt.show()
for task, learned in seed0.masks.items():
    print(f"{task}: subnetwork keeps {learned.density:.1%} of the trunk; with only it left, {task} scores "
          f"{seed0.alone[task]:.3f} (full network {seed0.matrix.baseline[seed0.matrix.tasks.index(task)]:.3f})")

# %% [markdown]
# ### Exercise 2.2: the exclusive part of each subnetwork (difficulty 1/3, importance 2/3)
# The matrix above ablates only the entries no other task's subnetwork uses. Write that
# selection: given `{task: mask}` (each mask a `{parameter name: bool tensor}`, all masks
# over the same tensors), return for every task its mask minus every entry that *any* other
# task's mask also selects. The widget below ablates with your function once it passes.

# %%
def exclusive(subnetworks):
    """{task: {name: bool tensor}}: each mask without the entries any other task's mask selects."""
    raise NotImplementedError("your code here")


# %% tags=["raises-exception"]
check_exclusive(exclusive)

# %% [markdown]
# <details><summary>Hint</summary>
#
# For task k and tensor n: `mask & ~others`, where `others` is the OR over the other tasks'
# `masks[n]` (`torch.stack([...]).any(0)`).
# </details>
#
# <details><summary>Solution</summary>
#
# ```python
# def exclusive(subnetworks):
#     out = {}
#     for task, mask in subnetworks.items():
#         others = [m for t, m in subnetworks.items() if t != task]
#         out[task] = {n: t & ~torch.stack([o[n] for o in others]).any(0) for n, t in mask.items()}
#     return out
# ```
# </details>
#
# ## Try it: ablate a subnetwork
# Pick a network and a subnetwork to knock out, and how: **zero** (remove the weights) or
# **mean** (replace them by their tensor's mean). *Whole mask* ablates every entry of the
# subnetwork, shared ones included: watch the other tasks suffer.

# %%
exclusive_of = yours_or_library(ex, "exclusive", exclusive)

# %%
arm_pick = widgets.ToggleButtons(options=["random init", "pretrained"], description="network")
subnet_pick = widgets.Dropdown(options=["none", *modular_world.make_world(cfg).targets], value="t0",
                               description="ablate")
mode_pick = widgets.ToggleButtons(options=["zero", "mean"], description="mode")
part_pick = widgets.ToggleButtons(options=["exclusive part", "whole mask"], description="which entries")
ablation_out = widgets.Output()
last_ablation = {}


def show_ablation(_=None):
    """Score every task with the chosen subnetwork ablated and draw the bars."""
    run0 = report.runs[arm_pick.value][0]
    masks = {t: learned.mask for t, learned in run0.masks.items()}
    if part_pick.value == "exclusive part":
        masks = exclusive_of(masks)
    scorers = modular_training.evaluators(report.world, report.world.targets)
    if subnet_pick.value == "none":
        scores = {t: f(run0.model) for t, f in scorers.items()}
    else:
        with ablate(run0.model, masks[subnet_pick.value], mode_pick.value):
            scores = {t: f(run0.model) for t, f in scorers.items()}
    with ablation_out:
        ablation_out.clear_output(wait=True)
        ax = modular_plots.plot_task_scores(scores, cfg.chance, subnet_pick.value, title=f"{arm_pick.value}: "
                                      f"{subnet_pick.value} ablated ({part_pick.value}, {mode_pick.value})")
        plt.show()
    last_ablation.update(scores=scores, figure=ax.figure)


for control in (arm_pick, subnet_pick, mode_pick, part_pick):
    control.observe(show_ablation, names="value")
display(widgets.VBox([arm_pick, subnet_pick, mode_pick, part_pick, ablation_out]))
show_ablation()

# %% [markdown]
# ## 2. Does pretraining make the structure more consistent?
# Three ways the networks differ from seed to seed:
# - **random init**: a fresh initialisation and batch order per seed;
# - **same init**: one initialisation, only the batch order changes (a control);
# - **pretrained**: one trunk pretrained on the related tasks `r_k`, then fresh target heads
#   and a batch order per seed, fine-tuned on the targets.
#
# Left: the modularity score of every seed's network. Right: how much the same task's
# subnetwork overlaps across seeds (Jaccard), against what two random masks of the same
# densities would give.

# %%
modular_plots.plot_consistency(report)
plt.show()
for arm, overlap in report.overlaps.items():
    per_tensor = ", ".join(f"{n} {j:.2f} (chance {c:.2f})" for n, (j, c) in overlap.per_tensor.items())
    print(f"{arm:>12}: Jaccard {overlap.jaccard:.3f} vs chance {overlap.chance:.3f}  [{per_tensor}]")
print("overlap / chance: " + ", ".join(f"{arm} {o.jaccard / o.chance:.1f}x" for arm, o in report.overlaps.items()))
if {"pretrained", "same init"} <= set(report.overlaps):
    print(f"pretrained minus same-init overlap: "
          f"{report.overlaps['pretrained'].jaccard - report.overlaps['same init'].jaccard:+.3f}")
more = report.overlaps["pretrained"].jaccard > report.overlaps["random init"].jaccard
reveal(prediction, "yes" if more else "no", "Do pretrained subnetworks overlap more across seeds than random-init ones?")

# %% [markdown]
# Read it carefully. From random inits the same task ends in weights that barely overlap
# across seeds: hidden units are interchangeable, so the *same* function can sit in
# *different* units (permutation symmetry). Sharing a pretrained trunk makes the
# subnetworks overlap far above chance. But the *same init* control shows how much of that
# comes from merely starting at the same point: compare the two bars (and the difference
# printed above) before crediting pretraining. The modularity scores (left) say whether
# pretraining also makes the split itself cleaner or steadier; with disjoint input groups,
# if even random inits split cleanly, pretraining has little left to improve. Question 2
# below makes the world harder.
#
# ## 3. Protecting a task: core-parameter isolation
# Pretrain on task A (`t0`, with an L1 penalty on the weights: sparse-weight training keeps
# A's circuit compact), then fine-tune on task B (`t1`, another group) three ways:
# - **full**: every parameter;
# - **freeze A's core**: the top `core_density` of the trunk's weights by magnitude after
#   training on A (magnitude pruning), closed over **whole units** (a unit whose weights are
#   in the core keeps its entire fan-in frozen), everything else trains;
# - **B's subnetwork only**: the entries a full fine-tuning on B moved most (the top
#   `subnet_density` of the trunk) plus B's head; A's core is not protected.

# %%
iso = report.isolation
print(f"A's core: top {cfg.core_density:.0%} of the trunk; B's subnetwork: top {cfg.subnet_density:.0%}")
print(f"after pretraining on A: A {iso.a_before:.3f}, B {iso.b_before:.3f} (chance {cfg.chance:.2f})")
print(f"{'way':<22}{'B (target)':>12}{'A (retained)':>14}{'trainable share of trunk':>26}")
for way in modular_isolation.WAYS:
    print(f"{way:<22}{iso.target[way]:>12.3f}{iso.retained[way]:>14.3f}{iso.trainable[way]:>26.2f}")
if iso.b_before < cfg.chance:
    print(f"B scores {iso.b_before:.3f} before fine-tuning, below chance ({cfg.chance:.2f}): B's head was never "
          "trained, so it is an arbitrary read-out of the trunk's features; chance is the score of guessing "
          "without looking at the input, and an untrained read-out that does look at it can be anti-correlated "
          "with B's labels.")
modular_plots.plot_isolation(iso)
plt.show()

# %% [markdown]
# Why whole units? A unit's activation depends on *every* incoming weight. Freeze only the
# core's entries and fine-tuning on B writes new signals into A's units through the other
# entries of the same rows: A's features change although "its" weights did not. Try it
# below with *whole units* unticked.
#
# ## Try it: how to fine-tune on B
# Choose the way, the density of A's core (or of B's subnetwork) and whether the core is
# closed over whole units, then press **Fine-tune**. Each run adds a point to the plot.

# %%
way_pick = widgets.ToggleButtons(options=list(modular_isolation.WAYS), value="freeze A's core", description="way",
                                 style={"button_width": "auto"})  # each way's name in full
density_slider = widgets.FloatLogSlider(value=cfg.core_density, base=10, min=-2, max=-0.3, step=0.05,
                                        description="density", continuous_update=False, layout=wide())
units_box = widgets.Checkbox(value=True, description="whole units (A's core)")
finetune_button = widgets.Button(description="Fine-tune", button_style="primary")
finetune_out = widgets.Output()
tried = []
last_finetune = {}


def on_finetune():
    """Fine-tune a copy of the A-pretrained model on B the chosen way and plot forgetting vs target."""
    core = modular_isolation.a_core(iso.pretrained, density_slider.value, units=units_box.value)
    subnetwork = modular_isolation.b_subnetwork(iso.pretrained, iso.models["full"], density_slider.value)
    mask = modular_isolation.way_mask(way_pick.value, core, subnetwork, cfg.task_b)
    tuned = modular_isolation.finetune_b(iso.pretrained, report.world, mask)
    b = modular_training.accuracy(tuned, report.world, cfg.task_b)
    a = modular_training.accuracy(tuned, report.world, cfg.task_a)
    label = f"{way_pick.value}, d={density_slider.value:.2f}" + ("" if units_box.value else ", entries")
    tried.append((label, b, a))
    ax = modular_plots.plot_isolation(iso, tried)
    plt.show()
    print(f"{label}: B {b:.3f}, A {a:.3f}; trainable share of trunk {modular_isolation.trunk_share(tuned, mask):.2f}")
    last_finetune.update(target=b, retained=a, mask=mask, figure=ax.figure)


run_on_click(finetune_button, finetune_out, on_finetune)
display(widgets.VBox([way_pick, widgets.HBox([density_slider, units_box]), finetune_button, finetune_out]))

# %% [markdown]
# ## Summary: what this run found
# Every sentence below is printed from the numbers above.

# %%
for arm in ("random init", "pretrained"):
    scores = [r.modularity for r in report.runs[arm]]
    print(f"- {arm}: modularity {min(scores):.2f} to {max(scores):.2f} over {len(scores)} seeds; the ablated task "
          f"falls to at most {checks[f'{arm}: own task after ablation, max']:.2f} (chance {cfg.chance:.2f}).")
print("- Overlap of the same task's subnetwork across seeds (Jaccard / chance): "
      + ", ".join(f"{arm} {o.jaccard / o.chance:.1f}x" for arm, o in report.overlaps.items()) + ".")
best = max(modular_isolation.WAYS, key=lambda w: iso.retained[w])
print(f"- Fine-tuning on B: {best} kept the most of A ({iso.retained[best]:.3f}, from {iso.a_before:.3f}); "
      f"full fine-tuning kept {iso.retained['full']:.3f} and reached B {iso.target['full']:.3f}.")

# %% [markdown]
# ## Questions to think about
# 1. The ablation matrix uses each subnetwork's *exclusive* part. Switch the widget to
#    *whole mask*: what do the shared entries carry, and why must a modularity test leave
#    them alone?
# 2. Set `overlap=4` (`modular_world.default_config(overlap=4)`): neighbouring tasks now share
#    half their inputs. What happens to the diagonal and the off-diagonal of the matrix?
# 3. The mask learner's penalty `mask_sparsity` sets how small the subnetworks get. With a
#    weak penalty (try 1.0) masks stay dense and overlap: how does the modularity score move?
# 4. The same-init control: is "pretraining makes subnetworks consistent" a claim about
#    pretraining, or about sharing a starting point? What experiment would separate the two?
# 5. Untick *whole units* at the same density: how much of A does freezing its core's
#    *entries* save? Then pretrain A without the L1 penalty:
#    `modular_isolation.isolation(modular_world.make_world(modular_world.default_config(pretrain_l1=0.0)))`.
#    The core's units now cover most of the trunk. What does that say about when freezing
#    a core can work?
# 6. Compare B's subnetwork alone with full fine-tuning on B in the table above. Raise its
#    density: where does it catch up, and what happens to A on the way?
#
# ## What next
# - Lesson 3 compares ways of *choosing* the weights to fine-tune at a fixed budget.
# - Lesson 4 prunes first and then fine-tunes the fixed sparse pattern.
