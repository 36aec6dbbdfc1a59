"""``swinssl.Segmenter``: semantic segmentation with UperNet on a Swin encoder, as the official Swin ADE20K configs.

The encoder comes from any supported checkpoint at the task's size and window (log-CPB moves the position bias),
its stage maps feed a UperNet decode head and an auxiliary FCN head (:mod:`swinssl.models.upernet`); the loss is
cross-entropy with an ignore label, the auxiliary one weighted 0.4. AdamW (optionally with layer-wise decay), a
linear warmup and a poly decay; validation logs mIoU and a grid of image / ground truth / prediction.
Inference is whole-image or sliding-window, with optional flips and scales (mmsegmentation's test modes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torchmetrics.classification import MulticlassConfusionMatrix

from swinssl.models.backbone import features_only
from swinssl.models.registry import EncoderSpec, is_video
from swinssl.models.upernet import UperNet, UperNetSpec
from swinssl.tasks.base import FineTuningTask, samples_in
from swinssl.weights import Checkpoint, encoder_from_spec
from swinssl.weights.upernet import head_weights

INFERENCE_DEFAULTS = {"mode": "whole", "crop": None, "stride": None, "scales": [1.0], "flip": False}
# What a recipe's data keys say about rescaling images for evaluation, recorded in the model for `evaluate`.
SEGMENTATION_EVALUATION_KEYS = ("eval_scale", "size_divisor")


class SegmentationMetrics(MulticlassConfusionMatrix):
    """mmsegmentation's scores from torchmetrics' confusion matrix: per-class IoU and accuracy (NaN for a class
    absent from both truth and prediction, left out of the means), their means, and overall pixel accuracy."""

    def scores(self) -> dict[str, Any]:
        matrix = self.compute().double()
        hits, truth, predicted = matrix.diag(), matrix.sum(1), matrix.sum(0)
        iou = hits / (truth + predicted - hits)  # 0/0 = NaN: the class is nowhere
        accuracy = hits / truth
        return {"mIoU": float(iou.nanmean()), "mAcc": float(accuracy.nanmean()),
                "aAcc": float(hits.sum() / matrix.sum()), "pixels": int(matrix.sum()), "IoU": iou.tolist(),
                "Acc": accuracy.tolist()}


class Segmenter(FineTuningTask):
    """A Swin encoder + UperNet; batches are dicts with ``image`` (B, 3, H, W) and ``mask`` (B, H, W) of class
    indices, ``ignore_index`` marking pixels without a label.

    ``encoder`` is an :class:`~swinssl.models.registry.EncoderSpec` or its settings (SwinV2-B at 512 px / window 16
    by default); ``checkpoint`` any supported checkpoint (a swinssl segmentation run brings its heads too);
    ``upernet`` the :class:`~swinssl.models.upernet.UperNetSpec` fields; ``inference`` how validation and
    ``evaluate`` predict: ``mode`` whole | slide, ``crop`` and ``stride`` (slide), ``scales`` and ``flip``;
    ``evaluation`` the data's validation rescaling (recorded, so ``evaluate`` reads images the same way).
    """

    default_encoder = EncoderSpec(arch="swinv2_base", img_size=512, window_size=16, drop_path_rate=0.3)
    schedule = "poly"

    def __init__(
        self,
        encoder: EncoderSpec | Mapping[str, Any] | None = None,
        num_classes: int = 150,
        checkpoint: str | Checkpoint | None = None,
        trust_checkpoint: bool = False,
        layer_decay: float | None = None,
        optim: dict[str, Any] | None = None,
        class_names: list[str] | None = None,
        ignore_index: int = 255,
        upernet: dict[str, Any] | None = None,
        inference: dict[str, Any] | None = None,
        evaluation: dict[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is one of the {num_classes} classes")
        inference = {**INFERENCE_DEFAULTS, **(inference or {})}
        check_inference(inference)
        super().__init__(encoder, settings, checkpoint, trust_checkpoint, num_classes=num_classes,
                         layer_decay=layer_decay, optim=optim, class_names=class_names, ignore_index=ignore_index,
                         upernet=UperNetSpec.from_dict(upernet).to_dict(), inference=inference, evaluation=evaluation)
        self.val_scores = SegmentationMetrics(num_classes, ignore_index=ignore_index)
        self.test_scores = SegmentationMetrics(num_classes, ignore_index=ignore_index)

    @classmethod
    def finetuning_data(cls, recipe: Mapping[str, Any]):
        """The image + mask shards of a segmentation recipe (plain values: its ``model``, ``data``, ``segmentation``
        groups and ``seed``); an encoder, batch or crop that cannot work and missing shards raise here, before any
        compute."""
        from swinssl.datamodules import SegmentationShardDataModule

        spec, data = EncoderSpec.from_config(recipe["model"]), recipe["data"]
        if is_video(spec.family):
            raise ValueError(f"segmentation takes an image encoder; model.arch={spec.arch} is a video one")
        if data["batch_size"] < 2:
            raise ValueError("data.batch_size must be at least 2 for segmentation: the heads' BatchNorm (pyramid "
                             "pooling to 1x1) needs two samples per device")
        inference = recipe["segmentation"]["inference"]
        if inference["mode"] == "slide" and "eval_scale" in data and inference["crop"] > min(data["eval_scale"]):
            raise ValueError(f"segmentation.inference.crop={inference['crop']} is larger than the validation images "
                             f"(rescaled to fit {data['eval_scale']}); use a crop of at most {min(data['eval_scale'])}")
        return SegmentationShardDataModule.from_config(data, recipe["seed"], num_classes=recipe["model"]["num_classes"])

    @classmethod
    def from_config(cls, recipe: Mapping[str, Any], data, checkpoint: str | Path | None = None) -> Segmenter:
        """From a segmentation recipe (plain values: its ``model``, ``finetune``, ``segmentation``, ``data`` and
        ``optim`` groups, ``checkpoint`` and ``trust_checkpoint``) and its training ``data``, whose classes and ignore
        label it takes and whose validation rescaling it records. ``checkpoint`` (a resumed run's own) replaces the
        recipe's starting one."""
        evaluation = {key: recipe["data"][key] for key in SEGMENTATION_EVALUATION_KEYS if key in recipe["data"]}
        return cls(EncoderSpec.from_config(recipe["model"]), layer_decay=recipe["finetune"]["layer_decay"],
                   ignore_index=data.ignore_index, evaluation=evaluation,
                   **cls.recipe_arguments(recipe, data, checkpoint), **recipe["segmentation"])

    @classmethod
    def predicting(cls, source: Checkpoint, inference: Mapping[str, Any], **sizes: Any) -> Segmenter:
        """The segmentation run ``source`` (at its size, or ``sizes``) predicting as ``inference`` says, else (None
        values) as its recipe validated."""
        inference = {**(source.hparams.get("inference") or {}),
                     **{key: value for key, value in inference.items() if value is not None}}
        return cls.from_checkpoint(source, inference=inference, **sizes)

    def evaluation_data(self, shards, batch_size: int, num_workers: int):
        """The image + mask ``shards`` rescaled as this run's recipe validated, their loader and how it predicts."""
        from swinssl.datamodules import SegmentationShardDataModule

        data = SegmentationShardDataModule(val_shards=shards, batch_size=batch_size, num_workers=num_workers,
                                           num_classes=self.hparams.num_classes, **(self.hparams.evaluation or {}))
        return data, data.val_dataloader(), {"inference": dict(self.hparams.inference)}

    def build_model(self, source: Checkpoint | None) -> UperNet:
        """The encoder's stage maps under UperNet; a segmentation run's checkpoint brings its heads too."""
        encoder = encoder_from_spec(self.encoder_spec, checkpoint=source)
        norm = encoder.norm
        backbone = features_only(encoder)  # HF's Swinv2Backbone maps: every stage, no final norm
        backbone.model.norm = norm.requires_grad_(False)  # kept (unused), so the run loads as any encoder checkpoint
        model = UperNet(backbone, self.hparams.num_classes, UperNetSpec.from_dict(self.hparams.upernet))
        if source is not None and (heads := head_weights(source)):
            model.load_state_dict({**model.state_dict(), **heads})
        return model

    @property
    def encoder(self) -> torch.nn.Module:
        return self.model.encoder

    def loss(self, logits: torch.Tensor, auxiliary: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        ignore = self.hparams.ignore_index
        loss = F.cross_entropy(logits, mask, ignore_index=ignore)
        if auxiliary is not None:
            loss = loss + self.model.spec.auxiliary_weight * F.cross_entropy(auxiliary, mask, ignore_index=ignore)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(*self.model.forward_train(batch["image"]), batch["mask"])
        self.log_training(loss)
        return loss

    @torch.no_grad()
    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores (B, classes, H, W) as ``inference`` says: softmax averaged over scales and flips."""
        inference = self.hparams.inference
        size, total = images.shape[2:], 0
        for scale in inference["scales"]:
            scaled = images if scale == 1 else F.interpolate(
                images, scale_factor=scale, mode="bilinear", align_corners=False)
            for flip in (False, True) if inference["flip"] else (False,):
                view = scaled.flip(-1) if flip else scaled
                logits = (slide_logits(self.model, view, inference["crop"], inference["stride"])
                          if inference["mode"] == "slide" else self.model(view))
                logits = logits.flip(-1) if flip else logits
                total = total + F.interpolate(logits, size=size, mode="bilinear", align_corners=False).softmax(1)
        return total

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if not samples_in(batch):
            return
        scores = self.predict_logits(batch["image"])
        self.val_scores.update(scores.argmax(1), batch["mask"])
        if batch_idx == 0:
            self.log_grid(batch["image"], batch["mask"], scores.argmax(1))

    def on_validation_epoch_end(self) -> None:
        scores = self.val_scores.scores()  # every rank: torchmetrics gathers the matrices of all of them
        if scores["pixels"]:
            self.log("val/mIoU", scores["mIoU"], prog_bar=True)
        self.val_scores.reset()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if samples_in(batch):
            self.test_scores.update(self.predict_logits(batch["image"]).argmax(1), batch["mask"])

    def log_grid(self, images: torch.Tensor, truth: torch.Tensor, prediction: torch.Tensor) -> None:
        if isinstance(self.logger, TensorBoardLogger) and self.trainer.is_global_zero:
            from swinssl.viz import segmentation_grid

            grid = segmentation_grid(images, truth, prediction, self.hparams.num_classes, self.hparams.ignore_index)
            self.logger.experiment.add_image("val/segmentation", grid, self.global_step)


def check_inference(inference: Mapping[str, Any]) -> None:
    """A known mode; for slide, a crop and a stride that tile."""
    if inference["mode"] not in ("whole", "slide"):
        raise ValueError(f"inference mode must be whole or slide, got {inference['mode']!r}")
    if inference["mode"] == "slide":
        crop, stride = inference["crop"], inference["stride"]
        if not crop or not stride or not 0 < stride <= crop:
            raise ValueError(f"slide inference needs a crop and a stride with 0 < stride <= crop, got crop {crop}, "
                             f"stride {stride}")
    if not inference["scales"] or min(inference["scales"]) <= 0:
        raise ValueError(f"inference scales must be positive numbers, got {inference['scales']}")


def slide_logits(model: torch.nn.Module, images: torch.Tensor, crop: int | Sequence[int],
                 stride: int | Sequence[int]) -> torch.Tensor:
    """Logits of ``crop``-sized windows every ``stride`` pixels, the last one flush with the border, averaged where
    they overlap (mmsegmentation's ``slide_inference``). An image smaller than the crop is an error."""
    (ch, cw), (sh, sw) = _pair(crop), _pair(stride)
    height, width = images.shape[2:]
    if height < ch or width < cw:
        raise ValueError(f"the sliding-window crop {ch}x{cw} is larger than the {height}x{width} image; use a smaller "
                         "crop or whole-image inference")
    rows, cols = math.ceil((height - ch) / sh) + 1, math.ceil((width - cw) / sw) + 1
    total, count = None, images.new_zeros(1, 1, height, width)
    for row in range(rows):
        for col in range(cols):
            top, left = min(row * sh, height - ch), min(col * sw, width - cw)
            logits = model(images[:, :, top:top + ch, left:left + cw])
            if total is None:
                total = images.new_zeros(images.shape[0], logits.shape[1], height, width)
            total[:, :, top:top + ch, left:left + cw] += logits
            count[:, :, top:top + ch, left:left + cw] += 1
    return total / count


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, (int, float)) else (int(value[0]), int(value[1]))
