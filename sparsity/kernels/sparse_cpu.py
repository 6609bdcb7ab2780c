"""Two CPU kernels of our own for training a sparse subnetwork, compiled on first use
(``make``'s set-up builds them ahead: ``python -m sparsity.kernels``).

* ``sparse_adamw_``: AdamW on the selected entries of a tensor, gather + update + scatter in one pass.
* ``selected_weight_grad``: a linear layer's weight gradient at the selected entries only
  (a sampled dense-dense matmul, SDDMM), without the dense ``[out, in]`` gradient: tokens go
  through in blocks of 256, each block transposed once so that a column's tokens are contiguous,
  then vectorised multiply-adds per selected entry and block; see ``sparsity.values_grad``.
  ``weight_grad_of_step`` is the same product for a layer whose input is a GELU's or a LayerNorm's output, given
  the step's input instead: each block's rows of the layer's input are rebuilt just before they are transposed
  (``sparsity.rebuilt_inputs.RowStep``), so the whole input is never written out and read back.

Both split their work over torch's CPU threads with ``at::parallel_for``, which needs the
compiler's OpenMP (``-fopenmp``, linked to the ``libgomp`` that torch has already loaded):
without it, ATen's OpenMP ``parallel_for`` compiles to a plain serial loop, as it silently
did in the lab's first versions of both kernels.

**sparse_adamw_.**
``CompactAdamW``'s step gathers the selected values and gradients (``index_select``),
updates the ``[k]`` moments and scatters the new values back (``index_put_``). Each of
those is a separate pass with its own temporaries, and at a few percent density the
gathers and the scatter, not the arithmetic, take most of the time: the positions are
sorted but scattered, so nearly every cache line of the weight and of its gradient is
touched anyway. This kernel walks the sorted positions once and, for each, reads the
weight and the gradient, updates both moments and writes the weight: the same memory
traffic as one gather, no temporaries. It is compiled on first use with
``torch.utils.cpp_extension.load_inline`` (about half a minute, then cached by torch in
``$TORCH_EXTENSIONS_DIR``); where no compiler is available :func:`load` returns None and
``CompactAdamW`` falls back to torch's fused AdamW on the gathered arrays.

The update is AdamW's (Loshchilov & Hutter 2019) in float32, in the order of torch's
single-tensor form (decoupled decay, ``lerp`` of the first moment, the second moment,
bias corrections); a compiler may contract a multiply and an add into one rounding, so it
matches that form to rounding, not bit for bit (tested against it).
"""

from __future__ import annotations

import functools
import hashlib
import time
import warnings
from pathlib import Path
from typing import Any

import torch

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

constexpr int64_t kAhead = 32;

// One AdamW step on p.view(-1)[idx] with the [k] moments m and v (float32, contiguous). The gradient g is
// dense (read at idx) or, with compact_grad, already the [k] gradient of the selected entries.
void sparse_adamw_(torch::Tensor p, torch::Tensor g, torch::Tensor idx, torch::Tensor m, torch::Tensor v,
                   double lr, double weight_decay, double beta1, double beta2, double eps, double step,
                   bool compact_grad) {
  TORCH_CHECK(p.scalar_type() == at::kFloat && g.scalar_type() == at::kFloat, "float32 weight and gradient");
  TORCH_CHECK(m.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat, "float32 moments");
  TORCH_CHECK(idx.scalar_type() == at::kInt, "int32 positions");
  TORCH_CHECK(p.is_contiguous() && g.is_contiguous() && idx.is_contiguous() && m.is_contiguous() && v.is_contiguous(),
              "contiguous tensors");
  TORCH_CHECK(m.numel() == idx.numel() && v.numel() == idx.numel(), "one moment per position");
  TORCH_CHECK(!compact_grad || g.numel() == idx.numel(), "a compact gradient has one entry per position");
  float* P = p.data_ptr<float>();
  const float* G = g.data_ptr<float>();
  const int32_t* I = idx.data_ptr<int32_t>();
  float* M = m.data_ptr<float>();
  float* V = v.data_ptr<float>();
  const float decay = static_cast<float>(1.0 - lr * weight_decay);
  const float w1 = static_cast<float>(1.0 - beta1), b2 = static_cast<float>(beta2), w2 = static_cast<float>(1.0 - beta2);
  const float step_size = static_cast<float>(lr / (1.0 - std::pow(beta1, step)));
  const float bias2 = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, step)));
  const float e = static_cast<float>(eps);
  at::parallel_for(0, idx.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      if (j + kAhead < end) {  // the positions are known in advance: ask for the cache lines early
        __builtin_prefetch(&P[I[j + kAhead]], 1);
        if (!compact_grad) __builtin_prefetch(&G[I[j + kAhead]], 0);
      }
      const int64_t i = I[j];
      const float grad = compact_grad ? G[j] : G[i];
      const float value = P[i] * decay;  // decay is exactly 1 without weight decay: no rounding
      const float mj = M[j] + w1 * (grad - M[j]);
      const float vj = V[j] * b2 + w2 * (grad * grad);
      M[j] = mj;
      V[j] = vj;
      P[i] = value - step_size * (mj / (std::sqrt(vj) / bias2 + e));
    }
  });
}

// The weight gradient (g^T @ x) of a linear layer at the sorted flat positions `flat` of its [out, in] weight, from
// the output gradient g [B, out] and the input x [B, in] (row-major, as autograd has them): a sampled dense-dense
// matmul. Tokens go in blocks of kBlock; per block, two phases, each split over threads:
// 1. the block's rows of g and x are transposed into gb [out, kBlock] and xb [in, kBlock] (the block's tokens of one
//    column contiguous), 8 x 8 floats at a time in vector registers, each column by one thread;
// 2. every selected entry (r, c) multiplies and adds gb[r, :] * xb[c, :] in two vector accumulators, sums their 16
//    lanes in a fixed tree and adds that to its float in `sums`. The entries go in tiles of kCols columns, so the xb
//    rows they read stay in cache (in flat order, a wide layer's entries would read every column of xb from memory
//    again for each row of the weight). Within a tile, consecutive entries of one weight row (a few at a few percent
//    density) go together, up to kGroup, so gb's row is loaded once for all of them (entry_group). While one group
//    runs, the next group's first two rows are prefetched, a cache line per 16 tokens: they start at unrelated
//    addresses, which the hardware's stream prefetchers only learn after a few misses (a row of kBlock tokens is 16
//    lines). Each entry's row and column come from its flat position once per call, with a division only where the
//    positions enter a new row.
// An earlier version summed each block's 32 lanes in one chain of dependent scalar additions (longer than the block's
// multiply-adds: a tree's additions overlap with the next entry's work) and transposed with one scalar load and store
// per float: both phases now cost about half (benchmarks/results/values_grad_crossover.md). Keeping 8 partial sums
// per entry across blocks instead of the tree was as fast and took 8 floats per entry. Every entry sums its tokens in
// the same order whatever the thread count: deterministic. Transient memory on top of backward's: the two block
// buffers, (out + in) x kBlock floats, one float and three int32 per entry (its sum, its place in the tiles).
constexpr int64_t kBlock = 256;
constexpr int64_t kStep = 16;  // tokens per inner iteration: two 8-float vectors
constexpr int64_t kCols = 128;
constexpr int64_t kGroup = 4;  // entries of one weight row that share gb's row in registers
static_assert(kGroup == 4, "selected_weight_grad's switch takes groups of 1 to 4 entries");
constexpr int64_t kNarrow = 32;  // tokens: a weight smaller than its two block buffers at this many is read in place

typedef float v8 __attribute__((vector_size(32)));  // 8 floats: one AVX register, two SSE/NEON ones
static inline v8 load8(const float* p) { v8 v; std::memcpy(&v, p, sizeof v); return v; }
static inline void store8(float* p, v8 v) { std::memcpy(p, &v, sizeof v); }

// dst[c * ld_dst + t] = src[t * ld_src + c] for an 8 x 8 tile: three rounds of shuffles (pairs of floats, of pairs,
// of halves), the standard in-register transpose.
static inline void transpose8x8(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
  v8 r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = load8(src + i * ld_src);
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4)
    for (int j = 0; j < 2; ++j) {
      u[i + 2 * j] = __builtin_shufflevector(t[i + j], t[i + j + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + 2 * j + 1] = __builtin_shufflevector(t[i + j], t[i + j + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  for (int i = 0; i < 4; ++i) {
    store8(dst + i * ld_dst, __builtin_shufflevector(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11));
    store8(dst + (i + 4) * ld_dst, __builtin_shufflevector(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15));
  }
}

// dst[c * stride + t] = src[t * n_cols + c] for the columns [c0, c1) and the rows [0, n_rows) of src; t from n_rows
// up to `padded` is zero (the last, short block: its dot products stop there).
static void columns_to_rows(const float* src, int64_t n_rows, int64_t n_cols, float* dst, int64_t stride, int64_t c0,
                            int64_t c1, int64_t padded) {
  const int64_t rows8 = n_rows / 8 * 8;
  int64_t c = c0;
  for (; c + 8 <= c1; c += 8)
    for (int64_t t = 0; t < rows8; t += 8) transpose8x8(src + t * n_cols + c, n_cols, dst + c * stride + t, stride);
  for (int64_t a = c0; a < c1; ++a) {
    for (int64_t t = a < c ? rows8 : 0; t < n_rows; ++t) dst[a * stride + t] = src[t * n_cols + a];
    std::fill(dst + a * stride + n_rows, dst + a * stride + padded, 0.0f);
  }
}

// What entry_group reads: the group's row of gb, xb and the group's column offsets, the next group's first two rows
// (prefetched), and how many tokens the block has (padded to kStep).
struct Rows {
  const float* gr;
  const float* XB;
  const int32_t* cols;
  const float* g_next;
  const float* x_next;
  int64_t padded;
};

// N entries of one weight row: gb's row is loaded once per kStep tokens for all N (a lone entry loads two vectors
// per multiply-add, a group of 4 one and a quarter). Each entry's arithmetic is a lone entry's: the same two
// accumulators over the same tokens, the same tree, so the sums are the same bits whatever the grouping.
template <int N>
static inline void entry_group(const Rows& r, float* A) {
  v8 a0[N], a1[N];
  const float* xc[N];
  for (int e = 0; e < N; ++e) {
    a0[e] = v8{};
    a1[e] = v8{};
    xc[e] = r.XB + r.cols[e];
  }
  for (int64_t t = 0; t < r.padded; t += kStep) {
    __builtin_prefetch(r.g_next + t, 0, 3);
    __builtin_prefetch(r.x_next + t, 0, 3);
    const v8 g0 = load8(r.gr + t), g1 = load8(r.gr + t + 8);
    for (int e = 0; e < N; ++e) {
      a0[e] += g0 * load8(xc[e] + t);
      a1[e] += g1 * load8(xc[e] + t + 8);
    }
  }
  for (int e = 0; e < N; ++e) {  // summed in a fixed tree: no dependence on the next group, which runs meanwhile
    const v8 s = a0[e] + a1[e];
    A[e] += ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
  }
}

// The row-wise steps whose output the kernel can rebuild one block of tokens at a time (sparsity.rebuilt_inputs):
// the layer's input is then never whole, only a block of rows of it, from the rows of the step's input, each computed
// by the same ATen call as the forward's step on all rows (a GELU with erf and a LayerNorm compute every row the same
// way whatever the other rows: tested bit for bit).
constexpr int64_t kNoStep = 0, kGelu = 1, kLayerNorm = 2;

static at::Tensor step_rows(const at::Tensor& rows, int64_t step, const c10::optional<at::Tensor>& weight,
                            const c10::optional<at::Tensor>& bias, double eps) {
  return step == kGelu ? at::gelu(rows) : at::layer_norm(rows, {rows.size(1)}, weight, bias, eps);
}

torch::Tensor weight_grad_of_step(torch::Tensor g, torch::Tensor x, torch::Tensor flat, int64_t step,
                                  c10::optional<torch::Tensor> weight, c10::optional<torch::Tensor> bias, double eps) {
  TORCH_CHECK(step == kNoStep || step == kGelu || step == kLayerNorm, "step: 0 (none), 1 (GELU) or 2 (LayerNorm)");
  TORCH_CHECK(g.scalar_type() == at::kFloat && x.scalar_type() == at::kFloat, "float32 inputs");
  TORCH_CHECK(g.dim() == 2 && x.dim() == 2 && g.size(0) == x.size(0), "g [B, out] and x [B, in]");
  TORCH_CHECK(g.is_contiguous() && x.is_contiguous() && flat.is_contiguous(), "contiguous inputs");
  TORCH_CHECK(flat.scalar_type() == at::kInt, "int32 positions");
  const int64_t b = g.size(0), n_out = g.size(1), n_in = x.size(1), k = flat.numel();
  TORCH_CHECK(std::max(n_out, n_in) * kBlock < (int64_t{1} << 31) && k < (int64_t{1} << 31),
              "offsets past int32: a layer wider than 2^23 or over 2^31 selected entries");
  auto out = torch::zeros({k}, g.options());
  if (k == 0 || b == 0) return out;
  // A layer so narrow that even kNarrow-token buffers would outgrow its gradient: g and x are read in place.
  if (n_out * n_in < kNarrow * (n_out + n_in)) {
    if (step != kNoStep) x = step_rows(x, step, weight, bias, eps).contiguous();
    at::parallel_for(0, k, 1024, [&](int64_t begin, int64_t end) {
      const float* G = g.data_ptr<float>();
      const float* X = x.data_ptr<float>();
      const int32_t* F = flat.data_ptr<int32_t>();
      float* O = out.data_ptr<float>();
      for (int64_t j = begin; j < end; ++j) {
        const int64_t r = F[j] / n_in, c = F[j] % n_in;
        float acc = 0.0f;
        for (int64_t t = 0; t < b; ++t) acc += G[t * n_out + r] * X[t * n_in + c];
        O[j] = acc;
      }
    });
    return out;
  }
  // A block's tokens: kBlock, fewer where the batch has fewer (rounded up to kStep). The buffers are torch tensors,
  // so the lab's memory tracker counts them; smaller blocks would bound them tighter but slowed the small GPT's step
  // (benchmarks/scaleup_memory.py).
  const int64_t stride = std::min(kBlock, (b + kStep - 1) / kStep * kStep);
  auto gb = torch::empty({n_out, stride}, g.options());
  auto xb = torch::empty({n_in, stride}, x.options());
  auto sums = torch::zeros({k}, g.options());
  float* GB = gb.data_ptr<float>();
  float* XB = xb.data_ptr<float>();
  float* A = sums.data_ptr<float>();
  const int32_t* F = flat.data_ptr<int32_t>();
  float* O = out.data_ptr<float>();
  // The entries in column tiles of kCols (stable: row order within a tile), with their offsets in the buffers
  // divided out once, not per block. A tile's kCols columns of xb (128 KB) stay in cache while its entries run.
  const int64_t n_tiles = (n_in + kCols - 1) / kCols;
  std::vector<int64_t> start(n_tiles + 1, 0);
  // int32: a weight of 2^31 entries is beyond this kernel. A torch tensor, as the block buffers, so that the lab's
  // memory tracker counts it.
  auto placed = torch::empty({3, k}, flat.options());
  int32_t* order = placed.data_ptr<int32_t>();
  int32_t* ord_row = order + k;
  int32_t* ord_col = ord_row + k;
  // Each position's row and column, without a division per entry: sorted positions stay in one row for many
  // entries, so the row is found again only when a position leaves it (any order stays correct).
  int64_t row_start = -n_in, row = -1, col = 0;
  auto split = [&](int64_t f) {
    if (f < row_start || f >= row_start + n_in) {
      row = f / n_in;
      row_start = row * n_in;
    }
    col = f - row_start;
  };
  for (int64_t j = 0; j < k; ++j) {
    split(F[j]);
    ++start[col / kCols + 1];
  }
  for (int64_t t = 0; t < n_tiles; ++t) start[t + 1] += start[t];
  for (int64_t j = 0; j < k; ++j) {
    split(F[j]);
    const int64_t i = start[col / kCols]++;
    order[i] = j;
    ord_row[i] = static_cast<int32_t>(row * stride);
    ord_col[i] = static_cast<int32_t>(col * stride);
  }
  for (int64_t t0 = 0; t0 < b; t0 += stride) {
    const int64_t tn = std::min(stride, b - t0), padded = (tn + kStep - 1) / kStep * kStep;
    const float* G = g.data_ptr<float>() + t0 * n_out;
    const float* X = x.data_ptr<float>() + t0 * n_in;
    at::Tensor rows;  // with a step: the block's rows of the layer's input, rebuilt from the step's input
    if (step != kNoStep) {
      rows = step_rows(x.narrow(0, t0, tn), step, weight, bias, eps).contiguous();
      X = rows.data_ptr<float>();
    }
    at::parallel_for(0, (n_out + n_in + 7) / 8, 1, [&](int64_t c0, int64_t c1) {  // g's columns, then x's, by 8
      c0 *= 8;
      c1 = std::min(c1 * 8, n_out + n_in);
      if (c0 < n_out) columns_to_rows(G, tn, n_out, GB, stride, c0, std::min(c1, n_out), padded);
      if (c1 > n_out) columns_to_rows(X, tn, n_in, XB, stride, std::max(c0, n_out) - n_out, c1 - n_out, padded);
    });
    at::parallel_for(0, k, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end;) {
        int64_t n = 1;  // the entries after i in the same weight row, up to kGroup: they share gb's row
        while (n < kGroup && i + n < end && ord_row[i + n] == ord_row[i]) ++n;
        const int64_t next = i + n < end ? i + n : i;  // its rows are asked for one cache line per line read here
        const Rows rows{GB + ord_row[i], XB, ord_col + i, GB + ord_row[next], XB + ord_col[next], padded};
        switch (n) {
          case 4: entry_group<4>(rows, A + i); break;
          case 3: entry_group<3>(rows, A + i); break;
          case 2: entry_group<2>(rows, A + i); break;
          default: entry_group<1>(rows, A + i);
        }
        i += n;
      }
    });
  }
  for (int64_t i = 0; i < k; ++i) O[order[i]] = A[i];
  return out;
}

torch::Tensor selected_weight_grad(torch::Tensor g, torch::Tensor x, torch::Tensor flat) {
  return weight_grad_of_step(g, x, flat, kNoStep, c10::nullopt, c10::nullopt, 0.0);
}
"""


CFLAGS = ("-O3", "-march=native", "-fopenmp")


def extension_name() -> str:
    """The build's name, from a hash of its source, flags, torch's header folders and the CPU: torch keeps one
    build folder per name in a cache that every checkout on the machine shares. Two checkouts with different
    kernels must not share one, nor two environments (their compile commands name different header folders, so
    ninja would rebuild the kernel each time the other one loads it: minutes each), nor two kinds of CPU under
    one home folder (``-march=native`` builds for the CPU it compiles on: another one may lack its instructions
    and stop the process with an illegal instruction)."""
    from torch.utils.cpp_extension import include_paths

    from sparsity.sweep import cpu_name

    key = "\n".join((_SOURCE, *CFLAGS, *include_paths(), cpu_name()))
    return "subnet_lab_sparse_cpu_" + hashlib.sha256(key.encode()).hexdigest()[:12]


STALE_LOCK_S = 900.0
"""A build lock older than this, beside no built library, was left by a build that was killed."""


def build_directory() -> Path:
    """Where torch builds and caches the kernels: ``$TORCH_EXTENSIONS_DIR``, else torch's default root plus
    its ``py<version>_cpu`` folder, then the extension's name."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(extension_name(), verbose=False))


def clear_stale_lock(folder: Path, max_age_s: float = STALE_LOCK_S) -> bool:
    """Remove ``folder/lock`` when it is older than ``max_age_s`` and no ``.so`` was built beside it.

    torch's build lock (``FileBaton``) holds no process id: a build killed mid-way (Ctrl-C, a timeout, an
    out-of-memory kill) leaves the file behind, and every later ``load_inline`` of that name then waits
    forever without a word. A build takes seconds to minutes, so a lock far older than that is an orphan.
    Returns whether a lock was removed (with a warning naming it)."""
    lock = folder / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age < max_age_s or any(folder.glob("*.so")):
        return False
    lock.unlink(missing_ok=True)
    warnings.warn(f"removed {lock}: a build lock {age:.0f} s old with no built library, left by a killed build",
                  stacklevel=2)
    return True


@functools.cache
def load() -> Any | None:
    """The compiled kernels (``.sparse_adamw_``, ``.selected_weight_grad``, ``.weight_grad_of_step``), or None with
    a warning where they cannot be built. A lock left by a killed build is cleared first (:func:`clear_stale_lock`)."""
    try:
        from torch.utils.cpp_extension import load_inline

        clear_stale_lock(build_directory())
        return load_inline(extension_name(), cpp_sources=_SOURCE,
                           functions=["sparse_adamw_", "selected_weight_grad", "weight_grad_of_step"],
                           extra_cflags=list(CFLAGS), verbose=False)
    except Exception as e:  # no compiler, no headers, no ninja: the torch-ops path still works
        warnings.warn(f"the CPU sparse AdamW kernel could not be built ({type(e).__name__}: {e}); "
                      "CompactAdamW(fused=True) and values-only gradients fall back to torch operations", stacklevel=2)
        return None


def usable(p: torch.Tensor) -> bool:
    """Whether the kernel handles this parameter: a contiguous float32 CPU tensor."""
    return p.device.type == "cpu" and p.dtype == torch.float32 and p.is_contiguous()

