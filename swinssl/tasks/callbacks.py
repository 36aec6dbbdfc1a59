"""Training callbacks: pictures of what SimMIM reconstructs."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid

from swinssl.datamodules import denormalize
from swinssl.models.simmim import MaskedImageModel, pixel_mask


def reconstruction_grid(model: MaskedImageModel, images: torch.Tensor, mask: torch.Tensor,
                        reconstruction: torch.Tensor, max_images: int = 4) -> torch.Tensor:
    """(3, H', W') grid in [0, 1]; one row per image: input | masked input | prediction pasted into the mask.

    Predictions made against locally normalized targets are mapped back with the input's local
    statistics, so the picture shows pixels either way.
    """
    images, mask, reconstruction = images[:max_images].float(), mask[:max_images], reconstruction[:max_images]
    hidden = pixel_mask(mask, model.patch_size).float()
    predicted = model.to_pixels(reconstruction, images)
    masked_input = images * (1 - hidden) + hidden * images.amin()  # masked units shown dark
    pasted = images * (1 - hidden) + predicted * hidden
    rows = torch.stack([denormalize(x).clamp(0, 1) for x in (images, masked_input, pasted)], dim=1)
    return make_grid(rows.flatten(0, 1).cpu(), nrow=3, padding=2, pad_value=1.0)


class ReconstructionImages(Callback):
    """Every ``every_n_steps`` optimizer steps (and on the first), log a reconstruction grid to TensorBoard."""

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
        grid = reconstruction_grid(pl_module.model, batch["image"], batch["mask"], outputs["reconstruction"],
                                   self.max_images)
        trainer.logger.experiment.add_image("train/reconstruction", grid, step)
