"""``python -m swinssl.finetune recipe=<name> checkpoint=<path> key=value ...``: image or video classification.

The checkpoint may be any supported format (ours, Microsoft's official Swin/SimMIM ``.pth``, timm, official
Video Swin) or a run folder (its newest ``last.ckpt``); it is moved to the recipe's image size and window
on load, and inflated to Video Swin when the recipe's arch is ``video_*``. With no arguments it runs
``recipe=demo_ft`` on the newest ``recipe=demo`` pretraining run.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from swinssl import cli

# What a recipe's data block says about reading data for evaluation, recorded in the model for `evaluate`.
CLIP_SAMPLING_KEYS = ("sampling", "frame_interval", "short_side", "eval_short_side", "test_clips", "test_crops")
EVALUATION_KEYS = ("eval_crop_pct", "eval_crop_mode", "interpolation")


def build(cfg: DictConfig, resuming: bool = False):
    """The model and data a config describes; bad sizes, shards and checkpoints raise here, before any compute."""
    if cfg.model.arch.startswith("video_"):
        return build_video(cfg, resuming)
    from swinssl.datamodules import ClassificationShardDataModule
    from swinssl.tasks import ImageClassifier

    data = cfg.data
    evaluation = {key: data[key] for key in EVALUATION_KEYS}
    datamodule = ClassificationShardDataModule(
        shards=data.shards, val_shards=data.val_shards, batch_size=data.batch_size, num_workers=data.num_workers,
        epoch_size=data.epoch_size, shuffle_buffer=data.shuffle_buffer, img_size=cfg.model.img_size, seed=cfg.seed,
        num_classes=cfg.model.num_classes, auto_augment=data.auto_augment, color_jitter=data.color_jitter,
        crop_scale=tuple(data.crop_scale), crop_ratio=tuple(data.crop_ratio), hflip=data.hflip, re_prob=data.re_prob,
        **evaluation,
    )
    num_classes = _num_classes(datamodule)
    mixup = OmegaConf.to_container(cfg.finetune.mixup, resolve=True) if cfg.finetune.mixup is not None else None
    if mixup is not None and data.batch_size % 2:
        raise ValueError(f"Mixup/CutMix mixes pairs: data.batch_size must be even, got {data.batch_size}")
    model = ImageClassifier(
        arch=cfg.model.arch, num_classes=num_classes, img_size=cfg.model.img_size,
        window_size=cfg.model.window_size, patch_size=cfg.model.patch_size, drop_path_rate=cfg.model.drop_path_rate,
        encoder=OmegaConf.to_container(cfg.model.encoder, resolve=True),
        checkpoint=None if resuming else cfg.checkpoint, trust_checkpoint=cfg.trust_checkpoint,
        layer_decay=cfg.finetune.layer_decay, mixup=mixup, label_smoothing=cfg.finetune.label_smoothing,
        optim=OmegaConf.to_container(cfg.optim, resolve=True), class_names=datamodule.class_names,
        evaluation=evaluation, **cli.runtime_arguments(cfg),
    )
    return model, datamodule


def build_video(cfg: DictConfig, resuming: bool = False):
    from swinssl.datamodules import VideoShardDataModule
    from swinssl.tasks import VideoClassifier

    data, model = cfg.data, cfg.model
    clip_sampling = {key: data[key] for key in CLIP_SAMPLING_KEYS}
    datamodule = VideoShardDataModule(
        shards=data.shards, val_shards=data.val_shards, batch_size=data.batch_size, num_workers=data.num_workers,
        epoch_size=data.epoch_size, shuffle_buffer=data.shuffle_buffer, seed=cfg.seed, num_classes=model.num_classes,
        num_frames=model.num_frames, img_size=model.img_size, crop_scale=tuple(data.crop_scale),
        crop_ratio=tuple(data.crop_ratio), hflip=data.hflip,
        rand_augment=OmegaConf.to_container(data.rand_augment) if data.rand_augment is not None else None,
        re_prob=data.re_prob, **clip_sampling,
    )
    classifier = VideoClassifier(
        arch=model.arch, num_classes=_num_classes(datamodule), num_frames=model.num_frames, img_size=model.img_size,
        window_size=list(model.window_size), patch_size=list(model.patch_size) if model.patch_size else None,
        attention=model.attention, patch_init=model.patch_init, drop_path_rate=model.drop_path_rate,
        head_dropout=model.head_dropout,
        encoder=OmegaConf.to_container(model.encoder, resolve=True),
        checkpoint=None if resuming else cfg.checkpoint, trust_checkpoint=cfg.trust_checkpoint,
        head_lr_ratio=cfg.finetune.head_lr_ratio, label_smoothing=cfg.finetune.label_smoothing,
        clip_sampling=clip_sampling, class_names=datamodule.class_names,
        optim=OmegaConf.to_container(cfg.optim, resolve=True), **cli.runtime_arguments(cfg),
    )
    return classifier, datamodule


def _num_classes(datamodule) -> int:
    if datamodule.num_classes is None:
        raise ValueError("cannot tell the number of classes: the shards record no class names; set "
                         "model.num_classes, or write the shards with python -m swinssl.make_shards from class folders")
    return datamodule.num_classes


def finetune(cfg: DictConfig) -> None:
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from swinssl.runs import run_training

    callbacks = [EMAWeightAveraging(decay=cfg.finetune.ema_decay)] if cfg.finetune.ema_decay else []
    run_training(cfg, "finetune", build, callbacks)


def main() -> None:
    cli.main("finetune", finetune)


if __name__ == "__main__":
    main()
