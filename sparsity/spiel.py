"""SpIEL's drop-and-grow (Ansell et al. 2024, "Scaling Sparse Fine-Tuning to Large Language Models").

SpIEL stores a sparse fine-tuning as values plus indices, ``theta = theta_0 + scatter(delta, indices)``
(the lab's compact storage, ``sparsity.compact.CompactAdamW``), and every few steps changes which
indices it trains at a constant count:

* **drop** the selected entries whose delta is smallest, ``|theta - theta_0|``; a dropped delta is
  discarded, so the entry returns to its pretrained value;
* **grow** as many unselected entries, those with the largest accumulated gradient (SpIEL-AG: the
  gradient summed over the last few steps before the update); a grown entry starts from a delta of 0,
  i.e. at its pretrained value;
* the share swapped decays linearly to zero over training, ``fraction * (1 - t / T)``, as in the
  authors' code (``initial_reselection_rate * (1 - step / total_steps)``).

The choice of what to drop and grow is RigL's rule (``sparsity.dynamic.rigl_swap``, Evci et al. 2020);
what differs from the lab's ``sparsity.train.RigL`` hook is the accumulated gradient, the linear decay
and the reset of dropped entries to the base. Simplified here: a just-dropped entry cannot be regrown in
the same swap (SpIEL lets it stay); grown entries start with zero Adam moments (SpIEL-AG initialises them
from the accumulated gradients); the accumulated gradient is the plain sum over every unselected entry
(the authors keep a candidate set, the top entries of the first accumulated gradient, and may score them
by a lower confidence bound); SpIEL-MA (momenta estimated by SM3) is not done.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sparsity.dynamic import ROUNDINGS, rigl_swap
from sparsity.validate import Mask, check_positive_int


class SpIELDropGrow:
    """A ``sparsity.train.fit`` hook: every ``every`` steps (steps ``every``, ``2 * every``, ... before
    ``steps``), after the backward and before the optimizer moves, drop the selected entries nearest to
    ``reference`` and grow the unselected ones with the largest gradient summed over the last
    ``accumulate`` steps (that step included); dropped entries are set back to ``reference``.

    ``fraction``: the share of each tensor's selected entries swapped at step 0, decaying linearly to 0
    at ``steps``. The optimizer must re-select at a constant count (``CompactAdamW.reselect``; it refuses
    while ``values_grad`` computes only the selected entries' gradient). A partly selected tensor the loss
    does not reach (no gradient: a multi-task model's other heads) keeps its selection: nothing to grow toward.
    """

    def __init__(self, every: int, steps: int, reference: Mapping[str, torch.Tensor], fraction: float = 0.3,
                 accumulate: int = 5, rounding: str = "floor") -> None:
        self.every = check_positive_int(every, "every")
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
        self.rounding = rounding
        self.steps = check_positive_int(steps, "steps")
        self.accumulate = check_positive_int(accumulate, "accumulate")
        if self.accumulate > self.every:
            raise ValueError(f"accumulate must be <= every ({self.every}): the gradient is summed over the steps "
                             f"before each swap, got {accumulate}")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
        if not isinstance(reference, Mapping):
            raise TypeError(f"reference must be a mapping from parameter name to tensor, "
                            f"got {type(reference).__name__}")
        self.reference, self.fraction = reference, float(fraction)
        self.accumulated: dict[str, torch.Tensor] = {}
        """Name -> the gradient summed since the accumulation began (partly selected tensors only)."""
        self.swaps: list[dict[str, int]] = []
        """Per swap: the step and how many entries changed (a record for tests and reports)."""

    def _accumulating(self, step: int) -> bool:
        """Whether ``step``'s gradient counts toward the next swap (the ``accumulate`` steps ending at it)."""
        return step > 0 and (step % self.every == 0 or step % self.every > self.every - self.accumulate)

    def share(self, step: int) -> float:
        """The share of each tensor's selected entries swapped at ``step``: linear decay to 0 at ``steps``."""
        return self.fraction * max(0.0, 1.0 - step / self.steps)

    @torch.no_grad()
    def before_step(self, state: Any) -> None:
        step = state.step
        if not self._accumulating(step) or step >= self.steps:
            return
        optimizer = state.optimizer
        if not hasattr(optimizer, "reselect"):
            raise TypeError(f"SpIELDropGrow needs an optimizer with reselect(mask) (CompactAdamW), "
                            f"got {type(optimizer).__name__}")
        mask = optimizer.mask
        params = dict(state.model.named_parameters())
        partial = [n for n, m in mask.items() if 0 < int(m.sum()) < m.numel() and params[n].grad is not None]
        unknown = [n for n in partial if n not in self.reference]
        if unknown:
            raise ValueError(f"reference has no entry for '{unknown[0]}': SpIEL drops by the change from it")
        for n in partial:
            grad = params[n].grad.detach()
            self.accumulated[n] = self.accumulated[n] + grad if n in self.accumulated else grad.clone()
        if step % self.every:
            return
        deltas = {n: params[n].detach() - self.reference[n] for n in partial}
        new = dict(mask)
        # SpIEL's trainer counts the swap as int(k * share), a floor (AlanAnsell/peft, SftTrainer): the default.
        new.update(rigl_swap({n: mask[n] for n in partial}, deltas, self.accumulated, self.share(step),
                             self.rounding))
        self.accumulated = {}
        self.swaps.append({"step": step, "changed": reset_dropped_(params, mask, new, self.reference)})
        optimizer.reselect(new)


@torch.no_grad()
def reset_dropped_(params: Mapping[str, torch.Tensor], old: Mask, new: Mask,
                   reference: Mapping[str, torch.Tensor]) -> int:
    """Set the entries selected in ``old`` but not in ``new`` back to ``reference`` (SpIEL discards a dropped
    delta), in place; returns how many were reset."""
    count = 0
    for name, before in old.items():
        dropped = before & ~new[name]
        if dropped.any():
            params[name][dropped] = reference[name].to(params[name].dtype)[dropped]
            count += int(dropped.sum())
    return count
