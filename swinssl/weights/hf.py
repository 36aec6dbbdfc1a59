"""HF transformers Swin V1/V2 <-> the canonical (timm) layout: the key names, query/key/value split and joined, and
the ``config.json`` fields that say size, window, pretrained windows and classes. Reading needs only the tensors and
the config (no transformers import); ``python -m swinssl.export --to hf`` writes what :func:`to_hf` returns."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from swinssl.models.registry import FAMILIES, is_video, last_stage_stride
from swinssl.weights.checkpoint import Checkpoint, CheckpointError

HF_ANCHOR = "embeddings.patch_embeddings.projection.weight"
# Inside a block: (Microsoft/timm name, HF transformers name); query/key/value are split from qkv apart.
HF_BLOCK_NAMES = (
    ("attn.cpb_mlp.", "attention.self.continuous_position_bias_mlp."),
    ("attn.logit_scale", "attention.self.logit_scale"),
    ("attn.relative_coords_table", "attention.self.relative_coords_table"),
    ("attn.relative_position_index", "attention.self.relative_position_index"),
    ("attn.relative_position_bias_table", "attention.self.relative_position_bias_table"),
    ("attn.proj.", "attention.output.dense."),
    ("norm1.", "layernorm_before."),
    ("norm2.", "layernorm_after."),
    ("mlp.fc1.", "intermediate.dense."),
    ("mlp.fc2.", "output.dense."),
)
# transformers 5 renamed Swin V1 blocks; its loader still reads the names above, so exports keep those.
HF5_SWIN_NAMES = (
    ("attention.relative_position_bias.relative_position_bias_table", "attention.self.relative_position_bias_table"),
    ("attention.relative_position_bias.relative_position_index", "attention.self.relative_position_index"),
    ("attention.q_proj.", "attention.self.query."), ("attention.k_proj.", "attention.self.key."),
    ("attention.v_proj.", "attention.self.value."), ("attention.o_proj.", "attention.output.dense."),
    ("mlp.fc1.", "intermediate.dense."), ("mlp.fc2.", "output.dense."),
)
# What timm's Swin (V1 and V2), and so every swinssl encoder, builds, in HF config fields: MLP width, q/k/v bias, GELU, LayerNorm eps, no dropout, no absolute position embedding.
TIMM_SWIN = {"num_channels": 3, "mlp_ratio": 4.0, "qkv_bias": True, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
             "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "drop_path_rate": 0.0,
             "use_absolute_embeddings": False}
HF_TOP_NAMES = (
    ("patch_embed.proj.", "embeddings.patch_embeddings.projection."),
    ("patch_embed.norm.", "embeddings.norm."),
    ("mask_token", "embeddings.mask_token"),
    ("norm.", "layernorm."),
)


def from_hf(state: Mapping[str, torch.Tensor], prefix: str
             ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """HF transformers keys -> the Microsoft layout (merges at the end of a stage, ``head.``), which
    :func:`swinssl.weights.formats._canonical_keys` then moves to timm's; query/key/value joined to ``qkv`` (V2: ``q_bias``/``v_bias``, its
    key has no bias). ``decoder.*`` of ``Swinv2ForMaskedImageModeling`` is the SimMIM decoder."""
    out, decoder, split, dropped = {}, {}, {}, []
    for key, value in state.items():
        if key.startswith("decoder."):
            decoder[key[len("decoder."):]] = value
            continue
        if key.startswith("classifier."):
            out[f"head.{key[len('classifier.'):]}"] = value
            continue
        name = key.removeprefix(prefix)
        if match := re.fullmatch(r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.+)", name):
            block, rest = f"layers.{match[1]}.blocks.{match[2]}.", _renamed(match[3], HF5_SWIN_NAMES, 0, 1)
            if qkv := re.fullmatch(r"attention\.self\.(query|key|value)\.(weight|bias)", rest):
                split.setdefault(block, {})[f"{qkv[1]}.{qkv[2]}"] = value
            else:
                out[block + _renamed(rest, HF_BLOCK_NAMES, 1, 0)] = value
        elif match := re.fullmatch(r"encoder\.layers\.(\d+)\.downsample\.(.+)", name):
            out[f"layers.{match[1]}.downsample.{match[2]}"] = value
        elif (renamed := _renamed(name, HF_TOP_NAMES, 1, 0)) != name:
            out[renamed] = value
        else:
            dropped.append(key)
    for block, parts in split.items():
        out[f"{block}attn.qkv.weight"] = torch.cat([parts[f"{p}.weight"] for p in ("query", "key", "value")])
        if "key.bias" in parts:
            out[f"{block}attn.qkv.bias"] = torch.cat([parts[f"{p}.bias"] for p in ("query", "key", "value")])
        elif "query.bias" in parts:
            out[f"{block}attn.q_bias"], out[f"{block}attn.v_bias"] = parts["query.bias"], parts["value.bias"]
    notes = [(f"renamed HF transformers keys{f' under {prefix!r}' if prefix else ''} to timm's and joined "
              f"query/key/value into qkv ({len(split)} blocks)")]
    if decoder:
        notes.append(f"took the masked-image-modeling decoder ({len(decoder)} keys)")
    if dropped:
        groups = sorted({key.partition(".stage")[0] for key in dropped})
        notes.append(f"left out {', '.join(groups)} ({len(dropped)} keys), which the encoder has no place for")
    return out, decoder, notes


def _renamed(name: str, table: tuple[tuple[str, str], ...], source: int, target: int) -> str:
    """``name`` with the first of ``table``'s ``source`` prefixes that starts it replaced by its ``target``."""
    for pair in table:
        if name.startswith(pair[source]):
            return pair[target] + name[len(pair[source]):]
    return name


def hf_config(config: Mapping[str, Any] | None, state: Mapping[str, torch.Tensor]
               ) -> tuple[dict[str, Any] | None, list[int] | None]:
    """Image size, window and class names (as swinssl hyper-parameters) and the pretrained windows of a Swin V2
    (per stage: the configured one, else the stage's window clipped to its feature size) from ``config.json``."""
    if not config:
        return None, None
    size = config.get("image_size", 224)
    height = size if isinstance(size, int) else int(size[0])
    window = int(config.get("window_size", 7))
    hparams: dict[str, Any] = {"img_size": size if isinstance(size, int) else [int(s) for s in size],
                               "window_size": window}
    labels = config.get("id2label") or {}
    names = [str(labels.get(str(i), labels.get(i, ""))) for i in range(len(labels))]
    if "head.weight" in state and len(names) == state["head.weight"].shape[0] and names != [f"LABEL_{i}" for i in
                                                                                          range(len(names))]:
        hparams["class_names"] = names
    if config.get("model_type") != "swinv2":
        return hparams, None
    stages = len(config.get("depths") or ())
    grids = [height // int(config.get("patch_size", 4)) // 2**stage for stage in range(stages)]
    pretrained = list(config.get("pretrained_window_sizes") or [0] * stages)
    return hparams, [int(p) if p > 0 else min(window, grid) for p, grid in zip(pretrained, grids, strict=False)]


def to_hf(checkpoint: Checkpoint) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict of HF transformers' ``Swinv2ForImageClassification`` (V1: ``SwinForImageClassification``) and
    its config arguments: image size, window, per-stage pretrained windows (those the position bias was trained
    at), and ``id2label`` from the class names a swinssl classifier recorded. The mask token is left out."""
    if is_video(checkpoint.family):
        raise CheckpointError(f"{checkpoint.origin}: HF transformers has no Video Swin; keep video checkpoints in the "
                              "swinssl format")
    if "extra_norm_period" in checkpoint.sizes:
        raise CheckpointError(
            f"{checkpoint.origin}: the paper's extra LayerNorms (H/G models) have no place in HF transformers' "
            "Swin V2; keep this checkpoint in the swinssl format"
        )
    settings = checkpoint.encoder_settings
    if "img_size" not in settings or "window_size" not in settings:
        raise CheckpointError(f"{checkpoint.origin} records no image size and window, which an HF config needs; "
                              "export a swinssl checkpoint, or load this one with create_encoder and train or save it")
    v2 = FAMILIES[checkpoint.family].v2
    prefix = "swinv2." if v2 else "swin."
    qkv_parts = {"attn.qkv.weight": ("query.weight", "key.weight", "value.weight"),
                 "attn.qkv.bias": ("query.bias", "key.bias", "value.bias"),
                 "attn.q_bias": ("query.bias",), "attn.v_bias": ("value.bias",)}
    state = {}
    for key, value in checkpoint.state.items():
        if match := re.fullmatch(r"layers\.(\d+)\.downsample\.(.+)", key):
            state[f"{prefix}encoder.layers.{int(match[1]) - 1}.downsample.{match[2]}"] = value
        elif match := re.fullmatch(r"(layers\.\d+\.blocks\.\d+\.)(.+)", key):
            block = f"{prefix}encoder.{match[1]}"
            if match[2] in qkv_parts:
                names = qkv_parts[match[2]]
                for name, part in zip(names, value.chunk(len(names)), strict=True):
                    state[f"{block}attention.self.{name}"] = part.contiguous()
            else:
                state[block + _renamed(match[2], HF_BLOCK_NAMES, 0, 1)] = value
        elif key.startswith("head.fc."):
            state[f"classifier.{key[len('head.fc.'):]}"] = value
        elif key != "mask_token":
            state[prefix + _renamed(key, HF_TOP_NAMES, 0, 1)] = value
    sizes = checkpoint.sizes
    config: dict[str, Any] = {"image_size": settings["img_size"], "window_size": int(settings["window_size"]),
                              "patch_size": sizes["patch_size"], "embed_dim": sizes["embed_dim"],
                              "depths": list(sizes["depths"]), "num_heads": list(sizes["num_heads"]), **TIMM_SWIN}
    if "drop_path_rate" in settings:  # the run's; a file that does not say: none (not HF's default 0.1)
        config["drop_path_rate"] = float(settings["drop_path_rate"])
    config["encoder_stride"] = last_stage_stride(sizes["patch_size"], len(sizes["depths"]))  # the final feature stride
    if v2:
        config["pretrained_window_sizes"] = list(checkpoint.pretrained_window_sizes or [0] * len(sizes["depths"]))
    names = (checkpoint.hparams or {}).get("class_names")
    if checkpoint.num_classes:
        count = checkpoint.num_classes
        labels = names if names and len(names) == count else [f"LABEL_{i}" for i in range(count)]
        config["id2label"] = dict(enumerate(labels))
        config["label2id"] = {label: i for i, label in enumerate(labels)}
    return state, config
