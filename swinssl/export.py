"""``python -m swinssl.export CHECKPOINT OUT --to timm|hf``: weights other libraries load as their own.

- ``--to timm``: a state dict that timm's ``SwinTransformerV2`` (V1: ``SwinTransformer``) loads strictly (OUT ``.pth``
  or ``.safetensors``), and beside it ``OUT.json``: the timm constructor arguments (timm state dicts record no image
  size, window or pretrained windows) and timm's ``pretrained_cfg`` (input size, mean/std, crop, interpolation,
  classes), which ``timm.create_model(..., pretrained_cfg_overlay=...)`` and ``resolve_data_config`` read. swinssl
  reads that record back with the weights, so a re-imported export computes what was exported.
- ``--to hf``: an HF ``save_pretrained`` folder OUT (``config.json`` + ``model.safetensors``) that ``Swinv2Model``,
  ``Swinv2ForImageClassification`` (labels from the training shards' class names) and ``Swinv2Backbone`` load with
  ``from_pretrained``, with ``preprocessor_config.json`` (size, crop, interpolation, mean and std of the run's
  evaluation) for ``AutoImageProcessor`` and ``pipeline("image-classification")``; writing them needs
  transformers (``pip install 'swinssl[interop]'``). A segmentation run gives a folder
  ``UperNetForSemanticSegmentation`` loads (:mod:`swinssl.weights.upernet`).
- ``--to onnx``: an ONNX file OUT (``pip install 'swinssl[onnx]'``) of the classifier (logits), the encoder
  (``--encoder-only``: pooled features) or its stage maps (``--features-only``), image or video, with a dynamic batch
  at the checkpoint's size and window (or ``--img-size``/``--window-size``/``--num-frames``, moved through log-CPB as
  on any load); the opset, class names and preprocessing are in the file's metadata, and onnxruntime must compute
  what PyTorch does before the file is written (:mod:`swinssl.weights.onnx`). A SimMIM pretraining checkpoint
  exports only its encoder (``--encoder-only`` or ``--features-only``).

Exported files are world-readable (0644), as files made to be shared should be.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch

from swinssl.checkpoint_names import is_remote
from swinssl.normalization import IMAGENET_MEAN, IMAGENET_STD
from swinssl.pipes import quiet_broken_pipe
from swinssl.weights import Checkpoint, CheckpointError, load_checkpoint, to_hf, to_timm
from swinssl.weights.factories import CheckpointLike
from swinssl.weights.onnx import OPSET
from swinssl.weights.upernet import is_segmenter, write_hf_upernet

TIMM_CLASSES = {"swinv2": "timm.models.swin_transformer_v2.SwinTransformerV2",
                "swin": "timm.models.swin_transformer.SwinTransformer"}
HF_CLASSES = {"swinv2": ("Swinv2Config", "Swinv2ForImageClassification", "Swinv2Model"),
              "swin": ("SwinConfig", "SwinForImageClassification", "SwinModel")}
SHARED = 0o644


def export(checkpoint: CheckpointLike, out: str | Path, to: str = "timm", trust_checkpoint: bool = False,
           **onnx_options: Any) -> dict[str, Any]:
    """Write ``checkpoint`` (any supported format: a path, a hub name or URL, a loaded dict) as ``to`` at ``out``;
    returns what was recorded about it. ``onnx_options``: those of :func:`export_onnx`."""
    if to != "onnx" and any(onnx_options.values()):
        raise CheckpointError(f"{', '.join(k for k, v in onnx_options.items() if v)} apply to --to onnx only")
    if to == "onnx":
        from swinssl.weights.onnx import require_onnxruntime

        require_onnxruntime()
    source = load_checkpoint(checkpoint, trust_checkpoint)
    out = Path(out)
    if to == "onnx":
        written, meta = export_onnx(source, out, **onnx_options)
    elif to == "hf" and is_segmenter(source):
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
    from swinssl.datamodules.views import IMAGE_EVALUATION

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
    preprocessing = timm_pretrained_cfg(source, {"img_size": config_args["image_size"], "num_classes": source.num_classes})
    hf_image_processor(preprocessing).save_pretrained(out)
    weights = out / "model.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, str(weights), metadata={"format": "pt"})
    return ([out / "config.json", out / "preprocessor_config.json", weights],
            {"class": f"transformers.{config.architectures[0]}", "config": config_args})


def hf_image_processor(cfg: dict[str, Any]):
    """The HF image processor that reads an image as evaluation did (timm ``pretrained_cfg`` fields): "center" scales
    the shorter side to size / crop_pct (rounded down, as timm) and crops the centre (``BitImageProcessor``);
    "squash" resizes to the size (``ViTImageProcessor``); then ImageNet mean and std."""
    import transformers
    from transformers.image_utils import PILImageResampling

    height, width = cfg["input_size"][1:]
    interpolation = "bicubic" if cfg["interpolation"] == "random" else cfg["interpolation"]
    common = dict(resample=PILImageResampling[interpolation.upper()], image_mean=cfg["mean"], image_std=cfg["std"])
    if cfg["crop_mode"] == "squash":
        return transformers.ViTImageProcessor(size={"height": height, "width": width}, **common)
    return transformers.BitImageProcessor(size={"shortest_edge": math.floor(min(height, width) / cfg["crop_pct"])},
                                          crop_size={"height": height, "width": width}, **common)


def export_onnx(source: Checkpoint, out: Path, img_size: int | None = None, window_size: Any = None,
                num_frames: int | None = None, encoder_only: bool = False, features_only: bool = False
                ) -> tuple[list[Path], dict[str, Any]]:
    """The model ``source`` holds (its head: logits; ``encoder_only``: pooled features; ``features_only``: stage maps)
    at its recorded size and window, or the given ones, as a verified ONNX file."""
    from swinssl.models.backbone import features_only as stage_maps
    from swinssl.models.registry import EncoderSpec, is_video
    from swinssl.weights import encoder_from_spec
    from swinssl.weights.onnx import exportable_kernel, to_onnx

    if source.decoder is not None and not (encoder_only or features_only):
        raise CheckpointError(f"{source.origin} is a SimMIM pretraining checkpoint: its decoder serves only training; "
                              "export the encoder with --encoder-only (pooled features) or --features-only (stage maps)")
    video = is_video(source.family)
    given = {key: value for key, value in
             {"img_size": img_size, "window_size": window_size, "num_frames": num_frames}.items() if value is not None}
    settings = source.encoder_settings
    missing = [key for key in ("img_size", "window_size", *(["num_frames"] if video else []))
               if key not in settings and key not in given]
    if missing:
        raise CheckpointError(f"{source.origin} does not record its {', '.join(missing)}; pass "
                              + " ".join(f"--{key.replace('_', '-')}" for key in missing))
    spec = EncoderSpec(arch=source.family).updated(settings, given, grad_checkpointing=False, compile=False)
    spec = spec.updated(attn_kernel=exportable_kernel(spec.attn_kernel))
    num_classes = 0 if encoder_only or features_only else source.num_classes
    model = encoder_from_spec(spec, num_classes=num_classes, checkpoint=source)
    if features_only:
        model = stage_maps(model)
    size = tuple(spec.img_size) if isinstance(spec.img_size, (list, tuple)) else (spec.img_size, spec.img_size)
    example = torch.randn(2, 3, *([spec.num_frames] if video else []), *size)
    outputs = ([f"stage{index}" for index in range(len(model.feature_info.channels()))] if features_only
               else ["logits" if num_classes else "features"])
    preprocessing = timm_pretrained_cfg(source, {"img_size": spec.img_size, "num_classes": num_classes})
    metadata = {"source": source.origin, **({"checkpoint_sha256": source.sha256} if source.sha256 else {}),
                "arch": spec.arch, "input": f"{'video' if video else 'image'} {list(example.shape[1:])}, any batch",
                "outputs": outputs, "img_size": spec.img_size, "window_size": spec.window_size,
                **({"num_frames": spec.num_frames} if video else {}),
                "class_names": preprocessing.pop("label_names", None) if num_classes else None,
                "preprocessing": preprocessing}
    error = to_onnx(model, example, out, "video" if video else "image", outputs, metadata)
    return [out], {**metadata, "relative_error": error}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m swinssl.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="any supported checkpoint, or a run folder (its newest last.ckpt)")
    parser.add_argument("out", help="--to timm: output file (.pth, or .safetensors); --to hf: output folder")
    parser.add_argument("--to", choices=["timm", "hf", "onnx"], default="timm", help="target library")
    parser.add_argument("--trust-checkpoint", action="store_true", help="allow pickled objects (trusted files only)")
    onnx = parser.add_argument_group("--to onnx")
    onnx.add_argument("--encoder-only", action="store_true", help="the encoder's pooled features, without the head")
    onnx.add_argument("--features-only", action="store_true", help="the encoder's stage maps (NCHW / NCTHW)")
    onnx.add_argument("--img-size", type=int, help="image size (default: the checkpoint's)")
    onnx.add_argument("--window-size", type=lambda text: [int(v) for v in text.split(",")],
                      help="window, e.g. 8 (video: 2,7,7; default: the checkpoint's)")
    onnx.add_argument("--num-frames", type=int, help="video frames per clip (default: the checkpoint's)")
    args = parser.parse_args(argv)
    if not is_remote(args.checkpoint) and not Path(args.checkpoint).exists():
        fail(f"checkpoint not found: {args.checkpoint}")
    window = args.window_size[0] if args.window_size and len(args.window_size) == 1 else args.window_size
    options = dict(img_size=args.img_size, window_size=window, num_frames=args.num_frames,
                   encoder_only=args.encoder_only, features_only=args.features_only)
    try:
        meta = export(args.checkpoint, args.out, args.to, args.trust_checkpoint, **options)
    except (ValueError, FileNotFoundError, ImportError) as error:
        fail(str(error))
    if args.to == "onnx":
        print(f"wrote {args.out} (opset {OPSET}, input {meta['input']}, outputs {', '.join(meta['outputs'])}; "
              f"onnxruntime matches PyTorch to {meta['relative_error']:.1e} relative)\n"
              f"run it: onnxruntime.InferenceSession({args.out!r}).run(None, {{{meta['input'].split()[0]!r}: batch}})")
        return
    if args.to == "hf":
        print(f"wrote {args.out}/ (config.json, preprocessor_config.json, model.safetensors)\n"
              f"load in transformers: {meta['class']}.from_pretrained({args.out!r}), or its Model and Backbone classes")
        return
    arguments = ", ".join(f"{key}={value!r}" for key, value in meta["kwargs"].items())
    print(f"wrote {args.out} (+ {Path(args.out).with_suffix('.json')}: constructor arguments and timm pretrained_cfg)\n"
          f"load in timm: model = {meta['class']}({arguments}); model.load_state_dict(<the weights>)")


def fail(message: str) -> NoReturn:
    """Every refusal: one ``error:`` line, exit code 2 (as argparse's own usage errors)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    with quiet_broken_pipe():
        main()
