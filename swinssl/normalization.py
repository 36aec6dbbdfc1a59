"""The ImageNet mean and standard deviation every pipeline normalizes images with, and the way back to pixels."""

from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation of ``(..., 3, H, W)`` images, to [0, 1] for image grids."""
    mean = images.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(3, 1, 1)
    return (images * std + mean).clamp(0.0, 1.0)
