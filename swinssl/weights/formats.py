"""Checkpoint formats -> one canonical form: timm's key layout plus what the source says about itself.

Formats are told apart by their keys, never by file names:

- ``swinssl``: our Lightning ``.ckpt`` (``state_dict`` with module prefixes, ``hyper_parameters``, and a
  ``swinssl`` entry recording the position-bias windows);
- ``official``: Microsoft's Swin V1/V2 classification ``.pth`` (downsample at the *end* of a stage, ``head.``);
- ``official-simmim``: Microsoft's SimMIM ``.pth`` (``encoder.``/``decoder.`` prefixes, ``rpe_mlp`` in
  released V2 files where the code says ``cpb_mlp``, ``mask_token``);
- ``timm``: timm state dicts (downsample at the *start* of a stage, ``head.fc``), with the size, windows and classes
  of the record ``python -m swinssl.export --to timm`` writes beside its files;
- ``mmaction``: official Video Swin releases (mmcv: ``state_dict`` with ``backbone.`` and ``cls_head.fc_cls``
  keys, downsample at the end of a stage; mmaction2 1.x names the final norm ``norm3``);
- ``hf``: HF transformers Swin V1/V2 (``embeddings.patch_embeddings.projection.weight``, under ``swinv2.``/``swin.``
  in the task models; separate query/key/value; downsample at the end of a stage), a file or a ``save_pretrained``
  folder whose ``config.json`` gives image size, window and pretrained windows (names and config:
  :mod:`swinssl.weights.hf`);
- ``torchvision``: ``swin_t/s/b``, ``swin_v2_t/s/b`` (``features.0.0.weight``) and ``swin3d_t/s/b``
  (``patch_embed.proj.weight`` and ``features.0.0.attn.*``): stages and merges alternate in ``features``.

Video encoders (5-D patch kernel) get the families ``video_swinv2`` / ``video_swin``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch

from swinssl.models.registry import FAMILIES, family_for, is_video
from swinssl.models.windows import table_window, trained_window
from swinssl.weights.checkpoint import Checkpoint, CheckpointError
from swinssl.weights.hf import HF_ANCHOR, from_hf, hf_config
from swinssl.weights.io import EXPORT_RECORD, HF_CONFIG

FORMAT_NAMES = {
    "swinssl": "swinssl Lightning checkpoint",
    "official": "Microsoft official Swin classification checkpoint",
    "official-simmim": "Microsoft official SimMIM checkpoint",
    "timm": "timm state dict",
    "mmaction": "official Video Swin (mmaction2) checkpoint",
    "hf": "HF transformers Swin checkpoint",
    "torchvision": "torchvision Swin state dict",
}
ANCHOR = "patch_embed.proj.weight"  # every Swin encoder has it, whatever the prefix
TORCHVISION_ANCHORS = ("features.0.0.weight", "features.0.0.attn.qkv.weight")  # image, video
REBUILT_BUFFERS = ("relative_position_index", "relative_coords_table", "attn_mask")


def parse_checkpoint(raw: Mapping[str, Any], origin: str = "<state dict>") -> Checkpoint:
    """Detect the format of a loaded checkpoint (what :mod:`swinssl.weights.io` read from ``origin``) and convert it to
    the canonical form."""
    if "state_dict" in raw and ("pytorch-lightning_version" in raw or "hyper_parameters" in raw):
        return _from_lightning(raw, origin)
    state, ignored = _unwrap(raw)
    notes = [f"ignored training state: {', '.join(ignored)}"] if ignored else []
    hparams, windows = None, None
    if f"backbone.{ANCHOR}" in state:
        fmt, decoder = "mmaction", None
        state, renamed = _from_mmaction(state)
        notes.append(f"took the backbone ('backbone.' prefix removed){renamed}")
    elif hf_keys := [key for key in state if key.endswith(HF_ANCHOR)]:
        fmt = "hf"
        state, decoder, hf_notes = from_hf(state, min(hf_keys, key=len)[: -len(HF_ANCHOR)])
        notes += hf_notes
        hparams, windows = hf_config(raw.get(HF_CONFIG), state)
    elif any(".attn.meta_mlp." in key for key in state):
        raise CheckpointError(
            f"{origin} is a timm swinv2_cr_* state dict: another architecture (its position bias comes from raw log "
            "offsets through a meta-MLP, without Swin V2's normalized log-CPB and 16*sigmoid), so its weights do not "
            "map onto Swin V2; use it with timm's swinv2_cr_* models"
        )
    elif any(key in state for key in TORCHVISION_ANCHORS):
        fmt, decoder = "torchvision", None
        state, tv_notes = _from_torchvision(state)
        notes += tv_notes
    elif any(key.startswith("encoder.") and key.endswith(ANCHOR) for key in state):
        fmt = "official-simmim"
        state, decoder = _split_prefix(state, "encoder."), _split_prefix(state, "decoder.")
        notes.append(f"took the encoder ('encoder.' prefix removed) and the SimMIM decoder ({len(decoder)} keys)")
    elif ANCHOR in state:
        fmt = "official" if "layers.0.downsample.reduction.weight" in state else "timm"
        decoder = None
        if fmt == "timm" and isinstance(raw.get(EXPORT_RECORD), Mapping):
            hparams, windows = _from_export_record(raw[EXPORT_RECORD], notes)
        elif fmt == "timm" and isinstance(raw.get(HF_CONFIG), Mapping) and "architecture" in raw[HF_CONFIG]:
            hparams, windows = _from_timm_config(raw[HF_CONFIG]["architecture"], state, notes)
    else:
        sample = ", ".join(list(state or raw)[:4]) or "none"
        raise CheckpointError(
            f"{origin}: unrecognized checkpoint format; expected a swinssl Lightning checkpoint, a Microsoft "
            f"official Swin/SimMIM .pth, a timm, HF transformers or torchvision Swin state dict (keys like "
            f"'{ANCHOR}', 'encoder.{ANCHOR}', '{HF_ANCHOR}' or '{TORCHVISION_ANCHORS[0]}'), found keys: {sample}"
        )
    state, more_notes, recorded = _canonical_keys(state, official_layout=fmt not in ("timm", "torchvision"))
    family = _family(state, origin)
    return Checkpoint(
        format=fmt, family=family, state=state, sizes=infer_sizes(state, family),
        pretrained_window_sizes=windows or recorded, decoder=decoder or None, hparams=hparams,
        conversions=notes + more_notes, origin=origin,
    )


def _from_lightning(raw: Mapping[str, Any], origin: str) -> Checkpoint:
    full = raw["state_dict"]
    anchors = sorted((key for key in full if key.endswith(ANCHOR)), key=len)
    if not anchors:
        raise CheckpointError(f"{origin}: this Lightning checkpoint holds no Swin encoder (no '*{ANCHOR}' key)")
    prefix = anchors[0][: -len(ANCHOR)]
    parent = prefix.rstrip(".").rpartition(".")[0]
    decoder_prefix = f"{parent}.decoder." if parent else "decoder."
    state, decoder = _split_prefix(full, prefix), _split_prefix(full, decoder_prefix) or None
    task_state = {key.removeprefix("model."): value for key, value in full.items()  # every task's network is .model
                  if not key.startswith((prefix, decoder_prefix))}
    state, notes, _ = _canonical_keys(state, official_layout=False)
    family = _family(state, origin)
    meta = raw.get("swinssl") or {}
    return Checkpoint(
        format="swinssl", family=family, state=state, sizes=infer_sizes(state, family),
        # checkpoints written before the rename recorded them as "position_bias_windows"
        pretrained_window_sizes=meta.get("pretrained_window_sizes", meta.get("position_bias_windows")),
        decoder=decoder, task_state=task_state or None, hparams=dict(raw.get("hyper_parameters") or {}),
        conversions=[f"took the encoder under '{prefix}'"] + notes, origin=origin,
    )


def _from_mmaction(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """``backbone.*`` -> encoder keys; ``cls_head.fc_cls`` -> ``head.``; mmaction2 1.x ``norm3`` -> ``norm``."""
    out = {key.replace("norm3.", "norm.", 1) if key.startswith("norm3.") else key: value
           for key, value in _split_prefix(state, "backbone.").items()}
    head = {f"head.{key}": value for key, value in _split_prefix(state, "cls_head.fc_cls.").items()}
    return {**out, **head}, " and the classification head (cls_head.fc_cls -> head)" if head else ""


def _from_export_record(record: Mapping[str, Any], notes: list[str]
                        ) -> tuple[dict[str, Any], list[int] | None]:
    """What ``python -m swinssl.export --to timm`` recorded beside its weights: size, window, pretrained windows
    and class names."""
    kwargs = record.get("kwargs") or {}
    hparams = {key: kwargs[key] for key in ("img_size", "window_size") if key in kwargs}
    labels = (record.get("pretrained_cfg") or {}).get("label_names")
    if labels:
        hparams["class_names"] = list(labels)
    windows = kwargs.get("pretrained_window_sizes")
    notes.append("read image size, window and pretrained windows from the swinssl export record beside the weights")
    return hparams, [int(w) for w in windows] if windows else None


TIMM_SIZES = re.compile(r"_window(\d+)(?:to(\d+))?_(\d+)(?:to(\d+))?$")


def _from_timm_config(architecture: str, state: Mapping[str, torch.Tensor], notes: list[str]
                      ) -> tuple[dict[str, Any] | None, list[int] | None]:
    """What a timm hub repo's ``config.json`` names: ``swinv2_base_window12to16_192to256`` is 256 px / window 16 with
    the position bias trained at window 12 and 192 px, i.e. at windows min(12, stage grid at 192) per stage (timm
    builds its ``*to*`` models with these, and normalizes the others by their own clipped windows, the same rule)."""
    match = TIMM_SIZES.search(architecture)
    if not match:
        return None, None
    trained, trained_size = int(match[1]), int(match[3])
    patch = int(state[ANCHOR].shape[-1])
    stages = len({key.split(".")[1] for key in state if key.startswith("layers.")})
    windows = [min(trained, trained_size // patch // 2**stage) for stage in range(stages)]
    notes.append(f"read image size, window and pretrained windows from the timm model name {architecture}")
    return {"img_size": int(match[4] or match[3]), "window_size": int(match[2] or match[1])}, windows


def _from_torchvision(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """torchvision ``features.N`` (stages and merges alternating; image models start with the patch embedding) ->
    timm keys; ``mlp.0``/``mlp.3`` -> ``mlp.fc1``/``fc2``; ``head.`` -> ``head.fc.``. Swin V2's ``qkv.bias`` gives
    ``q_bias``/``v_bias``: torchvision zeroes its key part in forward."""
    video = ANCHOR in state
    out, k_biases = {}, 0
    for key, value in state.items():
        name = {"features.0.0.": "patch_embed.proj.", "features.0.2.": "patch_embed.norm."}.get(key[:13], None)
        if name and not video:
            out[name + key[13:]] = value
            continue
        if match := re.fullmatch(r"features\.(\d+)\.(.+)", key):
            index = int(match[1]) + (1 if video else 0)  # odd: a stage, even: the merge before stage index / 2
            if index % 2:
                block = re.fullmatch(r"(\d+)\.(.+)", match[2])
                rest = re.sub(r"^mlp\.0\.", "mlp.fc1.", re.sub(r"^mlp\.3\.", "mlp.fc2.", block[2]))
                prefix = f"layers.{index // 2}.blocks.{block[1]}."
                if rest == "attn.qkv.bias" and f"{key[:-len('qkv.bias')]}cpb_mlp.0.weight" in state:
                    out[f"{prefix}attn.q_bias"], _, out[f"{prefix}attn.v_bias"] = value.chunk(3)
                    k_biases += 1
                else:
                    out[prefix + rest] = value
            else:
                out[f"layers.{index // 2}.downsample.{match[2]}"] = value
        elif key.startswith("head."):
            out[f"head.fc.{key[len('head.'):]}"] = value
        else:
            out[key] = value
    notes = ["renamed torchvision features.N (stages and merges) to timm's layers.N"]
    if k_biases:
        notes.append(f"split qkv.bias into q_bias and v_bias ({k_biases} blocks; torchvision zeroes the key bias)")
    return out, notes


def _unwrap(raw: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensor dict inside ``{"model": ...}`` / ``{"state_dict": ...}`` wrappers; names of what else was there."""
    ignored: list[str] = []
    state: Mapping[str, Any] = raw
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(state.get(wrapper), Mapping):
            ignored += [key for key in state if key != wrapper]
            state = state[wrapper]
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if tensors and all(key.startswith("module.") for key in tensors):  # saved from a DDP wrapper
        tensors = _split_prefix(tensors, "module.")
    return tensors, ignored


def _split_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def _canonical_keys(
    state: dict[str, torch.Tensor], official_layout: bool
) -> tuple[dict[str, torch.Tensor], list[str], list[int] | None]:
    """Rename to timm's layout and drop buffers rebuilt for the target size, noting each change."""
    notes: list[str] = []
    windows = recorded_windows(state)
    renamed = {key.replace(".rpe_mlp.", ".cpb_mlp."): value for key, value in state.items()}
    if count := sum(".rpe_mlp." in key for key in state):
        notes.append(f"renamed rpe_mlp -> cpb_mlp ({count} keys)")
    dropped = Counter(name for key in renamed for name in REBUILT_BUFFERS if key.endswith(name))
    renamed = {key: value for key, value in renamed.items() if not key.endswith(REBUILT_BUFFERS)}
    if dropped:
        notes.append("dropped buffers rebuilt for the new size: "
                     + ", ".join(f"{name} ({count})" for name, count in dropped.items()))
    if official_layout:
        renamed, moved = _timm_layout(renamed)
        notes += moved
    return renamed, notes, windows


def _timm_layout(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Microsoft layout -> timm: the merge ending stage s starts stage s + 1; ``head.`` -> ``head.fc.``."""
    out, moved, heads = {}, 0, 0
    for key, value in state.items():
        match = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        if match:
            key, moved = f"layers.{int(match[1]) + 1}.downsample.{match[2]}", moved + 1
        elif key.startswith("head."):
            key, heads = f"head.fc.{key[len('head.'):]}", heads + 1
        out[key] = value
    notes = [f"moved patch merging from the end of each stage to the start of the next ({moved} keys)"]
    if heads:
        notes.append(f"renamed head -> head.fc ({heads} keys)")
    return out, notes


def recorded_windows(state: Mapping[str, torch.Tensor]) -> list[int] | None:
    """Per-stage windows recorded in persistent buffers (official files), else None.

    A V2 ``relative_coords_table`` gives back the window its coordinates were normalized by (the pretrained
    window of a fine-tuned file: :func:`~swinssl.models.windows.trained_window`). A V1 table of (2W - 1)^2 rows gives its window W. Video tables are not read:
    their shapes must match the model's.
    """
    if ANCHOR in state and state[ANCHOR].ndim == 5:
        return None
    windows = []
    for stage in range(_stage_count(state)):
        coords = state.get(f"layers.{stage}.blocks.0.attn.relative_coords_table")
        table = state.get(f"layers.{stage}.blocks.0.attn.relative_position_bias_table")
        if coords is not None:
            windows.append(trained_window(coords[..., 0], (coords.shape[1] + 1) // 2))
        elif table is not None:
            windows.append(table_window(table.shape[0]))
        else:
            return None
    return windows or None


def _stage_count(state: Mapping[str, Any]) -> int:
    stages = {int(m[1]) for key in state if (m := re.match(r"layers\.(\d+)\.blocks\.", key))}
    return max(stages) + 1 if stages else 0


def _family(state: Mapping[str, torch.Tensor], origin: str) -> str:
    video = state[ANCHOR].ndim == 5
    if any(".cpb_mlp." in key for key in state):
        return family_for(video=video, v2=True).name
    if any(key.endswith("relative_position_bias_table") for key in state):
        return family_for(video=video, v2=False).name
    raise CheckpointError(
        f"{origin}: neither Swin V2 (cpb_mlp) nor Swin V1 (relative_position_bias_table) attention weights found"
    )


def infer_sizes(state: Mapping[str, torch.Tensor], family: str) -> dict[str, Any]:
    """Widths, depths, heads and patch size read off the tensor shapes."""
    stages = _stage_count(state)
    depths = tuple(
        len({int(m[1]) for key in state if (m := re.match(rf"layers\.{s}\.blocks\.(\d+)\.", key))})
        for s in range(stages)
    )
    v2 = FAMILIES[family].v2
    head_source = "attn.logit_scale" if v2 else "attn.relative_position_bias_table"
    heads = tuple(int(state[f"layers.{s}.blocks.0.{head_source}"].shape[0 if v2 else 1]) for s in range(stages))
    patch = state[ANCHOR]
    sizes: dict[str, Any] = dict(
        embed_dim=int(patch.shape[0]), depths=depths, num_heads=heads,
        patch_size=tuple(patch.shape[2:]) if patch.ndim == 5 else int(patch.shape[-1]),
    )
    extra = sorted({int(m[1]) + 1 for key in state if (m := re.match(r"layers\.\d+\.blocks\.(\d+)\.norm3\.", key))})
    if extra:
        sizes["extra_norm_period"] = extra[0]
    return sizes


def to_timm(checkpoint: Checkpoint) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict a timm ``SwinTransformerV2`` (V1: ``SwinTransformer``) loads strictly, and its arguments.

    timm state dicts do not record image size, window or pretrained windows, so they come back as
    constructor arguments to pass to timm along with the weights.
    """
    if is_video(checkpoint.family):
        raise CheckpointError(f"{checkpoint.origin}: timm has no Video Swin; keep video checkpoints in the swinssl format")
    if "extra_norm_period" in checkpoint.sizes:
        raise CheckpointError(
            f"{checkpoint.origin}: the paper's extra LayerNorms (H/G models) have no place in timm's Swin; "
            "keep this checkpoint in the swinssl format"
        )
    state = {key: value for key, value in checkpoint.state.items() if key != "mask_token"}
    kwargs: dict[str, Any] = {key: checkpoint.sizes[key] for key in ("embed_dim", "depths", "num_heads", "patch_size")}
    kwargs["num_classes"] = checkpoint.num_classes
    settings = checkpoint.encoder_settings
    for key in ("img_size", "window_size"):
        if key in settings:
            kwargs[key] = settings[key]
    if FAMILIES[checkpoint.family].v2 and checkpoint.pretrained_window_sizes:
        kwargs["pretrained_window_sizes"] = tuple(checkpoint.pretrained_window_sizes)
    return state, kwargs


def swinssl_metadata(encoder: torch.nn.Module) -> dict[str, Any]:
    """What our Lightning checkpoints record next to the weights (key ``swinssl``) for later transfers."""
    return {"pretrained_window_sizes": encoder.pretrained_window_sizes()}
