"""Pretraining on the source mixture, with resumable safetensors checkpoints in a cache.

A pretrained model is fixed by its :class:`PretrainConfig` (preset, task world, seed,
steps, batch size, learning rate) and by the training code, so :func:`pretrained` looks
for the checkpoint named by a hash of the whole config and of ``CODE_VERSION`` first and
trains only what is missing: lessons and benchmarks never retrain a model that exists.
The stored config is compared with the asked one on every load; a truncated, unreadable
or non-finite cache file is reported with its path and rebuilt, and a run whose weights
turn non-finite is never cached. While training it saves a partial checkpoint (weights,
AdamW moments, step) every ``checkpoint_every`` steps; a killed run resumes from the
last one and ends bit for bit where an uninterrupted run would (on the CPU), because
the data of step ``s`` is a function of (seed, s) only and the learning-rate schedule a
function of ``s``. The loop is the lab's one training loop, ``sparsity.train.fit`` (the
checkpoints are one of its hooks; a resumed run starts it at the saved step).

The model is the lab's GPT at a preset, or a Hugging Face architecture (``PretrainConfig.model``,
``scaleup.hf_model``); for the latter the key also hashes the architecture's config (with the
``transformers`` version), and the finished checkpoint is a ``save_pretrained`` folder that every
later call loads through ``from_pretrained``, the path users load models by. The partial checkpoints
(with the AdamW moments) are the lab's own file for both.

The cache lives in ``$SUBNET_LAB_CACHE`` or else ``.cache/subnet-lab/`` at the repository
root (git-ignored); every function takes ``cache_dir`` to put it elsewhere (tests use a
temporary folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from filelock import FileLock
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from torch import nn

from scaleup import gpt, hf_model
from scaleup import tasks as tk
from sparsity.threads import one_thread
from sparsity.train import Every, FitState, Schedule, cosine, fit
from sparsity.validate import check_finite_nonnegative, check_nonnegative_int, check_positive_int

FORMAT = "subnet-lab/gpt-checkpoint"
CODE_VERSION = "2"
"""Part of every checkpoint's key: bump it when a change to the training code changes the weights it makes."""


def default_cache_dir() -> Path:
    """``$SUBNET_LAB_CACHE`` if set, else ``.cache/subnet-lab`` at the repository root."""
    env = os.environ.get("SUBNET_LAB_CACHE")
    return Path(env) if env else Path(__file__).resolve().parents[1] / ".cache" / "subnet-lab"


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines a pretrained model (and so its checkpoint's name)."""

    preset: str = "tiny"
    world: tk.WorldConfig = field(default_factory=tk.WorldConfig)
    seed: int = 0
    model: str = hf_model.LAB_GPT
    """The lab's GPT (at ``preset``) or a Hugging Face architecture (``scaleup.hf_model``)."""
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        gpt.config(self.preset)  # validates the preset name
        hf_model.check_model(self.model, "PretrainConfig.model")
        if not isinstance(self.world, tk.WorldConfig):
            raise TypeError(f"world must be a WorldConfig, got {type(self.world).__name__}")
        for name in ("steps", "batch_size", "checkpoint_every"):
            check_positive_int(getattr(self, name), f"PretrainConfig.{name}")
        check_nonnegative_int(self.warmup, "PretrainConfig.warmup")
        check_nonnegative_int(self.seed, "PretrainConfig.seed")
        check_finite_nonnegative(self.weight_decay, "PretrainConfig.weight_decay")
        if check_finite_nonnegative(self.lr, "PretrainConfig.lr") == 0:
            raise ValueError("PretrainConfig.lr must be > 0, got 0")

    def as_json(self) -> str:
        """The whole config as canonical JSON (sorted keys): what the cache key hashes and the file stores.
        ``model`` is left out for the lab's GPT, so its checkpoints keep the keys they had before the field."""
        data = asdict(self)
        if not hf_model.is_hf(self.model):
            del data["model"]
        return json.dumps(data, sort_keys=True)

    @property
    def key(self) -> str:
        """The checkpoint's file stem: a readable prefix plus a hash of the whole config and ``CODE_VERSION``.

        Every field enters the hash in full precision, so two learning rates that differ in
        the tenth digit get two checkpoints; a Hugging Face model's architecture enters it too.
        """
        text = f"{CODE_VERSION}|{self.as_json()}"
        name = "gpt"
        if hf_model.is_hf(self.model):
            world = tk.World(self.world)
            text += "|" + hf_model.architecture(self.model, self.preset, world.vocab_size, world.block_size)
            name = hf_model.slug(self.model)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        return f"{name}-{self.preset}-{self.world.key}-seed{self.seed}-steps{self.steps}-{digest}"


def default_config(preset: str = "tiny", *, fast: bool = False, **overrides: object) -> PretrainConfig:
    """The lab's pretraining run for a preset; ``fast`` (the lab's fast mode, ``LAB_FAST=1``, passed down by
    an entry point) trains 300 steps instead of 2,000.

    The full length is meant to learn every source task on the tiny preset (pretraining always
    runs on one CPU thread); the fast length is a CI-sized stand-in.
    """
    base = dict(preset=preset, steps=300 if fast else 2000)
    base.update(overrides)
    return PretrainConfig(**base)  # type: ignore[arg-type]


def schedule(cfg: PretrainConfig) -> Schedule:
    """Pretraining's learning rate: linear warm-up for ``cfg.warmup`` steps, then cosine decay to a
    tenth of ``cfg.lr`` at ``cfg.steps`` (Loshchilov & Hutter 2017)."""
    return cosine(cfg.lr, cfg.steps, cfg.warmup, floor=0.1)


def build(cfg: PretrainConfig, world: tk.World, device: str | torch.device = "cpu") -> nn.Module:
    """The untrained model of a pretraining config, sized for the world's vocabulary and sequences."""
    if hf_model.is_hf(cfg.model):
        return hf_model.build(cfg.model, cfg.preset, world.vocab_size, world.block_size, seed=cfg.seed, device=device)
    return gpt.build(cfg.preset, world.vocab_size, world.block_size, seed=cfg.seed, device=device)


def _architecture(model: nn.Module) -> tuple[str, dict]:
    """The checkpoint metadata naming the model's architecture: ("gpt", its GPTConfig) or ("hf", its config)."""
    if isinstance(model, hf_model.CausalLM):
        return "hf", model.hf.config.to_dict()
    return "gpt", asdict(model.config)


def _optimizer(model: nn.Module, cfg: PretrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))


def check_finite(model: nn.Module, what: str, step: int) -> None:
    """FloatingPointError (``what``, the parameter, the step) unless every weight is finite."""
    bad = next((n for n, p in model.named_parameters() if not torch.isfinite(p).all()), None)
    if bad is not None:
        raise FloatingPointError(f"{what}: parameter '{bad}' is not finite (the run diverged at step {step})")


def save_checkpoint(path: Path, model: nn.Module, cfg: PretrainConfig, step: int,
                    opt: torch.optim.Optimizer | None = None) -> None:
    """Weights (``model::name``), optional AdamW moments (``exp_avg::name`` ...) and metadata, atomically.

    Refuses (``FloatingPointError``) weights that are not all finite: a diverged model is never cached.
    """
    check_finite(model, f"not saving {path}", step)
    tensors = {f"model::{n}": p.detach().cpu().contiguous() for n, p in model.named_parameters()}
    if opt is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        for p, state in opt.state.items():
            for key, value in state.items():
                tensors[f"{key}::{names[id(p)]}"] = value.detach().cpu().reshape(value.shape).contiguous()
    kind, architecture = _architecture(model)
    meta = {"format": FORMAT, "step": str(step), "config": cfg.as_json(), "code_version": CODE_VERSION,
            kind: json.dumps(architecture)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # this process's own: parallel test workers share caches
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer | None = None,
                    cfg: PretrainConfig | None = None) -> int:
    """Load weights (and moments, if ``opt``) saved by :func:`save_checkpoint`; return the step reached.

    Checks, each raising ``ValueError`` that names ``path``: the file is a readable checkpoint,
    its model config is ``model``'s, its pretraining config is ``cfg`` (when given) and every
    weight is finite.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is truncated or not a safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a subnet-lab GPT checkpoint (format {meta.get('format')!r})")
    kind, architecture = _architecture(model)
    try:
        saved = json.loads(meta[kind])
        step = int(meta["step"])
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path} has unreadable metadata ({e!r})") from None
    if saved != architecture:
        raise ValueError(f"{path} holds a model of config {saved}, not {architecture}")
    if cfg is not None and (meta.get("config") != cfg.as_json() or meta.get("code_version") != CODE_VERSION):
        raise ValueError(
            f"{path} was pretrained with config {meta.get('config')} (code version {meta.get('code_version')}), "
            f"not the asked {cfg.as_json()} (code version {CODE_VERSION})"
        )
    missing = [n for n, _ in model.named_parameters() if f"model::{n}" not in tensors]
    if missing:
        raise ValueError(f"{path} has no weights for parameter '{missing[0]}'")
    bad = next((k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise ValueError(f"{path} holds non-finite values in '{bad}'")
    device = next(model.parameters()).device
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(tensors[f"model::{n}"])
    if opt is not None:
        for n, p in model.named_parameters():
            state = {k.split("::")[0]: v.to(device) for k, v in tensors.items()
                     if k.endswith(f"::{n}") and not k.startswith("model::")}
            if state:
                if "step" in state:
                    state["step"] = state["step"].cpu()
                opt.state[p] = state
    return step


def _load_or_discard(path: Path, model: nn.Module, cfg: PretrainConfig, opt: torch.optim.Optimizer | None = None) -> int | None:
    """Load a cache file of ``cfg``; a broken one (truncated, non-finite, another config) is reported and removed."""
    if not path.exists():
        return None
    try:
        return load_checkpoint(path, model, opt, cfg)
    except ValueError as e:
        warnings.warn(f"discarding the cached checkpoint and rebuilding it: {e}", stacklevel=3)
        path.unlink()
        return None


def fingerprint(model: nn.Module) -> str:
    """A short hash of ``model``'s weights (names, shapes, dtypes and bytes): which pretrained model a result
    came from. The cache key names a config, not the weights: the same config pretrained on a CPU with
    another instruction set rounds differently, and 2,000 steps later the weights, and every fine-tune
    from them, differ (seen between the lab's machines). Results stores record this per row."""
    digest = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def checkpoint_path(cfg: PretrainConfig, cache_dir: str | Path | None = None) -> Path:
    """Where the finished checkpoint of ``cfg`` lives: a file for the lab's GPT, a ``save_pretrained``
    folder for a Hugging Face model."""
    suffix = "" if hf_model.is_hf(cfg.model) else ".safetensors"
    return Path(cache_dir or default_cache_dir()) / f"{cfg.key}{suffix}"


def _note(cfg: PretrainConfig) -> dict[str, str]:
    """What a finished Hugging Face folder records beside its weights (checked on every load)."""
    return {"config": cfg.as_json(), "code_version": CODE_VERSION}


def _load_folder_or_discard(folder: Path, cfg: PretrainConfig, device: str | torch.device) -> nn.Module | None:
    """The finished Hugging Face model of ``cfg`` through ``from_pretrained``; a broken or foreign folder
    is reported and removed (None)."""
    if not folder.exists():
        return None
    try:
        model, note = hf_model.load_folder(folder, device)
        if note != _note(cfg):
            raise ValueError(f"{folder} was pretrained with {note}, not the asked {_note(cfg)}")
        return model
    except ValueError as e:
        warnings.warn(f"discarding the cached model folder and rebuilding it: {e}", stacklevel=3)
        shutil.rmtree(folder)
        return None


def pretrained(
    cfg: PretrainConfig | None = None,
    *,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    stop_after: int | None = None,
) -> nn.Module:
    """The model pretrained on the source mixture: loaded from the cache, or trained (resuming) and cached.

    ``stop_after`` ends training after that many steps of *this call*, leaving a partial
    checkpoint (it simulates a killed run; tests use it).
    """
    cfg = default_config() if cfg is None else cfg
    if not isinstance(cfg, PretrainConfig):
        raise TypeError(f"cfg must be a PretrainConfig, got {type(cfg).__name__}")
    world = tk.World(cfg.world)
    final = checkpoint_path(cfg, cache_dir)
    if (model := _cached(cfg, world, final, device)) is not None:
        return model
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(training_lock(final)):  # one trainer per checkpoint; the others wait, then load its result
        if (model := _cached(cfg, world, final, device)) is not None:
            return model
        model = build(cfg, world, device)
        # One CPU thread: a CPU matmul's rounding depends on the thread count, and the cached
        # checkpoint must not depend on which notebook or command (on how many cores) made it.
        with one_thread() if torch.device(device).type == "cpu" else nullcontext():
            return _train(cfg, world, model, final, progress, stop_after, device)


def training_lock(final: Path) -> str:
    """The lock file a process holds while it trains the checkpoint ``final``.

    Two notebooks, a test run's workers or a benchmark and a lesson may ask for the same
    uncached model at once: without the lock both would train it (twice the work) and write
    the same partial checkpoint in turns. The lock is the operating system's (``flock``), so
    a killed trainer releases it; the next one resumes from the partial checkpoint."""
    return str(final) + ".lock"


def _cached(cfg: PretrainConfig, world: tk.World, final: Path, device: str | torch.device) -> nn.Module | None:
    """The finished model of ``cfg`` from the cache (eval mode), or None where it is not there (or was broken)."""
    if not final.exists():
        return None
    if hf_model.is_hf(cfg.model):
        loaded = _load_folder_or_discard(final, cfg, device)
        return None if loaded is None else loaded.eval()
    model = build(cfg, world, device)
    return model.eval() if _load_or_discard(final, model, cfg) is not None else None


def _train(cfg: PretrainConfig, world: tk.World, model: nn.Module, final: Path, progress: bool,
           stop_after: int | None, device: str | torch.device) -> nn.Module:
    """Train (resuming a partial checkpoint) and cache; see :func:`pretrained`."""
    partial = final.with_name(final.stem + ".partial.safetensors")
    opt = _optimizer(model, cfg)
    start = _load_or_discard(partial, model, cfg, opt) or 0
    model.train()
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)

    def loss_of_batch(model: nn.Module, batch: tk.Batch) -> torch.Tensor:
        with gpt.autocast(device):
            return tk.loss(model, batch)

    def batch_at(step: int) -> tk.Batch:
        return world.train_batch(tk.SOURCE_TASKS, step, cfg.batch_size, cfg.seed).to(device)

    def checkpoint(state: FitState) -> None:
        if state.step + 1 < cfg.steps:
            save_checkpoint(partial, model, cfg, state.step + 1, opt)

    fit(model, opt, loss_of_batch, end, batches=batch_at, schedule=schedule(cfg), start=start,
        hooks=[Every(cfg.checkpoint_every, checkpoint)], progress=progress, desc=f"pretraining {cfg.preset}")
    if end < cfg.steps:
        save_checkpoint(partial, model, cfg, end, opt)
        return model.eval()
    if hf_model.is_hf(cfg.model):  # the folder, then back through from_pretrained: the path every later call takes
        check_finite(model, f"not saving {final}", cfg.steps)
        hf_model.save_folder(model, final, _note(cfg))
        model = hf_model.load_folder(final, device)[0]
    else:
        save_checkpoint(final, model, cfg, cfg.steps)
    partial.unlink(missing_ok=True)
    return model.eval()
