"""2:4 structured sparsity: the pattern, its compressed format, a fast linear layer, sparse fine-tuning.

NVIDIA's sparse tensor cores (Ampere and later, compute capability >= 8.0) multiply a
matrix in which every group of 4 consecutive entries of a row holds at most 2 nonzeros,
reading only the kept half plus 2-bit positions, for up to twice the dense throughput
(Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks"). For a linear layer
``y = x @ W.T`` the groups run along the *input* dimension (the last one of ``W``).

The pieces, from the pattern to a model:

* :func:`mask_24` picks the 2 best of every 4 inputs by any score (``abs(w)`` by default)
  through ``masks.n_m``; :func:`check_two_four` says where a weight breaks the pattern.
* :func:`compress` / :func:`decompress`: the reference compressed format (below), exact
  round trip, on any device.
* :class:`SemiStructuredLinear`: a drop-in ``nn.Linear`` whose weight holds a 2:4
  pattern (``mask`` buffer). On a CUDA GPU of compute capability >= 8.0 with fp16/bf16
  it runs through PyTorch's semi-structured sparse tensors (cuSPARSELt or CUTLASS),
  shapes PyTorch refuses go to our Triton kernel, and training steps use a backward whose
  weight gradient keeps only the kept entries. Anywhere else it runs the dense masked
  reference ``F.linear(x, weight * mask, bias)`` and says once why.
* :func:`sparsify_24` / :func:`densify` convert the chosen linears of any model and back;
  :func:`keep_mask`, :func:`optimizer` and :func:`finetune_24` fine-tune only the kept
  weights with ``MaskedAdamW`` or ``CompactAdamW`` (the pattern survives exactly);
  :func:`to_inference_` puts a fine-tuned model in its fast inference form.

**Reference compressed format.** A weight ``[N, K]`` (K divisible by 4) becomes

* ``values``: ``[N, K // 2]``, same dtype: the two kept entries of every group, in
  input order (group g of row n is ``values[n, 2g]`` and ``values[n, 2g + 1]``);
* ``meta``: ``torch.uint8 [N, K // 4]``, one byte per group: ``i0 | i1 << 2`` with
  ``0 <= i0 < i1 <= 3`` the in-group positions of the two kept entries.

A group with fewer than two nonzeros still stores two entries (a zero value at the
lowest free position), so every row has exactly ``K // 2`` values, as on the hardware.
CUTLASS and cuSPARSELt pack the same 2-bit positions 8 to a 16-bit word in a tiled,
interleaved order; ours spends a byte per group so that a student can read it
(``values`` + ``meta`` = 62.5% of a dense fp16 matrix; the hardware format 56.25%).
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sparsity import criteria, masks, prune
from sparsity.compact import CompactAdamW
from sparsity.kernels import triton_interpreter
from sparsity.optim import MaskedAdamW
from sparsity.validate import Mask, check_module

GROUP, KEPT = 4, 2
"""The pattern: KEPT nonzeros at most in every GROUP consecutive inputs."""

FAST_DTYPES = (torch.float16, torch.bfloat16)
"""Dtypes the sparse tensor cores take for floating-point 2:4 (PyTorch's path)."""

BACKENDS = ("cusparselt", "cutlass")
"""PyTorch's two semi-structured backends; ``"auto"`` picks cuSPARSELt when it is available."""

KERNELS = ("auto", "torch", "triton", "reference")
"""How a SemiStructuredLinear computes: ``auto`` = PyTorch's path when it takes the shape,
else our Triton kernel when triton is importable, else the reference."""

MIN_CAPABILITY = (8, 0)
"""Sparse tensor cores arrived with Ampere (A100: compute capability 8.0)."""

Score = str | Mapping[str, torch.Tensor] | Callable[[nn.Module], Mapping[str, torch.Tensor]]


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


# --- the pattern ---------------------------------------------------------------------


def _check_matrix(t: object, arg: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{arg} must be a tensor, got {type(t).__name__}")
    if t.ndim != 2:
        raise ValueError(f"{arg} must be a 2-D matrix [out_features, in_features], got shape {tuple(t.shape)}")
    if t.shape[1] % GROUP or t.shape[1] == 0:
        raise ValueError(
            f"2:4 needs the input dimension (the last) divisible by {GROUP}; {arg} has shape {tuple(t.shape)}"
        )
    return t


def _nonzeros_per_group(t: torch.Tensor) -> torch.Tensor:
    return (t != 0).reshape(t.shape[0], -1, GROUP).sum(-1)


def check_two_four(weight: torch.Tensor, arg: str = "weight") -> torch.Tensor:
    """Raise a ValueError naming the first group of ``weight`` with more than 2 nonzeros; return it otherwise."""
    counts = _nonzeros_per_group(_check_matrix(weight, arg))
    bad = counts > KEPT
    if bad.any():
        row, group = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{arg} violates 2:4: row {row}, inputs {GROUP * group}..{GROUP * group + 3} hold {int(counts[row, group])} "
            f"nonzeros (at most {KEPT} allowed); {int(bad.sum())} of {bad.numel()} groups break the pattern"
        )
    return weight


def is_two_four(weight: torch.Tensor) -> bool:
    """True if every group of 4 consecutive inputs holds at most 2 nonzeros."""
    return bool((_nonzeros_per_group(_check_matrix(weight, "weight")) <= KEPT).all())


def mask_24(weight: torch.Tensor, score: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-mask with the 2 highest ``score`` entries (default ``abs(weight)``) of every 4 inputs.

    The selection is ``masks.n_m``'s (ties go to the earlier input), applied to one tensor.
    """
    weight = _check_matrix(weight, "weight")
    score = weight.detach().abs() if score is None else score
    if not isinstance(score, torch.Tensor) or score.shape != weight.shape:
        raise ValueError(f"score must be a tensor of the weight's shape {tuple(weight.shape)}")
    holder = nn.Module()
    holder.register_parameter("w", nn.Parameter(weight.detach(), requires_grad=False))
    return masks.n_m(holder, {"w": score.to(weight.device)}, KEPT, GROUP)["w"]


def _check_keep(mask: object, weight: torch.Tensor, arg: str = "mask") -> torch.Tensor:
    """A 2:4 keep-mask: bool, the weight's shape and device, exactly 2 True in every group of 4."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{arg} must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.shape != weight.shape or mask.device != weight.device:
        raise ValueError(
            f"{arg} has shape {tuple(mask.shape)} on {mask.device}; the weight has {tuple(weight.shape)} on {weight.device}"
        )
    counts = mask.reshape(mask.shape[0], -1, GROUP).sum(-1)
    if (counts != KEPT).any():
        row, group = (int(i) for i in (counts != KEPT).nonzero()[0])
        raise ValueError(
            f"{arg} is not a 2:4 keep-mask: row {row}, inputs {GROUP * group}..{GROUP * group + 3} keep "
            f"{int(counts[row, group])} entries (exactly {KEPT} required)"
        )
    return mask


# --- the compressed format -------------------------------------------------------------


def _positions(weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[N * K/4, 2] ascending in-group positions of the stored entries."""
    if mask is None:
        # Nonzeros first, then the lowest free positions: a stable sort on "is nonzero".
        keyed = (weight != 0).reshape(-1, GROUP).to(torch.int8)
        chosen = torch.sort(keyed, dim=1, descending=True, stable=True).indices[:, :KEPT]
    else:
        chosen = mask.reshape(-1, GROUP).nonzero()[:, 1].reshape(-1, KEPT)
    return torch.sort(chosen, dim=1).values


def compress(weight: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, meta)`` of a 2:4 weight in the reference format (see the module docstring).

    ``mask``: the keep-mask saying which two positions of each group to store (needed
    when a kept weight happens to be zero, so the pattern stays the mask's). Without it
    the nonzeros are stored. A weight that breaks the pattern, or is nonzero where the
    mask prunes, is an error: compression would silently drop those entries.
    """
    weight = check_two_four(weight)
    if mask is not None:
        mask = _check_keep(mask, weight)
        if (weight.detach()[~mask] != 0).any():
            raise ValueError("weight has nonzero entries where the mask prunes: apply the mask first")
    pos = _positions(weight.detach(), mask)
    values = weight.detach().reshape(-1, GROUP).gather(1, pos).reshape(weight.shape[0], -1)
    meta = (pos[:, 0] | (pos[:, 1] << 2)).to(torch.uint8).reshape(weight.shape[0], -1)
    return values, meta


def _check_meta(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    if not isinstance(values, torch.Tensor) or not isinstance(meta, torch.Tensor):
        raise TypeError("values and meta must be tensors (from compress)")
    if meta.dtype != torch.uint8:
        raise TypeError(f"meta must have dtype torch.uint8, got {meta.dtype}")
    if values.ndim != 2 or meta.ndim != 2 or values.shape != (meta.shape[0], KEPT * meta.shape[1]):
        raise ValueError(
            f"values {tuple(values.shape)} and meta {tuple(meta.shape)} do not match: need [N, K/2] and [N, K/4]"
        )
    m = meta.to(torch.int64).reshape(-1)
    i0, i1 = m & 3, (m >> 2) & 3
    if ((m >> 4) != 0).any() or (i0 >= i1).any():
        raise ValueError("meta holds invalid groups: each byte must be i0 | i1 << 2 with 0 <= i0 < i1 <= 3")
    return torch.stack([i0, i1], dim=1)


def decompress(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """The dense ``[N, K]`` weight of ``(values, meta)``: the exact inverse of :func:`compress`."""
    pos = _check_meta(values, meta).to(values.device)
    dense = torch.zeros(pos.shape[0], GROUP, dtype=values.dtype, device=values.device)
    dense.scatter_(1, pos, values.reshape(-1, KEPT))
    return dense.reshape(values.shape[0], -1)


def meta_to_mask(meta: torch.Tensor) -> torch.Tensor:
    """The bool keep-mask ``[N, K]`` that ``meta`` describes."""
    pos = _check_meta(torch.empty(meta.shape[0], KEPT * meta.shape[1], device=meta.device), meta)
    keep = torch.zeros(pos.shape[0], GROUP, dtype=torch.bool, device=meta.device)
    keep.scatter_(1, pos.to(meta.device), True)
    return keep.reshape(meta.shape[0], -1)


# --- the fast path ---------------------------------------------------------------------


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
    cannot run; ``"triton"`` also runs on CPU tensors under ``TRITON_INTERPRET=1``, for tests). When gradients are needed the fast routes train too: the weight
    gradient is nonzero only at kept entries. The compressed weight is cached and rebuilt
    when the weight or mask changes (an optimizer step).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: Any = None,
                 dtype: torch.dtype | None = None, *, backend: str = "auto", kernel: str = "auto") -> None:
        if in_features % GROUP:
            raise ValueError(f"2:4 needs in_features divisible by {GROUP}, got {in_features}")
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
        keep = mask_24(linear.weight) if mask is None else _check_keep(mask, linear.weight)
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


# --- whole models ----------------------------------------------------------------------


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    head, _, leaf = name.rpartition(".")
    return (model.get_submodule(head) if head else model), leaf


def _chosen_linears(model: nn.Module, modules: str | Iterable[str] | None) -> list[str]:
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, SemiStructuredLinear)]
    if modules is None:
        chosen = linears
    else:
        patterns = [modules] if isinstance(modules, str) else list(modules)
        if not patterns or not all(isinstance(p, str) for p in patterns):
            raise ValueError(f"modules must be None or module names / glob patterns, got {modules!r}")
        chosen = []
        for pattern in patterns:
            hits = [n for n in linears if n == pattern or fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise ValueError(f"modules pattern '{pattern}' matches no nn.Linear (linears: {', '.join(linears)})")
            chosen += [h for h in hits if h not in chosen]
    if not chosen:
        raise ValueError("the model has no nn.Linear left to convert to 2:4")
    odd = [f"{n} ({model.get_submodule(n).in_features} inputs)" for n in chosen
           if model.get_submodule(n).in_features % GROUP]
    if odd:
        raise ValueError(f"2:4 needs in_features divisible by {GROUP}; not so for {odd}: leave them out with modules=")
    return chosen


def _scores(model: nn.Module, criterion: Score, names: list[str]) -> dict[str, torch.Tensor]:
    if isinstance(criterion, str):
        makers = {"magnitude": criteria.magnitude, "random": criteria.random}
        if criterion not in makers:
            raise ValueError(
                f"criterion must be one of {sorted(makers)}, a scores dict or a callable model -> scores; got {criterion!r}"
            )
        scores = makers[criterion](model)
    elif callable(criterion):
        scores = criterion(model)
    else:
        scores = criterion
    if not isinstance(scores, Mapping):
        raise TypeError(f"the criterion must give a mapping from parameter name to scores, got {type(scores).__name__}")
    missing = [n for n in names if n not in scores]
    if missing:
        raise ValueError(f"the criterion gives no scores for {missing}")
    return {n: scores[n] for n in names}


def sparsify_24(model: nn.Module, criterion: Score = "magnitude", modules: str | Iterable[str] | None = None,
                *, backend: str = "auto", kernel: str = "auto") -> nn.Module:
    """Prune the chosen linears of ``model`` to 2:4 in place and make them SemiStructuredLinear.

    ``criterion`` scores the entries (higher = keep): ``"magnitude"`` (default),
    ``"random"``, a ``{parameter name: scores}`` dict, or a callable ``model -> scores``
    (e.g. ``lambda m: criteria.fisher(m, loss_fn, batches)``); the 2 best of every 4
    inputs are kept (``masks.n_m``). ``modules``: names or glob patterns of the linears
    to convert (default: every ``nn.Linear``). Parameters are shared, names unchanged.
    """
    check_module(model)
    names = _chosen_linears(model, modules)
    weights = [f"{n}.weight" for n in names]
    keep = masks.n_m(model, _scores(model, criterion, weights), KEPT, GROUP)
    for name, weight_name in zip(names, weights):
        parent, leaf = _parent(model, name)
        layer = SemiStructuredLinear.from_linear(model.get_submodule(name), keep[weight_name],
                                                 backend=backend, kernel=kernel)
        setattr(parent, leaf, layer)
    return model


def densify(model: nn.Module) -> nn.Module:
    """Turn every SemiStructuredLinear back into an ``nn.Linear`` (same function, same parameters), in place."""
    check_module(model)
    names = [n for n, m in model.named_modules() if isinstance(m, SemiStructuredLinear)]
    if isinstance(model, SemiStructuredLinear):
        raise TypeError("model is itself a SemiStructuredLinear: call its to_linear()")
    for name in names:
        parent, leaf = _parent(model, name)
        setattr(parent, leaf, model.get_submodule(name).to_linear())
    return model


def two_four_layers(model: nn.Module) -> dict[str, SemiStructuredLinear]:
    """The SemiStructuredLinear modules of ``model`` by name."""
    return {n: m for n, m in check_module(model).named_modules() if isinstance(m, SemiStructuredLinear)}


def keep_mask(model: nn.Module) -> Mask:
    """The model's keep-mask: each 2:4 weight's mask, every other parameter all True.

    It is the mask of 2:4 sparse fine-tuning: ``MaskedAdamW(model.named_parameters(),
    mask=keep_mask(model))`` trains the kept weights and the rest, never a pruned entry.
    """
    layers = {f"{n}.weight": m.mask for n, m in two_four_layers(model).items()}
    if not layers:
        raise ValueError("the model has no SemiStructuredLinear: call sparsify_24 first")
    return {n: layers[n].clone() if n in layers else torch.ones_like(p, dtype=torch.bool)
            for n, p in model.named_parameters()}


def optimizer(model: nn.Module, kind: str = "masked", **hyper: Any) -> torch.optim.Optimizer:
    """AdamW on the kept entries: ``"masked"`` (MaskedAdamW, dense state) or ``"compact"`` (CompactAdamW)."""
    makers = {"masked": MaskedAdamW, "compact": CompactAdamW}
    if kind not in makers:
        raise ValueError(f"kind must be one of {sorted(makers)}, got {kind!r}")
    return makers[kind](model.named_parameters(), mask=keep_mask(model), **hyper)


def check_pattern(model: nn.Module) -> None:
    """Raise if a 2:4 layer's weight is nonzero where its mask prunes (the pattern was broken)."""
    for name, layer in two_four_layers(model).items():
        moved = int((layer.weight.detach()[~layer.mask] != 0).sum())
        if moved:
            raise RuntimeError(f"{name}: {moved} pruned weights are nonzero: train with optimizer(model) / keep_mask")


def finetune_24(model: nn.Module, train_fn: prune.TrainFn, criterion: Score = "magnitude",
                modules: str | Iterable[str] | None = None) -> nn.Module:
    """2:4 sparse fine-tuning: prune the chosen linears to 2:4, then train only the kept weights.

    ``train_fn(model, keep)`` trains with an optimizer built on ``keep`` (e.g.
    ``MaskedAdamW(model.named_parameters(), mask=keep)`` or ``CompactAdamW``);
    ``prune.recover`` checks afterwards that no pruned entry moved.
    """
    sparsify_24(model, criterion, modules)
    prune.recover(model, keep_mask(model), train_fn)
    check_pattern(model)
    return model


def to_inference_(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, str]:
    """Put a (fine-tuned) 2:4 model in its inference form: eval mode, no gradients, optional
    dtype (e.g. ``torch.bfloat16``), weights compressed now. Returns each 2:4 layer's route."""
    check_pattern(model)
    if dtype is not None:
        model.to(dtype)
    model.eval().requires_grad_(False)
    report = {}
    for name, layer in two_four_layers(model).items():
        route, reason = layer.route()
        if route == "torch":
            layer._cached("torch", lambda w, b=layer.backend: to_semi_structured(w, b))
        elif route == "triton":
            layer._compressed_meta()
        report[name] = route if reason is None else f"{route}: {reason}"
    return report
