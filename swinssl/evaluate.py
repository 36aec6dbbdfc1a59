"""``python -m swinssl.evaluate checkpoint=<path> data=<labeled shards>``: top-1/top-5 at any resolution.

Prints the accuracies and writes them as JSON. ``img_size=``/``window_size=`` evaluate a classifier at a
size it was not trained at (the weights move through log-CPB as on any load). Video classifiers are
tested on several views per video (clips x crops, softmax scores averaged), sampled as in training.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from lightning.pytorch import Trainer
from omegaconf import DictConfig

from swinssl.cli import RECIPES, resolve_checkpoint, user_errors
from swinssl.datamodules import ClassificationShardDataModule, VideoShardDataModule
from swinssl.runs import select_precision
from swinssl.tasks import ImageClassifier, VideoClassifier
from swinssl.weights import load_checkpoint


def load_classifier(cfg: DictConfig) -> tuple[ImageClassifier | VideoClassifier, str]:
    checkpoint = resolve_checkpoint(cfg.checkpoint)
    source = load_checkpoint(checkpoint, cfg.trust_checkpoint)
    if source.num_classes == 0:
        raise ValueError(f"{checkpoint} has no classification head; fine-tune it first (python -m swinssl.finetune)")
    video = source.family.startswith("video_")
    keys = ("img_size", "window_size", "num_frames") if video else ("img_size", "window_size")
    sizes = {key: cfg[key] for key in keys if cfg[key] is not None}
    task = VideoClassifier if video else ImageClassifier
    return task.from_checkpoint(source, **sizes), checkpoint


def test_data(cfg: DictConfig, model: ImageClassifier | VideoClassifier):
    """The labeled shards, read as the model was trained to see them."""
    common = dict(val_shards=cfg.data, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                  img_size=model.hparams.img_size)
    if isinstance(model, ImageClassifier):
        data = ClassificationShardDataModule(**common, eval_crop_pct=cfg.eval_crop_pct, eval_crop_mode=cfg.eval_crop_mode)
        return data, data.val_dataloader()
    views = {key: cfg[key] for key in ("test_clips", "test_crops") if cfg[key] is not None}
    sampling = {**(model.hparams.clip_sampling or {}), **views}
    data = VideoShardDataModule(**common, num_frames=model.hparams.num_frames, **sampling)
    return data, data.test_dataloader()


def evaluate(cfg: DictConfig) -> dict:
    with user_errors():
        model, checkpoint = load_classifier(cfg)
        img_size = model.hparams.img_size
        data, loader = test_data(cfg, model)
        if data.num_classes is not None and data.num_classes != model.hparams.num_classes:
            raise ValueError(f"the shards have {data.num_classes} classes (classes.json); "
                             f"the checkpoint's head has {model.hparams.num_classes}")
    trainer = Trainer(accelerator=cfg.accelerator, devices=1, precision=select_precision(cfg.precision),
                      logger=False, enable_checkpointing=False, enable_model_summary=False)
    metrics = trainer.test(model, dataloaders=loader, verbose=False)[0]
    results = {
        "checkpoint": checkpoint,
        "data": str(cfg.data),
        "img_size": img_size,
        "window_size": model.hparams.window_size,
        **({"views": f"{data.test_clips} clips x {data.test_crops} crops"} if isinstance(model, VideoClassifier) else {}),
        **{key.removeprefix("test/"): round(float(value), 6) for key, value in metrics.items()},
    }
    out = Path(cfg.out) if cfg.out else Path(checkpoint).with_suffix(f".eval-{img_size}px.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    accuracies = ", ".join(f"{key} {100 * value:.2f}%" for key, value in results.items() if key.startswith("top"))
    print(f"{accuracies} at {img_size} px / window {results['window_size']} -> {out}")
    return results


@hydra.main(config_path=f"pkg://{RECIPES}", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
