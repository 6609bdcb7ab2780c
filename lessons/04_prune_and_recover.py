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
# # Lesson 4: Prune, then recover
#
# Pruning removes weights: set the smallest ones to zero, and the model gets smaller and,
# on the right hardware, faster. It also gets worse. The standard fix is **sparse
# fine-tuning**: retrain the surviving weights with the sparsity pattern *held fixed* (a
# pruned weight stays zero for good). The pruning literature (e.g. Han et al. 2015) puts the
# typical result at **"95-100% of the dense model's accuracy"**. Here we measure it.
#
# **By the end you can** write the keep-mask of global magnitude pruning and one round of
# iterative magnitude pruning with rewinding yourself, recover a pruned network with its
# pattern fixed, and find the sparsity where "95-100% of dense" stops holding.
#
# **Prerequisites**: lesson 3 (masks and the masked optimizer); classification accuracy;
# sorting and thresholds in PyTorch.
#
# **Time**: reading and exercises about 50 min (an estimate). Running, measured on the lab's
# 2-core machine shared with other jobs (`benchmarks/results/lesson_times.md`): about 3 min in
# fast mode (`LAB_FAST=1`), about 28 min in full mode.
#
# The recipes, all in `sparsity/prune.py`:
#
# | recipe | what it does | from |
# | --- | --- | --- |
# | one-shot | train, remove the smallest weights at once, done | magnitude pruning, Han et al. 2015 |
# | one-shot + recovery | ... then fine-tune the survivors, pattern fixed | Han et al. 2015 |
# | IMP, no rewind | rounds of: prune a share of what is left, fine-tune the survivors from where they are | Han et al. 2015 |
# | IMP, rewind | rounds of: prune, *rewind* the survivors to an early checkpoint, retrain | Frankle & Carbin 2019; Frankle et al. 2020 |
# | 2:4 | keep the 2 largest of every 4 consecutive inputs (what sparse tensor cores run) | Mishra et al. 2021 |
#
# **The world** (`toys/classification.py`): a small random *teacher* MLP (16 -> 32 -> 8)
# labels Gaussian inputs with one of 8 classes (its output biases are tuned toward equal
# class shares, so the classes are roughly balanced; chance, printed below, is the share of the
# most frequent class; inputs too close to a decision boundary are dropped). A much wider *student* learns the labels. The teacher has under a
# thousand weights; the student has tens of thousands: the over-parameterised regime in
# which pruning is supposed to work. How far can we go?

# %%
import copy

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

import torch
from tqdm.auto import tqdm

from lessons.exercises import lesson04 as ex
from lessons.exercises import reveal, yours_or_library
from lessons.exercises.lesson04 import check_imp_round, check_magnitude_keep
from sparsity import prune
from sparsity.fastmode import fast_mode
from sparsity.threads import use_threads
from toys import classification as tc
from toys import optimizer_pitfall as pit
from toys import prune_study as ps
from toys.widgets import run_on_click, wide

FAST = fast_mode()  # LAB_FAST=1 shrinks every run so the notebook executes in CI
use_threads()  # one torch thread for the lesson's small models (LAB_THREADS=N: more)
study = ps.default_study(fast=FAST)
cfg = study.world
print(f"fast mode: {FAST}; student {cfg.in_dim}-{'-'.join(map(str, cfg.hidden))}-{cfg.n_classes}, "
      f"{cfg.steps} AdamW steps, {cfg.n_train} training inputs")

# %% [markdown]
# ## 1. The dense student
# Train it once. We also keep two snapshots for later: its initialisation and its weights
# after a few steps (the *early checkpoint* IMP can rewind to).

# %%
dense = ps.train_dense(study)
n_weights = sum(p.numel() for n, p in dense.model.named_parameters() if n.endswith("weight"))
teacher_weights = sum(p.numel() for n, p in dense.world.teacher.named_parameters() if n.endswith("weight"))
shares = torch.bincount(dense.world.y_test, minlength=cfg.n_classes) / len(dense.world.y_test)
print(f"dense test accuracy {dense.accuracy:.3f} (chance {dense.world.chance:.3f}: the most frequent class; "
      f"class shares {shares.min():.3f} to {shares.max():.3f}); "
      f"{n_weights:,} student weights vs {teacher_weights:,} in the teacher")

# %% [markdown]
# ## 2. One-shot pruning, and why the optimizer matters for recovery
# `prune.prune_(model, 0.9)` ranks every weight matrix entry by |w| (globally, over all
# layers), zeros the smallest 90% and returns the **keep-mask** (True = kept). Biases are
# not in the budget.
#
# ### Exercise 4.1: the keep-mask of global magnitude pruning (difficulty 1/3, importance 3/3)
# Write the selection: for every parameter of the model a bool tensor; over **all** weight
# matrices together (names ending in `weight`), keep the `round((1 - sparsity) * n)` entries
# of largest |w| (ties to the earlier entry, in parameter order then row-major), prune the rest;
# biases are all True (not in the budget). Sparsity 0 keeps everything.

# %%
def magnitude_keep(model, sparsity):
    """{name: bool keep-mask} for every parameter: the largest |w| over all weights kept, biases kept."""
    raise NotImplementedError("your code here")


# %% tags=["raises-exception"]
check_magnitude_keep(magnitude_keep)

# %% [markdown]
# <details><summary>Hint</summary>
#
# `torch.cat` the flattened `abs()` of every weight, take the top `round((1 - sparsity) * n)` with
# `torch.sort(..., descending=True, stable=True)`, and cut the flags back into each weight's shape.
# </details>
#
# <details><summary>Solution</summary>
#
# ```python
# def magnitude_keep(model, sparsity):
#     params = dict(model.named_parameters())
#     weights = [n for n in params if n.endswith("weight")]
#     flat = torch.cat([params[n].detach().abs().flatten() for n in weights])
#     chosen = torch.zeros(flat.numel(), dtype=torch.bool)
#     k = max(1, round((1 - sparsity) * flat.numel()))
#     chosen[torch.sort(flat, descending=True, stable=True).indices[:k]] = True
#     keep, start = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}, 0
#     for n in weights:
#         keep[n] = chosen[start:start + params[n].numel()].view(params[n].shape)
#         start += params[n].numel()
#     return keep
# ```
# </details>
#
# The cell below prunes the dense student with your function (or the lab's, until yours passes).

# %%
keep_of = yours_or_library(ex, "magnitude_keep", magnitude_keep)
pruned = copy.deepcopy(dense.model)
keep = keep_of(pruned, 0.9)
prune.apply_mask_(pruned, keep)
print(f"pruned {prune.pruned_fraction(pruned, keep):.1%} of the weights; per layer kept: "
      + ", ".join(f"{n} {int(k.sum())}/{k.numel()}" for n, k in keep.items() if n.endswith("weight")))
print(f"accuracy right after pruning: {tc.accuracy(pruned, dense.world):.3f}")

# %% [markdown]
# Global pruning ranks all layers together, so it does not remove the same share from
# every layer. Which layers pay most, at each sparsity of the ladder we will use?

# %%
layers = [n for n in keep if n.endswith("weight")]
fig, ax = plt.subplots(figsize=(7, 3.5))
width = 0.8 / len(study.sparsities)
for i, s in enumerate(study.sparsities):
    kept = prune.magnitude_prune(dense.model, s)
    ax.bar([j + i * width for j in range(len(layers))], [kept[n].float().mean().item() for n in layers], width,
           label=f"{s:.1%} sparse")
ax.set(xticks=[j + width * (len(study.sparsities) - 1) / 2 for j in range(len(layers))], xticklabels=layers,
       ylim=(0, 1), ylabel="share of the layer's weights kept", title="Global magnitude pruning: who pays?")
ax.legend(fontsize="small", ncol=2)
plt.show()

# %% [markdown]
# The wide middle layer loses the most: PyTorch initialises a layer with a larger fan-in
# with smaller weights, and with many inputs per unit it has redundancy to spare. The
# first layer, with only 16 inputs per unit, keeps the most.
#
# To recover, fine-tune with the pattern fixed. The keep-mask *is* the trainable mask of
# the lab's masked optimizer: `MaskedAdamW(model.named_parameters(), mask=keep)` moves only
# the kept entries, and a pruned entry stays exactly 0.0 even under weight decay (a plain
# `torch.optim.AdamW` would regrow it: its gradient is not zero). The toy's `tc.trainer`
# builds exactly that optimizer, and `prune.recover` checks afterwards that no pruned
# entry moved. Watch both optimizers for 20 steps with strong weight decay (`ps.regrowth`):

# %%
regrowth = ps.regrowth(pruned, keep, dense.world, steps=20, lr=1e-3, weight_decay=0.1)
display(Markdown(pit.format_pitfall(regrowth, score="test accuracy", fmt=".3f")))
for row in regrowth:
    print(f"{row.method:>24}: {row.moved:,} of {row.frozen:,} pruned entries are no longer zero")

# %%
prune.recover(pruned, keep, tc.trainer(dense.world, progress=True, desc="recovery", **study.recovery))
recovered = tc.accuracy(pruned, dense.world)
print(f"90% sparse, after {study.recovery_steps or cfg.steps} steps of recovery: accuracy {recovered:.3f} "
      f"({recovered / dense.accuracy:.0%} of dense; {prune.pruned_fraction(pruned, keep):.1%} still pruned)")

# %% [markdown]
# ### Exercise 4.2: one round of IMP with rewinding (difficulty 2/3, importance 2/3)
# Iterative magnitude pruning (Frankle & Carbin 2019; with rewinding to an early step,
# Frankle et al. 2020) repeats: train, prune a little more, **rewind** the survivors, retrain.
# Write the middle of one round: given the trained `model`, the current keep-mask `keep`,
# the snapshot `rewind_to` (`{name: tensor}` of every parameter) and the new total
# `sparsity`, return `{"keep": new_keep, "weights": rewound}`. The new keep-mask is your
# magnitude pruning of the trained weights among the survivors only (a pruned entry is never
# revived; same conventions as exercise 4.1); `rewound` is `{name: tensor}` of every
# parameter: the snapshot's value where kept, exactly 0 where pruned. Do not modify `model`.

# %%
def imp_round(model, keep, rewind_to, sparsity):
    """{"keep": the new keep-mask, "weights": the rewound weights with the pruned entries zeroed}."""
    raise NotImplementedError("your code here")


# %% tags=["raises-exception"]
check_imp_round(imp_round)

# %% [markdown]
# <details><summary>Hint 1</summary>
#
# Rank `abs(w)` where kept and `-1` where already pruned (`torch.where(keep[n], w.abs(), -1.0)`):
# pruned entries then lose every tie, so they stay pruned.
# </details>
#
# <details><summary>Hint 2</summary>
#
# Biases stay kept; the rewound weights are `rewind_to[n] * new_keep[n]`.
# </details>
#
# <details><summary>Solution</summary>
#
# ```python
# def imp_round(model, keep, rewind_to, sparsity):
#     params = dict(model.named_parameters())
#     weights = [n for n in params if n.endswith("weight")]
#     flat = torch.cat([torch.where(keep[n], params[n].detach().abs(), -1.0).flatten() for n in weights])
#     chosen = torch.zeros(flat.numel(), dtype=torch.bool)
#     chosen[torch.sort(flat, descending=True, stable=True).indices[:max(1, round((1 - sparsity) * flat.numel()))]] = True
#     new_keep, start = {n: keep[n].clone() for n in params}, 0
#     for n in weights:
#         new_keep[n] = chosen[start:start + params[n].numel()].view(params[n].shape)
#         start += params[n].numel()
#     return {"keep": new_keep, "weights": {n: rewind_to[n] * new_keep[n] for n in params}}
# ```
# </details>
#
# Two rounds by hand with your function: prune the dense student to 50%, rewind to the early
# checkpoint, retrain with the pattern fixed, then again to 75%. The study below does the same
# for every rung of the ladder.

# %%
imp_of = yours_or_library(ex, "imp_round", imp_round)
ticket = copy.deepcopy(dense.model)
ticket_keep = {n: torch.ones_like(p, dtype=torch.bool) for n, p in ticket.named_parameters()}
for target in tqdm((0.5, 0.75), desc="IMP rounds by hand", leave=False):
    step = imp_of(ticket, ticket_keep, dense.early, target)
    ticket_keep = step["keep"]
    ticket.load_state_dict(step["weights"])
    prune.recover(ticket, ticket_keep, tc.trainer(dense.world, progress=True, desc=f"retraining at {target:.0%}",
                                                  **study.recovery))
    print(f"IMP round to {target:.0%} sparse (rewound, retrained): accuracy {tc.accuracy(ticket, dense.world):.3f} "
          f"(dense {dense.accuracy:.3f})")

# %% [markdown]
# ## 3. The whole ladder: every recipe at every sparsity
# We compare the recipes at the sparsities IMP passes through when it prunes half of the
# remaining weights per round: 50%, 75%, 87.5%, ... One IMP run gives every rung, so all
# recipes meet at the same points. IMP *with rewinding* rewinds the survivors to the early
# checkpoint and retrains fully every round; IMP *without* fine-tunes them from where they
# are, with the same budget as one recovery. (The slow cell: about 1 min in fast mode and 23
# min in full mode, measured on the lab's loaded 2-core machine, `benchmarks/results/lesson_times.md`.)
#
# **Predict before you run.** Up to which sparsity of the ladder will one-shot pruning +
# recovery keep at least 95% of dense accuracy? Give one of the ladder's sparsities
# (printed in the bar chart's legend above), e.g. `0.75`.

# %%
prediction = None  # a sparsity of the ladder, e.g. 0.75

# %%
result = ps.run_study(study, dense)
display(Markdown(ps.format_table(result)))

# %%
ps.plot_study(result)
plt.show()
print(ps.verdict(result))
holds = [s for s in study.sparsities if result.accuracy["one-shot + recovery"][s] >= 0.95 * result.dense]
reveal(prediction if prediction is None else f"{float(prediction):g}", f"{max(holds):g}" if holds else "none",
       "Highest sparsity where one-shot + recovery keeps 95% of dense?")

# %% [markdown]
# How to read it. The numbers above are measured on this run; in fast mode the student is
# small and briefly trained (so extra training during recovery can even *beat* dense). Run
# with `LAB_FAST=0` for the full-size picture (student 16-256-256-8; the header gives its time); the
# printed verdict states where each recipe keeps 95% of dense accuracy.
#
# * **One-shot pruning alone** costs little at 50% and a lot beyond: the smallest weights
#   were not useless, they just mattered least *one at a time*.
# * **Recovery** wins most of it back: the surviving weights re-fit the task. Find the
#   sparsity where "95-100% of dense" stops holding: past that knee even a retrained
#   subnetwork is too small, or too badly chosen.
# * **IMP** spends many times the training budget (one retraining per round; the table's
#   last line). Does it buy anything before the knee, and beyond it? One reading of a gain:
#   pruning a little at a time, retraining in between, picks a better small subnetwork than
#   one cut of the dense weights. Compare rewinding with fine-tuning in place.
#
# ## 4. 2:4 structured sparsity
# N:M sparsity keeps the n largest of every m *consecutive* inputs of each row. 2:4 is
# always exactly 50% sparse, and NVIDIA's sparse tensor cores skip the zeros (Lesson 8
# measures the speed). Here is the pattern on a corner of the middle layer:

# %%
two_four = prune.magnitude_prune(dense.model, structure=(2, 4))
unstructured = prune.magnitude_prune(dense.model, 0.5)
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for ax, (name, mask) in zip(axes, [("2:4", two_four), ("unstructured 50%", unstructured)]):
    ax.imshow(mask["fc2.weight"][:16, :32].numpy(), cmap="Greys", vmin=0, vmax=1)
    ax.set_xticks([g - 0.5 for g in range(4, 32, 4)], minor=True)
    ax.grid(which="minor", axis="x", color="red", linewidth=1)  # the groups of 4 inputs
    ax.set(title=f"{name}: fc2.weight[:16, :32], black = kept", xlabel="input index (red: groups of 4)",
           ylabel="output index")
fig.tight_layout()
plt.show()
acc_24, acc_50 = result.accuracy["2:4 + recovery"][0.5], result.accuracy["one-shot + recovery"][0.5]
print(f"right after pruning: 2:4 {result.two_four_one_shot:.3f} vs unstructured {result.accuracy['one-shot'][0.5]:.3f};",
      f"after recovery: 2:4 {acc_24:.3f} vs unstructured {acc_50:.3f} (dense {result.dense:.3f})")

# %% [markdown]
# At the same 50%, 2:4 costs more than unstructured pruning: every group of four must give
# up two entries even where all four matter. Which layer suffers? Apply the 2:4 pattern to
# one layer at a time (no retraining):

# %%
for name in layers:
    one_layer = copy.deepcopy(dense.model)
    prune.apply_mask_(one_layer, {name: two_four[name]})
    print(f"2:4 on {name} only: accuracy {tc.accuracy(one_layer, dense.world):.3f} (dense {dense.accuracy:.3f})")

# %% [markdown]
# The first layer has only 16 inputs: under 2:4 each hidden unit may read only 8 of them,
# whichever 8 matter most to it. The wide middle layer has redundancy to spare. Real
# deployments often leave such small or sensitive layers dense.
#
# ## Try it yourself
# Pick a sparsity and a recipe, then press **Run**. The result is drawn as a red star on
# the study's plot. (IMP reaches the chosen sparsity in 3 rounds; 2:4 is always 50%.)

# %%
sparsity_slider = widgets.FloatSlider(value=0.9, min=0.1, max=0.99, step=0.01, description="sparsity",
                                      readout_format=".0%", continuous_update=False, layout=wide())
method_dropdown = widgets.Dropdown(options=list(ps.METHODS), value="one-shot + recovery", description="recipe")
run_button = widgets.Button(description="Run", button_style="primary")
output = widgets.Output()
last_run = {}


def on_run():
    """Run the chosen recipe at the chosen sparsity and redraw: what the Run button runs."""
    method = method_dropdown.value
    sparsity = 0.5 if method == "2:4 + recovery" else sparsity_slider.value
    acc = ps.run_method(dense, method, sparsity, study)
    figure = ps.plot_study(result, highlight=(method, sparsity, acc))
    plt.show()
    print(f"{method} at {sparsity:.0%} sparsity: accuracy {acc:.3f} ({acc / dense.accuracy:.0%} of dense)")
    last_run.update(method=method, sparsity=sparsity, accuracy=acc, figure=figure)


run_on_click(run_button, output, on_run)
display(widgets.VBox([sparsity_slider, method_dropdown, run_button, output]))

# %% [markdown]
# ## Summary: what this run found
# Every sentence below is printed from the numbers above.

# %%
one_shot = result.accuracy["one-shot"]
print(f"- Dense accuracy {result.dense:.3f}; one-shot pruning alone keeps {one_shot[min(study.sparsities)]:.3f} at "
      f"{min(study.sparsities):.1%} sparsity and {one_shot[max(study.sparsities)]:.3f} at {max(study.sparsities):.1%}.")
print(f"- With recovery, at least 95% of dense holds up to {max(holds):.1%} sparsity" if holds else
      "- With recovery, no sparsity of the ladder keeps 95% of dense", end="")
print(f"; at 90% (section 2) recovery reached {recovered / dense.accuracy:.0%} of dense.")
print(f"- 2:4 after recovery {acc_24:.3f} vs unstructured 50% {acc_50:.3f}: the structure "
      + ("costs accuracy." if acc_24 < acc_50 else "costs nothing measurable here."))

# %% [markdown]
# ## Questions to think about
# 1. One-shot pruning at 50% barely hurts, at 90% it is a disaster. After recovery, how
#    much of dense accuracy does 90% keep (section 2 printed it), and where does the 95%
#    line break (the summary)? What did the pruned weights contribute that the survivors
#    could learn to provide instead?
# 2. Recovery here uses as many steps as the dense training. Halve it
#    (`ps.default_study(recovery_steps=...)`), then halve it again. How cheap can
#    recovery be before the 95% claim breaks? Does the answer depend on the sparsity?
# 3. IMP with rewinding retrains fully once per round: r rounds cost r dense trainings. Give
#    one-shot + recovery the same total budget. Who wins now?
# 4. Rewind to the initialisation instead of the early checkpoint
#    (`ps.default_study(rewind_step=0)`). Frankle et al. 2020 found that for big networks
#    only rewinding to an early step works. What happens on this small one?
# 5. Global pruning took far more from some layers than from others. Try
#    `prune.prune_(model, 0.95, scope="per_tensor")`. Which layer limits the per-tensor
#    network, and why can global pruning go further?
# 6. The pruning literature's "95-100% of dense" (quoted at the top). On which side of the knee is that sentence
#    true here, and what would you need to know about a real model before believing it?
#
# ## What next
# - Lesson 3 asks the mirror question: not which weights to *remove*, but which few to
#   *train* (magnitude, gradient, Fisher, principal weights) while the rest stay frozen.
# - Lesson 7 shows why plain magnitude is a poor choice of weights to *fine-tune*, and
#   what a low-rank view of each matrix adds.
# - Lesson 8 runs 2:4 on a GPU's sparse tensor cores: the speed, and the accuracy cost
#   you just measured.
