"""SimMIM random masking, shared by the data pipelines and the models.

The official recipe masks square units of ``mask_patch_size`` pixels (32), chosen uniformly without
replacement, with a fixed count ``ceil(units * ratio)`` per image (22 of 36 at 192 px), and hands the
model a token-resolution mask (48 x 48 at 192 px with 4 px patches).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


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
