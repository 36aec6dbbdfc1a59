"""``python -m swinssl.export CHECKPOINT OUT --to timm|hf``: weights other libraries load as their own.

- ``--to timm``: a state dict that timm's ``SwinTransformerV2`` (V1: ``SwinTransformer``) loads strictly (OUT ``.pth``
  or ``.safetensors``), and beside it ``OUT.json``: the timm constructor arguments (timm state dicts record no image
  size, window or pretrained windows) and timm's ``pretrained_cfg`` (input size, mean/std, crop, interpolation,
  classes), which ``timm.create_model(..., pretrained_cfg_overlay=...)`` and ``resolve_data_config`` read. swinssl
  reads that record back with the weights, so a re-imported export computes what was exported.
- ``--to hf``: an HF ``save_pretrained`` folder OUT (``config.json`` + ``model.safetensors``) that ``Swinv2Model``,
  ``Swinv2ForImageClassification`` (labels from the training shards' class names) and ``Swinv2Backbone`` load with
  ``from_pretrained``; writing the config needs transformers (``pip install 'swinssl[interop]'``). A segmentation run
  gives a folder ``UperNetForSemanticSegmentation`` loads (:mod:`swinssl.weights.upernet`).

Exported files are world-readable (0644), as files made to be shared should be.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from swinssl.normalization import IMAGENET_MEAN, IMAGENET_STD
from swinssl.weights import Checkpoint, CheckpointError, load_checkpoint, to_hf, to_timm
from swinssl.weights.factories import CheckpointLike
from swinssl.weights.upernet import is_segmenter, write_hf_upernet

TIMM_CLASSES = {"swinv2": "timm.models.swin_transformer_v2.SwinTransformerV2",
                "swin": "timm.models.swin_transformer.SwinTransformer"}
HF_CLASSES = {"swinv2": ("Swinv2Config", "Swinv2ForImageClassification", "Swinv2Model"),
              "swin": ("SwinConfig", "SwinForImageClassification", "SwinModel")}
SHARED = 0o644


def export(checkpoint: CheckpointLike, out: str | Path, to: str = "timm", trust_checkpoint: bool = False
           ) -> dict[str, Any]:
    """Write ``checkpoint`` (any supported format: a path, a loaded dict) as ``to`` at ``out``; returns what was
    recorded about it."""
    source = load_checkpoint(checkpoint, trust_checkpoint)
    out = Path(out)
    if to == "hf" and is_segmenter(source):
        written, meta = write_hf_upernet(source, out)
    else:
        written, meta = export_hf(source, out) if to == "hf" else export_timm(source, out)
    for path in written:
        path.chmod(SHARED)
    return meta


def export_timm(source: Checkpoint, out: Path) -> tuple[list[Path], dict[str, Any]]:
    state, kwargs = to_timm(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({key: value.contiguous() for key, value in state.items()}, str(out))
    else:
        torch.save(state, out)
    meta = {"class": TIMM_CLASSES[source.family], "kwargs": kwargs,
            "pretrained_cfg": timm_pretrained_cfg(source, kwargs)}
    record = out.with_suffix(".json")
    record.write_text(json.dumps(meta, indent=1) + "\n")
    return [out, record], meta


def timm_pretrained_cfg(source: Checkpoint, kwargs: dict[str, Any]) -> dict[str, Any]:
    """timm's preprocessing fields: the input size, ImageNet mean/std, and the crop fraction, crop mode and
    interpolation fine-tuning validated with (else the official evaluation's), with the classes."""
    from swinssl.evaluate import IMAGE_EVALUATION

    hparams = source.hparams or {}
    evaluation = {**IMAGE_EVALUATION, **(hparams.get("evaluation") or {})}
    cfg: dict[str, Any] = {}
    if "img_size" in kwargs:
        size = kwargs["img_size"]
        cfg["input_size"] = [3, *([size, size] if isinstance(size, int) else size)]
    cfg.update(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), crop_pct=evaluation["eval_crop_pct"],
               crop_mode=evaluation["eval_crop_mode"], interpolation=evaluation["interpolation"],
               num_classes=kwargs["num_classes"])
    if hparams.get("class_names"):
        cfg["label_names"] = list(hparams["class_names"])
    return cfg


def export_hf(source: Checkpoint, out: Path) -> tuple[list[Path], dict[str, Any]]:
    state, config_args = to_hf(source)
    try:
        import transformers
    except ImportError:
        raise CheckpointError("--to hf writes an HF transformers config, which needs transformers: "
                              "pip install 'swinssl[interop]'") from None
    from safetensors.torch import save_file

    config_name, classifier, base = HF_CLASSES[source.family]
    if not source.num_classes:  # the bare model's keys have no task prefix
        prefix = f"{config_name[:-len('Config')].lower()}."
        state = {key.removeprefix(prefix): value for key, value in state.items()}
    config = getattr(transformers, config_name)(**config_args)
    config.architectures = [classifier if source.num_classes else base]
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    weights = out / "model.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, str(weights), metadata={"format": "pt"})
    return [out / "config.json", weights], {"class": f"transformers.{config.architectures[0]}", "config": config_args}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m swinssl.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="any supported checkpoint, or a run folder (its newest last.ckpt)")
    parser.add_argument("out", help="--to timm: output file (.pth, or .safetensors); --to hf: output folder")
    parser.add_argument("--to", choices=["timm", "hf"], default="timm", help="target library")
    parser.add_argument("--trust-checkpoint", action="store_true", help="allow pickled objects (trusted files only)")
    args = parser.parse_args(argv)
    try:
        meta = export(args.checkpoint, args.out, args.to, args.trust_checkpoint)
    except (CheckpointError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    if args.to == "hf":
        print(f"wrote {args.out}/ (config.json, model.safetensors)\n"
              f"load in transformers: {meta['class']}.from_pretrained({args.out!r}), or its Model and Backbone classes")
        return
    arguments = ", ".join(f"{key}={value!r}" for key, value in meta["kwargs"].items())
    print(f"wrote {args.out} (+ {Path(args.out).with_suffix('.json')}: constructor arguments and timm pretrained_cfg)\n"
          f"load in timm: model = {meta['class']}({arguments}); model.load_state_dict(<the weights>)")


if __name__ == "__main__":
    main()
