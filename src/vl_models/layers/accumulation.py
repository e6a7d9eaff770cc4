"""State that changes once per optimizer update, also under gradient accumulation.

A training forward of some modules changes state that belongs to the optimizer update, not to the micro-batch:
the momentum teacher's EMA step (ALBEF, VLMAE, VQ-MIM) and the codebook's EMA statistics (VQ-MIM, VL-BEiT's
visual tokenizer). Done per forward, k micro-batches per update would make the teacher's momentum m**k and the
codebook's decay d**k. Inside `accumulating(model, sync=...)` these modules change once per update instead:

    for batch in train_dl:
        with accelerator.accumulate(model), accumulating(model, sync=accelerator.sync_gradients):
            accelerator.backward(model(**batch).loss)
        if accelerator.sync_gradients:
            optimizer.step()
            optimizer.zero_grad()

Outside the context every training forward is an update of its own, as in a plain `model(**batch)` loop.
"""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn


class PerUpdateState:
    """Mixin for an `nn.Module` whose training forward changes state once per optimizer update.

    The forward asks `opens_update()`: the teacher steps its EMA on an update's first micro-batch (the student
    has just had its optimizer step, as without accumulation). `deferring()` says whether the update goes on
    after this forward: a codebook then only gathers statistics, and applies them in `close_update()`.
    """

    _accumulating = False  # inside `accumulating`: an update may span several forwards
    _update_open = False  # a forward of the current update has run

    def opens_update(self) -> bool:
        """Call once per training forward: whether it is the first forward of its optimizer update."""
        if not self._accumulating:
            return True
        first = not self._update_open
        self._update_open = True
        return first

    def deferring(self) -> bool:
        """Whether this forward's state changes wait for `close_update()` (inside `accumulating`)."""
        return self._accumulating

    def close_update(self) -> None:
        """The update's last micro-batch has run (its backward included): apply what was deferred."""
        self._update_open = False


@contextmanager
def accumulating(model: nn.Module, *, sync: bool):
    """Run one micro-batch of an optimizer update; `sync` is True for the update's last one
    (`accelerator.sync_gradients` inside `accelerator.accumulate(model)`). When a synchronising block ends, the
    deferred state changes (codebook EMA statistics of all the update's micro-batches) are applied, so call the
    optimizer step after it. `model` may be wrapped (DDP, torch.compile): its modules are searched."""
    modules = [m for m in model.modules() if isinstance(m, PerUpdateState)]
    for module in modules:
        module._accumulating = True
    try:
        yield
        if sync:  # not after an exception: a failed micro-batch leaves its statistics pending
            for module in modules:
                module.close_update()
    finally:
        for module in modules:
            module._accumulating = False
