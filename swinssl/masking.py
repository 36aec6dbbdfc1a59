"""SimMIM random masking of images and clips, shared by the data pipelines and the models.

The official recipe masks square units of ``mask_patch_size`` pixels (32), chosen uniformly without
replacement, with a fixed count ``ceil(units * ratio)`` per image (22 of 36 at 192 px), and hands the
model a token-resolution mask (48 x 48 at 192 px with 4 px patches).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from swinssl.models.registry import family

if TYPE_CHECKING:
    import torch


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def check_visible(masked: int, units: int, what: str) -> None:
    """Masking every unit leaves nothing to reconstruct from: refuse it rather than train on it."""
    if masked >= units:
        raise ValueError(f"mask_ratio hides all {units} mask units of a {what}, leaving nothing visible; use smaller "
                         "mask units (mask_patch_size) or a lower mask_ratio")


class MaskGenerator:
    """Draws one token-level mask per call: a ``(H / model_patch, W / model_patch)`` uint8 tensor.

    Randomness comes from torch's global generator (or ``generator=``), which DataLoader seeds
    differently in every worker; NumPy's global state is not reseeded per worker and would repeat masks.
    """

    def __init__(
        self,
        input_size: int | tuple[int, int] = 192,
        mask_patch_size: int = 32,
        model_patch_size: int = 4,
        mask_ratio: float = 0.6,
    ) -> None:
        height, width = _pair(input_size)
        if mask_patch_size % model_patch_size:
            raise ValueError(
                f"mask_patch_size {mask_patch_size} is not a multiple of the model patch size "
                f"{model_patch_size}; use a multiple such as {model_patch_size * 8}"
            )
        if height % mask_patch_size or width % mask_patch_size:
            raise ValueError(
                f"image size {height}x{width} is not divisible by mask_patch_size {mask_patch_size}; "
                f"use an image size that is a multiple of {mask_patch_size}"
            )
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie strictly between 0 and 1, got {mask_ratio}")
        self.input_size = (height, width)
        self.mask_patch_size = mask_patch_size
        self.model_patch_size = model_patch_size
        self.mask_ratio = mask_ratio
        self.units = (height // mask_patch_size, width // mask_patch_size)
        self.scale = mask_patch_size // model_patch_size
        self.mask_count = math.ceil(self.units[0] * self.units[1] * mask_ratio)
        check_visible(self.mask_count, self.units[0] * self.units[1], f"{height}x{width} px")

    @property
    def token_shape(self) -> tuple[int, int]:
        return self.units[0] * self.scale, self.units[1] * self.scale

    def __call__(self, generator: torch.Generator | None = None) -> torch.Tensor:
        import torch  # here, not at import: the recipe checks build a MaskGenerator before torch is loaded

        num_units = self.units[0] * self.units[1]
        chosen = torch.randperm(num_units, generator=generator)[: self.mask_count]
        units = torch.zeros(num_units, dtype=torch.uint8)
        units[chosen] = 1
        units = units.view(self.units)
        return units.repeat_interleave(self.scale, 0).repeat_interleave(self.scale, 1)

    def __repr__(self) -> str:
        return (
            f"MaskGenerator(input_size={self.input_size}, mask_patch_size={self.mask_patch_size}, "
            f"model_patch_size={self.model_patch_size}, mask_ratio={self.mask_ratio}, "
            f"mask_count={self.mask_count})"
        )


class UniformMaskGenerator(MaskGenerator):
    """UM-MAE's uniform masking (Li et al., 2022), drawn at token resolution for a packed encoder input.

    Of every 2 x 2 group of mask units one, chosen uniformly, is kept; the other three are dropped (the encoder
    never sees them). Of the kept units, ``ceil(units * mask_ratio) - 3 * groups`` chosen uniformly are hidden
    again behind the mask token (secondary masking). A draw is a ``(H / model_patch, W / model_patch)`` uint8
    tensor: :data:`VISIBLE` (0), :data:`HIDDEN` (1, kept but masked) or :data:`DROPPED` (2), so ``mask > 0`` is
    what the model must reconstruct, as in SimMIM. The unit must be the encoder's coarsest merge unit
    (``merge_unit``, 32 px for patch 4 and 4 stages), so patch merging never mixes two packed units.
    """

    VISIBLE, HIDDEN, DROPPED = 0, 1, 2

    def __init__(
        self,
        input_size: int | tuple[int, int] = 192,
        mask_patch_size: int = 32,
        model_patch_size: int = 4,
        mask_ratio: float = 0.8125,
        merge_unit: int = 32,
    ) -> None:
        if mask_patch_size != merge_unit:
            raise ValueError(f"uniform packing needs mask_patch_size = the encoder's coarsest merge unit "
                             f"({merge_unit} px: patch x 2^(stages - 1)), got {mask_patch_size}")
        height, width = _pair(input_size)
        if height % (2 * mask_patch_size) or width % (2 * mask_patch_size):
            raise ValueError(f"uniform packing groups mask units 2 x 2: image size {height}x{width} must be a multiple "
                             f"of {2 * mask_patch_size} px (2 mask units)")
        self.secondary = uniform_secondary_count(height * width // mask_patch_size**2, mask_ratio)
        super().__init__(input_size, mask_patch_size, model_patch_size, mask_ratio)
        self.groups = self.units[0] * self.units[1] // 4

    def __call__(self, generator: torch.Generator | None = None) -> torch.Tensor:
        import torch

        rows, cols = self.units[0] // 2, self.units[1] // 2
        slots = torch.randint(4, (self.groups,), generator=generator)
        kept = torch.full((self.groups,), self.VISIBLE, dtype=torch.uint8)
        kept[torch.randperm(self.groups, generator=generator)[: self.secondary]] = self.HIDDEN
        units = torch.full((self.groups, 4), self.DROPPED, dtype=torch.uint8)
        units[torch.arange(self.groups), slots] = kept
        # (rows, cols, 2, 2) groups -> the (2 rows, 2 cols) unit grid
        units = units.view(rows, cols, 2, 2).permute(0, 2, 1, 3).reshape(self.units)
        return units.repeat_interleave(self.scale, 0).repeat_interleave(self.scale, 1)

    def __repr__(self) -> str:
        return (f"UniformMaskGenerator(input_size={self.input_size}, mask_patch_size={self.mask_patch_size}, "
                f"kept={self.groups} of {4 * self.groups} units, secondary={self.secondary})")


def uniform_secondary_count(units: int, mask_ratio: float) -> int:
    """Kept units that uniform packing hides again so that ``ceil(units * mask_ratio)`` units are hidden in all.

    Dropping three units of every four is fixed, so the possible ratios are 3/4 + k / units for k = 0 ..
    units / 4 - 1 (at 192 px with 32 px units: 0.75 to 0.972 in steps of 1/36).
    """
    groups = units // 4
    secondary = math.ceil(units * mask_ratio) - 3 * groups
    if mask_ratio < 0.75 or not 0 <= secondary < groups:
        raise ValueError(f"uniform packing drops 3 of every 4 mask units and can hide 0 to {groups - 1} of the "
                         f"{groups} kept ones: mask_ratio must lie in [0.75, {1 - 1 / units:.4g}] "
                         f"(0.75 + k/{units}), got {mask_ratio}")
    return secondary


PACKINGS = ("uniform",)


def fixed_generator(key: str) -> torch.Generator:
    """A generator seeded by a sample's key: every pass over a validation set masks each sample the same way,
    so its loss is comparable from epoch to epoch."""
    import zlib

    import torch

    return torch.Generator().manual_seed(zlib.crc32(key.encode()))


def apply_mask_token(tokens: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor | None) -> torch.Tensor:
    """Channels-last ``tokens`` (B, ..., C) with the positions where ``mask`` (B, ...) is 1 replaced by
    ``mask_token`` (1, 1, C): SimMIM's masking, for image and video encoders alike."""
    if mask_token is None:
        raise ValueError("this encoder has no mask token; build it with mask_token=True to pass a mask")
    if mask.shape[1:] != tokens.shape[1:-1]:
        grid = tuple(tokens.shape[1:-1])
        raise ValueError(f"mask of shape {tuple(mask.shape[1:])} does not match the {grid} token grid")
    weight = mask.unsqueeze(-1).to(tokens.dtype)
    return tokens * (1.0 - weight) + mask_token.to(tokens.dtype) * weight


MASK_MODES = ("tube", "cube")


class VideoMaskGenerator:
    """Draws one token-level clip mask per call: a ``(T / patch_t, H / model_patch, W / model_patch)`` uint8 tensor.

    ``mode="tube"`` (VideoMAE's tube masking) masks the same spatial units on every frame: one
    :class:`MaskGenerator` draw (:class:`UniformMaskGenerator` with ``packing="uniform"``) repeated over time, so a masked patch cannot be copied from a neighbouring
    frame. ``mode="cube"`` masks cells of ``mask_frames`` frames x ``mask_patch_size`` pixels, drawn
    independently in time as well, ``ceil(cells * ratio)`` per clip.
    """

    def __init__(
        self,
        num_frames: int = 16,
        input_size: int | tuple[int, int] = 192,
        mask_patch_size: int = 32,
        model_patch_size: tuple[int, int, int] | list[int] = family("video_swinv2").patch_size,
        mask_ratio: float = 0.9,
        mode: str = "tube",
        mask_frames: int = 4,
        packing: str | None = None,
        merge_unit: int = 32,
    ) -> None:
        frames_per_token, height_patch, width_patch = (int(n) for n in model_patch_size)
        if height_patch != width_patch:
            raise ValueError(f"masking needs square spatial patches, got {height_patch}x{width_patch}")
        if mode not in MASK_MODES:
            raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
        if num_frames % frames_per_token:
            raise ValueError(f"num_frames {num_frames} is not a multiple of the patch's {frames_per_token} frames")
        if mode == "cube" and (mask_frames % frames_per_token or num_frames % mask_frames):
            raise ValueError(f"mask_frames {mask_frames} must be a multiple of the patch's {frames_per_token} frames "
                             f"and divide num_frames {num_frames}")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie strictly between 0 and 1, got {mask_ratio}")
        if packing is not None and (packing not in PACKINGS or mode != "tube"):
            raise ValueError(f"packing {packing!r} keeps the time axis whole: it needs mask_mode=tube and packing one "
                             f"of {PACKINGS}")
        # tube: one spatial draw per clip; cube: only the spatial grid is used, the count is the cells'
        if packing is None:
            self.spatial = MaskGenerator(input_size, mask_patch_size, height_patch, mask_ratio if mode == "tube" else 0.5)
        else:
            self.spatial = UniformMaskGenerator(input_size, mask_patch_size, height_patch, mask_ratio, merge_unit)
        self.packing = packing
        self.time_tokens = num_frames // frames_per_token
        self.mode, self.mask_ratio = mode, mask_ratio
        self.cell_tokens = self.time_tokens if mode == "tube" else mask_frames // frames_per_token
        self.cells = self.time_tokens // self.cell_tokens
        self.mask_count = math.ceil(self.cells * self.spatial.units[0] * self.spatial.units[1] * mask_ratio)
        check_visible(self.mask_count, self.cells * self.spatial.units[0] * self.spatial.units[1], "clip")

    @property
    def token_shape(self) -> tuple[int, int, int]:
        return (self.time_tokens, *self.spatial.token_shape)

    def __call__(self, generator: torch.Generator | None = None) -> torch.Tensor:
        import torch

        if self.mode == "tube":
            return self.spatial(generator).unsqueeze(0).expand(self.time_tokens, -1, -1).contiguous()
        units = self.spatial.units
        count = self.cells * units[0] * units[1]
        cells = torch.zeros(count, dtype=torch.uint8)
        cells[torch.randperm(count, generator=generator)[: self.mask_count]] = 1
        scale = self.spatial.scale
        cells = cells.view(self.cells, *units).repeat_interleave(self.cell_tokens, 0)
        return cells.repeat_interleave(scale, 1).repeat_interleave(scale, 2)

    def __repr__(self) -> str:
        return (
            f"VideoMaskGenerator(mode={self.mode!r}, token_shape={self.token_shape}, mask_ratio={self.mask_ratio}, "
            f"cell_tokens={self.cell_tokens}, mask_count={self.mask_count} of "
            f"{self.cells * self.spatial.units[0] * self.spatial.units[1]} cells)"
        )
