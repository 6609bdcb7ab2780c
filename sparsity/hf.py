"""Hugging Face ``transformers`` causal language models through the lab's entry point.

A ``transformers`` model is an ``nn.Module``, so ``SparseConfig`` + ``sparsify`` work on it
unchanged; what this module adds is what such a model needs around that call:

- loading a saved folder the way users do (``from_pretrained``), with clear errors for a
  missing folder, a folder without ``config.json`` and a model whose code lives in the folder
  (``auto_map``: ``trust_remote_code`` must be asked for, as ``transformers`` itself asks);
- the loss of a batch for the gradient criteria (``model(**batch).loss``);
- tiny configurations of three families (GPT-2, Llama, GPT-NeoX) for tests and CPU studies,
  built from a config so nothing is downloaded.

How the core treats such a model (``sparsity.eligibility``): embeddings and the output
embedding (``lm_head``, ``embed_out``: whatever ``get_output_embeddings()`` returns) are kind
"embedding", normalisation gains kind "norm", so the default ``include="weight"`` spends the
budget on the blocks' matrices only; ``SparseConfig(targets=...)`` narrows it by name pattern
(PEFT's ``target_modules``). GPT-2's ``Conv1D`` stores its weight ``[in, out]``: elementwise
criteria and LIFT's low-rank step (the SVD of ``W.T`` is that of ``W`` transposed) do not care,
N:M groups run along its axis 0 (``sparsity.eligibility.input_axes``).

``transformers`` is an optional dependency (``pip install -e ".[hf]"``); the core imports
without it and this module imports it only when a function needs it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsity.eligibility import input_axes, parameter_kinds
from sparsity.validate import check_module, check_positive_int, read_json_object

FAMILIES = ("gpt2", "llama", "gpt_neox")
"""The architectures :func:`tiny_config` builds (the ones the lab's tests run)."""


def require_transformers() -> Any:
    """The ``transformers`` module, or an ImportError saying how to install it."""
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - the hf extra is installed in CI
        raise ImportError("this needs Hugging Face transformers: pip install -e '.[hf]'") from err
    return transformers


def model_folder(path: str | os.PathLike[str], arg: str = "path") -> Path:
    """A saved model folder (``save_pretrained``): it exists and holds a ``config.json``."""
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"{arg}: {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{arg}: {folder} is not a folder (a model saved with save_pretrained is one)")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{arg}: {folder} has no config.json: not a saved Hugging Face model")
    return folder


def read_config(path: str | os.PathLike[str], arg: str = "path") -> dict[str, Any]:
    """The ``config.json`` of a saved model folder, as a dict."""
    return read_json_object(model_folder(path, arg) / "config.json", arg)


def parameter_aliases(path: str | os.PathLike[str], arg: str = "path") -> tuple[set[str], dict[str, str]]:
    """(buffer names, tied alias -> the name ``named_parameters()`` keeps) of the causal LM saved in
    ``path``, from its ``config.json`` alone: the model is built on the meta device (no weights, no
    memory), so a checkpoint's tensors can be counted the way ``named_parameters()`` counts them."""
    config = read_config(path, arg)
    refuse_remote_code(path, config, arg)
    transformers = require_transformers()
    hf_config = transformers.AutoConfig.from_pretrained(os.fspath(path), local_files_only=True)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    first: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return {n for n, _ in model.named_buffers(remove_duplicate=False)}, aliases


def _auto_map_at(config: object, where: str = "") -> str | None:
    """Where ``config`` (or a sub-config nested in it, e.g. ``text_config``) has an ``auto_map``."""
    if not isinstance(config, dict):
        return None
    if "auto_map" in config:
        return f"{where}.auto_map" if where else "auto_map"
    for key, value in config.items():
        found = _auto_map_at(value, f"{where}.{key}" if where else key)
        if found:
            return found
    return None


def refuse_remote_code(path: str | os.PathLike[str], config: dict[str, Any], arg: str = "path") -> None:
    """Refuse a folder whose config maps the model (or a sub-model) to code in the folder (``auto_map``,
    at the top or nested in ``text_config`` ...): loading it would run that code."""
    found = _auto_map_at(config)
    if found:
        raise ValueError(f"{arg}: {path}: this model's code lives in the folder (config.json has {found}) and would "
                         "run on load; pass trust_remote_code=True only if you trust that code")


def load_causal_lm(path: str | os.PathLike[str], *, trust_remote_code: bool = False,
                   dtype: torch.dtype | None = None) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` on a local folder, offline.

    A folder whose config maps the model to its own code (``auto_map``, at the top or in a
    nested sub-config) runs that code when loaded; it is refused unless ``trust_remote_code=True``
    says the caller read it. ``dtype`` loads the weights in another precision (None keeps the saved one).
    """
    config = read_config(path)
    if not trust_remote_code:
        refuse_remote_code(path, config)
    transformers = require_transformers()
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    return transformers.AutoModelForCausalLM.from_pretrained(os.fspath(path), **kwargs)


@torch.no_grad()
def load_checkpoint_weights(model: nn.Module, checkpoint: str | os.PathLike[str]) -> nn.Module:
    """Copy every parameter of a saved checkpoint folder into ``model`` in place; returns it.

    For resuming a sparse run: build the mask on the *base* model (``sparsify``), then bring in the
    checkpoint's weights before ``Trainer.train(resume_from_checkpoint=...)``. Trainer's own reload
    reads the raw safetensors keys and, in transformers 5, misses the ones ``from_pretrained``
    renames (GPT-NeoX saves its head as ``embed_out``, the model calls it ``lm_head``), so a trained
    head would silently restart from the base; loading through ``from_pretrained`` here does not.
    """
    params = dict(check_module(model).named_parameters())
    saved = dict(load_causal_lm(checkpoint, dtype=next(iter(params.values())).dtype).named_parameters())
    if set(saved) != set(params):
        odd = sorted(set(saved) ^ set(params))
        raise ValueError(f"checkpoint: {checkpoint} has other parameters than the model ({', '.join(odd[:5])})")
    for name, p in params.items():
        if saved[name].shape != p.shape:
            raise ValueError(f"checkpoint: '{name}' has shape {tuple(saved[name].shape)}, the model's {tuple(p.shape)}")
    for name, p in params.items():
        p.copy_(saved[name])
    return model


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The causal LM loss of a batch (``input_ids``, optional ``attention_mask`` and ``labels``;
    labels default to the inputs): the ``loss_fn`` the gradient criteria of ``sparsify`` take."""
    if not isinstance(batch, dict) or "input_ids" not in batch:
        raise ValueError("batch must be a dict with 'input_ids' (and optionally 'attention_mask', 'labels')")
    kwargs = dict(batch)
    kwargs.setdefault("labels", batch["input_ids"])
    return check_module(model)(**kwargs).loss


def tiny_config(family: str, *, vocab_size: int = 64, d_model: int = 32, n_layers: int = 2, n_heads: int = 4,
                max_positions: int = 64) -> Any:
    """A small ``transformers`` config of ``family`` (``FAMILIES``), e.g. for ``AutoModelForCausalLM.from_config``.

    Llama gets grouped-query attention (half as many key/value heads) and an untied ``lm_head``;
    GPT-NeoX a fused ``query_key_value`` matrix and an untied ``embed_out``; GPT-2 ties its head to
    the token embedding and stores its matrices as ``Conv1D`` ``[in, out]``.
    """
    for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("n_layers", n_layers),
                        ("n_heads", n_heads), ("max_positions", max_positions)):
        check_positive_int(value, name)
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
    t = require_transformers()
    if family == "gpt2":
        return t.GPT2Config(vocab_size=vocab_size, n_positions=max_positions, n_embd=d_model, n_layer=n_layers,
                            n_head=n_heads, bos_token_id=None, eos_token_id=None)  # GPT-2's 50256 lies outside
    if family == "llama":
        return t.LlamaConfig(vocab_size=vocab_size, hidden_size=d_model, intermediate_size=2 * d_model,
                             num_hidden_layers=n_layers, num_attention_heads=n_heads,
                             num_key_value_heads=max(1, n_heads // 2), max_position_embeddings=max_positions,
                             tie_word_embeddings=False)
    if family == "gpt_neox":
        return t.GPTNeoXConfig(vocab_size=vocab_size, hidden_size=d_model, intermediate_size=4 * d_model,
                               num_hidden_layers=n_layers, num_attention_heads=n_heads,
                               max_position_embeddings=max_positions, tie_word_embeddings=False)
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def tiny_causal_lm(family: str, seed: int = 0, **sizes: int) -> nn.Module:
    """A randomly initialised (seeded) tiny causal LM of ``family``; ``sizes`` go to :func:`tiny_config`."""
    transformers = require_transformers()
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(tiny_config(family, **sizes))


def describe(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per parameter: its kind for the budget (``sparsity.eligibility``), shape, and for matrices
    the axis that runs along the layer's input (0 for a ``Conv1D`` weight)."""
    axes = input_axes(model)
    params = dict(check_module(model).named_parameters())
    return {n: {"kind": kind, "shape": list(params[n].shape), "input_axis": axes.get(n)}
            for n, kind in parameter_kinds(model).items()}
