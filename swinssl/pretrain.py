"""``python -m swinssl.pretrain recipe=<name> key=value ...``: SimMIM pretraining on WebDataset shards, of
images, or of video clips when the recipe's arch is ``video_*`` (masked video modeling on Video Swin).

With no arguments it runs ``recipe=demo``: a small Swin V2 on the photos scikit-image ships.
``--cfg job`` prints the composed recipe without running it. ``checkpoint=`` continues from any
supported checkpoint (e.g. an official SimMIM ``.pth``, decoder included).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from swinssl.training import cli


def build(cfg: DictConfig, resume_from: Path | None = None):
    """The SimMIM model and the image or clip data a config describes (:meth:`SimMIM.from_config`,
    :meth:`SimMIM.pretraining_data`); missing shards and bad sizes raise there, before any compute. A resumed run is
    built from its own checkpoint; Lightning then restores its weights and optimizer."""
    from swinssl.tasks import SimMIM

    recipe = cli.plain(cfg, "model", "simmim", "optim", "data", "seed", "checkpoint", "trust_checkpoint")
    model = SimMIM.from_config(recipe, resume_from)
    return model, model.pretraining_data(recipe)


def probe_callbacks(cfg: DictConfig) -> list:
    """The k-NN probe ``probe.shards`` asks for (none without), reading images or clips as the recipe trains on."""
    if cfg.probe.shards is None:
        return []
    from swinssl.datamodules import ClassificationShardDataModule, VideoShardDataModule
    from swinssl.models.registry import is_video
    from swinssl.training.probe import KNNProbe

    encoder = cli.encoder_spec(cfg)

    def labeled(shards):
        if shards is None:
            return None
        stream = dict(val_shards=shards, batch_size=cfg.probe.batch_size, num_workers=cfg.probe.num_workers)
        if is_video(encoder.family):
            clips = {key: cfg.data[key] for key in ("sampling", "frame_interval", "short_side")}
            return VideoShardDataModule(img_size=encoder.img_size, num_frames=encoder.num_frames, **clips, **stream)
        return ClassificationShardDataModule(img_size=encoder.img_size, **stream)

    return [KNNProbe(labeled(cfg.probe.shards), labeled(cfg.probe.val_shards), every_n_steps=cfg.probe.every_n_steps,
                     k=cfg.probe.k, temperature=cfg.probe.temperature)]


def pretrain(cfg: DictConfig) -> None:
    from swinssl.training.reconstructions import ReconstructionImages
    from swinssl.training.runs import run_training

    run_training(cfg, "pretrain", build, [ReconstructionImages(every_n_steps=cfg.images_every_n_steps)],
                 data_callbacks=probe_callbacks)


def main() -> None:
    cli.main("pretrain", pretrain)


if __name__ == "__main__":
    main()
