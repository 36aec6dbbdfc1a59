"""When validation runs: the recipe's interval and always after the last step; the newest scores in checkpoints."""

from __future__ import annotations

import logging
import math
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from swinssl.tasks.optim import plan_steps

log = logging.getLogger(__name__)


class ValidationSchedule(Callback):
    """Validation every ``trainer.check_val_every_n_epoch`` epochs (Lightning's own) and always after the last
    step, also when ``trainer.max_steps`` ends the run inside an epoch (Lightning validates only at epoch ends).
    The start of the run logs when validation runs; checkpoints keep the newest validation metrics under
    ``"validation"`` (with the step they were measured at)."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.every: int | None = None  # the recipe's interval while the last step's validation is forced
        self.forced = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if getattr(trainer.datamodule, "val_data", None) is None:
            log.info("validation: none (no data.val_shards)")
            return
        every = trainer.check_val_every_n_epoch
        if math.isinf(trainer.num_training_batches):
            log.info("validation: every %s epoch(s) and after the last step", every)
            return
        plan = plan_steps(trainer.num_training_batches, trainer.accumulate_grad_batches, trainer.max_epochs,
                          trainer.max_steps)
        interval = f"every {every} epoch(s) ({every * plan.steps_per_epoch} steps) and " if every else ""
        log.info("validation: %safter the last step (step %d)", interval, plan.total_steps)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        last_step = 0 < trainer.max_steps <= trainer.global_step
        last_batch = (trainer.current_epoch + 1 == trainer.max_epochs
                      and batch_idx + 1 == trainer.num_training_batches)
        if not (last_step or last_batch):
            return
        trainer.should_stop = True  # Lightning validates a run that stops, in an epoch that validates
        every = trainer.check_val_every_n_epoch
        if every and (trainer.current_epoch + 1) % every:
            self.every, self.forced = every, True
            trainer.check_val_every_n_epoch = None  # every epoch validates; put back before checkpoints look at it

    def _restore(self, trainer: Trainer) -> None:
        if self.forced:
            trainer.check_val_every_n_epoch, self.forced = self.every, False

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore(trainer)
        if not trainer.sanity_checking:
            self.metrics = {"step": trainer.global_step, **{
                key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("val/")}}

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore(trainer)  # no validation data: nothing ran

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.metrics:
            checkpoint["validation"] = dict(self.metrics)
