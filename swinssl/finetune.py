"""``python -m swinssl.finetune recipe=<name> checkpoint=<path> key=value ...``: image or video classification,
or semantic segmentation (a recipe with a ``segmentation`` group: ``seg_*``).

The checkpoint may be any supported format (ours, Microsoft's official Swin/SimMIM ``.pth``, timm, official
Video Swin) or a run folder (its newest ``last.ckpt``); it is moved to the recipe's image size and window
on load, and inflated to Video Swin when the recipe's arch is ``video_*``. With no arguments it runs
``recipe=demo_ft`` on the newest ``recipe=demo`` pretraining run.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from swinssl.models.registry import is_video
from swinssl.training import cli


def build(cfg: DictConfig, resume_from: Path | None = None):
    """The task and data a config describes (``finetuning_data`` and ``from_config`` of :class:`Segmenter` for a
    recipe with a ``segmentation`` group, else of :class:`VideoClassifier` for a ``video_*`` arch, else of
    :class:`ImageClassifier`); bad sizes, shards and checkpoints raise there, before any compute. A resumed run is
    built from its own checkpoint (sizes a bare family leaves open, windows, head), not from the starting one;
    Lightning then restores its weights and optimizer."""
    from swinssl.tasks import ImageClassifier, Segmenter, VideoClassifier

    groups = ("segmentation",) if "segmentation" in cfg else ()
    recipe = cli.plain(cfg, "model", "finetune", "optim", "data", "seed", "checkpoint", "trust_checkpoint", *groups)
    if groups:
        task = Segmenter
    else:
        task = VideoClassifier if is_video(recipe["model"]["arch"]) else ImageClassifier
    data = task.finetuning_data(recipe)
    return task.from_config(recipe, data, resume_from), data


def finetune(cfg: DictConfig) -> None:
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from swinssl.training.runs import run_training

    callbacks = [EMAWeightAveraging(decay=cfg.finetune.ema_decay)] if cfg.finetune.ema_decay else []
    run_training(cfg, "finetune", build, callbacks)


def main() -> None:
    cli.main("finetune", finetune)


if __name__ == "__main__":
    main()
