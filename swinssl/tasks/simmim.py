"""``swinssl.SimMIM``: the LightningModule that pretrains a Swin V2 encoder with masked image modeling."""

from __future__ import annotations

from typing import Any

import torch

from swinssl.models import MaskedImageModel
from swinssl.tasks.base import SwinTask, samples_in
from swinssl.tasks.optim import OptimConfig
from swinssl.weights import Checkpoint, CheckpointError, create_encoder


class SimMIM(SwinTask):
    """SimMIM pretraining of a Swin V2 encoder.

    ``forward(images, mask) -> (loss, reconstruction)``; batches are dicts with ``image`` (B, 3, H, W)
    and the token ``mask`` (B, H / patch, W / patch) made by :class:`swinssl.MaskGenerator`.
    ``encoder`` holds the preset or family name and any size overrides for :func:`swinssl.create_encoder`.
    ``checkpoint`` starts from any supported checkpoint (e.g. an official SimMIM ``.pth``): the encoder
    with its mask token, and the decoder when the checkpoint has one. ``attn_kernel``, ``grad_checkpointing``
    and ``compile`` change how the model runs, not what it computes (:class:`swinssl.tasks.base.SwinTask`).
    """

    def __init__(
        self,
        arch: str = "swinv2_base",
        img_size: int = 192,
        window_size: int = 12,
        patch_size: int = 4,
        drop_path_rate: float = 0.1,
        encoder: dict[str, Any] | None = None,
        norm_target_window: int | None = 47,
        optim: dict[str, Any] | None = None,
        checkpoint: str | Checkpoint | None = None,
        trust_checkpoint: bool = False,
        attn_kernel: str = "fused",
        attn_chunk_windows: int | None = None,
        grad_checkpointing: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        source = self.save_arguments(checkpoint, trust_checkpoint)
        self.optim_config = OptimConfig(**(optim or {}))
        backbone = create_encoder(
            arch,
            img_size=img_size,
            window_size=window_size,
            patch_size=patch_size,
            drop_path_rate=drop_path_rate,
            mask_token=True,
            checkpoint=source,
            attn_kernel=attn_kernel,
            attn_chunk_windows=attn_chunk_windows,
            **(encoder or {}),
        )
        backbone.set_grad_checkpointing(grad_checkpointing)
        self.model = MaskedImageModel(backbone, norm_target_window=norm_target_window)
        if source is not None and source.decoder:
            try:
                self.model.decoder.load_state_dict(source.decoder)
            except RuntimeError as error:
                raise CheckpointError(f"{source.source}: its SimMIM decoder does not fit this model ({error})") from None

    @property
    def encoder(self):
        return self.model.encoder

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(images, mask)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        loss, reconstruction = self(batch["image"], batch["mask"])
        self.log_training(loss)
        return {"loss": loss, "reconstruction": reconstruction.detach()}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor] | None:
        if not samples_in(batch):
            return None
        loss, reconstruction = self(batch["image"], batch["mask"])
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["image"].shape[0])
        return {"loss": loss, "reconstruction": reconstruction}

    def optimized_module(self) -> torch.nn.Module:
        return self.model
