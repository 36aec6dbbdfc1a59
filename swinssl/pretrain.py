"""``python -m swinssl.pretrain recipe=<name> key=value ...``: SimMIM pretraining on WebDataset shards.

With no arguments it runs ``recipe=demo``: a small Swin V2 on the photos scikit-image ships.
``--cfg job`` prints the composed recipe without running it. ``checkpoint=`` continues from any
supported checkpoint (e.g. an official SimMIM ``.pth``, decoder included).
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch import seed_everything
from omegaconf import DictConfig, OmegaConf

from swinssl.cli import (
    RECIPES, check_recipe_argument, runtime_arguments, start_run, submitted_to_slurm, train, user_errors,
)
from swinssl.datamodules import ImageShardDataModule
from swinssl.tasks import SimMIM
from swinssl.tasks.callbacks import ReconstructionImages


def build(cfg: DictConfig, resuming: bool = False) -> tuple[SimMIM, ImageShardDataModule]:
    """The data and model a config describes; missing shards and bad sizes raise here, before any compute.

    A resumed run restores its own weights, so the starting ``checkpoint`` is not read again.
    """
    datamodule = ImageShardDataModule(
        shards=cfg.data.shards,
        val_shards=cfg.data.val_shards,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        epoch_size=cfg.data.epoch_size,
        shuffle_buffer=cfg.data.shuffle_buffer,
        img_size=cfg.model.img_size,
        mask_patch_size=cfg.simmim.mask_patch_size,
        model_patch_size=cfg.model.patch_size,
        mask_ratio=cfg.simmim.mask_ratio,
        crop_scale=tuple(cfg.data.crop_scale),
        crop_ratio=tuple(cfg.data.crop_ratio),
        hflip=cfg.data.hflip,
        seed=cfg.seed,
    )
    model = SimMIM(
        arch=cfg.model.arch,
        img_size=cfg.model.img_size,
        window_size=cfg.model.window_size,
        patch_size=cfg.model.patch_size,
        drop_path_rate=cfg.model.drop_path_rate,
        encoder=OmegaConf.to_container(cfg.model.encoder, resolve=True),
        norm_target_window=cfg.simmim.norm_target_window,
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        checkpoint=None if resuming else cfg.checkpoint,
        trust_checkpoint=cfg.trust_checkpoint,
        **runtime_arguments(cfg),
    )
    return model, datamodule


def pretrain(cfg: DictConfig, recipe: str) -> None:
    if submitted_to_slurm(cfg, "pretrain", recipe):
        return
    seed_everything(cfg.seed, workers=True)
    run = start_run(cfg, recipe)
    with user_errors():
        model, datamodule = build(cfg, resuming=run.resume_from is not None)
    train(cfg, run, model, datamodule, callbacks=[ReconstructionImages(every_n_steps=cfg.images_every_n_steps)])


@hydra.main(config_path=f"pkg://{RECIPES}", config_name="pretrain", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    pretrain(cfg, recipe=HydraConfig.get().runtime.choices["recipe"])


def main() -> None:
    check_recipe_argument(sys.argv[1:], task="pretrain")
    _main()


if __name__ == "__main__":
    main()
