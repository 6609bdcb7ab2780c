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
# # Lesson 6: RL fine-tunes small subnetworks
#
# Mukherjee et al. 2025 ("Reinforcement Learning Finetunes Small Subnetworks in Large
# Language Models") compared checkpoints of large language models before and after RL
# fine-tuning and found that RL left most weights **exactly as they were**: 70-95% of the
# entries differ by at most 1e-5 (compared in bf16). They also claim that training *only*
# that subnetwork reproduces the full run, that LayerNorm parameters get almost no update,
# that the sparse updates are nevertheless nearly full rank, and they propose a partly
# numerical mechanism: in bf16 an update below half a unit in the last place (ulp) of a
# weight rounds away.
#
# **By the end you can** measure the update sparsity of a fine-tune, write GRPO's group
# advantage and the half-ulp of a bf16 weight yourself, explain how storage precision and
# step size make an update sparse, and test the paper's claims one by one.
#
# **Prerequisites**: lessons 1 and 5 (update sizes; the GPT and its tasks); floating-point
# formats (sign, exponent, mantissa); policy-gradient RL in outline.
#
# **Time**: reading and exercises about 50 min (an estimate). Running, measured on the lab's
# 2-core machine shared with other jobs (`benchmarks/results/lesson_times.md`): about 4 min in
# fast mode (`LAB_FAST=1`), about 10 min in full mode the first time (it pretrains the tiny GPT once,
# about 5 min of that; the cached model is reused after).
#
# Lessons 1-5 *chose* a subnetwork and trained it. Here nothing is chosen: we train
# everything and **look at what moved**. On the lab's small GPT and its synthetic tasks we
# run GRPO (RL), SFT and DPO at matched settings, with the weights kept in float32 or
# *stored* in bf16 after every step, and test each claim. The code is `scaleup/rl.py` (the
# algorithms, through the lab's one training loop) and `scaleup/rl_study.py` (the
# measurements); `python -m scaleup.rl_study` prints the same study.
#
# **The start.** RL learns from rewards, and the pretrained GPT scores 0 on the target:
# every reward would be 0. So theta_0 is the pretrained GPT after a short SFT warm-up on the
# target, until it is partly competent (the paper's "SFT, then RL" setting).

# %%
import json

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display

from lessons.exercises import lesson06 as ex
from lessons.exercises import reveal, yours_or_library
from lessons.exercises.lesson06 import check_group_advantages, check_half_ulp
from scaleup import rl, rl_scale, rl_study
from scaleup import tasks as tk
from sparsity.fastmode import fast_mode
from sparsity.threads import use_threads
from toys.widgets import LABEL_STYLE, run_on_click, wide

FAST = fast_mode()  # LAB_FAST=1: fewer steps and smaller groups, so the notebook executes in CI
use_threads()  # one torch thread for the lesson's small models (LAB_THREADS=N: more)
cfg = rl_study.default_config(fast=FAST)
world = tk.World(cfg.pretrain.world)
start, warmup = rl_study.start_model(cfg, world, progress=True)
print(f"fast mode: {FAST}; GPT '{cfg.preset}', target '{cfg.task}'; theta_0 after {warmup} SFT warm-up steps "
      f"scores {tk.accuracy(start, world, cfg.task, 'test'):.3f} exact match on the test split")
print(f"each run: {cfg.steps} steps of {cfg.prompts} prompts x {cfg.group} sampled answers, Adam lr {cfg.lr:g}")

# %% [markdown]
# ### Exercise 6.1: GRPO's group advantage (difficulty 1/3, importance 3/3)
# GRPO (Shao et al. 2024) samples a *group* of answers per prompt and needs no value model:
# each answer's advantage is its reward relative to its own group,
# `(r - mean) / (std + eps)` with `eps = 1e-6` and the (unbiased, torch's default) standard
# deviation of the group. A group whose answers all got the same reward has advantage 0
# everywhere.

# %%
def group_advantages(reward):
    """Advantages of a [prompts, group] reward tensor, normalised within each row (same shape)."""
    raise NotImplementedError("your code here")


# %% tags=["raises-exception"]
check_group_advantages(group_advantages)

# %% [markdown]
# <details><summary>Hint</summary>
#
# `reward.mean(1, keepdim=True)` and `reward.std(1, keepdim=True)` keep one value per row that
# broadcasts against the row.
# </details>
#
# <details><summary>Solution</summary>
#
# ```python
# def group_advantages(reward):
#     centred = reward - reward.mean(1, keepdim=True)
#     return centred / (reward.std(1, keepdim=True) + 1e-6)
# ```
# </details>
#
# What the advantage means for learning from theta_0: with exact-match rewards, a prompt whose
# group is all right or all wrong teaches nothing. With your function, on rewards drawn at
# theta_0's accuracy:

# %%
advantages_of = yours_or_library(ex, "group_advantages", group_advantages)
p_right = tk.accuracy(start, world, cfg.task, "test")
drawn = (torch.rand(1000, cfg.group, generator=torch.Generator().manual_seed(0)) < p_right).float()
silent = (advantages_of(drawn).abs().amax(1) == 0).float().mean().item()
print(f"groups of {cfg.group} at accuracy {p_right:.2f}: {silent:.0%} of prompts get advantage 0 for every answer "
      f"(all right or all wrong); the pretrained model, at accuracy 0, would get 100%")

# %% [markdown]
# ## The study: three algorithms, two storage dtypes
# Six fine-tunes of theta_0 (GRPO, SFT and DPO, each with float32 and with bf16 weights),
# then the subnetwork retrain. *Update sparsity* is the share of entries with
# |theta_1 - theta_0| <= 1e-5, compared in bf16 as the paper does.
#
# **Predict before you run.** Will GRPO with bf16 weights leave more entries exactly
# unchanged than GRPO with float32 weights? Answer "yes" or "no".

# %%
prediction = None  # "yes" or "no"

# %%
study = rl_study.run_study(cfg, start=(start, warmup), progress=True)
print(f"{'run':<18}{'target':>8}{'unchanged':>11}{'rank':>7}")
for name, row in study["runs"].items():
    print(f"{name:<18}{row['target']:>8.3f}{row['update_sparsity']:>11.1%}{row['relative_rank']:>7.2f}")

names = list(study["runs"])
fig, (ax_sparsity, ax_target) = plt.subplots(1, 2, figsize=(11, 3.6))
colors = ["tab:blue" if n.endswith("float32") else "tab:orange" for n in names]
ax_sparsity.bar(names, [study["runs"][n]["update_sparsity"] for n in names], color=colors)
ax_sparsity.set(ylabel="share of entries unchanged", ylim=(0, 1.05), title="Update sparsity (blue: float32, orange: bf16)")
ax_target.bar(names, [study["runs"][n]["target"] for n in names], color=colors)
ax_target.axhline(study["start_target"], color="black", linestyle="--", label="theta_0")
ax_target.set(ylabel=f"{cfg.task} exact match (test)", ylim=(0, 1.05), title="What each run learned")
ax_target.legend(loc="lower right")
for ax in (ax_sparsity, ax_target):
    ax.tick_params(axis="x", rotation=35)
fig.tight_layout()
plt.show()
sparser = study["runs"]["grpo/bfloat16"]["update_sparsity"] > study["runs"]["grpo/float32"]["update_sparsity"]
reveal(prediction, "yes" if sparser else "no", "Does bf16 leave more entries unchanged than float32 (GRPO)?")

# %% [markdown]
# ## Where the update goes: per layer type
# The paper reports LayerNorm parameters almost untouched. The bars show the share of
# *unchanged* entries per layer type, for GRPO in float32 and in bf16.

# %%
types = list(study["runs"]["grpo/float32"]["per_layer_type"])
fig, ax = plt.subplots(figsize=(9, 3.8))
for i, weights in enumerate(cfg.weights):
    shares = [study["runs"][f"grpo/{weights}"]["per_layer_type"][t] for t in types]
    ax.bar(np.arange(len(types)) + (i - 0.5) * 0.38, shares, 0.38, label=f"GRPO, {weights} weights")
ax.set(xticks=range(len(types)), xticklabels=types, ylabel="share of entries unchanged", ylim=(0, 1.05),
       title="Update sparsity per layer type (|delta| <= 1e-5 in bf16)")
ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Why: rounding in bf16
# bf16 keeps 8 significant bits. A weight of size |w| moves only if a step reaches half
# an ulp of it, about |w| * 2^-9, so a *large* weight needs a *large* step. Two things to
# look at: which entries changed, by the magnitude of theta_0 (deciles, smallest first),
# and two predictions of the bf16 run's sparsity from the float32 run (the share of
# entries whose whole float32 update, or whose average float32 step, stays below half an
# ulp of |theta_0|).
#
# ### Exercise 6.2: half a unit in the last place (difficulty 3/3, importance 2/3)
# A float stores a value as `m * 2**e` with a mantissa of `p` stored bits (bf16: 7, float16:
# 10, float32: 23). The gap between neighbouring representable values near `v` (one *ulp*) is
# `2**(e - p)` for `v` in `[2**e, 2**(e+1))`; an update below half of it rounds back to `v`.
# Write half an ulp of each value as stored in `dtype` (0 where the value is 0).

# %%
def half_ulp(values, dtype=torch.bfloat16):
    """Half a unit in the last place of each entry of values, stored in dtype: a float32 tensor."""
    raise NotImplementedError("your code here")


# %% tags=["raises-exception"]
check_half_ulp(half_ulp)

# %% [markdown]
# <details><summary>Hint 1</summary>
#
# `torch.finfo(dtype).eps` is one ulp at 1.0, `2**-p`: `p = round(-log2(eps))`.
# </details>
#
# <details><summary>Hint 2</summary>
#
# `torch.frexp(x)` returns `(mantissa, exponent)` with `x = mantissa * 2**exponent` and
# `0.5 <= |mantissa| < 1`; round to `dtype` first (`values.to(dtype).float()`), then half an ulp is
# `2**(exponent - 1 - p - 1)`, and `torch.ldexp` builds it.
# </details>
#
# <details><summary>Solution</summary>
#
# ```python
# import math
#
# def half_ulp(values, dtype=torch.bfloat16):
#     bits = round(-math.log2(torch.finfo(dtype).eps))
#     _, exponent = torch.frexp(values.to(dtype).float())
#     half = torch.ldexp(torch.ones_like(values, dtype=torch.float32), exponent - bits - 2)
#     return torch.where(values == 0, torch.zeros_like(half), half)
# ```
# </details>
#
# With your function on theta_0: how many of its entries could a single step of the learning
# rate's size not move at all in bf16?

# %%
half_ulp_of = yours_or_library(ex, "half_ulp", half_ulp)
weights0 = torch.cat([p.detach().flatten() for p in start.parameters()])
stuck = (half_ulp_of(weights0) > cfg.lr).float().mean().item()
print(f"{stuck:.1%} of theta_0's entries have half a bf16 ulp above the learning rate {cfg.lr:g}: a step of that size "
      "rounds away on them (Adam's steps are about the learning rate early on)")

# %%
fig, ax = plt.subplots(figsize=(8, 3.6))
for weights in cfg.weights:
    ax.plot(range(1, 11), study["runs"][f"grpo/{weights}"]["changed_by_decile"], marker="o",
            label=f"GRPO, {weights} weights")
ax.set(xlabel="decile of |theta_0| (1 = smallest)", ylabel="share of entries changed", ylim=(-0.05, 1.05),
       xticks=range(1, 11), title="Which entries move: by the size of the weight")
ax.legend()
fig.tight_layout()
plt.show()
for algorithm in cfg.algorithms:
    row = study["runs"][f"{algorithm}/bfloat16"]
    print(f"{algorithm:>5} bf16: measured {row['update_sparsity']:.1%} unchanged; predicted from the float32 run: "
          f"{row['half_ulp_predictor_total']:.1%} (total update), {row['half_ulp_predictor_per_step']:.1%} (average step)")

# %% [markdown]
# ## Is RL special?
# At the same learning rate, steps and storage dtype, did GRPO, SFT and DPO leave the
# same share of weights untouched, and did they touch the *same* entries? The Jaccard
# index of two runs' changed sets is compared with what two random sets of the same sizes
# would give.

# %%
o = study["overlap"]
print(f"{o['pair']}: Jaccard {o['jaccard']:.3f}, chance {o['chance_jaccard']:.3f}; "
      f"{o['a_in_b']:.1%} of the first run's changed entries also changed in the second")

# %% [markdown]
# ## The controls: step size, the data, and competence
# One change at a time from the runs above: GRPO at other learning rates (does the
# sparsity follow the step size?), SFT on the model's own samples (in-distribution data)
# and on another task's answers to the same inputs (out of distribution), and GRPO from the
# pretrained model without the warm-up (no competence: almost no reward to learn from).
# Last, each algorithm at the learning rate that suits it best (on the validation split), the
# comparison a user who tunes each method would make.

# %%
print(f"{'control':<40}{'target':>8}{'unchanged':>11}")
for name, row in study["controls"].items():
    print(f"{name:<40}{row['target']:>8.3f}{row['update_sparsity']:>11.1%}")
for algorithm, (lr, row) in rl_study.best_lr_rows(study).items():
    print(f"{algorithm} at its best learning rate {lr:g}: target {row['target']:.3f}, "
          f"{row['update_sparsity']:.1%} unchanged")

# %% [markdown]
# ## Training only the subnetwork
# Take the entries the full GRPO run (bf16) changed, train only those from theta_0 with
# the same seeds and data order (`MaskedAdamW` on that mask), and compare: the score, and
# how many values agree with the full run's at three tolerances.

# %%
r = study["retrain"]
print(f"subnetwork: {r['subnetwork_share']:.1%} of all entries; target full run {r['full_target']:.3f}, "
      f"subnetwork only {r['masked_target']:.3f}")
for scope in ("agreement_in_subnetwork", "agreement_all"):
    print(scope.replace("_", " ") + ": " + ", ".join(f"{k} {v:.1%}" for k, v in r[scope].items()))

# %% [markdown]
# ## Try it
# Pick an algorithm, the storage dtype, a learning rate and the number of steps, and
# press **Run**: one fine-tune of theta_0, measured. Try a tiny learning rate in float32
# (does sparsity appear without bf16?) and a large one in bf16 (does it vanish?).

# %%
algorithm_menu = widgets.Dropdown(options=list(rl.ALGORITHMS), value="grpo", description="algorithm")
dtype_buttons = widgets.ToggleButtons(options=list(rl.WEIGHT_DTYPES), value="bfloat16", description="weights")
lr_slider = widgets.SelectionSlider(options=[("1e-6", 1e-6), ("1e-5", 1e-5), ("1e-4", 1e-4), ("3e-4", 3e-4)],
                                    value=cfg.lr, description="learning rate", style=LABEL_STYLE,
                                    continuous_update=False, layout=wide())
steps_slider = widgets.IntSlider(value=cfg.steps, min=2, max=200, step=2, description="steps",
                                 continuous_update=False, layout=wide())
run_button = widgets.Button(description="Run", button_style="primary")
run_output = widgets.Output()
last_run: dict = {}


def run_once() -> None:
    model, row = rl_study.run_one(cfg, start, world, algorithm_menu.value, dtype_buttons.value, progress=True,
                                  lr=lr_slider.value, steps=steps_slider.value)
    last_run.update(algorithm=algorithm_menu.value, weights=dtype_buttons.value, lr=lr_slider.value,
                    steps=steps_slider.value, row=row)
    print(f"target {tk.accuracy(start, world, cfg.task, 'test'):.3f} -> {row['target']:.3f}; "
          f"{row['update_sparsity']:.1%} of entries unchanged; relative update rank {row['relative_rank']:.2f}")
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.bar(list(row["per_layer_type"]), list(row["per_layer_type"].values()))
    ax.set(ylabel="share unchanged", ylim=(0, 1.05),
           title=f"{algorithm_menu.value}, {dtype_buttons.value}, lr {lr_slider.value:g}, {steps_slider.value} steps")
    fig.tight_layout()
    last_run["figure"] = fig
    plt.show()


run_on_click(run_button, run_output, run_once)
display(widgets.VBox([algorithm_menu, dtype_buttons, lr_slider, steps_slider, run_button, run_output]))

# %% [markdown]
# ## The verdict, claim by claim
# Each sentence is worded from this run's numbers; run the notebook in full mode
# (without `LAB_FAST=1`) for the numbers the lab reports.

# %%
display(Markdown("\n".join(f"- {line}" for line in study["verdicts"])))

# %% [markdown]
# ## Across sizes: does the update sparsity move as the GPT grows?
# The paper's models are thousands of times larger than ours, so the honest bridge is a trend.
# `python -m scaleup.rl_scale` runs GRPO in float32 and bf16 over a learning-rate sweep at the micro,
# tiny and small GPTs (its committed report: `benchmarks/results/rl_scale.md`). The x axis divides the
# learning rate by the median half bf16 ulp of |theta_0|: the step measured in the units rounding cares about.

# %%
if rl_scale.COMMITTED.exists():
    scale = json.loads(rl_scale.COMMITTED.read_text())
    rl_scale.plot_trend(scale)
    plt.show()
    for size, entry in scale["sizes"].items():
        print(f"{size} GPT ({entry['parameters']:,} parameters), {len(entry['runs'])} runs:")
        print("\n".join(f"  - {line}" for line in entry["verdicts"]))
    print("Across sizes:\n" + "\n".join(f"  - {line}" for line in scale["trend"]))
else:
    print(f"{rl_scale.COMMITTED} is absent: `python -m scaleup.rl_scale` makes it; the trend is skipped here.")

# %% [markdown]
# ## Summary: what this run found
# Every sentence below is printed from the numbers above.

# %%
runs = study["runs"]
print("- Update sparsity (share unchanged): " + ", ".join(f"{n} {r['update_sparsity']:.0%}" for n, r in runs.items())
      + ": compare float32 with bf16 for the role of storage precision.")
deciles = runs["grpo/bfloat16"]["changed_by_decile"]
print(f"- GRPO in bf16 changed {deciles[0]:.0%} of the smallest tenth of theta_0's entries and {deciles[-1]:.0%} of "
      "the largest tenth: " + ("the pattern rounding predicts (half a bf16 ulp grows with |w|)." if deciles[0] > deciles[-1]
                                else "not the pattern rounding predicts (half a bf16 ulp grows with |w|)."))
print(f"- {o['pair']} changed entries overlap with Jaccard {o['jaccard']:.2f} (chance {o['chance_jaccard']:.2f}).")
gain = r["full_target"] - study["start_target"]
if gain >= rl_study.RETRAIN_MIN_GAIN:
    print(f"- Training only the subnetwork: target {r['masked_target']:.3f} vs the full run's {r['full_target']:.3f} "
          f"(the full run gained {gain:+.3f} over theta_0).")
else:
    print(f"- The full GRPO run barely learned ({study['start_target']:.3f} -> {r['full_target']:.3f}), so this run "
          "cannot test whether the subnetwork alone gets the score back (full mode, `LAB_FAST=0`, trains longer: "
          "its summary says whether that run can).")
print("- Whether the *values* agree is stricter: " + ", ".join(
    f"{k} {v:.0%}" for k, v in r["agreement_in_subnetwork"].items()) + " of the subnetwork's entries agree.")

# %% [markdown]
# Lesson 7 chooses a subnetwork *before* training (principal weights); this lesson found one
# *after* training. Lesson 3's criteria sit between the two.
#
# ## Questions to think about
# 1. Compare the bf16 and float32 runs' update sparsity at the same learning rate (the
#    summary's first line). If sparsity came from RL itself, what would you expect the
#    float32 runs to show?
# 2. Half a bf16 ulp grows with |w|. Which entries does a small learning rate leave alone,
#    and what does that predict for LayerNorm gains (values near 1)?
# 3. With exact-match rewards a group that is all right or all wrong has zero advantage
#    (exercise 6.1). Why does that make the SFT warm-up necessary, and what does it predict
#    for GRPO's update on prompts the model already solves?
# 4. Training only the changed entries is judged against a full run. Why is "the
#    subnetwork gets the score back" meaningless when the full run did not learn?
# 5. The paper compares checkpoints at 1e-5 in bf16. Pick the tolerance that would make
#    *every* float32 run look sparse, and say why a tolerance must be tied to the storage
#    precision.
#
# ## What next
# - Lesson 7 chooses a subnetwork before training (LIFT's principal weights).
# - Lesson 8 turns to 2:4 structured sparsity on GPUs.
