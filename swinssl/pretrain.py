"""``python -m swinssl.pretrain recipe=<name> key=value ...``: SimMIM pretraining on WebDataset shards.

With no arguments it runs ``recipe=demo``: a small Swin V2 on the photos scikit-image ships.
``--cfg job`` prints the composed recipe without running it. ``checkpoint=`` continues from any
supported checkpoint (e.g. an official SimMIM ``.pth``, decoder included).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from swinssl.training import cli


def build(cfg: DictConfig, resuming: bool = False):
    """The SimMIM model and image data a config describes; missing shards and bad sizes raise here, before any
    compute. A resumed run restores its own weights, so the starting ``checkpoint`` is not read again."""
    from swinssl.datamodules import ImageShardDataModule
    from swinssl.tasks import SimMIM

    encoder = cli.encoder_spec(cfg)
    datamodule = ImageShardDataModule(
        cli.stream_spec(cfg), img_size=encoder.img_size, mask_patch_size=cfg.simmim.mask_patch_size,
        model_patch_size=encoder.patch_size, mask_ratio=cfg.simmim.mask_ratio,
        **cli.data_arguments(cfg, ImageShardDataModule),
    )
    model = SimMIM(
        encoder, norm_target_window=cfg.simmim.norm_target_window, optim=OmegaConf.to_container(cfg.optim, resolve=True),
        checkpoint=None if resuming else cfg.checkpoint, trust_checkpoint=cfg.trust_checkpoint,
    )
    return model, datamodule


def pretrain(cfg: DictConfig) -> None:
    from swinssl.training.callbacks import ReconstructionImages
    from swinssl.training.runs import run_training

    run_training(cfg, "pretrain", build, [ReconstructionImages(every_n_steps=cfg.images_every_n_steps)])


def main() -> None:
    cli.main("pretrain", pretrain)


if __name__ == "__main__":
    main()
