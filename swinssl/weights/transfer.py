"""Loading a checkpoint into an encoder of any image size and window, with a report of every change.

Swin V2 keeps its ``cpb_mlp`` weights as they are (that is the point of log-spaced CPB) and is built with
``pretrained_window_sizes`` = the windows the source normalized its coordinates by; position indices,
coordinate tables and shift masks are rebuilt by the model for its own size. Swin V1 bias tables are
resized bicubically, as the official supervised loader does. The classification head is kept when its
shape matches, else re-initialized with a warning. Everything else must match exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from swinssl.models.registry import FAMILY_NAMES, family_of, resolve_arch
from swinssl.models.swin import build_encoder
from swinssl.weights.formats import FORMAT_NAMES, Checkpoint, parse_checkpoint
from swinssl.weights.io import CheckpointError, checkpoint_file, non_finite_tensors, read_checkpoint

log = logging.getLogger("swinssl.weights")
ARCH_KEYS = ("embed_dim", "depths", "num_heads", "patch_size", "extra_norm_period")


@dataclass
class LoadReport:
    """What happened to a checkpoint on its way into a model; ``str()`` is the readable summary."""

    source: str
    format: str
    loaded: int = 0
    conversions: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    windows: str = ""

    def __str__(self) -> str:
        lines = [f"loaded {self.loaded} tensors from {self.source} ({FORMAT_NAMES[self.format]})"]
        lines += [f"  converted: {note}" for note in self.conversions]
        lines += [f"  resized: {note}" for note in self.resized]
        lines += [f"  re-initialized: {note}" for note in self.reinitialized]
        lines += [f"  not used: {note}" for note in self.dropped]
        if self.windows:
            lines.append(f"  position bias: {self.windows}")
        return "\n".join(lines)


def load_checkpoint(checkpoint: str | Path | Mapping[str, Any] | Checkpoint, trust_checkpoint: bool = False) -> Checkpoint:
    """Any supported checkpoint (a file, a run folder: its newest ``last.ckpt``, a loaded dict or state dict)
    in canonical form."""
    if isinstance(checkpoint, Checkpoint):
        return checkpoint
    if isinstance(checkpoint, Mapping):
        parsed = parse_checkpoint(checkpoint)
    else:
        path = checkpoint_file(checkpoint)
        parsed = parse_checkpoint(read_checkpoint(path, trust_checkpoint), source=str(path))
    bad = non_finite_tensors({**parsed.state, **{f"decoder.{k}": v for k, v in (parsed.decoder or {}).items()}})
    if bad:
        raise CheckpointError(f"{parsed.source} holds NaN or inf values in {len(bad)} tensors (e.g. {bad[0]}); "
                              "its weights cannot be used")
    return parsed


def check_family(checkpoint: Checkpoint, family: str, arch: str) -> None:
    if checkpoint.family != family:
        raise CheckpointError(
            f"{checkpoint.source} is a {FAMILY_NAMES[checkpoint.family]} checkpoint; arch {arch!r} is "
            f"{FAMILY_NAMES[family]}"
        )


def check_architecture(checkpoint: Checkpoint, family: str, requested: Mapping[str, Any], arch: str) -> None:
    """One error naming every size on which the checkpoint and the requested model disagree."""
    check_family(checkpoint, family, arch)
    differ = [key for key in ARCH_KEYS if _size(checkpoint.arch.get(key)) != _size(requested.get(key))]
    if differ:
        found = ", ".join(f"{key} {_size(checkpoint.arch.get(key))}" for key in differ)
        wanted = ", ".join(f"{key} {_size(requested.get(key))}" for key in differ)
        raise CheckpointError(f"{checkpoint.source} does not fit arch {arch!r}: the checkpoint has {found}; "
                              f"{arch!r} expects {wanted}")


def _size(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else (value or 0)


def resize_bias_table(table: torch.Tensor, window: int) -> torch.Tensor:
    """A Swin V1 ((2W-1)^2, heads) bias table resampled bicubically to another window (official rule)."""
    size = round(table.shape[0] ** 0.5)
    target = 2 * window - 1
    grid = table.T.reshape(1, table.shape[1], size, size).float()
    resized = F.interpolate(grid, size=(target, target), mode="bicubic")
    return resized.reshape(table.shape[1], target * target).T.to(table.dtype).contiguous()


def load_into(model: nn.Module, checkpoint: Checkpoint) -> LoadReport:
    """Copy ``checkpoint`` into ``model`` (built at its target size); strict except for the head and mask token."""
    report = LoadReport(source=checkpoint.source, format=checkpoint.format, conversions=list(checkpoint.conversions))
    target = model.state_dict()
    state = dict(checkpoint.state)
    image_model = model.patch_embed.proj.weight.ndim == 4  # video tables must match: no rule resizes them
    for key, value in list(state.items()):
        if (image_model and key.endswith("relative_position_bias_table") and key in target
                and value.shape != target[key].shape):
            window = (math.isqrt(target[key].shape[0]) + 1) // 2
            state[key] = resize_bias_table(value, window)
            report.resized.append(f"{key} {tuple(value.shape)} -> {tuple(target[key].shape)} (bicubic)")
    _fit_optional(state, target, "mask_token", report, "SimMIM mask token")
    _fit_head(state, target, report)
    unexpected = sorted(set(state) - set(target))
    missing = sorted(set(target) - set(state) - {"head.fc.weight", "head.fc.bias", "mask_token"})
    mismatched = [f"{key} {tuple(state[key].shape)} vs {tuple(target[key].shape)}"
                  for key in state if key in target and state[key].shape != target[key].shape]
    if unexpected or missing or mismatched:
        problems = [f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} ({len(keys)})"
                    for label, keys in (("unexpected", unexpected), ("missing", missing),
                                        ("shape checkpoint vs model", mismatched)) if keys]
        raise CheckpointError(f"{checkpoint.source} does not fit the model; " + "; ".join(problems))
    model.load_state_dict(state, strict=False)
    report.loaded = len(state)
    if checkpoint.family.endswith("swinv2"):
        source = checkpoint.windows or "not recorded in the checkpoint"
        built = [s.blocks[0].window_size[0] for s in model.layers] if image_model else list(model.window_size)
        report.windows = (f"coordinates normalized by windows {model.position_bias_windows()} "
                          f"(source: {source}); model window {built}")
    return report


def _fit_optional(state: dict, target: Mapping, key: str, report: LoadReport, label: str) -> None:
    if key in state and key not in target:
        del state[key]
        report.dropped.append(f"{label} ({key}); this model has none")
    elif key in target and key not in state:
        report.reinitialized.append(f"{label} ({key}): not in the checkpoint")


def _fit_head(state: dict, target: Mapping, report: LoadReport) -> None:
    head = {key: state.pop(key) for key in ("head.fc.weight", "head.fc.bias") if key in state}
    wanted = target.get("head.fc.weight")
    if head and wanted is None:
        report.dropped.append(f"classification head head.fc ({head['head.fc.weight'].shape[0]} classes); "
                              "this model has no head")
    elif wanted is not None and not head:
        report.reinitialized.append(f"head.fc: new {wanted.shape[0]}-class head")
    elif head and head["head.fc.weight"].shape != wanted.shape:
        message = (f"head.fc: the checkpoint's {head['head.fc.weight'].shape[0]}-class head does not fit "
                   f"{wanted.shape[0]} classes")
        log.warning("re-initialized %s", message)
        report.reinitialized.append(message)
    else:
        state.update(head)


def create_encoder(
    arch: str = "swinv2_base",
    img_size: int | tuple[int, int] = 192,
    window_size: int = 12,
    patch_size: int | None = None,
    num_classes: int = 0,
    mask_token: bool = False,
    checkpoint: str | Path | Mapping[str, Any] | Checkpoint | None = None,
    trust_checkpoint: bool = False,
    attn_kernel: str = "fused",
    attn_chunk_windows: int | None = None,
    **overrides: Any,
) -> nn.Module:
    """A Swin V1/V2 encoder at ``img_size``/``window_size``, loaded from any supported checkpoint.

    ``arch`` is a preset (``swinv2_base``, ``swin_tiny``, ...) whose sizes the checkpoint must match, or a
    family (``swinv2``, ``swin``) whose sizes are read off the checkpoint; explicit ``overrides`` win.
    ``pretrained_window_sizes`` defaults to the windows the checkpoint's position bias was trained at.
    The load report is logged and kept as ``model.load_report``. ``attn_kernel``/``attn_chunk_windows``
    choose the attention kernel (:func:`swinssl.models.build_encoder`).
    """
    family = family_of(arch)
    source = None
    if checkpoint is not None:
        source = load_checkpoint(checkpoint, trust_checkpoint)
        check_family(source, family, arch)
        if arch == family:
            inferred = {key: value for key, value in source.arch.items() if key != "patch_size"}
            overrides = {**inferred, **{k: v for k, v in overrides.items() if v is not None}}
            patch_size = patch_size or source.arch["patch_size"]
        requested = {**resolve_arch(arch, overrides), "patch_size": patch_size or 4}
        check_architecture(source, family, requested, arch)
        if family == "swinv2" and overrides.get("pretrained_window_sizes") is None:
            if source.windows:
                overrides["pretrained_window_sizes"] = tuple(source.windows)
            else:
                log.warning(
                    "%s does not record the windows its position bias was trained at; coordinates are normalized "
                    "by the new windows. Pass pretrained_window_sizes (e.g. 12,12,12,6 after 192 px / window 12).",
                    source.source,
                )
    model = build_encoder(arch, img_size=img_size, window_size=window_size, patch_size=patch_size or 4,
                          num_classes=num_classes, mask_token=mask_token, attn_kernel=attn_kernel,
                          attn_chunk_windows=attn_chunk_windows, **overrides)
    if source is not None:
        model.load_report = load_into(model, source)
        log.info("%s", model.load_report)
    return model
