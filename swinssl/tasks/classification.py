"""``swinssl.ImageClassifier``: fine-tuning a Swin encoder for image classification, as the official SimMIM recipe does.

Layer-wise learning-rate decay with the official layer ids, drop path, Mixup/CutMix with label smoothing
(timm), a per-step warmup + cosine schedule, and torchmetrics top-1/top-5. The encoder comes from any
supported checkpoint at any image size and window (see :mod:`swinssl.weights`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torchmetrics.classification import MulticlassAccuracy

from swinssl.datamodules.views import IMAGE_EVALUATION
from swinssl.tasks.base import FineTuningTask, samples_in
from swinssl.models.registry import EncoderSpec
from swinssl.weights import Checkpoint

MIXUP_DEFAULTS = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode="batch")


class AccuracyMetrics:
    """Top-1 and top-k accuracy (k = 5, or the class count when smaller) for a LightningModule whose
    ``evaluate_batch(batch, stage)`` computes scores and calls :meth:`log_accuracy`."""

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if samples_in(batch):
            self.evaluate_batch(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if samples_in(batch):
            self.evaluate_batch(batch, "test")

    def init_accuracy(self, num_classes: int) -> None:
        top_k = min(5, num_classes)
        self.top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.top5 = MulticlassAccuracy(num_classes, top_k=top_k, average="micro")
        self.top5_name = f"top{top_k}"

    def log_accuracy(self, stage: str, scores: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> None:
        size = labels.shape[0]
        self.top1(scores, labels)
        self.top5(scores, labels)
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=size)
        self.log(f"{stage}/top1", self.top1, prog_bar=True, batch_size=size)
        self.log(f"{stage}/{self.top5_name}", self.top5, batch_size=size)


class ImageClassifier(AccuracyMetrics, FineTuningTask):
    """A Swin encoder with a linear head; batches are dicts with ``image`` (B, 3, H, W) and ``label`` (B,).

    The encoder is an :class:`~swinssl.models.registry.EncoderSpec` (``encoder=``) or its settings as keywords
    (SwinV2-B at 224 px / window 14 by default). ``checkpoint`` is any supported checkpoint (path or run
    folder); ``mixup`` holds timm ``Mixup`` arguments
    (``{}`` for the official 0.8 / 1.0 defaults, None to switch mixing off); ``label_smoothing`` applies
    in both cases. ``layer_decay`` None trains every layer at the full rate. ``class_names`` (the
    training shards') and ``evaluation`` (``eval_crop_pct``, ``eval_crop_mode``, ``interpolation`` of the
    data) are recorded, so ``evaluate`` checks the classes and reads images as fine-tuning validated them.
    """

    default_encoder = EncoderSpec(arch="swinv2_base", img_size=224, window_size=14)
    evaluation_views = tuple(IMAGE_EVALUATION)

    def __init__(
        self,
        encoder: EncoderSpec | Mapping[str, Any] | None = None,
        num_classes: int = 1000,
        checkpoint: str | Checkpoint | None = None,
        trust_checkpoint: bool = False,
        layer_decay: float | None = 0.75,
        mixup: dict[str, Any] | None = None,
        label_smoothing: float = 0.1,
        optim: dict[str, Any] | None = None,
        class_names: list[str] | None = None,
        evaluation: dict[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(encoder, settings, checkpoint, trust_checkpoint, num_classes=num_classes,
                         layer_decay=layer_decay, mixup=mixup, label_smoothing=label_smoothing, optim=optim,
                         class_names=class_names, evaluation=evaluation)
        self.mixup = None
        if mixup is not None:
            self.mixup = Mixup(**{**MIXUP_DEFAULTS, **mixup}, label_smoothing=label_smoothing, num_classes=num_classes)
            self.train_loss = SoftTargetCrossEntropy()
        else:
            self.train_loss = LabelSmoothingCrossEntropy(label_smoothing) if label_smoothing else torch.nn.CrossEntropyLoss()
        self.init_accuracy(num_classes)

    @classmethod
    def finetuning_data(cls, recipe: Mapping[str, Any]):
        """The labeled image shards of a fine-tuning recipe (plain values: its ``model``, ``data`` and ``seed``);
        missing shards raise here, before any compute."""
        from swinssl.datamodules import ClassificationShardDataModule

        spec = EncoderSpec.from_config(recipe["model"])
        return ClassificationShardDataModule.from_config(recipe["data"], recipe["seed"], img_size=spec.img_size,
                                                         num_classes=recipe["model"]["num_classes"])

    @classmethod
    def from_config(cls, recipe: Mapping[str, Any], data, checkpoint: str | Path | None = None) -> ImageClassifier:
        """From a fine-tuning recipe (plain values: its ``model``, ``finetune``, ``data`` and ``optim`` groups,
        ``checkpoint`` and ``trust_checkpoint``) and its training ``data``, whose classes the head tells apart and
        whose evaluation keys are recorded, so ``evaluate`` reads images the same way. ``checkpoint`` (a resumed
        run's own: the sizes a bare family leaves open, the windows, the head) replaces the recipe's starting one."""
        finetune, batch_size = recipe["finetune"], recipe["data"]["batch_size"]
        arguments = cls.recipe_arguments(recipe, data, checkpoint)
        if finetune["mixup"] is not None and batch_size % 2:
            raise ValueError(f"Mixup/CutMix mixes pairs: data.batch_size must be even, got {batch_size}")
        evaluation = {key: recipe["data"][key] for key in IMAGE_EVALUATION}
        return cls(EncoderSpec.from_config(recipe["model"]), layer_decay=finetune["layer_decay"],
                   mixup=finetune["mixup"], label_smoothing=finetune["label_smoothing"], evaluation=evaluation,
                   **arguments)

    @classmethod
    def arguments_from_weights(cls, source: Checkpoint) -> dict[str, Any]:
        return {"arch": source.family, "num_classes": source.num_classes}

    def evaluation_data(self, shards, batch_size: int, num_workers: int, **views: Any):
        """The labeled ``shards`` read as this model was fine-tuned to see them, its loader and what that means:
        crop mode, crop fraction and interpolation are ``views``' (None: the checkpoint's, else official)."""
        from swinssl.datamodules import ClassificationShardDataModule

        trained = self.hparams.get("evaluation") or {}
        evaluation = {key: views.get(key) if views.get(key) is not None else trained.get(key, default)
                      for key, default in IMAGE_EVALUATION.items()}
        data = ClassificationShardDataModule(val_shards=shards, batch_size=batch_size, num_workers=num_workers,
                                             img_size=self.encoder_spec.img_size, **evaluation)
        return data, data.val_dataloader(), evaluation

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch["image"], batch["label"]
        if self.mixup is not None:
            images, labels = self.mixup(images, labels)
        loss = self.train_loss(self(images), labels)
        self.log_training(loss)
        return loss

    def evaluate_batch(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        logits, labels = self(batch["image"]), batch["label"]
        self.log_accuracy(stage, logits, labels, torch.nn.functional.cross_entropy(logits, labels))
