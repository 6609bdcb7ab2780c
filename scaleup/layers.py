"""Layer naming facts of the GPT world's models: which layer type a parameter is, which modules are blocks.

The lab's GPT (``scaleup.gpt``) and a Hugging Face model behind ``scaleup.hf_model.CausalLM``
name their parameters differently; everything that groups parameters by layer (the benchmark's
update profile, the RL study's per-layer update sparsity, the ``middle_blocks`` method) asks
here, so no study imports the benchmark to read a name.
"""

from __future__ import annotations

from torch import nn

from scaleup import hf_model

LAYER_TYPES = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj", "embedding", "norm")
"""The layer types of a GPT-world model, in report order."""


def middle_blocks(n_layer: int) -> list[int]:
    """Indices of the middle half of the blocks, [n/4, 3n/4): 1, 2 of 4; 2, 3, 4 of 6; 1 of 2."""
    return [i for i in range(n_layer) if n_layer / 4 <= i < 3 * n_layer / 4]


def block_names(model: nn.Module) -> list[str]:
    """The module names of the model's transformer blocks in order (``blocks.0``, ... for the lab's GPT)."""
    if isinstance(model, hf_model.CausalLM):
        return model.block_names()
    return [f"blocks.{i}" for i in range(len(model.blocks))]


def layer_type(name: str) -> str:
    """The layer type of a parameter of the lab's GPT or of a Hugging Face model (``hf.`` names,
    ``scaleup.hf_model.layer_type``): "attn.qkv", "attn.proj", "mlp.fc", "mlp.proj", "embedding" or "norm"."""
    if name.startswith(f"{hf_model.PREFIX}."):
        return hf_model.layer_type(name)
    if name.endswith("_emb.weight"):
        return "embedding"
    parts = name.split(".")
    if name.startswith("blocks.") and parts[2] in ("attn", "mlp"):
        return f"{parts[2]}.{parts[3]}"
    if parts[0] == "ln_f" or (name.startswith("blocks.") and parts[2].startswith("ln")):
        return "norm"
    raise ValueError(f"'{name}' is not a parameter name of scaleup.gpt.GPT")
