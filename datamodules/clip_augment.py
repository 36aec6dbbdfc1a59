"""Augmenting a clip with one random draw for all its frames (albumentations), the official Video Swin views
(short-side resize, crops), RandAugment for Something-Something, and the normalised tensor."""

from __future__ import annotations

from collections.abc import Mapping

import albumentations as A
import cv2
import numpy as np
import torch

from swinssl.normalization import IMAGENET_MEAN, IMAGENET_STD

# imgaug's magnitude scale, on which the official SSv2 config's RandAugment(n=4, m=7) is given.
MAX_MAGNITUDE = 30


class ClipTransform:
    """An albumentations pipeline applied to every frame of a clip with one random draw.

    The frames go in as extra targets of one call (``additional_targets``), which shares the draw as the
    ``images=`` target does but runs each op frame by frame: resize, crop and flip of 32 frames of
    256 x 340 took 2.8 ms this way and 34 ms with ``images=``, which resizes and flips the stacked array.
    """

    def __init__(self, transforms: list, num_frames: int) -> None:
        self.names = [f"frame{i}" for i in range(1, num_frames)]
        self.compose = A.Compose(transforms, additional_targets=dict.fromkeys(self.names, "image"))

    def set_random_seed(self, seed: int) -> None:
        self.compose.set_random_seed(seed)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """uint8 ``(T, H, W, 3)`` -> uint8 ``(T, h, w, 3)``."""
        out = self.compose(image=frames[0], **dict(zip(self.names, frames[1:])))
        return np.stack([out["image"], *(out[name] for name in self.names)])


def rand_augment_ops(magnitude: float) -> list[A.BasicTransform]:
    """RandAugment's operations from albumentations, for ``SomeOf(n=num_ops)``.

    ``magnitude`` is on imgaug's 0-30 scale, where the official SSv2 config gives 7. Each op's parameter
    is drawn uniformly up to ``magnitude / 30`` of its classic RandAugment maximum: rotate 30 deg, shear
    16.7 deg (slope 0.3), translate 45% of the side, colour/contrast/brightness factor 1 +- 0.9, sharpen
    blend 0.9, posterize to 4 bits, solarize above a threshold falling from 255 to 0. AutoContrast,
    Equalize, Invert and Identity have no magnitude. Cutout is left out: random erasing does that job.
    Geometric ops fill with grey 128, as imgaug does.
    """
    level = magnitude / MAX_MAGNITUDE

    def affine(**kwargs) -> A.Affine:
        return A.Affine(**kwargs, fill=128, p=1)

    def factor(name: str) -> A.ColorJitter:
        jitter = {key: 0 for key in ("brightness", "contrast", "saturation", "hue")}
        return A.ColorJitter(**{**jitter, name: (1 - 0.9 * level, 1 + 0.9 * level)}, p=1)

    rotate, shear, shift = 30 * level, 16.7 * level, 0.45 * level
    return [
        A.NoOp(p=1),
        A.AutoContrast(p=1),
        A.Equalize(p=1),
        A.InvertImg(p=1),
        affine(rotate=(-rotate, rotate)),
        affine(shear={"x": (-shear, shear), "y": 0}),
        affine(shear={"x": 0, "y": (-shear, shear)}),
        affine(translate_percent={"x": (-shift, shift), "y": 0}),
        affine(translate_percent={"x": 0, "y": (-shift, shift)}),
        factor("saturation"),
        factor("contrast"),
        factor("brightness"),
        A.Sharpen(alpha=(0, 0.9 * level), lightness=(1, 1), p=1),
        A.Posterize(num_bits=8 - round(4 * level), p=1),
        A.Solarize(threshold_range=(1 - level, 1), p=1),
    ]


# (x / 255 - mean) / std as x * scale + shift, per channel of a (3, T, H, W) clip.
_SCALE = (1 / (255 * torch.tensor(IMAGENET_STD))).view(3, 1, 1, 1)
_SHIFT = (-torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)).view(3, 1, 1, 1)


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` -> ImageNet-normalised float32 ``(3, T, H, W)``.

    One converting copy into a channel-first buffer, then in-place arithmetic: 2.9 ms for 32 frames of
    224 px on one core, against 17 ms for the same maths out of place on the frame-last array.
    """
    clip = torch.empty((3, *frames.shape[:3]))
    clip.copy_(torch.from_numpy(frames).permute(3, 0, 1, 2))
    return clip.mul_(_SCALE).add_(_SHIFT)


def crop_views(frames: np.ndarray, size: int, count: int) -> list[np.ndarray]:
    """``count`` square crops of ``(T, H, W, 3)`` frames: 1 = centre, 3 = start, centre, end of the long
    side (the official ThreeCrop), centred across the short side."""
    height, width = frames.shape[1:3]
    top, left = (height - size) // 2, (width - size) // 2
    if count == 1:
        return [frames[:, top : top + size, left : left + size]]
    if width >= height:
        return [frames[:, top : top + size, x : x + size] for x in (0, left, width - size)]
    return [frames[:, y : y + size, left : left + size] for y in (0, top, height - size)]


def short_side_resize(short_side: int) -> A.SmallestMaxSize:
    return A.SmallestMaxSize(max_size=short_side, interpolation=cv2.INTER_LINEAR)


def build_rand_augment(options: Mapping[str, float]) -> A.SomeOf:
    if set(options) != {"num_ops", "magnitude"}:
        raise ValueError(f"rand_augment takes num_ops and magnitude, got {dict(options)}")
    num_ops, magnitude = int(options["num_ops"]), float(options["magnitude"])
    if num_ops < 1 or not 0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(
            f"rand_augment needs num_ops >= 1 and magnitude in [0, {MAX_MAGNITUDE}], got {dict(options)}"
        )
    return A.SomeOf(rand_augment_ops(magnitude), n=num_ops, p=1)
