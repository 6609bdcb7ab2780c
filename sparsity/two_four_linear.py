"""The fast 2:4 linear layer: ``SemiStructuredLinear``, its autograd function and the routing
to the fastest kernel that can run it.

NVIDIA's sparse tensor cores (Ampere and later, compute capability >= 8.0) multiply a 2:4
matrix reading only the kept half plus 2-bit positions, for up to twice the dense
throughput (Mishra et al. 2021). A :class:`SemiStructuredLinear` is a drop-in
``nn.Linear`` whose weight holds the pattern (``mask`` buffer). On a CUDA GPU of compute
capability >= 8.0 with fp16/bf16 it runs through PyTorch's semi-structured sparse tensors
(cuSPARSELt or CUTLASS); shapes PyTorch refuses go to our Triton kernel
(``sparsity.kernels.two_four_triton``), and training steps use a backward whose weight
gradient keeps only the kept entries. Anywhere else it runs the dense masked reference
``F.linear(x, weight * mask, bias)`` and says once why (:class:`FastPathNotice`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sparsity.kernels import triton_interpreter
from sparsity.two_four import GROUP, check_keep, check_two_four, compress, decompress, mask_24

FAST_DTYPES = (torch.float16, torch.bfloat16)
"""Dtypes the sparse tensor cores take for floating-point 2:4 (PyTorch's path)."""

BACKENDS = ("cusparselt", "cutlass")
"""PyTorch's two semi-structured backends; ``"auto"`` picks cuSPARSELt when it is available."""

KERNELS = ("auto", "torch", "triton", "reference")
"""How a SemiStructuredLinear computes: ``auto`` = PyTorch's path when it takes the shape,
else our Triton kernel when triton is importable, else the reference."""

MIN_CAPABILITY = (8, 0)
"""Sparse tensor cores arrived with Ampere (A100: compute capability 8.0)."""


class FastPathNotice(UserWarning):
    """Issued once per reason when a SemiStructuredLinear falls back to the dense masked reference."""


_NOTICED: set[str] = set()


def _notice_once(reason: str) -> None:
    if reason not in _NOTICED:
        _NOTICED.add(reason)
        warnings.warn(
            f"SemiStructuredLinear runs the dense masked reference (same result, no speed-up): {reason}",
            FastPathNotice,
            stacklevel=2,
        )


def resolve_backend(backend: str) -> str:
    """``"auto"`` -> ``"cusparselt"`` when PyTorch has cuSPARSELt, else ``"cutlass"``."""
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    cusparselt = getattr(torch.backends, "cusparselt", None)
    return "cusparselt" if cusparselt is not None and cusparselt.is_available() else "cutlass"


def _backend_class(backend: str) -> Any:
    names = {"cusparselt": "SparseSemiStructuredTensorCUSPARSELT", "cutlass": "SparseSemiStructuredTensorCUTLASS"}
    return getattr(torch.sparse, names[resolve_backend(backend)])


def min_shape(dtype: torch.dtype, backend: str = "auto") -> tuple[int, int]:
    """(rows, cols) a weight's shape must be a multiple of (and at least) for PyTorch's 2:4 path."""
    constraints = _backend_class(backend)._DTYPE_SHAPE_CONSTRAINTS
    if dtype not in constraints:
        raise ValueError(f"PyTorch's {resolve_backend(backend)} 2:4 path has no {dtype} support")
    c = constraints[dtype]
    return c.sparse_min_rows, c.sparse_min_cols


def gpu_problem(weight: torch.Tensor) -> str | None:
    """Why sparse tensor cores cannot run this weight (device, capability, dtype), or None if they can."""
    if not torch.cuda.is_available():
        return "CUDA is not available"
    if weight.device.type != "cuda":
        return f"the weight is on {weight.device}, not on a CUDA device"
    capability = torch.cuda.get_device_capability(weight.device)
    if capability < MIN_CAPABILITY:
        return f"compute capability {capability[0]}.{capability[1]} < 8.0 has no sparse tensor cores"
    if weight.dtype not in FAST_DTYPES:
        return f"dtype {weight.dtype} is not float16/bfloat16"
    return None


def shape_problem(weight: torch.Tensor, backend: str = "auto") -> str | None:
    """Why PyTorch's 2:4 path refuses this weight's shape, or None if it takes it."""
    rows, cols = min_shape(weight.dtype, backend)
    m, k = weight.shape
    if m < rows or m % rows or k < cols or k % cols:
        return (f"shape {tuple(weight.shape)} is not a multiple of ({rows}, {cols}), "
                f"the minimum of PyTorch's {resolve_backend(backend)} path")
    return None


def to_semi_structured(weight: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """PyTorch's compressed 2:4 tensor of ``weight`` on the chosen backend; clear errors where it cannot be."""
    weight = check_two_four(weight)
    problem = gpu_problem(weight) or shape_problem(weight, backend)
    if problem is not None:
        raise ValueError(f"cannot build PyTorch's 2:4 tensor: {problem}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*prototype.*")
        return _backend_class(backend).from_dense(weight.detach().contiguous())


def _triton_kernels() -> Any:
    """The Triton module, imported on first use so that the core imports without triton."""
    from sparsity.kernels import two_four_triton

    return two_four_triton


def triton_available() -> bool:
    try:
        _triton_kernels()
    except ImportError:
        return False
    return True


class _FastTwoFourLinear(torch.autograd.Function):
    """Forward on the sparse path; backward: input gradient from the dense masked weight,
    weight gradient only at the kept entries (Triton's masked SDDMM when available)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                layer: SemiStructuredLinear, route: str) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.layer, ctx.has_bias = layer, bias is not None
        return layer._sparse_forward(x, bias, route)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        layer = ctx.layer
        dy = grad_out.reshape(-1, grad_out.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (dy @ (weight * layer.mask)).reshape(x.shape)
        if ctx.needs_input_grad[1]:
            if triton_available():
                _, meta = layer._compressed_meta()
                grad_w = decompress(_triton_kernels().weight_grad(dy, x2, meta), meta)
            else:
                grad_w = (dy.t() @ x2) * layer.mask
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = dy.sum(0)
        return grad_x, grad_w, grad_b, None, None


class SemiStructuredLinear(nn.Linear):
    """``nn.Linear`` whose weight holds a 2:4 pattern (``mask``: the bool keep-mask buffer).

    ``weight`` stays a dense parameter with exact zeros where the mask prunes, so the
    masked optimizers, ``state_dict`` and ``densify`` see an ordinary linear layer. The
    forward computes ``x @ (weight * mask).T + bias`` by the first route that applies:

    * ``"torch"``: PyTorch's semi-structured sparse tensor (``backend`` cuSPARSELt or
      CUTLASS), on CUDA with compute capability >= 8.0, fp16/bf16, and a shape that is a
      multiple of the backend's minimum (:func:`min_shape`);
    * ``"triton"``: our compressed-format kernel (``sparsity.kernels.two_four_triton``),
      for the same devices and dtypes at any shape whose input dimension is a multiple of 4;
    * ``"reference"``: the dense masked product, anywhere; a one-time
      :class:`FastPathNotice` says why the fast routes are off.

    ``kernel`` forces a route (``"torch"``/``"triton"`` raise a clear error where they
    cannot run; ``"triton"`` also runs on CPU tensors under ``TRITON_INTERPRET=1``, for
    tests). When gradients are needed the fast routes train too: the weight gradient is
    nonzero only at kept entries. The compressed weight is cached and rebuilt when the
    weight or mask changes (an optimizer step).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: Any = None,
                 dtype: torch.dtype | None = None, *, backend: str = "auto", kernel: str = "auto") -> None:
        if in_features % GROUP:
            raise ValueError(f"2:4 needs in_features divisible by {GROUP}, got {in_features}")
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise TypeError(f"SemiStructuredLinear needs a floating dtype (float32, float16, bfloat16), got {dtype}")
        super().__init__(in_features, out_features, bias, device, dtype)
        self.set_kernel(kernel, backend)
        keep = mask_24(self.weight)
        self.register_buffer("mask", keep)
        with torch.no_grad():
            self.weight.mul_(keep)

    def set_kernel(self, kernel: str = "auto", backend: str = "auto") -> None:
        """Choose the route (see :data:`KERNELS`) and PyTorch's backend (see :data:`BACKENDS`)."""
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        resolve_backend(backend)
        self.kernel, self.backend = kernel, backend
        self._cache: dict[str, tuple[tuple[Any, ...], Any]] = {}

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: torch.Tensor | None = None, *, backend: str = "auto",
                    kernel: str = "auto") -> SemiStructuredLinear:
        """Wrap ``linear``'s own parameters (shared, not copied), pruned in place to ``mask``
        (default: :func:`mask_24` by magnitude)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        if linear.in_features % GROUP:
            raise ValueError(f"2:4 needs in_features divisible by {GROUP}; this linear has {linear.in_features}")
        keep = mask_24(linear.weight) if mask is None else check_keep(mask, linear.weight)
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.weight, layer.bias = linear.weight, linear.bias
        layer.register_buffer("mask", keep.clone())
        layer.set_kernel(kernel, backend)
        with torch.no_grad():
            layer.weight.mul_(keep)
        return layer

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the compressed cache behind (it is rebuilt on the next forward)."""
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the masked weight (pruned entries exactly zero)."""
        dense = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                          device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            self.weight.mul_(self.mask)
        dense.weight, dense.bias = self.weight, self.bias
        return dense

    def route(self, x: torch.Tensor | None = None) -> tuple[str, str | None]:
        """``(route, why the faster routes are off or None)`` for an input like ``x``."""
        problem = gpu_problem(self.weight)
        if problem is None and x is not None:
            if x.device != self.weight.device:
                problem = f"the input is on {x.device}, the weight on {self.weight.device}"
            elif x.dtype != self.weight.dtype:
                problem = f"the input has dtype {x.dtype}, the weight {self.weight.dtype}"
        if self.kernel == "reference":
            return "reference", "kernel='reference' was chosen"
        if self.kernel == "triton" and triton_interpreter() and self.weight.device.type == "cpu" and triton_available():
            return "triton", None  # Triton's CPU interpreter: slow, for testing the kernels and their autograd
        shape = None if problem else shape_problem(self.weight, self.backend)
        if self.kernel in ("auto", "torch") and problem is None and shape is None:
            return "torch", None
        if self.kernel in ("auto", "triton") and problem is None:
            if triton_available():
                return "triton", None
            problem = shape or "triton is not installed"
        reason = problem or shape
        if self.kernel != "auto":
            raise ValueError(f"kernel={self.kernel!r} cannot run here: {reason}")
        return "reference", reason

    def _compressed_meta(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, meta) in the reference format, cached with the weight's version."""
        return self._cached("reference-format", lambda w: compress(w, self.mask))

    def _cached(self, kind: str, build: Callable[[torch.Tensor], Any]) -> Any:
        key = (self.backend, self.weight._version, self.mask._version, self.weight.data_ptr(), self.weight.dtype)
        if kind not in self._cache or self._cache[kind][0] != key:
            with torch.no_grad():
                self._cache[kind] = (key, build((self.weight * self.mask).detach()))
        return self._cache[kind][1]

    def _sparse_forward(self, x: torch.Tensor, bias: torch.Tensor | None, route: str) -> torch.Tensor:
        if route == "torch":
            sparse = self._cached("torch", lambda w: to_semi_structured(w, self.backend))
            flat = x.reshape(-1, x.shape[-1])
            return F.linear(flat, sparse, bias).reshape(*x.shape[:-1], -1)
        values, meta = self._compressed_meta()
        return _triton_kernels().matmul(x, values, meta, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        route, reason = self.route(x)
        if route == "reference":
            _notice_once(reason or "")
            return F.linear(x, self.weight * self.mask, self.bias)
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return _FastTwoFourLinear.apply(x, self.weight, self.bias, self, route)
        return self._sparse_forward(x, self.bias, route)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pattern=2:4, kernel={self.kernel}, backend={self.backend}"
