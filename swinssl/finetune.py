"""``python -m swinssl.finetune recipe=<name> checkpoint=<path> key=value ...``: image or video classification,
or semantic segmentation (a recipe with a ``segmentation`` group: ``seg_*``).

The checkpoint may be any supported format (ours, Microsoft's official Swin/SimMIM ``.pth``, timm, official
Video Swin) or a run folder (its newest ``last.ckpt``); it is moved to the recipe's image size and window
on load, and inflated to Video Swin when the recipe's arch is ``video_*``. With no arguments it runs
``recipe=demo_ft`` on the newest ``recipe=demo`` pretraining run.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from swinssl.datamodules.views import IMAGE_EVALUATION
from swinssl.models.registry import is_video
from swinssl.training import cli

# What a recipe's data keys say about reading data for evaluation, recorded in the model for `evaluate`.
CLIP_SAMPLING_KEYS = ("sampling", "frame_interval", "short_side", "eval_short_side", "test_clips", "test_crops")
SEGMENTATION_EVALUATION_KEYS = ("eval_scale", "size_divisor")

def build(cfg: DictConfig, resume_from: Path | None = None):
    """The task and data a config describes: a segmenter for a recipe with a ``segmentation`` group, else a
    classifier."""
    return (build_segmenter if "segmentation" in cfg else build_classifier)(cfg, resume_from)


def build_classifier(cfg: DictConfig, resume_from: Path | None = None):
    """The classifier and data a config describes (Video Swin for a ``video_*`` arch); bad sizes, shards and
    checkpoints raise here, before any compute. A resumed run is built from its own checkpoint (sizes a bare family
    leaves open, windows, head), not from the starting one; Lightning then restores its weights and optimizer."""
    from swinssl.datamodules import ClassificationShardDataModule, VideoShardDataModule
    from swinssl.tasks import ImageClassifier, VideoClassifier

    encoder = cli.encoder_spec(cfg)
    video = is_video(encoder.arch)
    data_type = VideoShardDataModule if video else ClassificationShardDataModule
    data = OmegaConf.to_container(cfg.data, resolve=True)
    datamodule = data_type.from_config(data, cfg.seed, img_size=encoder.img_size, num_classes=cfg.model.num_classes,
                                       **({"num_frames": encoder.num_frames} if video else {}))
    common = dict(num_classes=_num_classes(datamodule), checkpoint=resume_from or cfg.checkpoint,
                  trust_checkpoint=cfg.trust_checkpoint, optim=OmegaConf.to_container(cfg.optim, resolve=True),
                  label_smoothing=cfg.finetune.label_smoothing, class_names=datamodule.class_names)
    if video:  # how clips were sampled is recorded, so evaluate reads them the same way
        sampling = {key: data[key] for key in CLIP_SAMPLING_KEYS}
        return VideoClassifier(encoder, head_lr_ratio=cfg.finetune.head_lr_ratio, clip_sampling=sampling,
                               **common), datamodule
    mixup = OmegaConf.to_container(cfg.finetune.mixup, resolve=True) if cfg.finetune.mixup is not None else None
    if mixup is not None and cfg.data.batch_size % 2:
        raise ValueError(f"Mixup/CutMix mixes pairs: data.batch_size must be even, got {cfg.data.batch_size}")
    evaluation = {key: data[key] for key in IMAGE_EVALUATION}  # recorded, so evaluate reads images the same way
    return ImageClassifier(encoder, layer_decay=cfg.finetune.layer_decay, mixup=mixup, evaluation=evaluation,
                           **common), datamodule


def build_segmenter(cfg: DictConfig, resume_from: Path | None = None):
    """UperNet on the recipe's encoder and the image + mask shards; the classes and the ignore label are the
    shards'. Bad sizes, shards and checkpoints raise here, before any compute."""
    from swinssl.datamodules import SegmentationShardDataModule
    from swinssl.tasks import Segmenter

    encoder = cli.encoder_spec(cfg)
    if is_video(encoder.family):
        raise ValueError(f"segmentation takes an image encoder; model.arch={encoder.arch} is a video one")
    if cfg.data.batch_size < 2:
        raise ValueError("data.batch_size must be at least 2 for segmentation: the heads' BatchNorm (pyramid pooling "
                         "to 1x1) needs two samples per device")
    data = OmegaConf.to_container(cfg.data, resolve=True)
    segmentation = OmegaConf.to_container(cfg.segmentation, resolve=True)
    inference = segmentation["inference"]
    if inference["mode"] == "slide" and "eval_scale" in data and inference["crop"] > min(data["eval_scale"]):
        raise ValueError(f"segmentation.inference.crop={inference['crop']} is larger than the validation images "
                         f"(rescaled to fit {data['eval_scale']}); use a crop of at most {min(data['eval_scale'])}")
    datamodule = SegmentationShardDataModule.from_config(data, cfg.seed, num_classes=cfg.model.num_classes)
    evaluation = {key: data[key] for key in SEGMENTATION_EVALUATION_KEYS if key in data}
    model = Segmenter(encoder, num_classes=_num_classes(datamodule), checkpoint=resume_from or cfg.checkpoint,
                      trust_checkpoint=cfg.trust_checkpoint, layer_decay=cfg.finetune.layer_decay,
                      optim=OmegaConf.to_container(cfg.optim, resolve=True), class_names=datamodule.class_names,
                      ignore_index=datamodule.ignore_index, evaluation=evaluation, **segmentation)
    return model, datamodule


def _num_classes(datamodule) -> int:
    if datamodule.num_classes is None:
        raise ValueError("cannot tell the number of classes: the shards record no class names; set "
                         "model.num_classes, or write the shards with python -m swinssl.make_shards from class folders")
    return datamodule.num_classes


def finetune(cfg: DictConfig) -> None:
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from swinssl.training.runs import run_training

    callbacks = [EMAWeightAveraging(decay=cfg.finetune.ema_decay)] if cfg.finetune.ema_decay else []
    run_training(cfg, "finetune", build, callbacks)


def main() -> None:
    cli.main("finetune", finetune)


if __name__ == "__main__":
    main()
