"""``swinssl.SimMIM``: the LightningModule that pretrains a Swin V2 encoder with masked image modeling."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer

from swinssl.models import MaskedImageModel
from swinssl.tasks.optim import OptimConfig, build_optimizer, build_scheduler
from swinssl.weights import CheckpointError, create_encoder, load_checkpoint, swinssl_metadata

log = logging.getLogger(__name__)


def per_device_batch_size(trainer: Trainer) -> int:
    """The batch one device sees per step, from the datamodule (our pipelines batch in the workers)."""
    batch_size = getattr(trainer.datamodule, "batch_size", None)
    if batch_size is None:
        batch_size = getattr(trainer.train_dataloader, "batch_size", None)
    if not batch_size:
        raise ValueError("cannot tell the per-device batch size: train with a datamodule that has `batch_size`")
    return int(batch_size)


class SimMIM(LightningModule):
    """SimMIM pretraining of a Swin V2 encoder.

    ``forward(images, mask) -> (loss, reconstruction)``; batches are dicts with ``image`` (B, 3, H, W)
    and the token ``mask`` (B, H / patch, W / patch) made by :class:`swinssl.MaskGenerator`.
    ``encoder`` holds the preset or family name and any size overrides for :func:`swinssl.create_encoder`.
    ``checkpoint`` starts from any supported checkpoint (e.g. an official SimMIM ``.pth``): the encoder
    with its mask token, and the decoder when the checkpoint has one.
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
        checkpoint: str | None = None,
        trust_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.optim_config = OptimConfig(**(optim or {}))
        source = load_checkpoint(checkpoint, trust_checkpoint) if checkpoint is not None else None
        backbone = create_encoder(
            arch,
            img_size=img_size,
            window_size=window_size,
            patch_size=patch_size,
            drop_path_rate=drop_path_rate,
            mask_token=True,
            checkpoint=source,
            **(encoder or {}),
        )
        self.model = MaskedImageModel(backbone, norm_target_window=norm_target_window)
        if source is not None and source.decoder:
            try:
                self.model.decoder.load_state_dict(source.decoder)
            except RuntimeError as error:
                raise CheckpointError(f"{source.source}: its SimMIM decoder does not fit this model ({error})") from None
        self.skipped_samples = 0

    @property
    def encoder(self):
        return self.model.encoder

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(images, mask)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        loss, reconstruction = self(batch["image"], batch["mask"])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", max(group["lr"] for group in self.optimizers().param_groups))
        if "skipped" in batch:
            self.skipped_samples += int(batch["skipped"])
            self.log("data/skipped", float(self.skipped_samples), reduce_fx="max")
        return {"loss": loss, "reconstruction": reconstruction.detach()}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        loss, reconstruction = self(batch["image"], batch["mask"])
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["image"].shape[0])
        return {"loss": loss, "reconstruction": reconstruction}

    def configure_optimizers(self) -> dict[str, Any]:
        trainer = self.trainer
        if trainer.train_dataloader is None:
            trainer.fit_loop.setup_data()  # the schedule is in epochs: it needs the loader's length
        accumulation = trainer.accumulate_grad_batches
        global_batch = per_device_batch_size(trainer) * trainer.world_size * accumulation
        if math.isinf(trainer.num_training_batches):
            raise ValueError("the train loader has no length; give it an epoch length (data.epoch_size)")
        steps_per_epoch = max(1, math.ceil(trainer.num_training_batches / accumulation))
        # the schedule spans max_epochs; a run bounded by max_steps alone (max_epochs -1) spans max_steps
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            total_steps = steps_per_epoch * trainer.max_epochs
        else:
            total_steps = max(trainer.max_steps, 1)
        rates = self.optim_config.scaled(global_batch)
        log.info(
            "lr %.3g = %.3g per %d samples x global batch %d (%d steps/epoch, %d steps in all)",
            rates["lr"], self.optim_config.base_lr, self.optim_config.reference_batch, global_batch,
            steps_per_epoch, total_steps,
        )
        optimizer = build_optimizer(self.model, self.optim_config, lr=rates["lr"])
        scheduler = build_scheduler(
            optimizer, self.optim_config, global_batch=global_batch, steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["swinssl"] = swinssl_metadata(self.encoder)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip by global norm (the official 5.0) and log the pre-clip norm."""
        max_norm = float(gradient_clip_val) if gradient_clip_val else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm)
        self.log("train/grad_norm", norm)
