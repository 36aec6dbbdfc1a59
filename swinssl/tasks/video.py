"""``swinssl.VideoClassifier``: fine-tuning Video Swin for action recognition, as the official recipes do.

The encoder is inflated from an image checkpoint or loaded from a video one (:mod:`swinssl.weights.inflate`).
The backbone learns at ``1 / head_lr_ratio`` of the head's rate (the paper's 0.1x), AdamW with warmup
and cosine; evaluation on several views of a clip averages their softmax scores (the official
``average_clips="prob"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from swinssl.tasks.base import FineTuningTask
from swinssl.tasks.classification import AccuracyMetrics
from swinssl.tasks.optim import backbone_and_head_groups
from swinssl.models.registry import EncoderSpec, family, family_for
from swinssl.weights import Checkpoint

# What a recipe's data keys say about reading clips for evaluation, recorded in the model for `evaluate`.
CLIP_SAMPLING_KEYS = ("sampling", "frame_interval", "short_side", "eval_short_side", "test_clips", "test_crops")


class VideoClassifier(AccuracyMetrics, FineTuningTask):
    """Video Swin + average pooling, dropout and a linear head; batches hold ``video`` and ``label``.

    ``video`` is (B, 3, T, H, W) in training and validation, or (B, V, 3, T, H, W) for V views of each
    clip in testing. The encoder is an :class:`~swinssl.models.registry.EncoderSpec` (``encoder=``) or its
    settings as keywords (Video Swin V2-B, 32 frames of 224 px, window 8x7x7 by default); ``head_dropout``,
    ``attention`` and ``patch_init`` are among them. ``clip_sampling`` records how the training data sampled clips (``sampling``,
    ``frame_interval``, ``test_clips``, ...), so evaluation reads clips the same way.
    """

    default_encoder = EncoderSpec(arch="video_swinv2_base", num_frames=32, img_size=224,
                                  window_size=family("video_swinv2").window_size, drop_path_rate=0.2)
    evaluation_views = ("test_clips", "test_crops")

    def __init__(
        self,
        encoder: EncoderSpec | Mapping[str, Any] | None = None,
        num_classes: int = 400,
        checkpoint: str | Checkpoint | None = None,
        trust_checkpoint: bool = False,
        head_lr_ratio: float = 10.0,
        label_smoothing: float = 0.0,
        clip_sampling: dict[str, Any] | None = None,
        class_names: list[str] | None = None,
        optim: dict[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        if head_lr_ratio <= 0:
            raise ValueError(f"head_lr_ratio must be positive (head lr / backbone lr), got {head_lr_ratio}")
        super().__init__(encoder, settings, checkpoint, trust_checkpoint, num_classes=num_classes,
                         head_lr_ratio=head_lr_ratio, label_smoothing=label_smoothing, clip_sampling=clip_sampling,
                         class_names=class_names, optim=optim)
        self.init_accuracy(num_classes)

    @classmethod
    def finetuning_data(cls, recipe: Mapping[str, Any]):
        """The labeled clip shards of a fine-tuning recipe (plain values: its ``model``, ``data`` and ``seed``);
        missing shards raise here, before any compute."""
        from swinssl.datamodules import VideoShardDataModule

        spec = EncoderSpec.from_config(recipe["model"])
        return VideoShardDataModule.from_config(recipe["data"], recipe["seed"], img_size=spec.img_size,
                                                num_classes=recipe["model"]["num_classes"], num_frames=spec.num_frames)

    @classmethod
    def from_config(cls, recipe: Mapping[str, Any], data, checkpoint: str | Path | None = None) -> VideoClassifier:
        """From a fine-tuning recipe (plain values: its ``model``, ``finetune``, ``data`` and ``optim`` groups,
        ``checkpoint`` and ``trust_checkpoint``) and its training ``data``, whose classes the head tells apart; how
        clips were sampled is recorded, so ``evaluate`` reads them the same way. ``checkpoint`` (a resumed run's own)
        replaces the recipe's starting one."""
        finetune = recipe["finetune"]
        return cls(EncoderSpec.from_config(recipe["model"]), head_lr_ratio=finetune["head_lr_ratio"],
                   label_smoothing=finetune["label_smoothing"],
                   clip_sampling={key: recipe["data"][key] for key in CLIP_SAMPLING_KEYS},
                   **cls.recipe_arguments(recipe, data, checkpoint))

    @classmethod
    def arguments_from_weights(cls, source: Checkpoint) -> dict[str, Any]:
        weights = family(source.family)
        if weights.video:
            return {"arch": weights.name, "num_classes": source.num_classes}
        return {"arch": family_for(video=True, v2=weights.v2).name}

    def evaluation_data(self, shards, batch_size: int, num_workers: int, **views: Any):
        """The labeled clip ``shards`` sampled as in training, their test loader (``test_clips`` x ``test_crops``
        views of each video: ``views``', None: the recipe's) and what that means."""
        from swinssl.datamodules import VideoShardDataModule

        sampling = {**(self.hparams.clip_sampling or {}),
                    **{key: value for key, value in views.items() if value is not None}}
        data = VideoShardDataModule(val_shards=shards, batch_size=batch_size, num_workers=num_workers,
                                    img_size=self.encoder_spec.img_size, num_frames=self.encoder_spec.num_frames,
                                    **sampling)
        return data, data.test_dataloader(), {"views": f"{data.test_clips} clips x {data.test_crops} crops"}

    def optimizer_parameters(self) -> list[dict[str, Any]]:
        return backbone_and_head_groups(self.model, self.optim_config.weight_decay, 1.0 / self.hparams.head_lr_ratio)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch["video"]), batch["label"], label_smoothing=self.hparams.label_smoothing)
        self.log_training(loss)
        return loss

    def view_probabilities(self, video: torch.Tensor) -> torch.Tensor:
        """Class probabilities of (B, 3, T, H, W) clips, or their mean over the views of (B, V, 3, T, H, W);
        one view at a time, so memory does not grow with the number of views."""
        if video.ndim == 5:
            return self(video).float().softmax(dim=-1)
        return torch.stack([self(video[:, view]).float().softmax(dim=-1) for view in range(video.shape[1])]).mean(0)

    def evaluate_batch(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        probabilities, labels = self.view_probabilities(batch["video"]), batch["label"]
        self.log_accuracy(stage, probabilities, labels, F.nll_loss(probabilities.clamp_min(1e-12).log(), labels))
