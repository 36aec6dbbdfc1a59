"""Segmentation checkpoints (a Swin encoder + UperNet heads, :class:`swinssl.Segmenter` runs): what marks them, their
heads' tensors, and their export as HF transformers' ``UperNetForSemanticSegmentation`` with a ``Swinv2Backbone``.

The heads already carry HF's names and compute its function (:mod:`swinssl.models.upernet`), so the export renames
only the encoder (:func:`swinssl.weights.hf.to_hf`) and writes UperNet's config: sizes, labels, ignore index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from swinssl.weights.hf import to_hf
from swinssl.weights.checkpoint import CheckpointError

if TYPE_CHECKING:
    from swinssl.weights.checkpoint import Checkpoint

HEADS = ("decode_head.", "auxiliary_head.")
HF_STAGES = ["stage1", "stage2", "stage3", "stage4"]


def is_segmenter(source: Checkpoint) -> bool:
    """Whether a checkpoint is a swinssl segmentation run (it records its UperNet heads)."""
    return "upernet" in (source.hparams or {})


def head_weights(source: Checkpoint) -> dict[str, torch.Tensor]:
    """The UperNet heads' tensors of a swinssl segmentation checkpoint (``decode_head.*``, ``auxiliary_head.*``), as
    its reader kept them beside the encoder."""
    if not is_segmenter(source):
        return {}
    return {key: value for key, value in (source.task_state or {}).items() if key.startswith(HEADS)}


def to_hf_upernet(source: Checkpoint) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """The state dict of HF ``UperNetForSemanticSegmentation``, its ``UperNetConfig`` arguments and its backbone's
    ``Swinv2Config`` arguments. The encoder's final norm (unused by the stage maps) is left out, as HF's
    ``Swinv2Backbone`` has none."""
    if source.family != "swinv2":
        raise CheckpointError(f"{source.origin}: HF UperNet export takes a Swin V2 segmenter, not {source.family}")
    encoder, backbone_config = to_hf(source)
    state = {f"backbone.{key.removeprefix('swinv2.')}": value for key, value in encoder.items()
             if not key.startswith(("swinv2.layernorm.", "classifier."))}
    state.update(head_weights(source))
    hparams = source.hparams
    head, classes = hparams["upernet"], hparams["num_classes"]
    names = hparams.get("class_names") or [f"LABEL_{i}" for i in range(classes)]
    config = {"num_labels": classes, "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)},
              "hidden_size": head["channels"], "pool_scales": list(head["pool_scales"]),
              "use_auxiliary_head": bool(head["auxiliary_weight"]), "auxiliary_loss_weight": head["auxiliary_weight"],
              "auxiliary_channels": head["auxiliary_channels"], "auxiliary_num_convs": head["auxiliary_num_convs"],
              "auxiliary_concat_input": False, "loss_ignore_index": hparams.get("ignore_index", 255)}
    if head["auxiliary_index"] != 2:
        raise CheckpointError(f"{source.origin}: HF UperNet's auxiliary head reads stage 3; this one reads stage "
                              f"{head['auxiliary_index'] + 1}")
    backbone_config = {key: value for key, value in backbone_config.items() if key not in ("id2label", "label2id")}
    return state, config, {**backbone_config, "out_features": HF_STAGES}


def write_hf_upernet(source: Checkpoint, out) -> tuple[list, dict[str, Any]]:
    """Write ``source`` as an HF ``save_pretrained`` folder ``out`` that ``UperNetForSemanticSegmentation`` loads;
    returns the files written and what was recorded. Needs transformers (the ``interop`` extra)."""
    from pathlib import Path

    try:
        import transformers
    except ImportError:
        raise CheckpointError("--to hf writes an HF transformers config, which needs transformers: "
                              "pip install 'swinssl[interop]'") from None
    from safetensors.torch import save_file

    state, config_args, backbone_args = to_hf_upernet(source)
    config = transformers.UperNetConfig(backbone_config=transformers.Swinv2Config(**backbone_args), **config_args)
    config.architectures = ["UperNetForSemanticSegmentation"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    weights = out / "model.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, str(weights), metadata={"format": "pt"})
    return [out / "config.json", weights], {"class": "transformers.UperNetForSemanticSegmentation",
                                            "config": config_args}
