"""Hugging Face architectures in the controlled benchmark: build, adapt, save, load, LoRA via PEFT.

The benchmark (``scaleup.compare``) fine-tunes the lab's GPT by default; ``BenchConfig.model``
names another architecture instead, so the same harness measures the same methods on the
model classes people actually fine-tune (GPT-2, Radford et al. 2019; Llama, Touvron et al. 2023;
GPT-NeoX, Black et al. 2022). A model is named by:

- ``"gpt"``: the lab's GPT (``scaleup.gpt``) at ``BenchConfig.preset``;
- ``"hf-gpt2"``, ``"hf-llama"``, ``"hf-gpt_neox"``: that family's config from
  ``sparsity.hf.tiny_config``, shaped like the lab's preset (``n_embd``, ``n_layer``, ``n_head``);
- a local folder holding a ``config.json`` (a ``save_pretrained`` folder) or a ``config.json``
  file: its architecture only. Its weights, if any, are not used: the synthetic tasks have their
  own vocabulary, so the model is built from the config and pretrained on the source mixture.

Either way the vocabulary and the positions come from the task world (``vocab_size``,
``max_position_embeddings`` = the world's ``block_size``). :class:`CausalLM` is the thin adapter
the lab's task code needs: ``model(idx)`` returns the logits ``[n, T, vocab]``, as the lab's GPT
does. Its parameters are the Hugging Face model's under the prefix ``hf.``.

The pretrained model is stored as a real ``save_pretrained`` folder and every benchmark loads it
back through ``from_pretrained`` (``sparsity.hf.load_causal_lm``), so the path users load models
by is the one the benchmark runs. LoRA on such a model is PEFT's (``peft.get_peft_model``, then
``merge_and_unload`` before measuring), with GPT-2's ``Conv1D`` ``[in, out]`` layout declared
(``fan_in_fan_out=True``); the lab's own ``scaleup.lora`` stays for the lab's GPT.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scaleup import gpt
from sparsity.eligibility import is_conv1d, parameter_kinds
from sparsity.hf import FAMILIES, load_causal_lm, model_folder, require_transformers, tiny_config

LAB_GPT = "gpt"
"""The model name of the lab's own GPT (``scaleup.gpt``), the benchmark's default."""
BUILTIN = {f"hf-{family}": family for family in FAMILIES}
"""Built-in Hugging Face architectures by model name: a ``sparsity.hf`` family at a lab preset's shape."""
PREFIX = "hf"
"""The attribute of :class:`CausalLM` holding the Hugging Face model: every parameter name starts ``hf.``."""
NOTE = "subnet_lab.json"
"""The file a saved folder keeps the lab's own record in (what the model was pretrained with)."""

LAYER_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"\.(wte|wpe|embed_tokens|embed_in)\.weight$|(^|\.)(lm_head|embed_out)\.weight$", "embedding"),
    (r"\.(ln_\w+|\w*norm\w*)\.(weight|bias)$", "norm"),
    (r"\.attn\.c_attn\.|\.self_attn\.[qkv]_proj\.|\.attention\.query_key_value\.", "attn.qkv"),
    (r"\.attn\.c_proj\.|\.self_attn\.o_proj\.|\.attention\.dense\.", "attn.proj"),
    (r"\.mlp\.c_fc\.|\.mlp\.(gate|up)_proj\.|\.mlp\.dense_h_to_4h\.", "mlp.fc"),
    (r"\.mlp\.c_proj\.|\.mlp\.down_proj\.|\.mlp\.dense_4h_to_h\.", "mlp.proj"),
)
"""Parameter-name patterns of GPT-2, Llama and GPT-NeoX and the lab's layer type each is
(``scaleup.finetune.LAYER_TYPES``): fused or separate query/key/value, the attention output, the
MLP's input side (Llama's gate and up) and output side. The first match decides."""


def is_hf(name: str) -> bool:
    """Whether a model name means a Hugging Face architecture (anything but the lab's GPT)."""
    return name != LAB_GPT


def check_model(name: object, arg: str = "model") -> str:
    """A valid model name (see the module docstring), or a ValueError naming ``arg`` and what is allowed.

    A folder or file is checked here (it exists, holds a readable ``config.json``, and that config
    runs no code of its own: ``auto_map`` is refused, the benchmark never runs a folder's code).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"{arg} must be a non-empty string, got {name!r}")
    if name == LAB_GPT or name in BUILTIN:
        return name
    path = Path(name)
    if not path.exists():
        raise ValueError(f"{arg}: {name!r} is neither {LAB_GPT!r}, a built-in architecture ({', '.join(BUILTIN)}) "
                         "nor an existing folder or config.json")
    _read_config_json(path, arg)
    return name


def _read_config_json(path: Path, arg: str) -> dict[str, Any]:
    """The config dict of a folder (``config.json`` in it) or of a ``.json`` file, checked."""
    try:
        file = model_folder(path, arg) / "config.json" if path.is_dir() else path
    except (FileNotFoundError, NotADirectoryError) as err:
        raise ValueError(str(err)) from None
    if file.suffix != ".json":
        raise ValueError(f"{arg}: {path} is not a folder or a .json config file")
    try:
        config = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{arg}: {file} is not readable JSON ({err})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(f"{arg}: {file} has no 'model_type': not a Hugging Face model config")
    if "auto_map" in config:
        raise ValueError(f"{arg}: {file} maps the model to code of its own (auto_map); the benchmark runs only "
                         "architectures that ship with transformers")
    return config


def hf_config(name: str, preset: str, vocab_size: int, block_size: int) -> Any:
    """The ``transformers`` config of model ``name`` for a task world's vocabulary and sequence length.

    A built-in family takes the shape of the lab's ``preset`` and its dropout (none); a folder or file
    its own, with the vocabulary and the positions replaced (and special token ids outside the new
    vocabulary dropped).
    """
    check_model(name)
    if not is_hf(name):
        raise ValueError(f"model {name!r} is the lab's GPT, not a Hugging Face architecture")
    if name in BUILTIN:
        shape = gpt.config(preset)
        config = tiny_config(BUILTIN[name], vocab_size=vocab_size, d_model=shape.n_embd, n_layers=shape.n_layer,
                             n_heads=shape.n_head, max_positions=block_size)
        if BUILTIN[name] == "gpt2":  # GPT-2 defaults to dropout 0.1; the lab's GPT (and Llama, NeoX here) to none
            config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = shape.dropout
        return config
    data = _read_config_json(Path(name), "model")
    data = {k: v for k, v in data.items() if k not in ("architectures", "transformers_version", "_name_or_path")}
    data["vocab_size"] = vocab_size
    for special in ("bos_token_id", "eos_token_id", "pad_token_id"):  # the task world has its own tokens
        if isinstance(data.get(special), int) and data[special] >= vocab_size:
            data[special] = None
    config = require_transformers().AutoConfig.for_model(data.pop("model_type"), **data)
    config.max_position_embeddings = block_size  # GPT-2's n_positions, through its attribute map
    return config


def architecture(name: str, preset: str, vocab_size: int, block_size: int) -> str:
    """The config as canonical JSON (with the ``transformers`` version): what identifies the architecture
    in a checkpoint's key, so a changed folder or library version never reuses a stale checkpoint."""
    return json.dumps(hf_config(name, preset, vocab_size, block_size).to_dict(), sort_keys=True)


def slug(name: str) -> str:
    """A file-name-safe short form of a model name: ``hf-gpt2``; for a path ``hf-`` and the folder's name
    (the file's stem for a .json file other than a folder's config.json)."""
    if name in BUILTIN:
        return name
    path = Path(name).resolve()
    stem = path.parent.name if path.name == "config.json" else path.stem if path.is_file() else path.name
    return re.sub(r"[^A-Za-z0-9_-]+", "_", f"hf-{stem}")


class CausalLM(nn.Module):
    """A Hugging Face causal LM called like the lab's GPT: ``model(idx)`` -> logits ``[n, T, vocab]``."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        if not hasattr(hf, "config") or not callable(getattr(hf, "get_output_embeddings", None)):
            raise TypeError(f"hf must be a transformers causal LM, got {type(hf).__name__}")
        self.hf = hf

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=idx, use_cache=False).logits

    def get_output_embeddings(self) -> nn.Module | None:
        """The head, so ``sparsity.eligibility`` counts it as an embedding (budgets never spend on it)."""
        return self.hf.get_output_embeddings()

    def block_names(self) -> list[str]:
        """The module names of the transformer blocks in order (``hf.transformer.h.0``, ``hf.model.layers.0``, ...)."""
        n = self.hf.config.num_hidden_layers
        for name, module in self.named_modules():
            if isinstance(module, nn.ModuleList) and len(module) == n:
                return [f"{name}.{i}" for i in range(n)]
        raise ValueError(f"no list of {n} blocks found in {type(self.hf).__name__}")


def build(name: str, preset: str, vocab_size: int, block_size: int, seed: int = 0,
          device: str | torch.device = "cpu") -> CausalLM:
    """A freshly initialised (seeded) Hugging Face model of ``name``, sized for the task world."""
    config = hf_config(name, preset, vocab_size, block_size)
    transformers = require_transformers()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return CausalLM(hf).to(device)


def layer_type(name: str) -> str:
    """The lab's layer type of a Hugging Face parameter name (:data:`LAYER_PATTERNS`); ValueError if unknown."""
    for pattern, kind in LAYER_PATTERNS:
        if re.search(pattern, name):
            return kind
    raise ValueError(f"'{name}' is not a parameter name of a known Hugging Face architecture (GPT-2, Llama, "
                     "GPT-NeoX): no layer type for it")


def save_folder(model: CausalLM, folder: Path, note: dict[str, str]) -> None:
    """``save_pretrained`` into ``folder`` (atomically: written beside it, then renamed), with ``note``
    (the lab's record: how it was pretrained) as :data:`NOTE`."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.hf.save_pretrained(tmp)
    (tmp / NOTE).write_text(json.dumps(note, sort_keys=True))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def load_folder(folder: Path, device: str | torch.device = "cpu") -> tuple[CausalLM, dict[str, str]]:
    """The model of a folder written by :func:`save_folder`, through ``from_pretrained``, and its note.

    ValueError naming the folder when it is incomplete, unreadable or holds non-finite weights.
    """
    try:
        note = json.loads((folder / NOTE).read_text())
        hf = load_causal_lm(folder)
    except (OSError, ValueError) as err:
        raise ValueError(f"{folder} is not a complete saved model ({err})") from None
    bad = next((n for n, p in hf.named_parameters() if not torch.isfinite(p).all()), None)
    if bad is not None:
        raise ValueError(f"{folder} holds non-finite values in '{bad}'")
    return CausalLM(hf).to(device), note


def lora_targets(model: CausalLM) -> list[str]:
    """The module names (inside ``model.hf``) LoRA adapts: those owning a block matrix (kind "weight")."""
    start = len(PREFIX) + 1
    return [n[start:-len(".weight")] for n, kind in parameter_kinds(model).items()
            if kind == "weight" and n.endswith(".weight")]


def require_peft() -> Any:
    """The ``peft`` module, or an ImportError saying how to install it."""
    try:
        import peft
    except ImportError as err:  # pragma: no cover - the hf extra is installed in CI
        raise ImportError("LoRA on a Hugging Face model needs PEFT: pip install -e '.[hf]'") from err
    return peft


def add_peft_lora(model: CausalLM, r: int, alpha: float, seed: int = 0) -> None:
    """Wrap ``model.hf`` in PEFT's LoRA (rank ``r``, scale ``alpha / r``, no dropout) on every block
    matrix, in place; the adapters' initialisation is drawn under ``seed``. Everything else is frozen."""
    if not isinstance(model, CausalLM):
        raise TypeError(f"model must be a CausalLM, got {type(model).__name__}")
    peft = require_peft()
    targets = lora_targets(model)
    conv = {is_conv1d(model.hf.get_submodule(t)) for t in targets}
    if len(conv) != 1:
        raise ValueError("LoRA targets mix Conv1D and nn.Linear layers; PEFT's fan_in_fan_out is one flag per config")
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=targets,
                             fan_in_fan_out=conv.pop())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.hf = peft.get_peft_model(model.hf, config)


def merge_peft_lora(model: CausalLM) -> None:
    """Fold PEFT's adapters into the weights and drop them (``merge_and_unload``), in place: the model
    has its original parameter names again, comparable entry by entry with the pretrained one."""
    peft = require_peft()
    if not isinstance(model, CausalLM) or not isinstance(model.hf, peft.PeftModel):
        raise ValueError("model has no PEFT adapters to merge")
    model.hf = model.hf.merge_and_unload()
