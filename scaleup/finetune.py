"""One fine-tuning run of the benchmark: choose what trains, train it, measure it.

Every method fine-tunes a copy of the same pretrained model (a GPT, or a toy world's MLP: the
world is reached through the seam of ``scaleup.bench_world``) under the same conditions: the
same steps, the same data in the same order (batch ``s`` of seed ``k`` is a function of
(k, s) only), the same schedule shape (linear warm-up, cosine decay to a tenth; Loshchilov
& Hutter 2017) and AdamW without weight decay (decay toward zero would pull sparse methods
and LoRA to different places). The loop is the lab's one loop, ``sparsity.train.fit``.

What differs between methods is the method's own (``scaleup.methods``): its criterion and
budgets (``scaleup.method_base.Budget``: a density per block matrix, LoRA's ``r * (m + n)`` entries
per matrix, the 2:4 pattern), how the model is prepared and finished (LoRA's adapters, merged
before measuring), its optimizer and its training hooks. Set criteria (the entries an L1-to-init
run moved, the middle blocks) spend the same total inside their set. Embeddings and LayerNorms
stay frozen in sparse runs. Layer types come from the world (``scaleup.layers`` for a GPT).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from scaleup import tasks as tk
from scaleup.bench_config import Setup
from scaleup.layers import LAYER_TYPES, layer_type
from scaleup.memory import PeakMemory
from scaleup.method_base import INCLUDE
from scaleup.method_mask import CriterionMask
from scaleup.methods import get_method
from sparsity import config as sparse_cfg
from sparsity import registry
from sparsity.config import SparseConfig
from sparsity.eligibility import eligible
from sparsity.metrics import update_rank, update_sparsity
from sparsity.train import Every, cosine, fit
from sparsity.validate import Mask, named_params

def train(setup: Setup, model: nn.Module, optimizer: torch.optim.Optimizer, peak_lr: float, seed: int, *,
          hooks: list[Any] | tuple[Any, ...] = (), progress: bool = False, desc: str = "fine-tuning") -> list[float]:
    """Fine-tune ``model`` on the target for ``cfg.steps`` steps of seed ``seed``'s batches; the losses."""
    cfg = setup.cfg

    def loss_of_batch(model: nn.Module, batch: Any) -> torch.Tensor:
        with setup.bench.autocast():
            return setup.bench.loss(model, batch)

    def batch_at(step: int) -> Any:
        return setup.bench.train_batch(step, cfg.batch_size, seed)

    history = fit(model, optimizer, loss_of_batch, cfg.steps, batches=batch_at,
                  schedule=cosine(peak_lr, cfg.steps, cfg.warmup, floor=0.1), hooks=hooks, progress=progress, desc=desc)
    return history["loss"]


def sparse_config(setup: Setup, method: str, budget: str, lr: float = 1e-3, seed: int = 0) -> SparseConfig:
    """The ``SparseConfig`` of a mask method at a budget (its key): ``CriterionMask.sparse_config``."""
    m = get_method(method)
    if not isinstance(m, CriterionMask):
        raise ValueError(f"method {method!r} trains no mask")
    return m.sparse_config(setup, setup.cfg.budget(method, budget), lr, seed)


def budget_count(setup: Setup, budget: str) -> int:
    """Trainable entries a budget (its key) allows in the block matrices."""
    sparse = setup.cfg.budget_of(budget).sparse
    if not sparse:
        raise ValueError(f"budget {budget!r} is no mask budget (it sets no density, LoRA-equal rank or N:M pattern)")
    return sparse_cfg.budget_count(setup.pretrained, SparseConfig(include=INCLUDE, **sparse))


def _score_batches(setup: Setup, seed: int) -> list[Any]:
    return setup.bench.score_batches(setup.cfg.score_batches, setup.cfg.batch_size, seed)


def scores(setup: Setup, method: str, seed: int) -> tuple[registry.Scores | registry.Selection, float]:
    """A mask method's criterion on the pretrained model (scores, or a Selection for set criteria)
    and the seconds it took. Cached per (method, seed): the learning-rate sweep reuses them.

    Gradient criteria see ``score_batches`` batches of the target's training split; the
    ``l1_discovered`` criterion trains with this benchmark's own loop (:func:`train`).
    """
    key = (method, seed)
    if key in setup.cache:
        return setup.cache[key]
    m = get_method(method)
    if m.criterion is None:
        raise ValueError(f"method {method!r} has no criterion")

    def train_l1(model: nn.Module, optimizer: torch.optim.Optimizer, hooks: list[Any]) -> None:
        train(setup, model, optimizer, setup.cfg.l1.lr, seed, hooks=hooks)

    entry = registry.get_criterion(m.criterion)
    batches = _score_batches(setup, seed) if entry.needs_data else None
    inputs = registry.CriterionInputs(loss_fn=setup.bench.loss, batches=batches, include=INCLUDE, seed=seed,
                                      options=m.criterion_options(setup), train=train_l1,
                                      reference=setup.reference)
    start = time.perf_counter()
    out = registry.score(m.criterion, setup.pretrained, inputs)
    setup.cache[key] = (out, time.perf_counter() - start)
    return setup.cache[key]


def select(setup: Setup, method: str, budget: str, seed: int) -> tuple[Mask | None, float]:
    """The mask a method trains (None for a method without a criterion) and the seconds selection took."""
    if get_method(method).criterion is None:
        return None, 0.0
    out, seconds = scores(setup, method, seed)
    start = time.perf_counter()
    mask = sparse_cfg.select_mask(setup.pretrained, out, sparse_config(setup, method, budget, seed=seed))
    return mask, seconds + time.perf_counter() - start


def finetune(setup: Setup, method: str, budget: str, lr: float, seed: int,
             progress: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune a copy of the pretrained model with one method (``scaleup.methods``) at one budget (its
    key); return it as a plain model (adapters merged) and its costs."""
    m = get_method(method)  # an unknown method fails here, naming the known ones
    chosen = setup.cfg.budget(method, budget)
    cfg = setup.cfg
    mask, select_s = select(setup, method, budget, seed)
    model = copy.deepcopy(setup.pretrained).train()
    m.prepare(setup, model, seed)
    opt = m.optimizer(setup, model, mask, chosen, lr, seed)
    trainable = m.trainable(model, mask)
    trace: list[dict[str, Any]] = []
    hooks: list[Any] = [Every(cfg.eval_every, lambda state: trace.append(graded(setup, model, state.step + 1)))] \
        if cfg.eval_every else []
    hooks += m.hooks(setup, model, opt)
    with PeakMemory(setup.device) as peak:
        start = time.perf_counter()
        try:
            losses = train(setup, model, opt, lr, seed, hooks=hooks, progress=progress,
                           desc=f"{method} {budget} lr={lr:g} seed={seed}")
        except FloatingPointError as e:
            raise FloatingPointError(f"{method} @ {budget}, lr {lr:g}, seed {seed}: {e}") from e
        train_s = time.perf_counter() - start - sum(point.pop("eval_s") for point in trace)
    bad = next((n for n, p in model.named_parameters() if not torch.isfinite(p).all()), None)
    if bad is not None:
        raise FloatingPointError(f"{method} @ {budget}, lr {lr:g}, seed {seed}: parameter '{bad}' is not finite "
                                 "after training: the run diverged")
    m.finish(model)
    for p in model.parameters():
        p.requires_grad_(True)
    costs = dict(trainable=trainable, select_s=select_s, train_s=train_s,
                 peak_mb=peak.mb if math.isfinite(peak.mb) else None,
                 optimizer_state_bytes=opt.state_bytes(), first_train_loss=sum(losses[:10]) / len(losses[:10]),
                 final_train_loss=sum(losses[-10:]) / len(losses[-10:]))
    if cfg.eval_every:
        costs["trace"] = trace
    return model.eval(), costs


@torch.no_grad()
def evaluate(setup: Setup, model: nn.Module) -> tuple[tk.Scores, tk.Scores, dict[str, tk.Scores]]:
    """The graded scores (``tasks.Scores``) of the target's validation and test splits and of each source task."""
    return setup.bench.evaluate(model)


def headline(val: tk.Scores, test: tk.Scores, source: dict[str, tk.Scores]) -> dict[str, float]:
    """Learning (the target) and forgetting (the mean over the sources), exact and graded: the numbers
    a trace point and a finished run both report."""
    n = len(source)
    return dict(target_val=val.exact, target_val_token=val.token, target_test=test.exact,
                target_test_token=test.token, target_test_nll=test.nll,
                retention=sum(s.exact for s in source.values()) / n,
                retention_token=sum(s.token for s in source.values()) / n,
                source_nll=sum(s.nll for s in source.values()) / n)


def graded(setup: Setup, model: nn.Module, step: int) -> dict[str, Any]:
    """One point of a run's trace: :func:`headline` after ``step`` steps; ``eval_s`` is the time it
    took (kept out of ``train_s``)."""
    began = time.perf_counter()
    point = headline(*evaluate(setup, model))
    return dict(step=step, **point, eval_s=time.perf_counter() - began)


def update_profile(model: nn.Module, reference: dict[str, torch.Tensor], tol: float,
                   type_of: Callable[[str], str] = layer_type,
                   types: Sequence[str] = LAYER_TYPES) -> dict[str, dict[str, float]]:
    """Per layer type (``type_of`` a name, one of ``types``: the GPT's by default, a world's
    ``layer_type`` and ``layer_types``): update sparsity (share of entries with abs(delta) <= tol)
    and the mean relative rank of the updates of the matrices a budget spends on (``INCLUDE``:
    the GPT's block matrices; numerical rank / min(m, n))."""
    sparsity_per = update_sparsity(model, reference, tol).per_tensor
    params = named_params(model)
    matrices = set(eligible(model, INCLUDE))
    unchanged: dict[str, list[float]] = {t: [0.0, 0.0] for t in types}
    ranks: dict[str, list[float]] = {t: [] for t in types}
    for name, share in sparsity_per.items():
        t, n = type_of(name), params[name].numel()
        unchanged[t][0] += share * n
        unchanged[t][1] += n
        if name in matrices:
            delta = (params[name] - reference[name]).detach().float()
            ranks[t].append(update_rank(delta) / min(delta.shape))
    return {
        "update_sparsity": {t: u / n for t, (u, n) in unchanged.items() if n},
        "update_rank": {t: sum(r) / len(r) for t, r in ranks.items() if r},
    }


def run_cell(setup: Setup, method: str, budget: str, lr: float, seed: int, progress: bool = False) -> dict[str, Any]:
    """One fine-tuning run, measured: a row of ``results.jsonl``.

    ``target_test``: exact-match accuracy on the target's test split (learning); ``retention``:
    mean test accuracy on the source tasks (forgetting); the graded versions of both, which move
    before exact match does (``*_token``: share of answer tokens right; ``*_nll``: mean negative
    log-likelihood of the right answer, ``tasks.Scores``); update sparsity and relative update
    rank per layer type; trainable count, optimizer-state bytes, wall times, peak memory
    (None where it cannot be measured).

    ``pretrained`` names the pretrained model it fine-tuned (``scaleup.pretrain.fingerprint``).
    ``diverged`` flags a run that failed to train: a non-finite loss or weight (the row then
    holds only the cell, the flag and ``diverged_reason``, so the sweep records it and goes on,
    and a rerun does not retry it forever), or a training loss that ended above where it
    started (the row keeps its measurements). ``scaleup.results`` never chooses a diverged rate.
    """
    cell: dict[str, Any] = dict(method=method, budget=budget, lr=lr, seed=seed, pretrained=setup.fingerprint)
    try:
        model, costs = finetune(setup, method, budget, lr, seed, progress)
    except FloatingPointError as e:
        return dict(cell, diverged=True, diverged_reason=str(e))
    rose = costs["final_train_loss"] > costs["first_train_loss"]
    val, test, source = evaluate(setup, model)
    row: dict[str, Any] = dict(
        cell,
        **headline(val, test, source),
        target_val_loss=val.nll,  # the mean cross-entropy over the answer tokens, as tasks.loss computes it
        source={t: s.exact for t, s in source.items()},
        source_token={t: s.token for t, s in source.items()},
        source_nll_per_task={t: s.nll for t, s in source.items()},
        diverged=rose,
        **costs,
    )
    if rose:
        row["diverged_reason"] = (f"the training loss rose from {costs['first_train_loss']:.4g} "
                                  f"(first 10 steps) to {costs['final_train_loss']:.4g} (last 10)")
    row.update(update_profile(model, setup.reference, setup.cfg.tol, setup.bench.layer_type, setup.bench.layer_types))
    return row
