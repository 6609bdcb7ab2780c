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
# # Lesson 8: 2:4 structured sparsity on GPUs
#
# Lesson 4 pruned weights anywhere. A GPU gains little from that: a matrix with random
# zeros is still multiplied as a dense one. NVIDIA's **sparse tensor cores** (Ampere and
# later, compute capability >= 8.0) accelerate one pattern only: in every group of **4
# consecutive inputs** of a row, **at most 2 are nonzero** (Mishra et al. 2021,
# "Accelerating Sparse Deep Neural Networks"). The hardware then reads the kept half and
# a 2-bit position per kept entry and does half the multiplications: up to 2x the dense
# throughput, in practice less.
#
# This lesson asks the lab's question for that pattern:
#
# 1. what the pattern and its compressed format look like (`sparsity/two_four.py`, the fast
#    layer in `sparsity/two_four_linear.py`, whole models in `sparsity/two_four_convert.py`);
# 2. how much accuracy one-shot 2:4 pruning costs, and how much **fine-tuning the kept
#    weights with the pattern fixed** wins back, against dense fine-tuning and
#    unstructured 50% at the same number of steps (`toys/two_four_study.py`);
# 3. what it buys in speed on a GPU (`benchmarks/semistructured.py`), where measured.
#
# **By the end you can** write the 2:4 keep-mask and its compressed form yourself, measure
# what one-shot 2:4 costs and what fine-tuning with the pattern fixed wins back, and say
# which layers to leave dense.
#
# **Prerequisites**: lesson 4 (pruning and recovery); integer bit operations (`|`, `<<`);
# matrix multiplication on a GPU in outline.
#
# **Time**: reading and exercises about 45 min (an estimate). Running, measured on the lab's
# 2-core machine shared with other jobs (`benchmarks/results/lesson_times.md`): about 2 min in
# fast mode (`LAB_FAST=1`), about 35 min in full mode.

# %%
import warnings

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display
from tqdm.auto import tqdm

from benchmarks import semistructured as bench
from lessons.exercises import lesson08 as ex
from lessons.exercises import reveal, yours_or_library
from lessons.exercises.lesson08 import check_compress, check_mask_24
from sparsity import two_four, two_four_convert, two_four_linear
from sparsity.fastmode import fast_mode
from sparsity.threads import use_threads
from toys import classification as tc
from toys import two_four_study as tfs
from toys.widgets import run_on_click

FAST = fast_mode()  # LAB_FAST=1: a smaller student, fewer steps and one seed, so the notebook runs in CI
use_threads()  # one torch thread for the lesson's small models (LAB_THREADS=N: more)
study = tfs.default_study(fast=FAST)
print(f"fast mode: {FAST}; student {study.world.in_dim}-{'-'.join(map(str, study.world.hidden))}-"
      f"{study.world.n_classes}, {study.world.steps} training steps, seeds {study.seeds}")

# %% [markdown]
# ## 1. The pattern, drawn
# `two_four.mask_24(w)` keeps the 2 largest |w| of every 4 consecutive inputs (any score works:
# `two_four.mask_24(w, score)`). `two_four.compress` stores the kept entries and, per group, one byte
# `i0 | i1 << 2` naming their two positions; `two_four.decompress` inverts it exactly.
#
# ### Exercise 8.1: the 2:4 keep-mask (difficulty 1/3, importance 3/3)
# For a weight `[N, K]` (K a multiple of 4), keep the 2 entries of largest |w| in every group
# of 4 consecutive inputs of each row; on ties the earlier input wins.

# %%
def mask_24(weight):
    """Bool keep-mask of weight's shape: exactly 2 True in every group of 4 consecutive inputs."""
    raise NotImplementedError("your code here")


# %% tags=["raises-exception"]
check_mask_24(mask_24)

# %% [markdown]
# <details><summary>Hint</summary>
#
# `weight.abs().reshape(N, K // 4, 4)` puts each group on the last axis; a stable descending
# `torch.sort` along it gives the two winners' positions, and `scatter_` marks them.
# </details>
#
# <details><summary>Solution</summary>
#
# ```python
# def mask_24(weight):
#     groups = weight.detach().abs().float().reshape(weight.shape[0], -1, 4)
#     top2 = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :2]
#     keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top2, True)
#     return keep.reshape(weight.shape)
# ```
# </details>
#
# ### Exercise 8.2: the compressed form (difficulty 2/3, importance 2/3)
# Sparse tensor cores read only the kept half. For a 2:4 weight (at most 2 nonzeros per
# group), return `(values, meta)`: `values [N, K/2]` the two stored entries of each group in
# input order, `meta` a `torch.uint8 [N, K/4]` with one byte per group, `i0 | i1 << 2`, the
# two stored positions with `i0 < i1`. A group with fewer than 2 nonzeros stores its nonzeros
# and then the lowest free positions (their values are 0).

# %%
def compress(weight):
    """(values [N, K/2] of weight's dtype, meta uint8 [N, K/4]) of a 2:4 weight."""
    raise NotImplementedError("your code here")


# %% tags=["raises-exception"]
check_compress(compress)

# %% [markdown]
# <details><summary>Hint 1</summary>
#
# Per group, a *stable* descending sort of `(group != 0)` puts the nonzeros first and then
# the free positions in increasing order; take the first 2 and sort them ascending.
# </details>
#
# <details><summary>Hint 2</summary>
#
# `torch.gather` reads the values at those positions; `(pos[:, 0] | (pos[:, 1] << 2)).to(torch.uint8)` packs them.
# </details>
#
# <details><summary>Solution</summary>
#
# ```python
# def compress(weight):
#     groups = weight.detach().reshape(-1, 4)
#     nonzero = (groups != 0).to(torch.int8)
#     pos = torch.sort(torch.sort(nonzero, dim=1, descending=True, stable=True).indices[:, :2], dim=1).values
#     values = groups.gather(1, pos).reshape(weight.shape[0], -1)
#     meta = (pos[:, 0] | (pos[:, 1] << 2)).to(torch.uint8).reshape(weight.shape[0], -1)
#     return values, meta
# ```
# </details>
#
# The figure below is drawn with your two functions (or the lab's, until yours pass), and
# `two_four.decompress` checks that your compressed form holds the pruned weight exactly.

# %%
mask_24_of = yours_or_library(ex, "mask_24", mask_24)
compress_of = yours_or_library(ex, "compress", compress)
w = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
keep = mask_24_of(w)
values, meta = compress_of(w * keep)
assert torch.equal(two_four.decompress(values, meta), w * keep)

fig, axes = plt.subplots(1, 3, figsize=(12, 2.8), gridspec_kw={"width_ratios": [16, 8, 4]})
axes[0].imshow((w * keep).numpy(), cmap="RdBu", vmin=-2.5, vmax=2.5)
axes[0].set_xticks([g - 0.5 for g in range(4, 16, 4)], minor=True)
axes[0].grid(which="minor", axis="x", color="black", linewidth=2)
axes[0].set(title="W * mask (white = pruned); black lines: groups of 4", xlabel="input", ylabel="output")
axes[1].imshow(values.numpy(), cmap="RdBu", vmin=-2.5, vmax=2.5)
axes[1].set(title="values [N, K/2]", xlabel="kept entry")
axes[2].imshow(meta.numpy(), cmap="viridis")
for (r, c), byte in zip([(r, c) for r in range(meta.shape[0]) for c in range(meta.shape[1])], meta.flatten().tolist()):
    axes[2].text(c, r, f"{byte & 3},{byte >> 2}", ha="center", va="center", color="white", fontsize=8)
axes[2].set(title="meta: positions (i0, i1)", xlabel="group")
fig.tight_layout()
plt.show()
dense_bytes = 2 * w.numel()
print(f"fp16 bytes: dense {dense_bytes}, values {2 * values.numel()} + meta {meta.numel()} "
      f"= {(2 * values.numel() + meta.numel()) / dense_bytes:.1%} of dense")

# %% [markdown]
# A `SemiStructuredLinear` is an `nn.Linear` whose weight holds this pattern. It picks the
# fastest route it can: PyTorch's sparse tensors (cuSPARSELt or CUTLASS) on a GPU with
# fp16/bf16, our Triton kernel for shapes PyTorch refuses, and otherwise the **dense
# masked reference**, which gives the same numbers without the speed. It says why, once:

# %%
layer = two_four_linear.SemiStructuredLinear(16, 6)
x = torch.randn(3, 16)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    y = layer(x)
print("route:", layer.route(x))
print("notice:", [str(c.message) for c in caught if issubclass(c.category, two_four_linear.FastPathNotice)] or "(given earlier)")
print("equals the dense masked product:", torch.equal(y, x @ (layer.weight * layer.mask).T + layer.bias))

# %% [markdown]
# ## 2. What 2:4 costs, and what fixed-pattern fine-tuning wins back
# The world is Lesson 4's: a small teacher labels Gaussian inputs with 8 classes, a wider
# student learns them. The trained student is our "pretrained" model. Then every method
# gets the **same** number of fine-tuning steps with the same optimizer and batches:
#
# * dense fine-tuning (every weight trains): the reference;
# * `two_four_convert.sparsify_24` (2:4 in every linear, by magnitude), before and after fine-tuning the
#   kept weights only, `MaskedAdamW` on `two_four_convert.keep_mask(model)`; pruned weights stay
#   exactly zero (checked);
# * unstructured magnitude pruning at the same 50% of the same layers (any half of each
#   matrix), before and after the same fine-tuning.
#
# **Predict before you run.** After fine-tuning with the pattern fixed, will 2:4 come within
# one point of accuracy (0.01) of dense fine-tuning? Answer "yes" or "no".

# %%
prediction = None  # "yes" or "no"

# %%
world = tc.make_world(study.world)
dense = {seed: tfs.train_dense(world, seed) for seed in tqdm(study.seeds, desc="dense training (seeds)", leave=False)}
with warnings.catch_warnings():
    warnings.simplefilter("ignore", two_four_linear.FastPathNotice)
    result = tfs.run_study(study, world, dense)
display(Markdown(tfs.format_table(result)))
tfs.plot_study(result)
plt.show()
print(tfs.verdict(result))
close = result.mean("dense + fine-tuning") - result.mean("2:4 + fine-tuning") <= 0.01
reveal(prediction, "yes" if close else "no", "2:4 + fine-tuning within 0.01 of dense fine-tuning?")

# %% [markdown]
# The numbers above are this run's (fast mode: a small student, one seed; `LAB_FAST=0` gives
# the full study: student 16-256-256-8, three seeds, `python -m toys.two_four_study --json`).
# Two variations answer the next questions, measured the same way on the same students:
# **leave the first layer dense** (2:4 on `fc2`, `fc3` only) and **keep 2 of every 4 at
# random** (the baseline any score must beat; `--criterion random`):

# %%
with warnings.catch_warnings():
    warnings.simplefilter("ignore", two_four_linear.FastPathNotice)
    fc1_dense = tfs.run_study(tfs.default_study(fast=FAST, modules=("fc2", "fc3")), world, dense)
    at_random = tfs.run_study(tfs.default_study(fast=FAST, criterion="random"), world, dense)
variants = {"2:4 everywhere": result, "2:4 on fc2, fc3 (fc1 dense)": fc1_dense, "2:4 at random": at_random}
display(Markdown(tfs.format_comparison(variants)))
print(tfs.verdict(fc1_dense))
print("kept at random:", tfs.verdict(at_random))

# %% [markdown]
# Read the table against the questions at the end: does one-shot 2:4 cost more than
# unstructured 50%? How much of it does fine-tuning with the pattern fixed win back, and
# does it reach dense fine-tuning? What changes when the first layer stays dense, and how
# much does the score matter before fine-tuning, and after?
#
# **And on a transformer?** `tfs.run_gpt_study` runs the same comparison on the lab's
# pretrained tiny GPT (`scaleup`), 2:4 in every block matrix (attention and MLP; the tied
# output head stays dense), then fine-tuned on a target task, and reports target accuracy
# and source retention per method: `python -m toys.two_four_study --gpt [--gpt-target add2
# --gpt-steps 300]`. It is not run here (it needs the pretrained model).
#
# Which layers pay? Apply 2:4 to one layer at a time, no fine-tuning:

# %%
student = dense[study.seeds[0]]
names = tfs.linear_names(student)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", two_four_linear.FastPathNotice)
    one_layer = tfs.one_shot_by_layer(student, lambda m: tc.accuracy(m, world))
tfs.plot_by_layer(one_layer, tc.accuracy(student, world))
plt.show()
print({n: f"{a:.3f} ({student.get_submodule(n).in_features} inputs)" for n, a in one_layer.items()})

# %% [markdown]
# The first layer has 16 inputs: under 2:4 each hidden unit may read only 8 of them; the
# wide layers may have redundancy to spare. Compare the bars: production 2:4 models often
# leave small or sensitive layers dense; try it with the widget below.
#
# ## 3. The speed, on a GPU
# `benchmarks/semistructured.py` times dense vs 2:4 linear layers (bf16/fp16, weights
# 1024 to 16384 wide, 1 to 8192 tokens; cuSPARSELt, CUTLASS and our Triton kernel) and a
# GPT's inference throughput. Its results, where a GPU run was committed, are drawn here.

# %%
files = bench.result_files()
if not files:
    print("No GPU results have been measured yet: benchmarks/results/ holds no semistructured-<device>.md. "
          "Run `PYTHONPATH=. python -m benchmarks.semistructured` on a GPU of compute capability >= 8.0 "
          "and commit its output. The speed claims of this lesson are unverified until then.")
for path in files:
    linear_rows, gpt_rows, routes = bench.read_results(path)
    if linear_rows and routes:
        display(bench.speedup_figure(linear_rows, routes, path.stem))
    if gpt_rows:
        display(Markdown(f"**{path.stem}: GPT inference**\n\n" + bench.format_gpt(gpt_rows)))

# %% [markdown]
# ### Live kernels
# With a CUDA GPU in this kernel, the cell below runs one 2:4 layer on each route and
# compares it with the dense masked product. Without one it says so and does nothing.

# %%
if torch.cuda.is_available() and torch.cuda.get_device_capability() >= two_four_linear.MIN_CAPABILITY:
    lin = torch.nn.Linear(4096, 4096, bias=False, device="cuda", dtype=torch.bfloat16)
    live = two_four_linear.SemiStructuredLinear.from_linear(lin)
    xs = torch.randn(1024, 4096, device="cuda", dtype=torch.bfloat16)
    reference = xs @ (live.weight * live.mask).T
    measure = bench.timer(torch.device("cuda"), warmup=3, reps=10)
    with torch.no_grad():
        print(f"dense: {measure(lambda: xs @ (live.weight * live.mask).T):.3f} ms")
        for kernel, backend in (("torch", "cusparselt"), ("torch", "cutlass"), ("triton", "auto")):
            try:
                live.set_kernel(kernel, backend)
                err = (live(xs) - reference).abs().max().item()
                print(f"{kernel}/{backend}: {measure(lambda: live(xs)):.3f} ms, max |diff| {err:.3g}")
            except (ValueError, RuntimeError) as exc:
                print(f"{kernel}/{backend}: unavailable ({exc})")
else:
    print("No CUDA GPU of compute capability >= 8.0 in this kernel: the live kernels are skipped. "
          "The CPU ran the dense masked reference above (same numbers, no speed-up).")

# %% [markdown]
# ## Try it yourself
# Choose **which layers** become 2:4 and **the selection score** (magnitude; random, the
# baseline any score must beat; or a gradient criterion of `sparsity.registry`, Fisher or
# SNIP, scored on a few training batches), then press **Run**: one-shot and fine-tuned
# accuracy of that choice, against dense fine-tuning, on the first seed's pretrained student.
# In the layer list, a click selects one layer alone; **ctrl-click** (cmd-click on a Mac)
# adds or removes one layer, shift-click selects a range. With no layer selected, every layer is 2:4.

# %%
layer_pick = widgets.SelectMultiple(options=names, value=tuple(names), description="layers", rows=len(names))
score_pick = widgets.Dropdown(options=["magnitude", "random", "fisher", "snip"], value="magnitude", description="score")
run_button = widgets.Button(description="Run", button_style="primary")
output = widgets.Output()
last_run = {}


def on_run():
    """Sparsify the chosen layers by the chosen score, fine-tune, and draw the comparison."""
    choice = tfs.default_study(fast=FAST, modules=tuple(layer_pick.value) or None, criterion=score_pick.value,
                               seeds=(study.seeds[0],))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", two_four_linear.FastPathNotice)
        run = tfs.run_study(choice, world, {study.seeds[0]: dense[study.seeds[0]]}, progress=True)
    last_run.update(study=run, modules=choice.modules, criterion=choice.criterion)
    last_run["figure"] = tfs.plot_study(run)
    plt.show()
    print(tfs.verdict(run))


run_on_click(run_button, output, on_run)
display(widgets.VBox([layer_pick, score_pick, run_button, output]))

# %% [markdown]
# ## Summary: what this run found
# Every sentence below is printed from the numbers above.

# %%
for label, run in variants.items():
    print(f"- {label}: one-shot {run.mean('2:4 one-shot'):.3f}, after fine-tuning {run.mean('2:4 + fine-tuning'):.3f} "
          f"(dense fine-tuning {run.mean('dense + fine-tuning'):.3f}; unstructured 50% after fine-tuning "
          f"{run.mean('unstructured 50% + fine-tuning'):.3f}).")
worst = min(one_layer, key=one_layer.get)
print(f"- 2:4 on one layer at a time costs most on {worst} ({one_layer[worst]:.3f}, dense "
      f"{tc.accuracy(student, world):.3f}).")

# %% [markdown]
# ## Questions to think about
# 1. 2:4 and unstructured pruning remove the same 50%. Why can 2:4 only be worse right
#    after pruning (for the same score)? Is it still worse after fine-tuning, and by how much?
# 2. Leave the first layer dense (widget). How much accuracy comes back, and how much of
#    the model's weights (and its matmul time) is still 2:4?
# 3. Random scores instead of magnitude: how much does the choice of the kept 2 matter
#    before fine-tuning, and after?
# 4. The fine-tuning here trains all kept weights. Combine with Lesson 3: fine-tune only a
#    5% subset of the kept weights (a mask that is the AND of the 2:4 mask and a
#    criterion's mask). What does the pattern cost then?
# 5. The GPU table (once measured): where is 2:4 *slower* than dense, and why do small
#    token counts and small matrices gain least?
# 6. In the training step the compressed weight must be rebuilt after every optimizer
#    update. When does that cost eat the matmul's saving?
