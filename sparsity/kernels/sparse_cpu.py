"""Two CPU kernels of our own for training a sparse subnetwork, compiled on first use
(``make``'s set-up builds them ahead: ``python -m sparsity.kernels``).

* ``sparse_adamw_``: AdamW on the selected entries of a tensor, gather + update + scatter in one pass.
* ``selected_weight_grad``: a linear layer's weight gradient at the selected entries only
  (a sampled dense-dense matmul, SDDMM), without the dense ``[out, in]`` gradient: tokens go
  through in blocks of 256, each block copied once so that a column's tokens are contiguous,
  then one vectorised dot product per selected entry and block; see ``sparsity.values_grad``.

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
#include <vector>

constexpr int64_t kAhead = 32;

// One AdamW step on p.view(-1)[idx] with the [k] moments m and v (float32, contiguous). The gradient g is
// dense (read at idx) or, with compact_grad, already the [k] gradient of the selected entries.
void sparse_adamw_(torch::Tensor p, torch::Tensor g, torch::Tensor idx, torch::Tensor m, torch::Tensor v,
                   double lr, double weight_decay, double beta1, double beta2, double eps, double step,
                   bool compact_grad) {
  TORCH_CHECK(p.scalar_type() == at::kFloat && g.scalar_type() == at::kFloat, "float32 weight and gradient");
  TORCH_CHECK(m.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat, "float32 moments");
  TORCH_CHECK(idx.scalar_type() == at::kLong, "int64 positions");
  TORCH_CHECK(p.is_contiguous() && g.is_contiguous() && idx.is_contiguous() && m.is_contiguous() && v.is_contiguous(),
              "contiguous tensors");
  TORCH_CHECK(m.numel() == idx.numel() && v.numel() == idx.numel(), "one moment per position");
  TORCH_CHECK(!compact_grad || g.numel() == idx.numel(), "a compact gradient has one entry per position");
  float* P = p.data_ptr<float>();
  const float* G = g.data_ptr<float>();
  const int64_t* I = idx.data_ptr<int64_t>();
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
// 1. the block's rows of g and x are copied, column by column, into gb [out, kBlock] and xb [in, kBlock] (the block's
//    tokens of one column contiguous), in cache-sized tiles, each column by one thread;
// 2. every selected entry (r, c) adds the dot product gb[r, :] . xb[c, :], kept in kLanes independent partial sums
//    (vector registers: no wait on one chain of additions), summed in a fixed order at the end. The entries go in
//    tiles of kCols columns, so the xb rows they read stay in cache (in flat order, a wide layer's entries would
//    read every column of xb from memory again for each row of the weight).
// An earlier version transposed each 64-token block's whole x in every thread and summed each entry in one chain of
// 64: the copies and the chain, not the multiply-adds, took most of its time. The buffers hold one block: a transient
// on top of backward's peak of (out + in) x kBlock floats at most (the memory benchmark counts it). Every entry sums
// its blocks in block order, whatever the thread count: deterministic.
constexpr int64_t kBlock = 256;
constexpr int64_t kTile = 16;
constexpr int64_t kLanes = 32;
constexpr int64_t kCols = 128;

// dst[col * stride + t] = src[t][col] for the columns [c0, c1) of the rows [0, n_rows) of src [*, n_cols]; t from
// n_rows up to the next multiple of kLanes is zero (the last, short block: its dot products stop there).
static void columns_to_rows(const float* src, int64_t n_rows, int64_t n_cols, float* dst, int64_t stride, int64_t c0,
                            int64_t c1) {
  for (int64_t a = c0; a < c1; a += kTile) {
    const int64_t a1 = std::min(a + kTile, c1);
    for (int64_t t0 = 0; t0 < n_rows; t0 += kTile) {
      const int64_t t1 = std::min(t0 + kTile, n_rows);
      for (int64_t t = t0; t < t1; ++t) {
        const float* row = src + t * n_cols;
        for (int64_t c = a; c < a1; ++c) dst[c * stride + t] = row[c];
      }
    }
    const int64_t padded = (n_rows + kLanes - 1) / kLanes * kLanes;
    if (n_rows < padded)
      for (int64_t c = a; c < a1; ++c) std::fill(dst + c * stride + n_rows, dst + c * stride + padded, 0.0f);
  }
}

// a[0:n] . b[0:n] for n a multiple of kLanes (at most kBlock), in kLanes partial sums added in a fixed order.
static inline float block_dot(const float* a, const float* b, int64_t n) {
  float acc[kLanes] = {0.0f};
  for (int64_t t = 0; t < n; t += kLanes) {
    #pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += a[t + l] * b[t + l];
  }
  float sum = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) sum += acc[l];
  return sum;
}

torch::Tensor selected_weight_grad(torch::Tensor g, torch::Tensor x, torch::Tensor flat) {
  TORCH_CHECK(g.scalar_type() == at::kFloat && x.scalar_type() == at::kFloat, "float32 inputs");
  TORCH_CHECK(g.dim() == 2 && x.dim() == 2 && g.size(0) == x.size(0), "g [B, out] and x [B, in]");
  TORCH_CHECK(g.is_contiguous() && x.is_contiguous() && flat.is_contiguous(), "contiguous inputs");
  TORCH_CHECK(flat.scalar_type() == at::kLong, "int64 positions");
  const int64_t b = g.size(0), n_out = g.size(1), n_in = x.size(1), k = flat.numel();
  TORCH_CHECK(std::max(n_out, n_in) * kBlock < (int64_t{1} << 31) && k < (int64_t{1} << 31),
              "offsets past int32: a layer wider than 2^23 or over 2^31 selected entries");
  auto out = torch::zeros({k}, g.options());
  if (k == 0 || b == 0) return out;
  // A layer so narrow that even kLanes-token buffers would outgrow its gradient: g and x are read in place.
  if (n_out * n_in < kLanes * (n_out + n_in)) {
    at::parallel_for(0, k, 1024, [&](int64_t begin, int64_t end) {
      const float* G = g.data_ptr<float>();
      const float* X = x.data_ptr<float>();
      const int64_t* F = flat.data_ptr<int64_t>();
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
  // A block's tokens: kBlock, fewer where the batch has fewer (rounded up to kLanes). The two buffers, (out + in) x
  // stride floats, are a transient of backward; smaller blocks would bound it tighter but slowed the small GPT's
  // step from 0.91x to 1.12x of full fine-tuning's (benchmarks/scaleup_memory.py).
  const int64_t stride = std::min(kBlock, (b + kLanes - 1) / kLanes * kLanes);
  auto gb = torch::empty({n_out, stride}, g.options());
  auto xb = torch::empty({n_in, stride}, x.options());
  float* GB = gb.data_ptr<float>();
  float* XB = xb.data_ptr<float>();
  const int64_t* F = flat.data_ptr<int64_t>();
  float* O = out.data_ptr<float>();
  // The entries in column tiles of kCols (stable: row order within a tile), with their offsets in the buffers
  // divided out once, not per block. A tile's kCols columns of xb (128 KB) stay in cache while its entries run.
  const int64_t n_tiles = (n_in + kCols - 1) / kCols;
  std::vector<int64_t> start(n_tiles + 1, 0);
  std::vector<int32_t> order(k), ord_row(k), ord_col(k);  // int32: a weight of 2^31 entries is beyond this kernel
  for (int64_t j = 0; j < k; ++j) ++start[(F[j] % n_in) / kCols + 1];
  for (int64_t t = 0; t < n_tiles; ++t) start[t + 1] += start[t];
  for (int64_t j = 0; j < k; ++j) {
    const int64_t i = start[(F[j] % n_in) / kCols]++;
    order[i] = j;
    ord_row[i] = static_cast<int32_t>((F[j] / n_in) * stride);
    ord_col[i] = static_cast<int32_t>((F[j] % n_in) * stride);
  }
  std::vector<float> acc(k, 0.0f);
  for (int64_t t0 = 0; t0 < b; t0 += stride) {
    const int64_t tn = std::min(stride, b - t0), padded = (tn + kLanes - 1) / kLanes * kLanes;
    const float* G = g.data_ptr<float>() + t0 * n_out;
    const float* X = x.data_ptr<float>() + t0 * n_in;
    at::parallel_for(0, n_out + n_in, kTile, [&](int64_t c0, int64_t c1) {  // g's columns, then x's
      if (c0 < n_out) columns_to_rows(G, tn, n_out, GB, stride, c0, std::min(c1, n_out));
      if (c1 > n_out) columns_to_rows(X, tn, n_in, XB, stride, std::max(c0, n_out) - n_out, c1 - n_out);
    });
    at::parallel_for(0, k, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) acc[i] += block_dot(GB + ord_row[i], XB + ord_col[i], padded);
    });
  }
  for (int64_t i = 0; i < k; ++i) O[order[i]] = acc[i];
  return out;
}
"""


CFLAGS = ("-O3", "-march=native", "-fopenmp-simd")


def extension_name() -> str:
    """The build's name, from a hash of its source, flags and torch's header folders: torch keeps one build
    folder per name in a cache that every checkout on the machine shares. Two checkouts with different kernels
    must not share one, nor two environments (their compile commands name different header folders, so ninja
    would rebuild the kernel each time the other one loads it: minutes each)."""
    from torch.utils.cpp_extension import include_paths

    key = "\n".join((_SOURCE, *CFLAGS, *include_paths()))
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
    """The compiled kernels (``.sparse_adamw_``, ``.selected_weight_grad``), or None with a warning
    where they cannot be built. A lock left by a killed build is cleared first (:func:`clear_stale_lock`)."""
    try:
        from torch.utils.cpp_extension import load_inline

        clear_stale_lock(build_directory())
        return load_inline(extension_name(), cpp_sources=_SOURCE,
                           functions=["sparse_adamw_", "selected_weight_grad"],
                           extra_cflags=list(CFLAGS), verbose=False)
    except Exception as e:  # no compiler, no headers, no ninja: the torch-ops path still works
        warnings.warn(f"the CPU sparse AdamW kernel could not be built ({type(e).__name__}: {e}); "
                      "CompactAdamW(fused=True) and values-only gradients fall back to torch operations", stacklevel=2)
        return None


def usable(p: torch.Tensor) -> bool:
    """Whether the kernel handles this parameter: a contiguous float32 CPU tensor."""
    return p.device.type == "cpu" and p.dtype == torch.float32 and p.is_contiguous()

