"""Skip optimizer steps whose loss or gradients are NaN/inf; stop the run after too many in a row.

A step is bad when any rank saw a non-finite loss in any of its accumulated micro-batches, or a
non-finite gradient. The decision is taken on all ranks together (one tiny all-reduce per step), so
they stay in lockstep. A bad step's gradients are dropped before clipping (``set_to_none``), and AdamW
leaves a parameter without a gradient untouched: weights, moments and step counts stay as they were.
The learning-rate schedule still advances. Skipped steps are counted as ``train/nonfinite_steps``.
After ``max_in_row`` bad steps in a row the run raises :class:`NonFiniteLossError`. Since no bad update
is ever applied, every checkpoint on disk holds good weights. The training CLI then stops without
writing another ``last.ckpt``.

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

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        self.loss_finite = self.loss_finite and bool(torch.isfinite(loss.detach()).all())

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        good_here = self.loss_finite and gradients_finite(pl_module)
        self.loss_finite = True
        if trainer.strategy.reduce_boolean_decision(good_here, all=True):
            self.in_row = 0
            return
        self.in_row += 1
        self.skipped += 1
        step = trainer.global_step + 1  # counted from 1, as the checkpoints' global_step after it
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

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped = state_dict.get("skipped", 0)


def gradients_finite(module: torch.nn.Module) -> bool:
    """All gradients present are finite (one fused check, a single device sync)."""
    grads = [param.grad for param in module.parameters() if param.grad is not None]
    if not grads:
        return True
    return bool(torch.stack([torch.isfinite(grad).all() for grad in grads]).all())
