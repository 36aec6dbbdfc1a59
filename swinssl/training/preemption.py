"""What a preemption signal does to a training run: save at the next batch end, requeue under SLURM, stop.

The signal handler and the requeue command are :mod:`swinssl.training.slurm`'s (torch-free, for the recipe checks)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

from swinssl.training import slurm

log = logging.getLogger(__name__)


class StopOnPreemption(Callback):
    """On the preemption signal (:func:`swinssl.training.slurm.catch_preemption_signal`): save ``checkpoint`` at the next
    batch end (at the epoch's end when that batch ends the epoch; every rank takes part), requeue the job (rank 0,
    under SLURM with ``requeue``) and stop. That checkpoint is the only one the stop writes, and a run resumed from
    it takes the steps an uninterrupted run takes. A signal before the first step stops without saving.
    ``stopped`` tells the caller not to save again."""

    def __init__(self, checkpoint: Path, requeue: bool = True) -> None:
        self.checkpoint = Path(checkpoint)
        self.requeue = requeue
        self.stopped = False
        self.at_epoch_end = False  # the signal came during an epoch's last batch

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not slurm.catching_preemption_signal():  # used outside the CLI, which installs it at start
            slurm.catch_preemption_signal()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.strategy.reduce_boolean_decision(slurm.preemption_signal_received(), all=False):
            for callback in trainer.checkpoint_callbacks:  # no step was taken: nothing new to write while preempted
                callback.save_last = False
            self._stop(trainer, saved=False)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.stopped or self.at_epoch_end:
            return
        if not trainer.strategy.reduce_boolean_decision(slurm.preemption_signal_received(), all=False):
            return
        trainer.should_stop = True
        if batch_idx + 1 >= trainer.num_training_batches:
            # The epoch's last batch: saved when the epoch has ended. Lightning resumes a checkpoint taken at the
            # last batch's end as if the next epoch had run too, and the run would end early.
            self.at_epoch_end = True
            return
        self._save(trainer)
        for callback in trainer.checkpoint_callbacks:
            # The one checkpoint of this stop, recording the epoch as cut: an epoch-end save after it would
            # record the epoch as finished, and the resumed run would skip the rest of it.
            callback._last_global_step_saved = trainer.global_step

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_epoch_end and not self.stopped:
            self._save(trainer)

    def _save(self, trainer: Trainer) -> None:
        log.info("preemption signal: saving %s", self.checkpoint)
        trainer.save_checkpoint(self.checkpoint)
        for callback in trainer.checkpoint_callbacks:
            callback.save_last = False  # last.ckpt is this one, and no last-v1.ckpt beside it
        self._stop(trainer, saved=True)

    def _stop(self, trainer: Trainer, saved: bool) -> None:
        self.stopped = True
        trainer.should_stop = True
        if not trainer.is_global_zero:
            return
        where = str(self.checkpoint) if saved else "its last checkpoint (the signal came before the first step)"
        if self.requeue and "SLURM_JOB_ID" in os.environ:
            slurm.requeue_job()
            log.info("requeued: the job resumes from %s", where)
        else:
            log.info("stopped by the preemption signal; this is not a SLURM job that requeues, so nothing restarts it: "
                     "run the same command with resume=auto to continue from %s", where)
