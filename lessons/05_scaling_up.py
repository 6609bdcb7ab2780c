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
# # Lesson 5: Scaling up
#
# Lessons 1 to 4 asked their questions of MLPs. Here we ask them of a transformer: a
# small GPT (`scaleup/gpt.py`, nanoGPT's recipe) **pretrained** on a mixture of synthetic
# token tasks (copy, reverse, increment, a fact table), then **fine-tuned** on a new task:
#
# - `add2` (every symbol + 2): *near* the pretraining tasks, a variant of `increment`;
# - `sort`: *far*, a new skill;
# - `facts_b`: *far*, new facts.
#
# Two numbers per fine-tuning run: **target accuracy** (exact match on the target's test
# split: did it learn?) and **source retention** (mean accuracy on the pretraining tasks:
# what did it forget?). The question of the lab, at this scale: **can a sparse subnetwork
# (5% of every weight matrix) match full fine-tuning, and does it forget less?** LoRA is the
# baseline every sparse method must beat; a fair comparison gives both the same number of
# trainable entries (the *LoRA-equal* budget, exercise 5.1). In the one-run table below the
# sparse methods train 5% of every block matrix, in general not LoRA's count: the table
# prints each method's count; the committed frontiers further down compare them at
# LoRA-equal budgets too.
#
# **By the end you can** fine-tune a transformer sparsely with the lab's entry point, compute
# the LoRA-equal budget of a matrix and the area under a learning-forgetting frontier
# yourself, and judge methods by their frontiers rather than by one run.
#
# **Prerequisites**: lessons 1, 3 and 7 (criteria, LIFT); what a decoder-only transformer and
# LoRA are; Pareto optimality.
#
# **Time**: reading and exercises about 50 min (an estimate). Running, measured on the lab's
# 2-core machine shared with other jobs (`benchmarks/results/lesson_times.md`): about 1 min in
# fast mode (`LAB_FAST=1`), about 9 min in full mode the first time (it pretrains the tiny GPT once,
# about 5 min of that; the cached model is reused after).
#
# Everything runs the lab's code: `scaleup.pretrain` (cached checkpoints), `scaleup.compare`
# (the controlled benchmark: one function fine-tunes with any method; `scaleup.report` draws
# its figures), `scaleup.teacher_student` (lesson 1's probe on the GPT), and the `sparsity`
# core underneath: `SparseConfig` + `sparsify` choose and freeze, `fit` trains.
#
# **Sizes.** Fast mode (`LAB_FAST=1`, for CI) uses the `micro` preset with a few steps: its
# numbers only show that the cells run. By default the `tiny` preset at full length: minutes
# on a laptop CPU, pretraining once and then loading the cached checkpoint. With a GPU,
# `small`. The first cell prints the model's size.

# %%
import copy
from dataclasses import replace
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from lessons.exercises import lesson05 as ex
from lessons.exercises import reveal, yours_or_library
from lessons.exercises.lesson05 import check_frontier_area, check_lora_equal_count
from scaleup import bench_config, finetune, gpt, methods, report, results
from scaleup import tasks as tk
from scaleup import teacher_student as ts
from sparsity import SparseConfig, cosine, fit, sparsify
from sparsity.fastmode import fast_mode
from sparsity.threads import use_threads
from sparsity.sweep import markdown_table
from toys.widgets import run_on_click, wide

FAST = fast_mode()  # LAB_FAST=1 shrinks the runs so the notebook executes in CI
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PRESET = "micro" if FAST else "small" if DEVICE == "cuda" else "tiny"
use_threads()  # one torch thread for the lesson's small models (LAB_THREADS=N: more)
DENSITIES = (0.01, 0.05, 0.2)
if FAST:  # the micro preset in a small task world it learns in 200 pretraining steps
    cfg = replace(bench_config.demo_config(fast=True), densities=DENSITIES)
else:  # one learning rate per method, from inside the frontier benchmark's grids
    cfg = bench_config.default_config(PRESET, densities=DENSITIES, lrs_full=(3e-4,), lrs_sparse=(1e-2,), lrs_lora=(3e-3,))
setup = bench_config.prepare(cfg, device=DEVICE)  # loads the cached checkpoint, or pretrains it once
print(f"fast mode: {FAST}; GPT {PRESET} ({setup.pretrained.n_params():,} parameters) on {DEVICE}; "
      f"fine-tuning: {cfg.steps} steps of batch {cfg.batch_size} on '{cfg.target}'")
print(f"before fine-tuning: target accuracy {setup.before['target_test']:.2f}, "
      f"source retention {setup.before['retention']:.2f}")

# %% [markdown]
# ## Sparse fine-tuning in a few lines
#
# The entry point of the `sparsity` core works on any `nn.Module`, this GPT included:
# `SparseConfig` says which entries may train (here LIFT's principal weights, Liu et al.
# 2025: the largest entries of each matrix's rank-4 approximation, 5% of every block
# matrix), `sparsify` selects them, freezes everything else and builds an optimizer that
# keeps state for the selected entries only, and `fit` is the lab's one training loop: a
# loss of a batch, a batch per step, a learning-rate schedule (warm-up, then cosine decay
# to a tenth).

# %%
LR_SPARSE = cfg.lrs_sparse[0]
model = copy.deepcopy(setup.pretrained).train()
sparse = sparsify(model, SparseConfig(criterion="lift", density=0.05, options={"rank": cfg.lift.rank}, lr=LR_SPARSE))
sparse.print_trainable_parameters()


def loss_of_batch(model, batch):
    with gpt.autocast(DEVICE):  # bf16 on a GPU, nothing on the CPU
        return tk.loss(model, batch)


def batch_at(step, seed=0):
    return setup.world.train_batch(cfg.target, step, cfg.batch_size, seed).to(DEVICE)


history = fit(model, sparse.optimizer, loss_of_batch, cfg.steps, batches=batch_at,
              schedule=cosine(LR_SPARSE, cfg.steps, warmup=cfg.warmup, floor=0.1))
model.eval()
by_hand = {"target_test": tk.accuracy(model, setup.world, cfg.target), "retention": tk.retention(model, setup.world)}
trainable, total = sparse.trainable_parameters()
moved = sum(int((p.detach() != sparse.reference[n]).sum()) for n, p in model.named_parameters())
print(f"loss {history['loss'][0]:.3f} -> {history['loss'][-1]:.3f}; target accuracy {by_hand['target_test']:.2f}, "
      f"source retention {by_hand['retention']:.2f}; {moved:,} of {total:,} entries moved "
      f"(at most the {trainable:,} selected)")

# %% [markdown]
# ## Full vs sparse vs LoRA, one run each
#
# The benchmark's `run_cell` does the same for every method: each fine-tunes a copy of the
# same pretrained model on the same batches in the same order. Sparse methods train 5% of
# every block matrix (embeddings and LayerNorms frozen), chosen by a criterion of the
# registry (`sparsity.registry`): `random`, `magnitude`, and `lift` (lesson 7 looks closer).
# LoRA trains rank-4 adapters on every block matrix. The benchmark sweeps the learning rate
# and picks, on a validation split, the smallest rate that learns the target as well as the
# best one; here each method uses the rate that sweep chose on the tiny preset for `add2`
# (the table prints it: fewer trainable entries need larger steps).
#
# **Predict before you run.** Which of `full`, `lora` and `lift` will keep the most of the
# source (the highest retention)?

# %%
prediction = None  # "full", "lora" or "lift"

# %%
SHOWN = ("full", "lora", "random", "magnitude", "lift")


def budget_of(method, density_budget="d0.05"):
    """The budget label a method runs at: full trains everything, LoRA its rank, 2:4 half of each matrix."""
    return {"full": "all", "lora": "lora_equal", "2:4": "2:4"}.get(method, density_budget)


def lr_of(setup, method):
    (lr,) = setup.cfg.lrs(method)
    return lr


rows = {m: finetune.run_cell(setup, m, budget_of(m), lr_of(setup, m), seed=0, progress=True) for m in SHOWN}
print(f"{'method':<10}{'trainable':>11}{'lr':>8}{'target':>8}{'retention':>11}{'train s':>9}")
for m, r in rows.items():
    print(f"{m:<10}{r['trainable']:>11,}{r['lr']:>8g}{r['target_test']:>8.2f}{r['retention']:>11.2f}"
          f"{r['train_s']:>9.1f}")
same = all(rows["lift"][k] == v for k, v in by_hand.items())
print(f"the sparsify + fit run above is the benchmark's lift run, bit for bit: {same}")
kept_most = max(("full", "lora", "lift"), key=lambda m: rows[m]["retention"])
reveal(prediction, kept_most, "Highest retention of full, lora and lift?")
if FAST:
    print(f"fast mode: the micro model fine-tuned for {cfg.steps} steps; retention went from "
          f"{setup.before['retention']:.2f} to {min(r['retention'] for r in rows.values()):.2f}-"
          f"{max(r['retention'] for r in rows.values()):.2f}. These numbers only show that the cells run; "
          "the committed full-size results are the frontiers below.")

# %%
report.plot_learning_vs_forgetting(rows, setup.before, f"GPT {PRESET}: fine-tuning on {cfg.target}, one seed")
plt.show()
full = rows["full"]
for m, r in rows.items():
    if m != "full":
        print(f"{m:>9}: target {r['target_test']:.2f} vs full {full['target_test']:.2f}; "
              f"retention {r['retention']:.2f} vs full {full['retention']:.2f}")

# %% [markdown]
# The cost side of the same runs: how many entries each method trains, and how many bytes
# of optimizer state it keeps (AdamW: two moments per trained entry; the compact sparse
# optimizer adds one int32 index per entry). `benchmarks/scaleup_memory.py` measures step
# time and peak memory on larger presets.

# %%
report.plot_costs(rows)
plt.show()

# %% [markdown]
# ### Exercise 5.1: the LoRA-equal budget (difficulty 1/3, importance 3/3)
# A rank-r LoRA adapter on a matrix of shape (m, n) trains `B` (m x r) and `A` (r x n) (Hu et
# al. 2021). A sparse method compared "at a matched budget" trains the same number of entries
# of that matrix, but never more than the matrix has. Write the count.

# %%
def lora_equal_count(shape, rank):
    """How many entries of a matrix of shape (m, n) a LoRA-equal sparse mask of rank `rank` trains (an int)."""
    raise NotImplementedError("your code here")


# %% tags=["raises-exception"]
check_lora_equal_count(lora_equal_count)

# %% [markdown]
# <details><summary>Hint</summary>
#
# B has m * r entries and A has r * n; cap the sum at m * n.
# </details>
#
# <details><summary>Solution</summary>
#
# ```python
# def lora_equal_count(shape, rank):
#     m, n = shape
#     return min(rank * (m + n), m * n)
# ```
# </details>
#
# With your count: how many entries does a LoRA-equal sparse mask train in this GPT's block
# matrices, against LoRA's adapters and the 5% masks above?

# %%
count_of = yours_or_library(ex, "lora_equal_count", lora_equal_count)
blocks = [p for n, p in setup.pretrained.named_parameters() if ".blocks." in f".{n}" and p.ndim == 2]
equal = sum(count_of(tuple(p.shape), cfg.lora_rank) for p in blocks)
print(f"{len(blocks)} block matrices; LoRA-equal budget at rank {cfg.lora_rank}: {equal:,} entries; "
      f"LoRA trained {rows['lora']['trainable']:,}; the 5% masks {rows['lift']['trainable']:,}")

# %% [markdown]
# ## Learning-forgetting frontiers: judging a method over its whole trade-off
#
# One seed and one learning rate per method is an anecdote: a lower rate keeps more of the
# source and learns less, so "method A forgets less than B" may only say A's rate was lower.
# The controlled benchmark (`python -m scaleup.compare ... --sweep-all-seeds --eval-every 50`)
# follows Biderman et al. (2024, "LoRA Learns Less and Forgets Less"): every method runs its
# whole learning-rate grid on three seeds, and every run is evaluated every 50 steps. Each
# evaluation is a point (retention of the source, learning of the target), both **per token**
# (exact match makes forgetting all-or-nothing). A method's **frontier** is the upper-right
# edge of its points: the best target score it reaches at each level of retention.
#
# How to read the figure: up is "learned more", right is "kept more"; a frontier above and to
# the right of another *dominates* it. The table gives two numbers per method, each as
# mean [min, max] over seeds: the **area under the frontier** and the **retention at a
# matched target** (90% and 99% of full fine-tuning's best). A gap counts only if the seed
# intervals do not overlap; the verdict under the table says which gaps do.
#
# The committed results below come from the lab's code (the commands are in each report);
# choose a scale or world, the methods and the budget.
#
# ### Exercise 5.2: the area under a frontier (difficulty 2/3, importance 2/3)
# Given a run's (retention, target) points, each in [0, 1] with higher better on both, keep
# the **Pareto frontier** (the points no other point beats on both axes) and return the area
# of the unit square it dominates: the union of the boxes [0, x] x [0, y] of its points. No
# points: area 0.

# %%
def frontier_area(points):
    """The area of [0, 1]^2 dominated by the Pareto frontier of a list of (x, y) points (a float)."""
    raise NotImplementedError("your code here")


# %% tags=["raises-exception"]
check_frontier_area(frontier_area)

# %% [markdown]
# <details><summary>Hint 1</summary>
#
# Dominated points add nothing to the union of boxes, so you can skip the frontier step and
# compute the union directly.
# </details>
#
# <details><summary>Hint 2</summary>
#
# Sort by x. Between the previous x and this point's x, the union's height is the largest y
# among the points with x at least this one's.
# </details>
#
# <details><summary>Solution</summary>
#
# ```python
# def frontier_area(points):
#     boxes = sorted(set(points))
#     area, previous_x = 0.0, 0.0
#     for i, (x, _) in enumerate(boxes):
#         area += (x - previous_x) * max(y for _, y in boxes[i:])
#         previous_x = x
#     return area
# ```
# </details>

# %%
from scaleup import frontier, frontier_report

ROOT = Path(bench_config.__file__).resolve().parents[1]
FRONTIERS = {label: ROOT / "benchmarks" / "results" / name for label, name in (
    ("tiny GPT, facts_b (far: new facts)", "frontier_tiny_facts_b"),
    ("tiny GPT, add2 (near: a variant of increment)", "frontier_tiny_add2"),
    ("small GPT, facts_b (one seed)", "frontier_small_facts_b"),
    ("Hugging Face GPT-2 (tiny config)", "hf_gpt2_tiny"),
    ("modular toy MLP", "toy_modular"),
    ("teacher-student MLP", "toy_teacher_student"),
) if (ROOT / "benchmarks" / "results" / name / "results.jsonl").exists()}
traced = {label: results.load_results(folder) for label, folder in FRONTIERS.items()}
traced = {label: rows for label, rows in traced.items() if any(r.get("trace") for r in rows.values())}
print("committed frontier benchmarks:", ", ".join(traced) or "none yet")
area_of = yours_or_library(ex, "frontier_area", frontier_area)
for label, stored in list(traced.items())[:1]:
    points = {}
    for row in stored.values():
        if row["budget"] in ("all", "lora_equal"):
            points.setdefault((row["method"], row["seed"]), []).extend(frontier.run_points(row))
    per_method = {}
    for (method, _), p in points.items():
        per_method.setdefault(method, []).append(area_of(p))
    print(f"{label}, area under each method's frontier at the LoRA-equal budget (full: all entries), "
          "mean over seeds: "
          + ", ".join(f"{m} {sum(a) / len(a):.3f}" for m, a in sorted(per_method.items(), key=lambda kv: -sum(kv[1]) / len(kv[1]))))

# %%
scale_menu = widgets.Dropdown(options=list(traced), description="scale", layout=wide())
methods_box = widgets.SelectMultiple(description="methods", rows=8)
budget_menu = widgets.Dropdown(description="budget")
frontier_button = widgets.Button(description="Draw frontiers", button_style="primary")
frontier_output = widgets.Output()
last_frontier = {}


def fill_menus(*_):
    """The methods and budgets of the chosen benchmark (every method shown at first)."""
    rows = traced.get(scale_menu.value, {})
    methods_box.options = list(dict.fromkeys(r["method"] for r in rows.values()))
    methods_box.value = tuple(methods_box.options)
    budget_menu.options = [b for b in dict.fromkeys(r["budget"] for r in rows.values()) if b != "all"]
    budget_menu.value = "lora_equal" if "lora_equal" in budget_menu.options else budget_menu.options[0]


def on_frontier():
    """Draw the chosen methods' frontiers at the chosen budget (with full fine-tuning), then the table."""
    rows = {k: r for k, r in traced[scale_menu.value].items() if r["method"] in methods_box.value}
    fig, ax = plt.subplots(figsize=(8, 6))
    frontier_report.plot_frontiers(rows, f"{scale_menu.value}: budget {budget_menu.value}",
                                   budgets=[budget_menu.value, "all"], ax=ax)
    plt.show()
    display(Markdown(frontier_report.frontier_table(rows)))
    display(Markdown(frontier_report.frontier_verdict(rows)))
    last_frontier.update(scale=scale_menu.value, methods=methods_box.value, figure=fig)


scale_menu.observe(fill_menus, names="value")
fill_menus()
run_on_click(frontier_button, frontier_output, on_frontier)
display(widgets.VBox([scale_menu, methods_box, budget_menu, frontier_button, frontier_output]))
if traced:
    frontier_button.click()

# %% [markdown]
# Things to look for: do the frontiers of the near target (`add2`) start at full retention
# and fall steeply, while those of new facts stay to the right? Which method's frontier lies
# highest at the retention you would accept? Is the gap between two methods wider than the
# spread between their seeds? The verdict answers the lab's questions from these numbers:
# does a sparse criterion keep more than LoRA at the same count, and does LIFT keep "up to
# 20% more" of the source, as its abstract claims?
#
# ## Across scale: does the answer hold as the model grows?
# The same questions asked of every committed folder, toy MLPs to the small GPT (`scaleup.scale_report`, behind
# `benchmarks/results/scale_verdict.md`); each cell says its seeds. **Predict first**: will the frontier highest on
# `add2` at tiny stay on top at small? LoRA on `facts_b`: easier there? A second pretraining of one model: agree?

# %%
from scaleup import scale_report, scale_verdict
(across, missing), (replicas, _) = (scale_report.committed_scales(ROOT / "benchmarks" / "results", names) for names
                                    in (scale_report.COMMITTED, scale_report.COMMITTED_REPLICATES))
across_verdict = scale_verdict.scale_verdict(across, replicas)
display(Markdown(scale_report.scale_tables([s for s in across if s.target in ("add2", "facts_b")])))
display(Markdown(f"Skipped, not committed yet: {', '.join(missing) or 'none'}.\n\n{across_verdict}"))

# %% [markdown]
# ## Which blocks needed updating? Lesson 1's probe on the transformer
#
# Lesson 1 built a world where the answer is known: the student differs from its teacher in
# one layer. Here the same on the GPT (`scaleup.teacher_student`): the **teacher** is the
# pretrained model fine-tuned on the target with **only the middle block** trainable (and
# the target's task-token embedding, which pretraining never trained). The **student** is the
# teacher with that block put back to its pretrained values, so only that block needs to
# change. The student is distilled toward the teacher's answers, once with lambda = 0 and
# once with an L1 pull to its start (a proximal step: exact zeros where the task does not
# push hard enough). Where does the update go?

# %%
if FAST:  # the same micro checkpoint as above
    ts_cfg = ts.default_config("micro", fast=True, world=cfg.world, pretrain_steps=cfg.pretrain_steps)
else:
    ts_cfg = ts.default_config("tiny")
study = ts.run(ts_cfg)
ts.plot_shares(study)
plt.show()
print(ts.format_table(study))

# %% [markdown]
# Compare with lesson 1. The table says how the update spread over the blocks at each
# lambda, and whether the changed block came out on top; the lines below name the part that
# holds the largest share. `revealed` is measured, not assumed. If L1-to-init does not find
# the changed block here, ask where an update costs *less* L1: a transformer offers cheap
# routes a 3-layer MLP does not (the embedding table is also the output head; the first
# block sees the task token first). The penalty finds the cheapest change that fits the
# teacher, which need not be the change the teacher made. One setting, one seed: try other
# blocks and targets yourself, e.g. `ts.run(replace(ts_cfg, blocks=(1,), target="facts_b"))`,
# or lesson 1's recipe with the block re-drawn, `ts.run(replace(ts_cfg, student="reinit"))`.

# %%
for lam, student in study.runs.items():
    top = max(student.block_share, key=student.block_share.get)
    print(f"lambda = {lam:g}: the largest share of the update, {student.block_share[top]:.0%}, sits in {top}; "
          f"the teacher changed {', '.join(study.chosen)}")

# %% [markdown]
# ## Try it yourself
# Pick a method, a budget and a target task, then press **Fine-tune** (nothing trains until
# you press). The budget applies to the sparse criteria; full fine-tuning trains
# everything, LoRA its rank-4 adapters, 2:4 half of every matrix. Things to try: `facts_b`
# (new facts) with `magnitude` vs `lift` at 1%; `sort` (a far skill) with full fine-tuning
# vs LoRA; `middle_blocks` at LoRA-equal (is the middle enough?).

# %%
method_menu = widgets.Dropdown(options=methods.known_methods(), value="lift", description="method")
density_slider = widgets.SelectionSlider(options=[("1%", "d0.01"), ("5%", "d0.05"), ("20%", "d0.2"),
                                                  ("LoRA-equal", "lora_equal")],
                                         value="d0.05", description="budget", continuous_update=False,
                                         layout=wide())
target_menu = widgets.Dropdown(options=list(tk.TARGET_TASKS), value=cfg.target, description="target")
run_button = widgets.Button(description="Fine-tune", button_style="primary")
output = widgets.Output()
setups = {cfg.target: setup}
last_run = {}


def on_run():
    """Fine-tune with the chosen method, budget and target, and plot it next to full fine-tuning."""
    target, method = target_menu.value, method_menu.value
    if target not in setups:
        setups[target] = bench_config.prepare(replace(cfg, target=target), device=DEVICE, progress=True)
    here = setups[target]
    budget = budget_of(method, density_slider.value)
    row = finetune.run_cell(here, method, budget, lr_of(here, method), seed=0, progress=True)
    shown = {"full": rows["full"]} if target == cfg.target else {}
    shown[f"{method} @ {report.budget_label(budget, cfg)}"] = row
    fig, ax = plt.subplots(figsize=(6, 5))
    report.plot_learning_vs_forgetting(shown, here.before, f"GPT {PRESET}: {method} on {target}", ax)
    plt.show()
    print(f"{method} @ {report.budget_label(budget, cfg)}: {row['trainable']:,} trainable; target "
          f"{row['target_test']:.2f}, retention {row['retention']:.2f}, {row['train_s']:.1f} s")
    last_run.update(row=row, method=method, budget=budget, target=target, figure=fig)


run_on_click(run_button, output, on_run)
display(widgets.VBox([method_menu, density_slider, target_menu, run_button, output]))

# %% [markdown]
# ## Summary: what this run found
# Every sentence below is printed from the numbers above (fast mode: see the note under the
# one-run table).

# %%
print(f"- One run each on {cfg.target}: target " + ", ".join(f"{m} {r['target_test']:.2f}" for m, r in rows.items())
      + "; retention " + ", ".join(f"{m} {r['retention']:.2f}" for m, r in rows.items()) + ".")
print(f"- Trainable entries: LoRA {rows['lora']['trainable']:,}, the 5% masks {rows['lift']['trainable']:,}, "
      f"a LoRA-equal mask {equal:,}.")
for lam, student in study.runs.items():
    top = max(student.block_share, key=student.block_share.get)
    print(f"- Teacher-student probe, lambda = {lam:g}: the largest share of the update sits in {top}; the teacher "
          f"changed {', '.join(study.chosen)}.")

# %% [markdown]
# ## Questions to think about
# 1. Read the retention column: how much of the source survives fine-tuning on `add2`, with each
#    method? If a task *near* the source makes a model forget that much, why? (Hint: what does
#    the shared embedding/output table have to do for `add2` that it did for `increment`?)
# 2. At the same count, a sparse mask and LoRA can change very different things: LoRA a
#    low-rank change of every matrix, the mask a full-rank change of a few entries. Which
#    kind of update would you expect new *facts* to need, and which a new *skill*?
# 3. The teacher-student probe found (or missed) the changed block. If L1-to-init misses it,
#    is the probe wrong, or is the question "which block needed updating?" ill-posed when
#    several blocks can produce the same function?
# 4. The benchmark picks the learning rate on the validation split. What goes wrong if you
#    pick it on the test split and report the test split?
# 5. `benchmarks/scaleup_memory.py` measures the cost side. With values-only gradients and rebuilt
#    inputs (`sparsity.rebuilt_inputs`), what does a block still keep per token for backward, and
#    why can no choice of trained weights drop it without recomputing a matmul or the attention?
#
# ## What next
# - Lesson 6 measures which weights an RL run actually moves, and retrains only those.
# - Lesson 7 looks closer at LIFT's principal weights against plain magnitude.
# - Lesson 8 turns to 2:4 structured sparsity and what the GPU makes of it.
