"""``python -m swinssl.evaluate checkpoint=<path> data=<labeled shards>``: top-1/top-5 at any resolution.

Prints the accuracies and writes them as JSON next to the checkpoint, named after the data set and size,
with what produced them: checkpoint, data, samples evaluated and skipped, size, window and preprocessing.
An existing result is never replaced unless ``overwrite=true``. Images are read the way the checkpoint was
fine-tuned to see them (its crop mode and fraction) unless ``eval_crop_mode=``/``eval_crop_pct=`` say
otherwise; ``img_size=``/``window_size=`` evaluate a classifier at a size it was not trained at (the
weights move through log-CPB as on any load). Video classifiers are tested on several views per video
(clips x crops, softmax scores averaged), sampled as in training. Evaluating nothing is an error: shards
without labels, or where every sample is skipped, write no result.

A segmentation run (``seg_*`` recipes) gives mIoU, mean class accuracy, overall pixel accuracy and per-class IoU and
accuracy, predicting as its recipe validated (``inference``: whole | slide, ``slide_crop``, ``slide_stride``,
``scales``, ``flip`` change that); images are rescaled as its recipe did.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from omegaconf import DictConfig

from swinssl.models.registry import is_video
from swinssl.training import cli


def load_classifier(cfg: DictConfig, source):
    from swinssl.tasks import ImageClassifier, VideoClassifier

    if source.num_classes == 0:
        raise ValueError(f"{source.origin} has no classification head; fine-tune it first (python -m swinssl.finetune)")
    video = is_video(source.family)
    keys = ("img_size", "window_size", "num_frames") if video else ("img_size", "window_size")
    sizes = {key: cfg[key] for key in keys if cfg[key] is not None}
    task = VideoClassifier if video else ImageClassifier
    return task.from_checkpoint(source, **sizes)


def check_classes(data, model) -> None:
    """The shards' classes must be the ones the head was trained on, in the same order."""
    from swinssl.datamodules.shards import describe_classes

    trained = model.hparams.get("class_names")
    if data.class_names is not None and trained is not None and list(trained) != data.class_names:
        raise ValueError(f"{data.val_data.name} has the classes {describe_classes(data.class_names)}; the checkpoint "
                         f"was trained on {describe_classes(list(trained))}: its scores would be read as other classes")
    if data.num_classes is not None and data.num_classes != model.hparams.num_classes:
        raise ValueError(f"{data.val_data.name} has {data.num_classes} classes; the checkpoint's head has "
                         f"{model.hparams.num_classes}")


def result_path(cfg: DictConfig, checkpoint: str, data_name: str, img_size: int) -> Path:
    """``out=``, else ``<checkpoint>.eval-<data set>-<size>px.json`` (a hub name or URL: in the working folder, named
    after it); never an existing file unless ``overwrite``."""
    from swinssl.checkpoint_names import is_remote

    def label(name: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.replace(":", ".")).strip("_")

    base = Path(label(checkpoint.split("://")[-1]).replace(".", "_")) if is_remote(checkpoint) else Path(checkpoint)
    out = Path(cfg.out) if cfg.out else base.with_suffix(f".eval-{label(data_name)}-{img_size}px.json")
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} already holds a result; pass overwrite=true to replace it, or out=<file>")
    return out


def load_segmenter(cfg: DictConfig, source):
    """The segmentation run at its size (or ``img_size``/``window_size``), predicting as the command line says,
    else as its recipe validated."""
    from swinssl.tasks import Segmenter

    given = {"mode": cfg.inference, "crop": cfg.slide_crop, "stride": cfg.slide_stride, "scales": cfg.scales,
             "flip": cfg.flip}
    sizes = {key: cfg[key] for key in ("img_size", "window_size") if cfg[key] is not None}
    return Segmenter.predicting(source, given, **sizes)


def test_data(cfg: DictConfig, model):
    """The labeled shards read as the model was trained to see them, unless the command line's view keys (the task's
    ``evaluation_views``) say otherwise; their loader and what that means."""
    return model.evaluation_data(cfg.data, cfg.batch_size, cfg.num_workers,
                                 **{key: cfg[key] for key in model.evaluation_views})


def segmentation_results(model) -> dict:
    """mIoU, mAcc, aAcc and, per class name, IoU and accuracy (null for a class absent from truth and prediction)."""
    scores = model.test_scores.scores()
    if not scores["pixels"]:
        raise ValueError("no labeled pixel was evaluated (every mask pixel is the ignore label)")
    names = model.hparams.class_names or [str(i) for i in range(model.hparams.num_classes)]
    plain = lambda values: {name: None if value != value else round(value, 6) for name, value in zip(names, values)}
    return {"mIoU": round(scores["mIoU"], 6), "mAcc": round(scores["mAcc"], 6), "aAcc": round(scores["aAcc"], 6),
            "pixels": scores["pixels"], "IoU": plain(scores["IoU"]), "Acc": plain(scores["Acc"])}


def evaluate(cfg: DictConfig) -> dict:
    from lightning.pytorch import Trainer

    from swinssl.weights.upernet import is_segmenter
    from swinssl.training.skipped_samples import SkippedSamples
    from swinssl.training.trainer import select_precision
    from swinssl.weights import load_checkpoint

    with cli.user_errors():
        source = load_checkpoint(cfg.checkpoint, cfg.trust_checkpoint)
        segmenter = is_segmenter(source)
        model = (load_segmenter if segmenter else load_classifier)(cfg, source)
        img_size = model.encoder_spec.img_size
        data, loader, preprocessing = test_data(cfg, model)
        check_classes(data, model)
        out = result_path(cfg, source.origin, data.val_data.name, img_size)
    skips = SkippedSamples()
    trainer = Trainer(accelerator=cfg.accelerator, devices=1, precision=select_precision(cfg.precision),
                      logger=False, enable_checkpointing=False, enable_model_summary=False, callbacks=[skips])
    with cli.user_errors():  # a sliding-window crop larger than an image
        metrics = trainer.test(model, dataloaders=loader, verbose=False)[0]
    evaluated, skipped = skips.samples["test"], skips.skipped["test"]
    if evaluated == 0:
        example = f", e.g. {skips.examples['test']}" if skips.examples.get("test") else ""
        with cli.user_errors():
            raise ValueError(f"no sample of {data.val_data.name} could be evaluated ({skipped} skipped{example}); "
                             "nothing written")
    results = {
        "checkpoint": source.origin,
        "data": str(cfg.data),
        "data_set": data.val_data.name,
        "samples": evaluated,
        "skipped": skipped,
        **({"samples_in_set": data.val_data.samples} if data.val_data.samples is not None else {}),
        "img_size": img_size,
        "window_size": model.encoder_spec.window_size,
        **preprocessing,
        **{key.removeprefix("test/"): round(float(value), 6) for key, value in metrics.items()},
    }
    if segmenter:
        with cli.user_errors():
            results.update(segmentation_results(model))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    accuracies = ", ".join(f"{key} {100 * value:.2f}%" for key, value in results.items()
                           if key.startswith("top") or key in ("mIoU", "mAcc", "aAcc"))
    print(f"{accuracies} on {evaluated} samples of {data.val_data.name} ({skipped} skipped) at {img_size} px / window "
          f"{results['window_size']} -> {out}")
    return results


def main() -> None:
    cli.main("evaluate", evaluate)


if __name__ == "__main__":
    main()
