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
# Lessons 1-5 *chose* a subnetwork and trained it. Here nothing is chosen: we train
# everything and **look at what moved**. On the lab's small GPT and its synthetic tasks we
# run GRPO (RL), SFT and DPO at matched settings, with the weights kept in float32 or
# *stored* in bf16 after every step, and test each claim. The code is `scaleup/rl.py` (the
# algorithms, through the lab's one training loop) and `scaleup/rl_study.py` (the
# measurements); `python -m scaleup.rl` prints the same study.
#
# **The start.** RL learns from rewards, and the pretrained GPT scores 0 on the target:
# every reward would be 0. So theta_0 is the pretrained GPT after a short SFT warm-up on the
# target, until it is partly competent (the paper's "SFT, then RL" setting).

# %%
import copy

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display

from scaleup import rl, rl_study
from scaleup import tasks as tk
from sparsity.fastmode import fast_mode
from sparsity.threads import use_threads
from toys.widgets import LABEL_STYLE, run_on_click, wide

FAST = fast_mode()  # LAB_FAST=1: fewer steps and smaller groups, so the notebook executes in CI
use_threads()  # one torch thread for the lesson's small models (LAB_THREADS=N: more)
cfg = rl_study.default_config()
world = tk.World(cfg.pretrain.world)
start, warmup = rl_study.start_model(cfg, world, progress=True)
print(f"fast mode: {FAST}; GPT '{cfg.preset}', target '{cfg.task}'; theta_0 after {warmup} SFT warm-up steps "
      f"scores {tk.accuracy(start, world, cfg.task, 'test'):.3f} exact match on the test split")
print(f"each run: {cfg.steps} steps of {cfg.prompts} prompts x {cfg.group} sampled answers, Adam lr {cfg.lr:g}")

# %% [markdown]
# ## The study: three algorithms, two storage dtypes
# Six fine-tunes of theta_0 (GRPO, SFT and DPO, each with float32 and with bf16 weights),
# then the subnetwork retrain. *Update sparsity* is the share of entries with
# |theta_1 - theta_0| <= 1e-5, compared in bf16 as the paper does.

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
# ## What to take away
# - On this model the sparsity of the update is mostly a matter of **storage precision and
#   step size**, not of the algorithm: compare the float32 and bf16 rows, and the overlap
#   of GRPO's and SFT's changed entries with its chance level.
# - The entries that stay put are the large ones: half a bf16 ulp grows with |w|.
# - Training only the changed entries gets the score back; whether the *values* agree to
#   1e-5 is a much stricter question, and the agreement line answers it.
# - Lesson 7 chooses a subnetwork *before* training (principal weights); this lesson
#   found one *after* training. Lesson 3's criteria sit between the two.
