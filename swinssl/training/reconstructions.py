"""What SimMIM reconstructs, as pictures in TensorBoard during pretraining."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from swinssl.viz import reconstruction_grid


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
