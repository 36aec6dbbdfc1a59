"""Skip optimizer steps whose loss or gradients are NaN/inf; stop the run after too many in a row.

A step is bad when any rank saw a non-finite loss in any of its accumulated micro-batches, or a
non-finite gradient. The decision is taken on all ranks together (one tiny all-reduce per step), so
they stay in lockstep. A bad step's gradients are dropped before clipping (``set_to_none``), and AdamW
leaves a parameter without a gradient untouched: weights, moments and step counts stay as they were.
The learning-rate schedule still advances. Skipped steps are counted as ``train/nonfinite_steps``.
After ``max_in_row`` bad steps in a row the run raises :class:`NonFiniteLossError`. No checkpoint is written
while bad steps follow each other, so the checkpoint from before them stays on disk. Weights that turn non-finite
although the loss and gradients were finite (a NaN in the optimizer state) stop the run at once, before any
checkpoint of that step is written. The training CLI then stops without writing another ``last.ckpt`` and names
the last good checkpoint: the newest whose weights then gave a step with a finite loss and gradients, i.e.
written before the step ``diverged_at - 1`` (:func:`swinssl.training.runs.last_good_checkpoint`).

DeepSpeed runs its own optimizer step from its own gradient buffers. Under it, bad steps are counted
and the run stops after ``max_in_row`` of them, but a single bad step is not skipped.
"""

from __future__ import annotations

import logging

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DeepSpeedStrategy

log = logging.getLogger("swinssl.tasks")


class NonFiniteLossError(RuntimeError):
    """Too many optimizer steps in a row had a NaN/inf loss or gradient."""


class NonFiniteGuard(Callback):
    def __init__(self, max_in_row: int = 10) -> None:
        if max_in_row < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1, got {max_in_row}")
        self.max_in_row = max_in_row
        self.in_row = 0
        self.skipped = 0
        self.loss_finite = True  # over the micro-batches of the current optimizer step
        self.diverged_at: int | None = None  # the first step of the current run of bad steps

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        self.loss_finite = self.loss_finite and bool(torch.isfinite(loss.detach()).all())

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        good_here = self.loss_finite and gradients_finite(pl_module)
        self.loss_finite = True
        if trainer.strategy.reduce_boolean_decision(good_here, all=True):
            self.in_row = 0
            self.diverged_at = None
            return
        self.in_row += 1
        self.skipped += 1
        step = trainer.global_step + 1  # counted from 1, as the checkpoints' global_step after it
        if self.in_row == 1:
            self.diverged_at = step
        for callback in trainer.checkpoint_callbacks:  # keep the checkpoint from before the bad steps
            callback._last_global_step_saved = step
        if not isinstance(trainer.strategy, DeepSpeedStrategy):
            optimizer.zero_grad(set_to_none=True)
        pl_module.log("train/nonfinite_steps", float(self.skipped), rank_zero_only=True)
        log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row, %d in all)",
                    step, self.in_row, self.skipped)
        if self.in_row >= self.max_in_row:
            raise NonFiniteLossError(
                f"{self.in_row} optimizer steps in a row had a NaN/inf loss or gradient (step {step}); "
                "the run stopped. Lower optim.base_lr, keep trainer.gradient_clip_val, or use bf16-mixed/32-true "
                "precision instead of 16-mixed"
            )

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        """Weights made non-finite by a step whose loss and gradients were finite (runs before any checkpoint)."""
        if trainer.strategy.reduce_boolean_decision(parameters_finite(pl_module), all=True):
            return
        self.diverged_at = trainer.global_step
        raise NonFiniteLossError(
            f"the weights became NaN/inf at step {trainer.global_step} although its loss and gradients were finite "
            "(a NaN/inf in the optimizer state?); nothing of that step was saved"
        )

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped = state_dict.get("skipped", 0)


def gradients_finite(module: torch.nn.Module) -> bool:
    """All gradients present are finite (one fused check, a single device sync)."""
    return all_finite([param.grad for param in module.parameters() if param.grad is not None])


def parameters_finite(module: torch.nn.Module) -> bool:
    """All floating-point parameters are finite (one fused check, a single device sync)."""
    return all_finite([param for param in module.parameters() if param.is_floating_point()])


def all_finite(tensors: list[torch.Tensor]) -> bool:
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(tensor.detach()).all() for tensor in tensors]).all())
