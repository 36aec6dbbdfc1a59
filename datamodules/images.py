"""Image shards -> SimMIM batches: ``{"image", "mask", "label", "skipped"}``.

Streaming as in :mod:`.streaming`; validation draws per-sample fixed masks, so its loss is comparable
from epoch to epoch.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image

from swinssl.masking import MaskGenerator

from .shards import SkipCounter
from .streaming import Decoder, ShardDataModule

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation of ``(..., 3, H, W)`` images, to [0, 1] for image grids."""
    mean = images.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(3, 1, 1)
    return (images * std + mean).clamp(0.0, 1.0)


def random_resized_crop(img_size: int, scale: Sequence[float], ratio: Sequence[float]) -> A.RandomResizedCrop:
    """Area fraction in ``scale``, aspect ratio in ``ratio``, resized to a square of ``img_size`` (bilinear)."""
    return A.RandomResizedCrop(
        size=(img_size, img_size), scale=tuple(scale), ratio=tuple(ratio), interpolation=cv2.INTER_LINEAR
    )


def train_transform(
    img_size: int, crop_scale: Sequence[float], crop_ratio: Sequence[float], hflip: float
) -> A.Compose:
    """The official SimMIM augmentation: random resized crop and horizontal flip."""
    return A.Compose(
        [
            random_resized_crop(img_size, crop_scale, crop_ratio),
            A.HorizontalFlip(p=hflip),
            A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
            ToTensorV2(),
        ]
    )


def eval_transform(img_size: int) -> A.Compose:
    """Shorter side to ``img_size``, then the central square: deterministic."""
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=img_size, interpolation=cv2.INTER_LINEAR),
            A.CenterCrop(height=img_size, width=img_size),
            A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
            ToTensorV2(),
        ]
    )


def load_rgb(sample: dict) -> Image.Image:
    """The sample's image (the first of ``IMAGE_KEYS`` present) as an RGB PIL image."""
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        raise KeyError(f"no image ({'|'.join(IMAGE_KEYS)}) among keys {sorted(sample)}")
    with Image.open(io.BytesIO(sample[key])) as image:
        return image.convert("RGB")


class DecodeStage(Decoder):
    """Raw sample -> ``{"image", "mask", "label"}`` (label -1 when the sample has none).

    With ``fixed_masks`` the mask is drawn from a generator seeded by the sample key, so every pass over
    the validation set masks the same units.
    """

    def __init__(
        self, transform: A.Compose, masks: MaskGenerator, counter: SkipCounter, fixed_masks: bool = False
    ) -> None:
        super().__init__(counter)
        self.transform = transform
        self.masks = masks
        self.fixed_masks = fixed_masks

    def start(self) -> None:
        if torch.utils.data.get_worker_info() is not None:
            cv2.setNumThreads(0)  # one thread per worker; OpenCV's own pool oversubscribes the cores
        # The Compose arrives pickled with the same RNG state in every worker: reseed it from torch,
        # which the loader seeds differently per worker.
        self.transform.set_random_seed(int(torch.randint(2**31 - 1, ())))

    def decode(self, sample: dict) -> dict:
        pixels = np.asarray(load_rgb(sample))
        generator = None
        if self.fixed_masks:
            generator = torch.Generator().manual_seed(zlib.crc32(sample["__key__"].encode()))
        return {
            "image": self.transform(image=pixels)["image"],
            "mask": self.masks(generator=generator),
            "label": int(sample["cls"]) if "cls" in sample else -1,
        }


class ImageShardDataModule(ShardDataModule):
    """SimMIM (and labeled) image batches from WebDataset shards; ``seed`` also fixes the masks."""

    def __init__(
        self,
        shards: str | Sequence[str],
        val_shards: str | Sequence[str] | None = None,
        batch_size: int = 64,
        num_workers: int = 4,
        epoch_size: int = 1_281_167,
        shuffle_buffer: int = 2000,
        img_size: int = 192,
        mask_patch_size: int = 32,
        model_patch_size: int = 4,
        mask_ratio: float = 0.6,
        crop_scale: Sequence[float] = (0.67, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__(shards, val_shards, batch_size, num_workers, epoch_size, shuffle_buffer, seed)
        # Built here so that a bad size fails before any model is built.
        self.masks = MaskGenerator(img_size, mask_patch_size, model_patch_size, mask_ratio)
        self.train_transform = train_transform(img_size, crop_scale, crop_ratio, hflip)
        self.eval_transform = eval_transform(img_size)

    def decoder(self, counter: SkipCounter, train: bool) -> DecodeStage:
        if train:
            return DecodeStage(self.train_transform, self.masks, counter)
        # Per-sample fixed masks keep the validation loss comparable from epoch to epoch.
        return DecodeStage(self.eval_transform, self.masks, counter, fixed_masks=True)
