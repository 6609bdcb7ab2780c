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
#    layer in `sparsity/two_four_linear.py`, whole models in `sparsity/two_four_convert.py`;
#    `sparsity.semistructured` gathers them);
# 2. how much accuracy one-shot 2:4 pruning costs, and how much **fine-tuning the kept
#    weights with the pattern fixed** wins back, against dense fine-tuning and
#    unstructured 50% at the same number of steps (`toys/two_four_study.py`);
# 3. what it buys in speed on a GPU (`benchmarks/semistructured.py`), where measured.

# %%
import warnings

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from benchmarks import semistructured as bench
from sparsity import semistructured as ss
from sparsity.fastmode import fast_mode
from sparsity.threads import use_threads
from toys import classification as tc
from toys import two_four_study as tfs
from toys.widgets import run_on_click

FAST = fast_mode()  # LAB_FAST=1: a smaller student, fewer steps and one seed, so the notebook runs in CI
use_threads()  # one torch thread for the lesson's small models (LAB_THREADS=N: more)
study = tfs.default_study()
print(f"fast mode: {FAST}; student {study.world.in_dim}-{'-'.join(map(str, study.world.hidden))}-"
      f"{study.world.n_classes}, {study.world.steps} training steps, seeds {study.seeds}")

# %% [markdown]
# ## 1. The pattern, drawn
# `ss.mask_24(w)` keeps the 2 largest |w| of every 4 consecutive inputs (any score works:
# `ss.mask_24(w, score)`). `ss.compress` stores the kept entries and, per group, one byte
# `i0 | i1 << 2` naming their two positions; `ss.decompress` inverts it exactly.

# %%
w = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
keep = ss.mask_24(w)
values, meta = ss.compress(w * keep)
assert torch.equal(ss.decompress(values, meta), w * keep)

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
layer = ss.SemiStructuredLinear(16, 6)
x = torch.randn(3, 16)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    y = layer(x)
print("route:", layer.route(x))
print("notice:", [str(c.message) for c in caught if issubclass(c.category, ss.FastPathNotice)] or "(given earlier)")
print("equals the dense masked product:", torch.equal(y, x @ (layer.weight * layer.mask).T + layer.bias))

# %% [markdown]
# ## 2. What 2:4 costs, and what fixed-pattern fine-tuning wins back
# The world is Lesson 4's: a small teacher labels Gaussian inputs with 8 classes, a wider
# student learns them. The trained student is our "pretrained" model. Then every method
# gets the **same** number of fine-tuning steps with the same optimizer and batches:
#
# * dense fine-tuning (every weight trains): the reference;
# * `ss.sparsify_24` (2:4 in every linear, by magnitude), before and after fine-tuning the
#   kept weights only, `MaskedAdamW` on `ss.keep_mask(model)`; pruned weights stay
#   exactly zero (checked);
# * unstructured magnitude pruning at the same 50% of the same layers (any half of each
#   matrix), before and after the same fine-tuning.

# %%
world = tc.make_world(study.world)
dense = {seed: tfs.train_dense(world, seed) for seed in study.seeds}
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ss.FastPathNotice)
    result = tfs.run_study(study, world, dense)
display(Markdown(tfs.format_table(result)))
tfs.plot_study(result)
plt.show()
print(tfs.verdict(result))

# %% [markdown]
# The numbers above are this run's (fast mode: a small student, one seed; `LAB_FAST=0` gives
# the full study: student 16-256-256-8, three seeds, `python -m toys.two_four_study --json`).
# Two variations answer the next questions, measured the same way on the same students:
# **leave the first layer dense** (2:4 on `fc2`, `fc3` only) and **keep 2 of every 4 at
# random** (the baseline any score must beat; `--criterion random`):

# %%
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ss.FastPathNotice)
    fc1_dense = tfs.run_study(tfs.default_study(modules=("fc2", "fc3")), world, dense, progress=False)
    at_random = tfs.run_study(tfs.default_study(criterion="random"), world, dense, progress=False)
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
    warnings.simplefilter("ignore", ss.FastPathNotice)
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
if torch.cuda.is_available() and torch.cuda.get_device_capability() >= ss.MIN_CAPABILITY:
    lin = torch.nn.Linear(4096, 4096, bias=False, device="cuda", dtype=torch.bfloat16)
    live = ss.SemiStructuredLinear.from_linear(lin)
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
    choice = tfs.default_study(modules=tuple(layer_pick.value) or None, criterion=score_pick.value,
                               seeds=(study.seeds[0],))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ss.FastPathNotice)
        run = tfs.run_study(choice, world, {study.seeds[0]: dense[study.seeds[0]]}, progress=True)
    last_run.update(study=run, modules=choice.modules, criterion=choice.criterion)
    last_run["figure"] = tfs.plot_study(run)
    plt.show()
    print(tfs.verdict(run))


run_on_click(run_button, output, on_run)
display(widgets.VBox([layer_pick, score_pick, run_button, output]))

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
