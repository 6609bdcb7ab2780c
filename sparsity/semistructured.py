"""2:4 structured sparsity in one namespace: the pattern, its compressed format, a fast linear
layer, sparse fine-tuning of whole models.

NVIDIA's sparse tensor cores (Ampere and later, compute capability >= 8.0) multiply a
matrix in which every group of 4 consecutive entries of a row holds at most 2 nonzeros,
reading only the kept half plus 2-bit positions, for up to twice the dense throughput
(Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks"). The pieces live in one
module each and are gathered here, so that ``from sparsity import semistructured as ss``
reaches all of them:

* ``sparsity.two_four``, the pattern and the reference compressed format:
  :func:`mask_24`, :func:`check_two_four`, :func:`is_two_four`, :func:`compress`,
  :func:`decompress`, :func:`meta_to_mask`;
* ``sparsity.two_four_linear``, the fast linear layer: :class:`SemiStructuredLinear` and
  its routing (PyTorch's cuSPARSELt / CUTLASS tensors, our Triton kernels in
  ``sparsity.kernels``, the dense masked reference with a one-time :class:`FastPathNotice`);
* ``sparsity.two_four_convert``, whole models: :func:`sparsify_24` (any registered
  criterion), :func:`densify`, :func:`keep_mask`, :func:`optimizer`, :func:`finetune_24`,
  :func:`check_pattern`, :func:`to_inference_`.
"""

from sparsity.two_four import GROUP, KEPT, check_keep, check_two_four, compress, decompress, is_two_four, mask_24, meta_to_mask
from sparsity.two_four_convert import (
    Score,
    check_pattern,
    densify,
    finetune_24,
    keep_mask,
    optimizer,
    sparsify_24,
    to_inference_,
    two_four_layers,
)
from sparsity.two_four_linear import (
    BACKENDS,
    FAST_DTYPES,
    KERNELS,
    MIN_CAPABILITY,
    FastPathNotice,
    SemiStructuredLinear,
    gpu_problem,
    min_shape,
    resolve_backend,
    shape_problem,
    to_semi_structured,
    triton_available,
)

__all__ = [
    "GROUP",
    "KEPT",
    "check_keep",
    "check_two_four",
    "is_two_four",
    "mask_24",
    "compress",
    "decompress",
    "meta_to_mask",
    "BACKENDS",
    "FAST_DTYPES",
    "KERNELS",
    "MIN_CAPABILITY",
    "FastPathNotice",
    "SemiStructuredLinear",
    "gpu_problem",
    "min_shape",
    "resolve_backend",
    "shape_problem",
    "to_semi_structured",
    "triton_available",
    "Score",
    "sparsify_24",
    "densify",
    "two_four_layers",
    "keep_mask",
    "optimizer",
    "check_pattern",
    "finetune_24",
    "to_inference_",
]
