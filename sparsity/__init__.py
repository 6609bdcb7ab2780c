"""The sparsity core: mask selection, the masked optimizer, penalties toward the
initialisation and update metrics. It imports nothing from toys/, scaleup/ or lessons/.

The entry point, PEFT-style: ``SparseConfig`` + ``sparsify(model, config)`` selects, freezes
and builds the optimizer; ``fit`` is the lab's one training loop; ``registry`` holds the
criteria by name; ``sweep`` stores experiment cells and reports them; ``executor`` runs a grid's
independent cells on a local process pool or on Ray (the ``ray`` extra, imported only when used).

One concept per module: ``criteria`` (scores), ``masks`` (selection), ``optim`` and
``compact`` (optimizers), ``regularize``, ``metrics``, ``ablate``, ``discover`` (learned
subnetworks), ``prune``, ``dynamic`` (drop/grow), ``delta`` (sparse update checkpoints),
2:4 sparsity in three (``two_four``: the pattern and compressed format,
``two_four_linear``: the fast linear layer, ``two_four_convert``: model conversion), ``delta_dir`` (a delta as a shippable folder),
``inspect`` (update sparsity of two checkpoints), ``hf`` (Hugging Face causal LMs; needs the
``hf`` extra, imported only when used).
"""

from sparsity import ablate, criteria, delta, discover, dynamic, masks, prune, registry, sweep
from sparsity.compact import CompactAdamW
from sparsity.config import SparseConfig
from sparsity.registry import register_criterion
from sparsity.metrics import distances, mask_overlap, update_norms, update_rank, update_sparsity
from sparsity.optim import MaskedAdamW, MaskedSGD
from sparsity.regularize import l1_to_init, nuclear_to_init, prox_l1_to_init_, prox_nuclear_to_init_, snapshot
from sparsity.train import Every, ProximalL1, ProximalNuclear, Reselect, constant, cosine, fit
from sparsity.wrap import SparseModel, sparsify

__all__ = [
    "SparseConfig",
    "SparseModel",
    "sparsify",
    "register_criterion",
    "fit",
    "cosine",
    "constant",
    "ProximalL1",
    "ProximalNuclear",
    "Reselect",
    "Every",
    "registry",
    "sweep",
    "ablate",
    "criteria",
    "delta",
    "discover",
    "dynamic",
    "masks",
    "prune",
    "CompactAdamW",
    "MaskedAdamW",
    "MaskedSGD",
    "snapshot",
    "l1_to_init",
    "nuclear_to_init",
    "prox_l1_to_init_",
    "prox_nuclear_to_init_",
    "distances",
    "update_norms",
    "update_sparsity",
    "update_rank",
    "mask_overlap",
]
