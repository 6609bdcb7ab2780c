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
# # Lesson 7: Principal weights
#
# LIFT (Liu et al. 2025, "LIFT the Veil for the Truth: Principal Weights Emerge after Rank
# Reduction for Reasoning-Focused Supervised Fine-Tuning") makes a surprising claim about
# large language models: choosing the weights to fine-tune by **magnitude** works badly,
# but choosing them by the magnitude **of a low-rank approximation** of each matrix works
# very well, better than full fine-tuning on reasoning tasks, and it forgets less of what
# the model knew before. Those top entries of the rank-r approximation are the
# *principal weights*:
#
# 1. take each weight matrix W and its best rank-r approximation W_r (truncated SVD);
# 2. score every entry by abs(W_r[i, j]) and keep the top 5% in every matrix;
# 3. fine-tune only those.
#
# Two facts follow from the definition, and we check both: at **full rank** W_r = W, so
# LIFT *is* magnitude selection; at **low rank** the selection can differ completely.
# Whether it is *better* is an empirical question. Here we ask it at toy scale.
#
# **By the end you can** compute a matrix's best rank-r approximation and LIFT's
# principal-weight mask yourself, explain why LIFT equals magnitude at full rank and differs
# below it, and measure learning against forgetting for a sparse fine-tune.
#
# **Prerequisites**: lessons 1 and 3 (the toy, criteria and budgets); the singular value
# decomposition.
#
# **Time**: reading and exercises about 45 min (an estimate). Running, measured on the lab's
# 2-core machine shared with other jobs (`benchmarks/results/lesson_times.md`): about 1 min in
# fast mode (`LAB_FAST=1`), about 4 min in full mode.
#
# **The setting.** Lesson 1's student plays the pretrained model (W1 and W3 copied from a
# teacher, W2 re-drawn). Its *source skill* is its own function. The *target task* is the
# teacher's function on inputs confined to a random 10-dimensional subspace U of the
# 100-dimensional input space; the *source inputs* fill the other 90 dimensions. Why not
# measure the source on the same inputs? There the two tasks contradict each other
# (fitting the teacher *is* unlearning the student), so forgetting would just mirror
# learning. With the split, a change of W1 along U alone (delta W1 = A U^T) could fit the
# target without changing a single source output, so the source drift measures a
# fine-tune's **collateral damage**, not a price it had to pay.
#
# We report, for each selector: the target test MSE (learning) and the MSE between the
# fine-tuned and the pretrained outputs on the source inputs (forgetting; lower = more
# retained). The code is `toys/principal_weights.py`; every mask is chosen and trained with the
# lab's entry point (`SparseConfig` + `sparsify` + `fit`), shown in three lines further down.

# %%
import copy

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from lessons.exercises import lesson07 as ex
from lessons.exercises import reveal, yours_or_library
from lessons.exercises.lesson07 import check_low_rank_approximation, check_principal_mask
from sparsity import SparseConfig, cosine, fit, masks, sparsify
from sparsity.fastmode import fast_mode
from sparsity.threads import use_threads
from toys import principal_weights as pw
from toys.widgets import budget_slider, train_panel, wide

FAST = fast_mode()  # LAB_FAST=1: fewer steps and one seed, so the notebook executes in CI
use_threads()  # one torch thread for the lesson's small models (LAB_THREADS=N: more)
tcfg = pw.default_transfer_config(fast=FAST)
SEEDS = (0,) if FAST else (0, 1, 2)
task = pw.make_transfer_task(tcfg)  # seed 0's source/target setting
student = task.student  # the pretrained model of seed 0
print(f"fast mode: {FAST}; {tcfg.steps} steps per fine-tune; input dimension {tcfg.toy.widths[0]}, target subspace "
      f"of dimension {tcfg.target_dim}; seeds {SEEDS}")

# %% [markdown]
# ## What a low-rank approximation keeps
# The singular values of each matrix say how much a rank-r approximation keeps. The
# student's matrices are random (this toy was never *trained*), so their spectra are flat
# compared with a pretrained transformer's, where a few directions dominate.

# %%
pw.plot_spectra(student)
plt.show()

# %% [markdown]
# ### Exercise 7.1: the best rank-r approximation (difficulty 1/3, importance 3/3)
# By Eckart & Young (1936), keeping the `r` largest singular values of `W = U S V^T` gives the
# best rank-r approximation. Write it (in float32, whatever the weight's dtype).

# %%
def low_rank_approximation(weight, rank):
    """The best rank-`rank` approximation of a 2-D weight, as a float32 tensor of its shape."""
    raise NotImplementedError("your code here")


# %% tags=["raises-exception"]
check_low_rank_approximation(low_rank_approximation)

# %% [markdown]
# <details><summary>Hint</summary>
#
# `u, s, vh = torch.linalg.svd(w, full_matrices=False)`; the first `rank` columns of `u`
# scaled by `s[:rank]`, times the first `rank` rows of `vh`.
# </details>
#
# <details><summary>Solution</summary>
#
# ```python
# def low_rank_approximation(weight, rank):
#     u, s, vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
#     return (u[:, :rank] * s[:rank]) @ vh[:rank]
# ```
# </details>
#
# ### Exercise 7.2: LIFT's principal-weight mask (difficulty 2/3, importance 3/3)
# Score every entry by `abs` of the rank-r approximation and keep the top `density` share of
# the matrix's entries (`round(density * n)`, at least 1; ties to the earlier entry,
# row-major), as a bool mask of the weight's shape.

# %%
def principal_mask(weight, rank, density):
    """Bool mask of weight's shape: the top density share of entries of abs(rank-r approximation)."""
    raise NotImplementedError("your code here")


# %% tags=["raises-exception"]
check_principal_mask(principal_mask)

# %% [markdown]
# <details><summary>Hint</summary>
#
# Score with your `low_rank_approximation(weight, rank).abs()`, flatten, and take the top k with
# `torch.sort(..., descending=True, stable=True)`.
# </details>
#
# <details><summary>Solution</summary>
#
# ```python
# def principal_mask(weight, rank, density):
#     u, s, vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
#     scores = ((u[:, :rank] * s[:rank]) @ vh[:rank]).abs().flatten()
#     chosen = torch.zeros(scores.numel(), dtype=torch.bool)
#     chosen[torch.sort(scores, descending=True, stable=True).indices[:max(1, round(density * scores.numel()))]] = True
#     return chosen.view(weight.shape)
# ```
# </details>
#
# Your mask on the student's W2 at 5%, against plain magnitude's (the top 5% of |W2|): the
# share of entries they share, as the rank grows.

# %%
mask_of = yours_or_library(ex, "principal_mask", principal_mask)
w2 = student.fc2.weight.detach()
magnitude_mask = masks.top_k(student, {"fc2.weight": w2.abs()}, 0.05)["fc2.weight"]
for r in (1, 2, 4, min(w2.shape)):
    lift_mask = mask_of(w2, r, 0.05)
    shared = int((lift_mask & magnitude_mask).sum()) / int(lift_mask.sum())
    print(f"rank {r:>2}: {shared:.0%} of the principal weights are also magnitude's"
          + (" (full rank: the approximation is W itself)" if r == min(w2.shape) else ""))

# %% [markdown]
# ## LIFT vs magnitude: the same mask at full rank, a different one below
# The overlap (Jaccard) of LIFT's mask with magnitude's at the same budget (5% of every
# matrix), as the rank grows. Chance is the overlap two independent random masks of that
# density would have.

# %%
DENSITY = 0.05
overlap = pw.lift_magnitude_overlap(student, DENSITY, pw.RANKS)
for row in overlap:
    print(f"rank {pw.rank_label(row.rank):>4}: Jaccard {row.jaccard:.2f} (chance {row.chance_jaccard:.3f}, "
          f"{row.jaccard / row.chance_jaccard:.1f}x chance); {row.lift_in_magnitude:.0%} of LIFT's entries are also "
          "magnitude's" + ("; identical masks" if row.identical else ""))
pw.plot_overlap(overlap, DENSITY)
plt.show()

# %% [markdown]
# At rank 1 the overlap stays far from 1 (compare it with chance above): W_1 = s1 u1 v1^T, so its largest
# entries sit in the rows where u1 is large and the columns where v1 is large, a *block*
# of the matrix, while W's largest entries are scattered. As the rank grows the
# approximation fills in and the masks converge; at full rank they are identical, bit for
# bit: **LIFT's low-rank step is the only thing that separates it from magnitude.**
#
# Where the rank-1 mask lies, in W2:

# %%
pw.plot_selected_entries(student, "fc2.weight", ranks=(1, 4), density=0.1)
plt.show()

# %% [markdown]
# ## Does it matter for learning and for forgetting?
# Full fine-tuning, a random 5% mask, magnitude, and LIFT at ranks 1, 2, 4, 8 and full,
# each trained on the target with `MaskedAdamW` (same steps and learning rate), then
# scored on the target and on the source.
#
# **Predict before you run.** Will LIFT at rank 1 reach a lower target MSE than plain
# magnitude? Answer "yes" or "no".

# %%
prediction = None  # "yes" or "no"

# %%
study = pw.principal_weights(tcfg, density=DENSITY, ranks=pw.RANKS, seeds=SEEDS)
display(Markdown(study.table()))
pw.plot_principal(study)
plt.show()

# %%
full, mag = study.get("full FT"), study.get("magnitude")
lift_rows = [r for r in study.rows if r.selector == "lift"]
sparse = [r for r in study.rows if r.selector != "full FT"]
best = min(sparse, key=lambda r: r.target_loss)
print(f"LIFT at full rank equals magnitude: {study.get('LIFT r=full').target_loss == mag.target_loss}")
print("LIFT's target MSE by rank: " + ", ".join(f"r={pw.rank_label(r.rank)} {r.target_loss:.3f}" for r in lift_rows)
      + f" (magnitude {mag.target_loss:.3f}, full FT {full.target_loss:.4f})")
print(f"full FT's target MSE is {best.target_loss / full.target_loss:.0f}x below the best {DENSITY:.0%} mask's "
      f"({best.name})")
print(f"source drift: full FT {full.source_drift:.3f}; sparse masks {min(r.source_drift for r in sparse):.3f} to "
      f"{max(r.source_drift for r in sparse):.3f}")
low, high = min(r.rms_step for r in sparse), max(r.rms_step for r in sparse)
print(f"how far each trained weight moved (rms): full FT {full.rms_step:.3f} over {full.trained} entries; sparse "
      f"{low:.3f} to {high:.3f} over {mag.trained} entries, {low / full.rms_step:.1f}x to {high / full.rms_step:.1f}x "
      "as far")
more_drift = [r.name for r in sparse if r.source_drift > full.source_drift]
less_drift = [r.name for r in sparse if r.source_drift <= full.source_drift]
print(f"source drift above full FT's: {', '.join(more_drift) or 'none'}; at or below it: {', '.join(less_drift) or 'none'}")
reveal(prediction, "yes" if study.get("LIFT r=1").target_loss < mag.target_loss else "no",
       "Does LIFT at rank 1 reach a lower target MSE than magnitude?")

# %% [markdown]
# Read the numbers before the claims; the error bars are the spread over seeds, and
# differences inside them are noise. What to look for (fast mode runs one seed and fewer
# steps; `LAB_FAST=0` runs three seeds):
#
# - **Full rank reproduces magnitude exactly**, as the definition says: same mask, same run.
# - **Does the low-rank step help?** Follow LIFT's target MSE as the rank falls. If it
#   rises, the low-rank step *hurts* here, the opposite of LIFT's finding in language models.
# - **How much less do 5% of the weights learn** than all of them? The ratio is printed above.
# - **Is sparse gentle here?** The last two printed lines answer it: which masks drift more
#   from the source than full fine-tuning, and which less. Where a mask drifts more, read the
#   rms line: a 5% mask that does not fit the target keeps Adam pushing the same few weights,
#   each further than a weight of full fine-tuning (which stops once the target is fit), and
#   big moves of a few shared weights change every output. Where a mask drifts less, it moved
#   little in total: fewer weights, and not far enough to offset their number.
#
# At toy scale, with random matrices, LIFT's evidence has no reason to carry over: it comes
# from *pretrained* language models, whose matrices have a few dominant directions that
# carry what the model knows (the flat spectra above have none). That is the regime to test
# next (lesson 5), and the question to keep asking: which property of the weights would make
# the largest entries of W_r the right ones to change?
#
# ## The same fine-tune in three lines
# Each sparse row of the study is the lab's entry point at work: a `SparseConfig` (criterion,
# budget, LIFT's rank as an option), `sparsify` (scores, freezes what is not selected, builds
# the optimizer), and `fit`, the lab's one training loop. For LIFT at rank 4 on seed 0:

# %%
model = copy.deepcopy(task.student)
run = sparsify(model, SparseConfig(criterion="lift", density=DENSITY, scope="per_tensor", lr=tcfg.lr,
                                   options={"rank": 4}))
run.print_trainable_parameters()
fit(model, run.optimizer, task.loss_of_batch(), tcfg.steps, schedule=cosine(tcfg.lr, tcfg.steps))
target, drift, _ = task.measure(model)
row = study.get("LIFT r=4")
print(f"LIFT r=4, seed 0: target MSE {target:.6e}, source drift {drift:.6f}")
same = (target, drift) == (row.target_loss, row.source_drift)
print(f"the study's row (mean over seeds {SEEDS}): target MSE {row.target_loss:.6e}, "
      f"source drift {row.source_drift:.6f}" + (f"; identical: {same}" if SEEDS == (0,) else ""))

# %% [markdown]
# ## Try it yourself
# Pick the rank of the approximation and the budget, then press **Train**: LIFT at that
# rank and plain magnitude are fine-tuned side by side (plus full fine-tuning), and the
# overlap of their masks is printed. Things to try: rank 1 vs 19 (one below full); 1% vs
# 20%; is there a rank where LIFT both learns and retains better than magnitude?

# %%
max_rank = min(min(p.shape) for p in student.parameters() if p.ndim == 2)
rank_slider = widgets.IntSlider(value=2, min=1, max=max_rank, description="rank", continuous_update=False, layout=wide())
density_slider = budget_slider()


def train_and_plot():
    """Fine-tune LIFT at the chosen rank, magnitude and full FT at the chosen budget, and plot."""
    result = pw.principal_weights(tcfg, density=density_slider.value, ranks=(rank_slider.value,),
                                  include_random=False)
    figure = pw.plot_principal(result)
    plt.show()
    display(Markdown(result.table()))
    return dict(study=result, figure=figure)


train_button, output, last_run = train_panel(train_and_plot)
display(widgets.VBox([rank_slider, density_slider, train_button, output]))

# %% [markdown]
# ## Summary: what this run found
# Every sentence below is printed from the numbers above.

# %%
print(f"- LIFT at full rank equals magnitude: {study.get('LIFT r=full').target_loss == mag.target_loss}; at rank 1 the "
      f"masks share {overlap[0].jaccard:.2f} of their entries (Jaccard; chance {overlap[0].chance_jaccard:.3f}).")
print("- Target MSE: " + ", ".join(f"{r.name} {r.target_loss:.3g}" for r in study.rows) + ".")
print(f"- Source drift: full FT {full.source_drift:.3f}; masks drifting more: {', '.join(more_drift) or 'none'}; "
      f"less: {', '.join(less_drift) or 'none'}.")

# %% [markdown]
# ## Questions to think about
# 1. Why are a rank-1 approximation's largest entries concentrated in a block of rows and
#    columns? What does that mean for which *neurons* a LIFT mask trains?
# 2. A pretrained language model's weight matrices have a few large singular values and a
#    long tail. How would that change the overlap curve above, and why might the
#    principal weights then be the ones that carry what the model knows?
# 3. LIFT claims *less* forgetting than full fine-tuning. In this toy, what drives the
#    source drift of a sparse fine-tune: how many weights move, or how far each moves?
#    How would you test that (hint: the learning rate, or an L1 pull toward the start)?
# 4. Our source inputs are orthogonal to the target's. Design a setting where the two
#    overlap partly. What would you expect forgetting to look like then?
# 5. Per-tensor budgets (LIFT's choice) give W1, W2 and W3 the same share. Lesson 3 showed
#    that a global budget can find W2. Try `pw.principal_weights(tcfg, scope="global")`.
#
# ## What next
# - Lesson 3 compares LIFT with the other criteria (gradient, Fisher, SNIP, movement) on
#   the question "which weights need to change?".
# - Lesson 5 repeats the comparison on small transformers, where the spectra are those of
#   trained matrices, with target score and forgetting measured the same way.
# - Lesson 8 looks at structured (2:4) masks, the kind of sparsity hardware accelerates.
