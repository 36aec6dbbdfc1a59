"""The canonical form every checkpoint format is read into (:mod:`swinssl.weights.formats`, :mod:`swinssl.weights.hf`)
and a transfer loads from (:mod:`swinssl.weights.transfer`), and the one error every step raises."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from swinssl.models.registry import EncoderSpec


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message says what was expected and what was found."""


@dataclass
class Checkpoint:
    """An encoder's weights in timm's layout, with the facts a transfer needs.

    ``pretrained_window_sizes`` holds, per stage, the window the Swin V2 position-bias coordinates were normalized by
    (what a model moved from this one passes as ``pretrained_window_sizes``), or the V1 bias-table window; None when the source does
    not record it (plain timm state dicts). Video checkpoints give a (t, h, w) window per stage.
    ``sizes`` are the encoder sizes read off the tensor shapes (``embed_dim``, ``depths``, ``num_heads``,
    ``patch_size``, ``extra_norm_period``); ``origin`` names where the weights came from (a path, hub name or URL).
    """

    format: str
    family: str
    state: dict[str, torch.Tensor]
    sizes: dict[str, Any]
    pretrained_window_sizes: list[int] | list[list[int]] | None = None
    decoder: dict[str, torch.Tensor] | None = None
    # a swinssl run's other tensors (a segmenter's heads, a packed decoder's 3x3 layer), named from its model
    task_state: dict[str, torch.Tensor] | None = None
    hparams: dict[str, Any] | None = None
    conversions: list[str] = field(default_factory=list)
    origin: str = "<state dict>"
    sha256: str | None = None  # of the file a hub name or URL resolved to, recorded by the runs that load it

    @property
    def encoder_settings(self) -> dict[str, Any]:
        """The encoder settings a swinssl checkpoint recorded: the ``encoder`` hyper-parameter of this version
        (an :class:`~swinssl.models.registry.EncoderSpec`), or the flat ones of earlier versions; else none."""
        hparams = dict(self.hparams or {})
        nested = hparams.get("encoder")
        if isinstance(nested, Mapping) and "arch" in nested:
            return dict(nested)
        flat = {key: value for key, value in hparams.items() if key in EncoderSpec.names()}
        return {**flat, **(nested or {})}

    def task_tensors(self, module: str) -> dict[str, torch.Tensor]:
        """The saved tensors of the run model's ``module`` (``spread``, ``decode_head``), named within it."""
        return {key.removeprefix(f"{module}."): value for key, value in (self.task_state or {}).items()
                if key.startswith(f"{module}.")}

    @property
    def num_classes(self) -> int:
        head = self.state.get("head.fc.weight")
        return 0 if head is None else int(head.shape[0])
