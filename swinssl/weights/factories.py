"""An encoder of any size and window from any checkpoint: :func:`encoder_from_spec`, and its keyword forms
``create_encoder`` and ``create_video_encoder``.

One path: read the checkpoint, lay what it implies over the :class:`~swinssl.models.registry.EncoderSpec` (the
sizes a bare family leaves open, the patch, the windows its position bias was trained at) after checking it
against the requested model, build from the spec, (inflate an image checkpoint to video,) and load strictly with a
report (:func:`swinssl.weights.load_into`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from swinssl.models.backbone import features_only as stage_maps
from swinssl.models.registry import PATCH_INITS, SIZE_KEYS, EncoderSpec, family, is_video, resolve_arch
from swinssl.models.swin import build_encoder
from swinssl.models.video_swin import VideoSwinEncoder, build_video_encoder
from swinssl.weights.checkpoint import Checkpoint
from swinssl.weights.inflate import inflate_checkpoint
from swinssl.weights.read import load_checkpoint
from swinssl.weights.transfer import check_architecture, check_family, load_into

log = logging.getLogger("swinssl.weights")
CheckpointLike = str | Path | Mapping[str, Any] | Checkpoint


def create_encoder(
    arch: str = "swinv2_base",
    img_size: int | tuple[int, int] = 192,
    window_size: int = 12,
    patch_size: int | None = None,
    num_classes: int = 0,
    mask_token: bool = False,
    checkpoint: CheckpointLike | None = None,
    trust_checkpoint: bool = False,
    attn_kernel: str = "fused",
    attn_chunk_windows: int | None = None,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    **overrides: Any,
) -> nn.Module:
    """A Swin V1/V2 encoder at ``img_size``/``window_size``, loaded from any supported checkpoint (a file, a folder,
    ``hf-hub:ORG/NAME[@REVISION]`` or a URL: :mod:`swinssl.weights.hub`).

    ``arch`` is a preset (``swinv2_base``, ``swin_tiny``, ...) whose sizes the checkpoint must match, or a
    family (``swinv2``, ``swin``) whose sizes (and patch size) are read off the checkpoint; explicit
    ``overrides`` (:class:`~swinssl.models.registry.EncoderSpec` fields: ``embed_dim``, ``depths``,
    ``drop_path_rate``, ...) win. ``pretrained_window_sizes`` defaults to the windows the checkpoint's position
    bias was trained at. The load report is logged and kept as ``model.load_report``.
    ``attn_kernel``/``attn_chunk_windows`` choose the attention kernel (:func:`swinssl.models.build_encoder`).
    ``features_only=True`` returns the per-stage NCHW maps of ``out_indices`` instead, as timm does
    (:func:`swinssl.models.backbone.features_only`); the model takes any input size the patch divides.
    This is the keyword form of :func:`encoder_from_spec`.
    """
    family(arch, video=False)  # before reading the checkpoint
    spec = EncoderSpec(arch=arch).updated(img_size=img_size, window_size=window_size, patch_size=patch_size,
                                          attn_kernel=attn_kernel, attn_chunk_windows=attn_chunk_windows, **overrides)
    return encoder_from_spec(spec, num_classes=num_classes, mask_token=mask_token, checkpoint=checkpoint,
                             trust_checkpoint=trust_checkpoint, features_only=features_only, out_indices=out_indices)


def create_video_encoder(
    arch: str = "video_swinv2_base",
    num_frames: int = 32,
    img_size: int = 224,
    window_size: int | Sequence[int] | None = None,
    patch_size: int | Sequence[int] | None = None,
    num_classes: int = 0,
    attention: str = "joint",
    checkpoint: CheckpointLike | None = None,
    trust_checkpoint: bool = False,
    patch_init: str = "inflate",
    attn_kernel: str = "fused",
    attn_chunk_windows: int | None = None,
    mask_token: bool = False,
    window_rule: str | None = None,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    **overrides: Any,
) -> VideoSwinEncoder | nn.Module:
    """A Video Swin encoder, from an image checkpoint (inflated) or a video one (ours or official Video Swin).

    ``arch`` is a preset (``video_swinv2_base``, ``video_swin_tiny``, ...) whose sizes the checkpoint must
    match, or a family (``video_swinv2``, ``video_swin``) whose sizes are read off it. V2 image sources
    inflate to ``video_swinv2``, V1 ones to ``video_swin``. ``patch_size`` defaults to 2 frames x the
    source's spatial patch (without a source: the family's), ``window_size`` to the family's. For V2, ``pretrained_window_sizes`` defaults to the windows the source
    recorded (an image checkpoint's window per stage, with time normalized by the video window).
    ``attn_kernel``/``attn_chunk_windows`` choose the attention kernel (:func:`swinssl.models.build_encoder`).
    ``mask_token=True`` adds SimMIM's mask token (the image checkpoint's, when it has one).
    ``window_rule`` (``official``/``geometric``) says how windows clipped to a small feature map read the bias and
    whether padding is attended; None: ``official`` for ``video_swin`` (mmaction2's function, so official weights
    match it at every size), ``geometric`` for ``video_swinv2`` (:mod:`swinssl.models.video_swin`).
    ``features_only``/``out_indices``: per-stage NCTHW maps, as :func:`create_encoder`. This is the keyword form
    of :func:`encoder_from_spec`.
    """
    family(arch, video=True)  # before reading the checkpoint
    spec = EncoderSpec(arch=arch).updated(
        num_frames=num_frames, img_size=img_size, window_size=window_size, patch_size=patch_size, attention=attention,
        patch_init=patch_init, attn_kernel=attn_kernel, attn_chunk_windows=attn_chunk_windows, window_rule=window_rule,
        **overrides)
    return encoder_from_spec(spec, num_classes=num_classes, mask_token=mask_token, checkpoint=checkpoint,
                             trust_checkpoint=trust_checkpoint, features_only=features_only, out_indices=out_indices)


def encoder_from_spec(spec: EncoderSpec, num_classes: int = 0, mask_token: bool = False,
                      checkpoint: CheckpointLike | None = None, trust_checkpoint: bool = False,
                      features_only: bool = False, out_indices: int | Sequence[int] | None = None) -> nn.Module:
    """The image or video encoder ``spec`` describes (its arch says which), with ``num_classes`` outputs (0: a
    feature encoder) and SimMIM's mask token when ``mask_token``, from ``checkpoint`` when given: the spec takes
    what the checkpoint implies (:func:`checkpoint_spec`), the model is built from it, an image checkpoint is
    inflated for a video model, and the weights load strictly with a report (``model.load_report``).
    ``features_only``/``out_indices``: the per-stage maps instead (:func:`swinssl.models.backbone.features_only`).
    """
    video = family(spec.arch).video
    if video and spec.patch_init not in PATCH_INITS:
        raise ValueError(f"patch_init must be one of {PATCH_INITS}, got {spec.patch_init!r}")
    source = load_checkpoint(checkpoint, trust_checkpoint) if checkpoint is not None else None
    if source is not None:
        spec = checkpoint_spec(spec, source)
    if video:
        model = build_video_encoder(spec, num_classes=num_classes, mask_token=mask_token)
    else:
        model = build_encoder(spec, num_classes=num_classes, mask_token=mask_token)
    if source is not None:
        if video and not is_video(source.family):
            source = inflate_checkpoint(source, model, spec.patch_init)
        model.load_report = load_into(model, source)
        log.info("%s", model.load_report)
    return _as_backbone(model, features_only, out_indices)


def checkpoint_spec(spec: EncoderSpec, source: Checkpoint) -> EncoderSpec:
    """``spec`` with what ``source`` implies: a bare family takes the checkpoint's sizes (and, for images, its
    patch; a video model always takes its patch: 2 frames x an image checkpoint's), settings given win; every size
    is checked against the checkpoint; and a Swin V2 model gets ``pretrained_window_sizes`` = the windows the
    checkpoint's position bias was trained at (time normalized by the video window when an image checkpoint is
    inflated)."""
    target = family(spec.arch)
    inflating = target.video and not is_video(source.family)
    check_family(source, (target.image if inflating else target).name, spec.arch, inflating)
    bare = spec.arch == target.name
    if spec.patch_size is None and (bare or target.video):
        recorded = source.sizes["patch_size"]
        spec = spec.updated(patch_size=target.inflated_patch(recorded) if inflating else recorded)
    if bare:
        inferred = [*SIZE_KEYS, *([] if target.video else ["extra_norm_period"])]
        spec = spec.updated({key: source.sizes[key] for key in inferred
                             if key in source.sizes and getattr(spec, key) is None})
    patch = target.patch(spec.patch_size)
    check_architecture(source, {**resolve_arch(spec.arch, spec.sizes()), "patch_size": patch[1] if inflating else patch},
                       spec.arch)
    if not target.v2 or spec.pretrained_window_sizes is not None:
        return spec
    trained = source.pretrained_window_sizes
    if not trained:
        log.warning("%s does not record the windows its position bias was trained at; coordinates are normalized "
                    "by the new windows. Give them: model.encoder.pretrained_window_sizes=[12,12,12,6] on the command "
                    "line (after 192 px / window 12), pretrained_window_sizes=[12, 12, 12, 6] in the API.",
                    source.origin)
        return spec
    return spec.updated(pretrained_window_sizes=[(0, w, w) for w in trained] if inflating else trained)


def _as_backbone(model: nn.Module, features: bool, out_indices: int | Sequence[int] | None) -> nn.Module:
    """``model``, or its ``features_only`` wrapper (which keeps the load report) when ``features`` is set."""
    if not features:
        if out_indices is not None:
            raise ValueError("out_indices selects the maps of a backbone; pass features_only=True with it")
        return model
    wrapped = stage_maps(model, out_indices)
    if hasattr(model, "load_report"):
        wrapped.load_report = model.load_report
    return wrapped
