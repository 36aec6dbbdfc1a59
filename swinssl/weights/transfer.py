"""Loading a :class:`~swinssl.weights.checkpoint.Checkpoint` (read by :mod:`swinssl.weights.read`) into an encoder of
any image size and window, with a report of every change.

Swin V2 keeps its ``cpb_mlp`` weights as they are (that is the point of log-spaced CPB) and is built with
``pretrained_window_sizes`` = the windows the source normalized its coordinates by; position indices,
coordinate tables and shift masks are rebuilt by the model for its own size. Swin V1 bias tables are
resized bicubically, as the official supervised loader does. The classification head is kept when its
shape matches, else re-initialized with a warning. Everything else must match exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from swinssl.models.registry import FAMILIES, SIZE_KEYS
from swinssl.models.windows import resize_bias_table, table_window
from swinssl.weights.checkpoint import Checkpoint, CheckpointError
from swinssl.weights.formats import FORMAT_NAMES

log = logging.getLogger("swinssl.weights")
CHECKED_SIZES = (*SIZE_KEYS, "patch_size", "extra_norm_period")  # what a checkpoint and its model must share


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
    position_bias: str = ""

    def __str__(self) -> str:
        lines = [f"loaded {self.loaded} tensors from {self.source} ({FORMAT_NAMES[self.format]})"]
        lines += [f"  converted: {note}" for note in self.conversions]
        lines += [f"  resized: {note}" for note in self.resized]
        lines += [f"  re-initialized: {note}" for note in self.reinitialized]
        lines += [f"  not used: {note}" for note in self.dropped]
        if self.position_bias:
            lines.append(f"  position bias: {self.position_bias}")
        return "\n".join(lines)


def check_family(checkpoint: Checkpoint, family: str, arch: str, inflating: bool = False) -> None:
    """The checkpoint is of ``family``: what ``arch`` builds, or with ``inflating``, what it inflates from."""
    if checkpoint.family != family:
        title = FAMILIES[family].title
        wanted = f"{arch!r} takes {title} weights" if inflating else f"arch {arch!r} is {title}"
        raise CheckpointError(f"{checkpoint.origin} is a {FAMILIES[checkpoint.family].title} checkpoint; {wanted}")


def check_architecture(checkpoint: Checkpoint, requested: Mapping[str, Any], arch: str) -> None:
    """One error naming every size on which the checkpoint and the requested model disagree."""
    differ = [key for key in CHECKED_SIZES if _size(checkpoint.sizes.get(key)) != _size(requested.get(key))]
    if differ:
        found = ", ".join(f"{key} {_size(checkpoint.sizes.get(key))}" for key in differ)
        wanted = ", ".join(f"{key} {_size(requested.get(key))}" for key in differ)
        raise CheckpointError(f"{checkpoint.origin} does not fit arch {arch!r}: the checkpoint has {found}; "
                              f"{arch!r} expects {wanted}")


def _size(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else (value or 0)


def load_into(model: nn.Module, checkpoint: Checkpoint) -> LoadReport:
    """Copy ``checkpoint`` into ``model`` (built at its target size); strict except for the head and mask token."""
    report = LoadReport(source=checkpoint.origin, format=checkpoint.format, conversions=list(checkpoint.conversions))
    target = model.state_dict()
    state = dict(checkpoint.state)
    image_model = model.patch_embed.proj.weight.ndim == 4  # video tables must match: no rule resizes them
    for key, value in list(state.items()):
        if (image_model and key.endswith("relative_position_bias_table") and key in target
                and value.shape != target[key].shape):
            state[key] = resize_bias_table(value, table_window(target[key].shape[0]))
            report.resized.append(f"{key} {tuple(value.shape)} -> {tuple(target[key].shape)} (bicubic)")
    _fit_optional(state, target, "mask_token", report, "SimMIM mask token")
    _fit_head(state, target, report)
    optional = {"head.fc.weight", "head.fc.bias", "mask_token"}
    if checkpoint.format == "hf" and "norm.weight" not in state:  # an HF Swinv2Backbone ends without the final norm
        report.reinitialized.append("final norm (norm): not in the checkpoint (an HF backbone has none)")
        optional |= {"norm.weight", "norm.bias"}
    unexpected = sorted(set(state) - set(target))
    missing = sorted(set(target) - set(state) - optional)
    mismatched = [f"{key} {tuple(state[key].shape)} vs {tuple(target[key].shape)}"
                  for key in state if key in target and state[key].shape != target[key].shape]
    if unexpected or missing or mismatched:
        problems = [f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} ({len(keys)})"
                    for label, keys in (("unexpected", unexpected), ("missing", missing),
                                        ("shape checkpoint vs model", mismatched)) if keys]
        raise CheckpointError(f"{checkpoint.origin} does not fit the model; " + "; ".join(problems))
    model.load_state_dict(state, strict=False)
    report.loaded = len(state)
    if FAMILIES[checkpoint.family].v2:
        source = checkpoint.pretrained_window_sizes or "not recorded in the checkpoint"
        built = [s.blocks[0].window_size[0] for s in model.layers] if image_model else list(model.window_size)
        report.position_bias = (f"coordinates normalized by windows {model.pretrained_window_sizes()} "
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
