"""The sparsity core: mask selection, the masked optimizer, penalties toward the
initialisation and update metrics. It imports nothing from toys/, scaleup/ or lessons/.

One concept per module: ``criteria`` (scores), ``masks`` (selection), ``optim`` and
``compact`` (optimizers), ``regularize``, ``metrics``, ``ablate``, ``discover`` (learned
subnetworks), ``prune``, ``dynamic`` (drop/grow), ``delta`` (sparse update checkpoints),
``semistructured`` (2:4 sparsity: pattern, compressed format, fast linear layer).
"""

from sparsity import ablate, criteria, delta, discover, dynamic, masks, prune, semistructured
from sparsity.compact import CompactAdamW
from sparsity.metrics import distances, mask_overlap, update_norms, update_rank, update_sparsity
from sparsity.optim import MaskedAdamW, MaskedSGD
from sparsity.regularize import l1_to_init, nuclear_to_init, prox_l1_to_init_, prox_nuclear_to_init_, snapshot

__all__ = [
    "ablate",
    "criteria",
    "delta",
    "discover",
    "dynamic",
    "masks",
    "prune",
    "semistructured",
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
