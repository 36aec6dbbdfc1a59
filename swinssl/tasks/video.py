"""``swinssl.VideoClassifier``: fine-tuning Video Swin for action recognition, as the official recipes do.

The encoder is inflated from an image checkpoint or loaded from a video one (:mod:`swinssl.weights.inflate`).
The backbone learns at ``1 / head_lr_ratio`` of the head's rate (the paper's 0.1x), AdamW with warmup
and cosine; evaluation on several views of a clip averages their softmax scores (the official
``average_clips="prob"``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from swinssl.tasks.base import SwinTask
from swinssl.tasks.classification import AccuracyMetrics
from swinssl.tasks.optim import OptimConfig, backbone_and_head_groups
from swinssl.weights import Checkpoint, create_video_encoder


class VideoClassifier(AccuracyMetrics, SwinTask):
    """Video Swin + average pooling, dropout and a linear head; batches hold ``video`` and ``label``.

    ``video`` is (B, 3, T, H, W) in training and validation, or (B, V, 3, T, H, W) for V views of each
    clip in testing. ``clip_sampling`` records how the training data sampled clips (``sampling``,
    ``frame_interval``, ``test_clips``, ...), so evaluation reads clips the same way.
    """

    def __init__(
        self,
        arch: str = "video_swinv2_base",
        num_classes: int = 400,
        num_frames: int = 32,
        img_size: int = 224,
        window_size: tuple[int, int, int] | list[int] = (8, 7, 7),
        patch_size: tuple[int, int, int] | list[int] | None = None,
        attention: str = "joint",
        patch_init: str = "inflate",
        drop_path_rate: float = 0.2,
        head_dropout: float = 0.5,
        grad_checkpointing: bool = False,
        encoder: dict[str, Any] | None = None,
        checkpoint: str | Checkpoint | None = None,
        trust_checkpoint: bool = False,
        head_lr_ratio: float = 10.0,
        label_smoothing: float = 0.0,
        clip_sampling: dict[str, Any] | None = None,
        class_names: list[str] | None = None,
        optim: dict[str, Any] | None = None,
        attn_kernel: str = "fused",
        attn_chunk_windows: int | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"a video classifier needs num_classes >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        if head_lr_ratio <= 0:
            raise ValueError(f"head_lr_ratio must be positive (head lr / backbone lr), got {head_lr_ratio}")
        source = self.save_arguments(checkpoint, trust_checkpoint)
        self.optim_config = OptimConfig(**{"schedule": "cosine", **(optim or {})})
        self.model = create_video_encoder(
            arch, num_frames=num_frames, img_size=img_size, window_size=tuple(window_size),
            patch_size=tuple(patch_size) if patch_size is not None else None, num_classes=num_classes,
            attention=attention, patch_init=patch_init, checkpoint=source, drop_path_rate=drop_path_rate,
            head_dropout=head_dropout, grad_checkpointing=grad_checkpointing, attn_kernel=attn_kernel,
            attn_chunk_windows=attn_chunk_windows, **(encoder or {}),
        )
        self.init_accuracy(num_classes)

    @classmethod
    def arguments_from_weights(cls, source: Checkpoint) -> dict[str, Any]:
        if source.family.startswith("video_"):
            return {"arch": source.family, "num_classes": source.num_classes}
        return {"arch": f"video_{source.family}"}

    @property
    def encoder(self) -> torch.nn.Module:
        return self.model

    def optimized_module(self) -> torch.nn.Module:
        return self.model

    def optimizer_parameters(self) -> list[dict[str, Any]]:
        return backbone_and_head_groups(self.model, self.optim_config.weight_decay, 1.0 / self.hparams.head_lr_ratio)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.model(video)

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
