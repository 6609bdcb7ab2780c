"""Two Triton kernels on the 2:4 compressed format of ``sparsity.two_four``.

The format (see ``sparsity.two_four.compress``): for a weight of shape ``[N, K]`` with 2
kept entries in every group of 4 consecutive inputs, ``values`` is ``[N, K // 2]`` (the
kept entries, in order) and ``meta`` is ``uint8 [N, K // 4]``, one byte per group holding
the two in-group positions as ``i0 | i1 << 2`` (``i0 < i1``).

* :func:`matmul` computes ``y = x @ W.T (+ bias)`` reading only ``values`` and ``meta``:
  62.5% of the weight bytes of a dense fp16 matrix. At a few tokens (decoding) a linear
  layer is bound by reading its weight, which is where fewer bytes can pay, and where
  PyTorch's semi-structured path pads the tokens up to its minimum tile.
* :func:`weight_grad` is the backward's weight gradient restricted to the kept entries
  (a *masked SDDMM*): ``grad_values = compress(mask * (grad_out.T @ x))``. It computes
  the dense tile on tensor cores and keeps only the kept entries in the epilogue, so it
  saves the dense gradient's write and the masking pass, not the multiplications.

Both run on a GPU and, with ``TRITON_INTERPRET=1`` set before this module is imported,
on CPU tensors (slowly: for tests). Written for triton 3.6 and later.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsity.kernels import triton_interpreter

MIN_BLOCK = 16
"""tl.dot needs every tile dimension >= 16; smaller problems are padded by masking."""

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


interpreting = triton_interpreter
"""True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""


@triton.jit
def _matmul_kernel(
    x_ptr, v_ptr, m_ptr, b_ptr, y_ptr,
    T, N, G,
    stride_xt, stride_xk, stride_vn, stride_vk, stride_mn, stride_mg, stride_yt, stride_yn,
    HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
):
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    t_ok = offs_t < T
    n_ok = offs_n < N
    acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    for g0 in range(0, G, BLOCK_G):
        g = g0 + tl.arange(0, BLOCK_G)
        w_ok = n_ok[:, None] & (g < G)[None, :]
        meta = tl.load(m_ptr + offs_n[:, None] * stride_mn + g[None, :] * stride_mg, mask=w_ok, other=0)
        i0 = meta & 3
        i1 = (meta >> 2) & 3
        v0 = tl.load(v_ptr + offs_n[:, None] * stride_vn + (2 * g)[None, :] * stride_vk, mask=w_ok, other=0.0)
        v1 = tl.load(v_ptr + offs_n[:, None] * stride_vn + (2 * g + 1)[None, :] * stride_vk, mask=w_ok, other=0.0)
        zero = tl.zeros_like(v0)
        x_ok = t_ok[:, None] & (g < G)[None, :]
        for j in tl.static_range(4):
            # Column j of every group: the dense weight there is v0, v1 or 0, by the metadata.
            w_j = tl.where(i0 == j, v0, tl.where(i1 == j, v1, zero))
            x_j = tl.load(x_ptr + offs_t[:, None] * stride_xt + (4 * g + j)[None, :] * stride_xk, mask=x_ok, other=0.0)
            acc += tl.dot(x_j, tl.trans(w_j), input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out = y_ptr + offs_t[:, None] * stride_yt + offs_n[None, :] * stride_yn
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=t_ok[:, None] & n_ok[None, :])


@triton.jit
def _weight_grad_kernel(
    dy_ptr, x_ptr, m_ptr, gv_ptr,
    T, N, G,
    stride_dt, stride_dn, stride_xt, stride_xk, stride_mn, stride_mg, stride_gn, stride_gk,
    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    g = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
    n_ok = offs_n < N
    g_ok = g < G
    d0 = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
    d1 = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
    d2 = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
    d3 = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        t_ok = offs_t < T
        dy_t = tl.load(dy_ptr + offs_t[None, :] * stride_dt + offs_n[:, None] * stride_dn,
                       mask=n_ok[:, None] & t_ok[None, :], other=0.0)  # [BLOCK_N, BLOCK_T] = grad_out.T tile
        x_ok = t_ok[:, None] & g_ok[None, :]
        x_base = x_ptr + offs_t[:, None] * stride_xt + (4 * g)[None, :] * stride_xk
        d0 += tl.dot(dy_t, tl.load(x_base, mask=x_ok, other=0.0), input_precision="ieee")
        d1 += tl.dot(dy_t, tl.load(x_base + stride_xk, mask=x_ok, other=0.0), input_precision="ieee")
        d2 += tl.dot(dy_t, tl.load(x_base + 2 * stride_xk, mask=x_ok, other=0.0), input_precision="ieee")
        d3 += tl.dot(dy_t, tl.load(x_base + 3 * stride_xk, mask=x_ok, other=0.0), input_precision="ieee")
    w_ok = n_ok[:, None] & g_ok[None, :]
    meta = tl.load(m_ptr + offs_n[:, None] * stride_mn + g[None, :] * stride_mg, mask=w_ok, other=0)
    i0 = meta & 3
    i1 = (meta >> 2) & 3
    # The epilogue keeps, in every group, the two columns the metadata names.
    g0 = tl.where(i0 == 0, d0, tl.where(i0 == 1, d1, tl.where(i0 == 2, d2, d3)))
    g1 = tl.where(i1 == 0, d0, tl.where(i1 == 1, d1, tl.where(i1 == 2, d2, d3)))
    out = gv_ptr + offs_n[:, None] * stride_gn + (2 * g)[None, :] * stride_gk
    tl.store(out, g0.to(gv_ptr.dtype.element_ty), mask=w_ok)
    tl.store(out + stride_gk, g1.to(gv_ptr.dtype.element_ty), mask=w_ok)


def _check_device(*tensors: torch.Tensor) -> None:
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    device = devices.pop()
    if device.type != "cuda" and not interpreting():
        raise ValueError(
            f"the Triton 2:4 kernels need CUDA tensors, got tensors on {device}: move them to a GPU "
            "(or set TRITON_INTERPRET=1 before importing this module to run the kernel slowly on the CPU)"
        )


def _check_compressed(values: torch.Tensor, meta: torch.Tensor) -> tuple[int, int]:
    if values.ndim != 2 or meta.ndim != 2:
        raise ValueError(f"values and meta must be 2-D, got shapes {tuple(values.shape)} and {tuple(meta.shape)}")
    if meta.dtype != torch.uint8:
        raise TypeError(f"meta must be torch.uint8 (see sparsity.two_four.compress), got {meta.dtype}")
    n, half = values.shape
    if half % 2 or meta.shape != (n, half // 2):
        raise ValueError(
            f"values {tuple(values.shape)} and meta {tuple(meta.shape)} do not describe one 2:4 weight: "
            f"need values [N, K/2] and meta [N, K/4] with K divisible by 4"
        )
    if values.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"the Triton 2:4 kernels support {SUPPORTED_DTYPES}, got values of dtype {values.dtype}")
    return n, 2 * half


def _block(size: int, cap: int) -> int:
    return max(MIN_BLOCK, min(cap, triton.next_power_of_2(size)))


def matmul(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ decompress(values, meta).T (+ bias)`` for ``x`` of shape ``[..., K]``; returns ``[..., N]``."""
    n, k = _check_compressed(values, meta)
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} input features, the 2:4 weight expects {k}")
    if x.dtype != values.dtype:
        raise TypeError(f"x has dtype {x.dtype} but the weight values {values.dtype}: cast one of them")
    if bias is not None and (bias.shape != (n,) or bias.dtype != values.dtype):
        raise ValueError(f"bias must have shape ({n},) and dtype {values.dtype}, got {tuple(bias.shape)} {bias.dtype}")
    _check_device(x, values, meta, *([] if bias is None else [bias]))
    x2 = x.reshape(-1, k)
    t = x2.shape[0]
    y = torch.empty(t, n, dtype=x.dtype, device=x.device)
    if t == 0:
        return y.reshape(*x.shape[:-1], n)
    block_t, block_n, block_g = _block(t, 64), _block(n, 64), _block(k // 4, 32)
    grid = (triton.cdiv(t, block_t), triton.cdiv(n, block_n))
    _matmul_kernel[grid](
        x2, values, meta, values if bias is None else bias, y,
        t, n, k // 4,
        x2.stride(0), x2.stride(1), values.stride(0), values.stride(1), meta.stride(0), meta.stride(1),
        y.stride(0), y.stride(1),
        HAS_BIAS=bias is not None, BLOCK_T=block_t, BLOCK_N=block_n, BLOCK_G=block_g,
    )
    return y.reshape(*x.shape[:-1], n)


def weight_grad(grad_out: torch.Tensor, x: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """The kept entries of ``grad_out.T @ x`` in the compressed layout ``[N, K // 2]`` (a masked SDDMM)."""
    if meta.ndim != 2 or meta.dtype != torch.uint8:
        raise TypeError(f"meta must be a 2-D torch.uint8 tensor [N, K/4], got {meta.dtype} {tuple(meta.shape)}")
    n, k = meta.shape[0], 4 * meta.shape[1]
    if grad_out.shape[-1] != n or x.shape[-1] != k or grad_out.shape[:-1] != x.shape[:-1]:
        raise ValueError(
            f"grad_out {tuple(grad_out.shape)} and x {tuple(x.shape)} do not match a 2:4 weight of shape ({n}, {k})"
        )
    if x.dtype not in SUPPORTED_DTYPES or grad_out.dtype != x.dtype:
        raise TypeError(f"grad_out and x must share a dtype among {SUPPORTED_DTYPES}, got {grad_out.dtype}, {x.dtype}")
    _check_device(grad_out, x, meta)
    dy, x2 = grad_out.reshape(-1, n), x.reshape(-1, k)
    t = x2.shape[0]
    grad_values = torch.zeros(n, k // 2, dtype=x.dtype, device=x.device)
    if t == 0:
        return grad_values
    block_n, block_g, block_t = _block(n, 64), _block(k // 4, 32), _block(t, 64)
    grid = (triton.cdiv(n, block_n), triton.cdiv(k // 4, block_g))
    _weight_grad_kernel[grid](
        dy, x2, meta, grad_values,
        t, n, k // 4,
        dy.stride(0), dy.stride(1), x2.stride(0), x2.stride(1), meta.stride(0), meta.stride(1),
        grad_values.stride(0), grad_values.stride(1),
        BLOCK_T=block_t, BLOCK_N=block_n, BLOCK_G=block_g,
    )
    return grad_values
