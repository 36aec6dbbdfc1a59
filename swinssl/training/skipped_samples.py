"""The samples the data pipeline skipped: warned once per file, counted per stage, continued by a resumed run."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from swinssl.tasks.base import samples_in

log = logging.getLogger(__name__)


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
