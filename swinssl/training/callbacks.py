"""Training callbacks: pictures of what SimMIM reconstructs, the samples the data pipeline skipped, when validation
runs, what a preemption signal does, and the random states a resumed run continues."""

from __future__ import annotations

import logging
import math
import os
import random
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from swinssl.tasks.base import samples_in
from swinssl.tasks.optim import plan_steps
from swinssl.training import slurm
from swinssl.viz import reconstruction_grid

log = logging.getLogger(__name__)


class ReconstructionImages(Callback):
    """Every ``every_n_steps`` optimizer steps (and on the first), log a reconstruction grid to TensorBoard
    (images, or two clips as rows of frames)."""

    def __init__(self, every_n_steps: int = 500, max_images: int = 4) -> None:
        self.every_n_steps = every_n_steps
        self.max_images = max_images
        self.last_step = -1  # with gradient accumulation several batches end on the same step

    @rank_zero_only
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        due = step == 1 or step % self.every_n_steps == 0
        if not isinstance(trainer.logger, TensorBoardLogger) or not due or step == self.last_step:
            return
        self.last_step = step
        inputs = batch[pl_module.input_key]
        grid = reconstruction_grid(pl_module.model, inputs, batch["mask"], outputs["reconstruction"],
                                   self.max_images if inputs.ndim == 4 else 2)
        trainer.logger.experiment.add_image("train/reconstruction", grid, step)


class SkippedSamples(Callback):
    """Reports what the data pipeline skipped (batches carry ``skipped`` and ``skipped_files``, made in the
    loader workers): a warning naming each unreadable file once per run, not once per epoch; the training
    count as ``data/skipped``, which a resumed run continues; and per stage the samples read and skipped,
    which evaluation results record."""

    def __init__(self) -> None:
        self.reported: set[str] = set()
        self.samples: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.examples: dict[str, str] = {}  # per stage, the first skipped file and why

    def take(self, batch: Any, stage: str) -> None:
        if not isinstance(batch, dict):
            return
        self.samples[stage] += samples_in(batch)
        self.skipped[stage] += int(batch.get("skipped", 0))
        for name, reason in batch.get("skipped_files", ()):
            self.examples.setdefault(stage, f"{name} ({reason})")
            if name not in self.reported:
                self.reported.add(name)
                log.warning("skipped unreadable sample %s (%s)", name, reason)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self.take(batch, "train")
        pl_module.log("data/skipped", float(self.skipped["train"]), reduce_fx="max")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        self.take(batch, "validate")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        self.take(batch, "test")

    def state_dict(self) -> dict[str, int]:
        return {"train_skipped": self.skipped["train"]}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped["train"] = state_dict.get("train_skipped", 0)


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


class RandomStates(Callback):
    """The training process's torch (CPU and CUDA), NumPy and Python random states go into every checkpoint and are
    put back when training starts again (after the sanity check, which may draw), so dropout, drop path and mixing
    continue as in an uninterrupted run. Stored as tensors and numbers: a ``weights_only`` load reads them.
    Every rank resumes rank 0's states (equal when all ranks draw alike, as the same seed and model make them)."""

    def __init__(self) -> None:
        self.loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        name, keys, position, has_gauss, gauss = np.random.get_state()
        return {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
                "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
                "python": random.getstate()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loaded = state_dict

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.loaded is None:
            return
        torch.set_rng_state(self.loaded["torch"])
        if self.loaded["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.loaded["cuda"])
        name, keys, position, has_gauss, gauss = self.loaded["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        version, internal, gauss_next = self.loaded["python"]
        random.setstate((version, tuple(internal), gauss_next))
        self.loaded = None


class StopOnPreemption(Callback):
    """On the preemption signal (:func:`swinssl.slurm.catch_preemption_signal`): save ``checkpoint`` at the next
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


class ThreadTuning(Callback):
    """Keeps the faster of the torch thread counts ``candidates`` (:func:`swinssl.training.runs.thread_candidates`).

    Every ``every_n_steps`` batches (first after ``start`` batches) each count runs ``probe`` batches; the one
    with the shortest median batch time (the first batch after a switch left out) is kept until the next probe.
    A shared machine's load changes, so the choice is checked again. One candidate: nothing to measure.
    """

    def __init__(self, candidates: list[int] | None = None, probe: int = 6, every_n_steps: int = 500,
                 start: int = 5) -> None:
        self.candidates = candidates or []
        self.probe, self.every_n_steps, self.start = probe, every_n_steps, start
        self.times: dict[int, list[float]] = {}
        self.probing: list[int] = []  # the counts still to try in the current probe
        self.chosen: int | None = None
        self.batches = 0
        self._started = 0.0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if len(self.candidates) < 2:
            return
        due = self.batches >= self.start and (self.batches - self.start) % self.every_n_steps == 0
        if due and not self.probing:
            self.probing, self.times = list(self.candidates), {count: [] for count in self.candidates}
            torch.set_num_threads(self.probing[0])
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if len(self.candidates) < 2:
            return
        self.batches += 1
        if not self.probing:
            return
        count = self.probing[0]
        self.times[count].append(time.perf_counter() - self._started)
        if len(self.times[count]) < self.probe:
            return
        self.probing.pop(0)
        if self.probing:
            torch.set_num_threads(self.probing[0])
            return
        medians = {count: statistics.median(times[1:]) for count, times in self.times.items()}
        best = min(medians, key=medians.get)
        if best != self.chosen:
            others = ", ".join(f"{count}: {1e3 * median:.0f} ms" for count, median in medians.items())
            log.info("torch threads: %d (median batch time %s)", best, others)
        self.chosen = best
        torch.set_num_threads(best)
