"""Image -> video: inflating a Swin checkpoint to Video Swin, and ``create_video_encoder``.

Inflation is a tensor operation on timm-layout keys (our video encoder mirrors timm's names):

- the patch kernel (C, 3, p, p) gains time: repeated over the t frames of a patch and divided by t
  (``"inflate"``, the official rule) or put on frame t // 2 with zeros elsewhere (``"center"``, the
  paper's ablation);
- a Swin V1 bias table is resized bicubically when the spatial window differs, then tiled over the 2P - 1
  temporal offsets, so every offset in time starts with the image model's spatial bias;
- a Swin V2 ``cpb_mlp`` gains a zero first-layer column for the temporal coordinate, so its bias starts
  independent of the offset in time.

Either way, a clip whose frames are all one image gives, per time step, the image model's features on
that image. The image head is not carried over (a video head is new). Parameters an image model has no
counterpart for (the factorized temporal branch) keep their initialization, which makes them identities.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from swinssl.models.registry import FAMILY_NAMES, STYLES, family_of, resolve_arch, triple
from swinssl.models.video_swin import VideoSwinEncoder, build_video_encoder
from swinssl.weights.formats import ANCHOR, Checkpoint
from swinssl.weights.io import CheckpointError
from swinssl.weights.transfer import check_architecture, load_checkpoint, load_into, resize_bias_table

log = logging.getLogger("swinssl.weights")
PATCH_INITS = ("inflate", "center")


def inflate_patch_kernel(kernel: torch.Tensor, frames: int, mode: str) -> torch.Tensor:
    """(C, 3, p, p) -> (C, 3, frames, p, p); both modes embed a static clip exactly as the image."""
    if mode == "inflate":
        return kernel.unsqueeze(2).repeat(1, 1, frames, 1, 1) / frames
    inflated = kernel.new_zeros(*kernel.shape[:2], frames, *kernel.shape[2:])
    inflated[:, :, frames // 2] = kernel
    return inflated


def inflate_bias_table(table: torch.Tensor, window: tuple[int, int, int]) -> torch.Tensor:
    """A 2-D ((2M'-1)^2, heads) table -> the ((2P-1)(2M-1)^2, heads) table of a (P, M, M) window."""
    if window[1] != window[2]:
        raise CheckpointError(f"Swin V1 tables inflate to square spatial windows only, got {window}")
    if table.shape[0] != (2 * window[1] - 1) ** 2:
        table = resize_bias_table(table, window[1])
    return table.repeat(2 * window[0] - 1, 1)


def inflate_checkpoint(image: Checkpoint, model: VideoSwinEncoder, patch_init: str = "inflate") -> Checkpoint:
    """The video-layout checkpoint that ``load_into(model, ...)`` loads strictly."""
    if patch_init not in PATCH_INITS:
        raise ValueError(f"patch_init must be one of {PATCH_INITS}, got {patch_init!r}")
    target = model.state_dict()
    frames = model.patch_embed.patch_size[0]
    state, dropped, tables, columns = {}, [], 0, 0
    for key, value in image.state.items():
        if key == ANCHOR:
            value = inflate_patch_kernel(value, frames, patch_init)
        elif key.endswith("relative_position_bias_table"):
            value, tables = inflate_bias_table(value, model.get_submodule(key.rpartition(".")[0]).window_size), tables + 1
        elif key.endswith("cpb_mlp.0.weight"):
            value, columns = torch.cat((value.new_zeros(value.shape[0], 1), value), dim=1), columns + 1
        elif key.startswith("head.") or key == "mask_token":
            dropped.append(key)
            continue
        state[key] = value
    fresh = sorted(key for key in target if key not in state and ".temporal_" in key)
    state.update({key: target[key] for key in fresh})
    notes = [f"inflated the patch kernel to {frames} frames ({patch_init})"]
    if tables:
        notes.append(f"tiled {tables} bias tables over the temporal offsets")
    if columns:
        notes.append(f"gave {columns} position-bias MLPs a zero temporal input column")
    if dropped:
        notes.append(f"left out the image model's {', '.join(dropped)}")
    if fresh:
        notes.append(f"kept the initialization of {len(fresh)} temporal-attention tensors (identity at start)")
    return Checkpoint(
        format=image.format, family=f"video_{image.family}", state=state, arch=image.arch, windows=image.windows,
        conversions=image.conversions + notes, source=image.source,
    )


def create_video_encoder(
    arch: str = "video_swinv2_base",
    num_frames: int = 32,
    img_size: int = 224,
    window_size: int | Sequence[int] = (8, 7, 7),
    patch_size: int | Sequence[int] | None = None,
    num_classes: int = 0,
    attention: str = "joint",
    checkpoint: str | Path | Mapping[str, Any] | Checkpoint | None = None,
    trust_checkpoint: bool = False,
    patch_init: str = "inflate",
    attn_kernel: str = "fused",
    attn_chunk_windows: int | None = None,
    **overrides: Any,
) -> VideoSwinEncoder:
    """A Video Swin encoder, from an image checkpoint (inflated) or a video one (ours or official Video Swin).

    ``arch`` is a preset (``video_swinv2_base``, ``video_swin_tiny``, ...) whose sizes the checkpoint must
    match, or a family (``video_swinv2``, ``video_swin``) whose sizes are read off it. V2 image sources
    inflate to ``video_swinv2``, V1 ones to ``video_swin``. ``patch_size`` defaults to 2 frames x the
    source's spatial patch. For V2, ``pretrained_window_sizes`` defaults to the windows the source
    recorded (an image checkpoint's window per stage, with time normalized by the video window).
    ``attn_kernel``/``attn_chunk_windows`` choose the attention kernel (:func:`swinssl.models.build_encoder`).
    """
    family = family_of(arch)
    if not family.startswith("video_"):
        raise ValueError(f"{arch!r} is an image arch; video encoders are video_swinv2_* or video_swin_*")
    if patch_init not in PATCH_INITS:
        raise ValueError(f"patch_init must be one of {PATCH_INITS}, got {patch_init!r}")
    source = load_checkpoint(checkpoint, trust_checkpoint) if checkpoint is not None else None
    if source is not None:
        is_image = not source.family.startswith("video_")
        expected = family.removeprefix("video_") if is_image else family
        if source.family != expected:
            raise CheckpointError(f"{source.source} is a {FAMILY_NAMES[source.family]} checkpoint; {arch!r} takes "
                                  f"{FAMILY_NAMES[expected]} weights")
        if arch == family:
            inferred = {key: source.arch[key] for key in ("embed_dim", "depths", "num_heads")}
            overrides = {**inferred, **{key: value for key, value in overrides.items() if value is not None}}
        spatial = source.arch["patch_size"] if is_image else source.arch["patch_size"][1]
        patch_size = triple(patch_size or ((2, spatial, spatial) if is_image else source.arch["patch_size"]), "patch_size")
        requested = {**resolve_arch(arch, overrides), "patch_size": patch_size[1] if is_image else patch_size}
        check_architecture(source, expected, requested, arch)
        if STYLES[family] == "v2" and overrides.get("pretrained_window_sizes") is None:
            if source.windows:
                overrides["pretrained_window_sizes"] = [(0, w, w) for w in source.windows] if is_image else source.windows
            else:
                log.warning("%s does not record the windows its position bias was trained at; coordinates are "
                            "normalized by the new windows", source.source)
    model = build_video_encoder(arch, num_frames=num_frames, img_size=img_size, window_size=window_size,
                                patch_size=patch_size or (2, 4, 4), num_classes=num_classes, attention=attention,
                                attn_kernel=attn_kernel, attn_chunk_windows=attn_chunk_windows, **overrides)
    if source is not None:
        if not source.family.startswith("video_"):
            source = inflate_checkpoint(source, model, patch_init)
        model.load_report = load_into(model, source)
        log.info("%s", model.load_report)
    return model
