"""``python -m swinssl.pretrain recipe=<name> key=value ...``: SimMIM pretraining on WebDataset shards.

With no arguments it runs ``recipe=demo``: a small Swin V2 on the photos scikit-image ships.
``--cfg job`` prints the composed recipe without running it. ``checkpoint=`` continues from any
supported checkpoint (e.g. an official SimMIM ``.pth``, decoder included).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from swinssl import cli


def build(cfg: DictConfig, resuming: bool = False):
    """The SimMIM model and image data a config describes; missing shards and bad sizes raise here, before any
    compute. A resumed run restores its own weights, so the starting ``checkpoint`` is not read again."""
    from swinssl.datamodules import ImageShardDataModule
    from swinssl.tasks import SimMIM

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
        **cli.runtime_arguments(cfg),
    )
    return model, datamodule


def pretrain(cfg: DictConfig) -> None:
    from swinssl.runs import run_training
    from swinssl.tasks.callbacks import ReconstructionImages

    run_training(cfg, "pretrain", build, [ReconstructionImages(every_n_steps=cfg.images_every_n_steps)])


def main() -> None:
    cli.main("pretrain", pretrain)


if __name__ == "__main__":
    main()
