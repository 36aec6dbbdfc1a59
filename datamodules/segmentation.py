"""Image + mask shards -> semantic segmentation batches: ``{"image", "mask", "skipped"}``.

The augmentation is mmsegmentation's ADE20K pipeline (``configs/_base_/datasets/ade20k.py``) in
albumentations, which moves a mask with its image (nearest-neighbour for labels, so a label is never
blended with another). Training: rescale keeping the aspect ratio within ``scale`` times a ratio drawn
from ``ratio_range``; a random crop of ``crop_size`` that is drawn again (up to 10 times) while one class
covers ``cat_max_ratio`` or more of its labelled pixels; horizontal flip; photometric distortion;
normalisation; padding to ``crop_size`` (image 0, i.e. the mean colour, label 255). Validation: the same
rescale at ``eval_scale`` without randomness; a batch is padded to its largest image, rounded up to
``size_divisor`` (image 0, label 255). Labels are scored at the rescaled size (mmseg scores at the
original size; nearest-resized labels give nearly the same numbers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2

from swinssl.normalization import IMAGENET_MEAN, IMAGENET_STD

from .classification import LabeledShards
from .images import load_rgb
from .masks import check_labels, label_values, read_mask, reduce_zero_label
from .shards import IGNORE_INDEX, MASK_KEY, SEGMENTATION, Shards, SkipCounter, describe_classes
from .streaming import Decoder, ShardDataModule, StreamSpec, collate

# mmseg's PhotoMetricDistortion defaults (mmseg/datasets/transforms/transforms.py), which the ADE20K configs use.
PHOTOMETRIC = {"brightness_delta": 32, "contrast_range": (0.5, 1.5), "saturation_range": (0.5, 1.5), "hue_delta": 18}
CROP_TRIES = 10  # mmseg RandomCrop: crops drawn again at most this many times while one class dominates


def size_hw(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """Two sides from one or two (``crop_size``: height, width; ``scale``: long and short limits); both positive."""
    sides = (value, value) if isinstance(value, int) else tuple(value)
    if len(sides) != 2 or not all(isinstance(side, int) and side > 0 for side in sides):
        raise ValueError(f"data.{name} must be a positive size or a pair of them, got {value}")
    return sides


def rescaled_size(height: int, width: int, scale: Sequence[int], ratio: float) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size with the long side within ``max(scale) * ratio`` and the
    short side within ``min(scale) * ratio``, rounded as mmcv rounds."""
    factor = min(max(scale) * ratio / max(height, width), min(scale) * ratio / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


class RandomRescale(A.DualTransform):
    """Rescale keeping the aspect ratio to ``scale`` (long, short limits) times a ratio drawn from
    ``ratio_range`` (mmseg ``RandomResize(scale, ratio_range, keep_ratio=True)``); bilinear for the image,
    nearest for the mask. ``ratio_range=(1, 1)`` is the deterministic test-time resize."""

    def __init__(self, scale: Sequence[int], ratio_range: Sequence[float] = (1.0, 1.0), p: float = 1.0) -> None:
        super().__init__(p=p)
        self.scale, self.ratio_range = tuple(scale), tuple(ratio_range)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        return {"size": rescaled_size(height, width, self.scale, self.py_random.uniform(*self.ratio_range))}

    def apply(self, img: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return cv2.resize(img, size[::-1], interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return cv2.resize(mask, size[::-1], interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "ratio_range")


class CategoryBalancedCrop(A.DualTransform):
    """A random crop of at most ``crop_size`` (smaller images are cropped whole, and padded later), drawn again
    up to ``CROP_TRIES`` times while one class covers ``cat_max_ratio`` or more of the crop's labelled pixels
    or the crop holds a single class (mmseg ``RandomCrop(cat_max_ratio=0.75)``); 1.0 disables the check."""

    def __init__(self, crop_size: tuple[int, int], cat_max_ratio: float = 0.75, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.crop_size, self.cat_max_ratio = tuple(crop_size), cat_max_ratio

    def draw(self, height: int, width: int) -> tuple[int, int, int, int]:
        crop_h, crop_w = min(self.crop_size[0], height), min(self.crop_size[1], width)
        top = self.py_random.randint(0, height - crop_h)
        left = self.py_random.randint(0, width - crop_w)
        return top, top + crop_h, left, left + crop_w

    def balanced(self, mask: np.ndarray, box: tuple[int, int, int, int]) -> bool:
        top, bottom, left, right = box
        labels, counts = np.unique(mask[top:bottom, left:right], return_counts=True)
        counts = counts[labels != IGNORE_INDEX]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        box = self.draw(height, width)
        if self.cat_max_ratio < 1:
            for _ in range(CROP_TRIES):
                if self.balanced(data["mask"], box):
                    break
                box = self.draw(height, width)
        return {"box": box}

    def apply(self, img: np.ndarray, box: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        top, bottom, left, right = box
        return np.ascontiguousarray(img[top:bottom, left:right])

    def apply_to_mask(self, mask: np.ndarray, box: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        return self.apply(mask, box)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("crop_size", "cat_max_ratio")


class PhotoMetricDistortion(A.ImageOnlyTransform):
    """mmseg's ``PhotoMetricDistortion`` on a uint8 RGB image, each step with probability 1/2: add a brightness
    delta; scale contrast (before or after the colour steps, a coin decides); scale saturation and shift hue
    in OpenCV's HSV. albumentations' colour transforms differ (multiplicative brightness, additive
    saturation), hence this one."""

    def __init__(self, brightness_delta: float = 32, contrast_range: Sequence[float] = (0.5, 1.5),
                 saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: int = 18, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.brightness_delta, self.hue_delta = brightness_delta, hue_delta
        self.contrast_range, self.saturation_range = tuple(contrast_range), tuple(saturation_range)

    def get_params(self) -> dict[str, Any]:
        rng = self.py_random

        def maybe(draw):
            return draw() if rng.random() < 0.5 else None

        return {
            "brightness": maybe(lambda: rng.uniform(-self.brightness_delta, self.brightness_delta)),
            "contrast_first": rng.random() < 0.5,
            "contrast": maybe(lambda: rng.uniform(*self.contrast_range)),
            "saturation": maybe(lambda: rng.uniform(*self.saturation_range)),
            "hue": maybe(lambda: rng.randint(-self.hue_delta, self.hue_delta)),
        }

    def apply(self, img: np.ndarray, brightness=None, contrast_first=True, contrast=None, saturation=None, hue=None,
              **params: Any) -> np.ndarray:
        def convert(pixels: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
            return np.clip(pixels.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

        if brightness is not None:
            img = convert(img, beta=brightness)
        if contrast is not None and contrast_first:
            img = convert(img, alpha=contrast)
        if saturation is not None or hue is not None:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            if saturation is not None:
                hsv[..., 1] = convert(hsv[..., 1], alpha=saturation)
            if hue is not None:
                hsv[..., 0] = (hsv[..., 0].astype(int) + hue) % 180
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if contrast is not None and not contrast_first:
            img = convert(img, alpha=contrast)
        return img

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("brightness_delta", "contrast_range", "saturation_range", "hue_delta")


def train_transform(crop_size: tuple[int, int], scale: Sequence[int], ratio_range: Sequence[float],
                    cat_max_ratio: float, hflip: float, photometric: Mapping[str, Any] | None) -> A.Compose:
    """The mmseg ADE20K training pipeline on an RGB uint8 image and its (H, W) label mask."""
    return A.Compose([
        RandomRescale(scale, ratio_range),
        CategoryBalancedCrop(crop_size, cat_max_ratio),
        A.HorizontalFlip(p=hflip),
        *([PhotoMetricDistortion(**photometric)] if photometric is not None else []),
        A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        A.PadIfNeeded(*crop_size, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0,
                      fill_mask=IGNORE_INDEX),
        ToTensorV2(),
    ])  # fmt: skip


def eval_transform(eval_scale: Sequence[int]) -> A.Compose:
    """Deterministic rescale keeping the ratio to ``eval_scale``, normalised (padding is the batch's)."""
    return A.Compose([RandomRescale(eval_scale), A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()])


def pad_collate(samples: list[dict], counter: SkipCounter, size_divisor: int | None = None) -> dict:
    """:func:`~.streaming.collate` after padding every sample bottom/right to the batch's largest height and
    width, rounded up to ``size_divisor``: images with 0, masks with the ignore index."""
    if samples:
        height = max(sample["image"].shape[-2] for sample in samples)
        width = max(sample["image"].shape[-1] for sample in samples)
        if size_divisor:
            height, width = (-(-side // size_divisor) * size_divisor for side in (height, width))

        def padded(tensor: torch.Tensor, value: int) -> torch.Tensor:
            return F.pad(tensor, (0, width - tensor.shape[-1], 0, height - tensor.shape[-2]), value=value)

        samples = [{**sample, "image": padded(sample["image"], 0), "mask": padded(sample["mask"], IGNORE_INDEX)}
                   for sample in samples]
    return collate(samples, counter)


class SegmentationDecodeStage(Decoder):
    """Raw sample -> ``{"image", "mask"}``: the mask (``seg.png``) checked against its image's size and the
    label range (``values``: how many values below the ignore index name a class; None: unchecked),
    reduced (``reduce_zero_label``), then image and mask transformed together."""

    def __init__(self, transform: A.Compose, counter: SkipCounter, values: int | None, reduce: bool) -> None:
        super().__init__(counter)
        self.transform, self.values, self.reduce = transform, values, reduce

    def reseed(self, seed: int) -> None:
        self.transform.set_random_seed(seed)  # every draw (rescale, crop, flip, photometric) is albumentations'

    def decode(self, sample: dict) -> dict:
        if MASK_KEY not in sample:
            raise KeyError(f"no mask ({MASK_KEY}) among keys {sorted(sample)}")
        image = np.asarray(load_rgb(sample))
        mask = read_mask(sample[MASK_KEY], size=(image.shape[1], image.shape[0]))
        if self.values is not None:
            check_labels(mask, self.values)
        if self.reduce:
            mask = reduce_zero_label(mask)
        out = self.transform(image=image, mask=mask)
        return {"image": out["image"], "mask": out["mask"].long()}


class SegmentationShardDataModule(LabeledShards, ShardDataModule):
    """Semantic segmentation batches from shards of image/mask pairs (``make_shards`` of an ADE20K-style or
    ``NAME.jpg`` + ``NAME.png`` folder): ``image`` float (B, 3, H, W) ImageNet-normalised, ``mask`` int64
    (B, H, W) of class indices, 255 where no class is scored (and on padding).

    The augmentation (module docstring) defaults to mmseg's ADE20K values; ``photometric`` takes
    :class:`PhotoMetricDistortion`'s arguments, or None for none. ``reduce_zero_label`` None follows the
    shards' manifest; True or False is for shards without one. ``stream`` is a
    :class:`~.streaming.StreamSpec`, or the training shards with the other stream settings as keywords.
    """

    ignore_index = IGNORE_INDEX
    same_classes_fix = "write both with the same --classes"

    def __init__(
        self,
        stream: StreamSpec | str | Sequence[str] | None = None,
        *,
        num_classes: int | None = None,
        crop_size: int | Sequence[int] = (512, 512),
        scale: Sequence[int] = (2048, 512),
        ratio_range: Sequence[float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        hflip: float = 0.5,
        photometric: Mapping[str, Any] | None = PHOTOMETRIC,
        eval_scale: Sequence[int] = (2048, 512),
        size_divisor: int | None = 32,
        reduce_zero_label: bool | None = None,
        **stream_fields: Any,
    ) -> None:
        self.crop_size = size_hw(crop_size, "crop_size")
        scale, eval_scale = size_hw(scale, "scale"), size_hw(eval_scale, "eval_scale")
        if not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"data.ratio_range must be [low, high] with 0 < low <= high, got {list(ratio_range)}")
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"data.cat_max_ratio must be in (0, 1] (1: no check), got {cat_max_ratio}")
        if size_divisor is not None and size_divisor < 1:
            raise ValueError(f"data.size_divisor must be at least 1 (or null), got {size_divisor}")
        largest = sorted(side * ratio_range[1] for side in scale)  # the largest rescaled image's short, long sides
        if any(crop > side for crop, side in zip(sorted(self.crop_size), largest, strict=True)):
            raise ValueError(
                f"data.crop_size {list(self.crop_size)} is larger than any rescaled training image (at most "
                f"{largest[1]:g} x {largest[0]:g}: data.scale {list(scale)} x data.ratio_range max {ratio_range[1]:g}"
                "), so every crop would be partly padding; use a smaller crop or a larger scale")
        super().__init__(StreamSpec().updated(stream, **stream_fields))
        self.read_labels(num_classes)
        self.reduce_zero_label = self._reduce_zero_label(reduce_zero_label)
        self.train_transform = train_transform(self.crop_size, scale, ratio_range, cat_max_ratio, hflip,
                                               None if photometric is None else {**PHOTOMETRIC, **photometric})
        self.eval_transform = eval_transform(eval_scale)
        self.size_divisor = size_divisor

    def check_set(self, data: Shards) -> None:
        """A set that says it holds no masks is refused; one without a manifest is read, and a sample without
        a mask is skipped."""
        if data.described and data.task != SEGMENTATION:
            what = f"class labels ({describe_classes(data.classes)})" if data.classes else "no labels"
            raise ValueError(
                f"{data.name} holds no masks ({MASK_KEY}): it is a set of images with {what}; segmentation needs "
                "shards of image/mask pairs: python -m swinssl.make_shards SRC OUT --classes FILE, with SRC holding "
                "images/ + annotations/ or NAME.jpg beside NAME.png")

    def _reduce_zero_label(self, wanted: bool | None) -> bool:
        """The manifests' ``reduce_zero_label`` (which must agree), else ``wanted``, else False."""
        recorded = {data.name: data.reduce_zero_label for data in (self.train_data, self.val_data)
                    if data is not None and data.reduce_zero_label is not None}
        if len(set(recorded.values())) > 1:
            (first, first_value), (second, second_value) = recorded.items()
            raise ValueError(f"the training shards {first} have reduce_zero_label={first_value} but the validation "
                             f"shards {second} have {second_value}: a mask value would mean another class in each")
        if recorded and wanted is not None and wanted not in recorded.values():
            name, value = next(iter(recorded.items()))
            raise ValueError(f"data.reduce_zero_label={wanted} but the manifest of {name} says {value}; leave "
                             "data.reduce_zero_label=null to follow it")
        return next(iter(recorded.values()), bool(wanted))

    def decoder(self, counter: SkipCounter, train: bool) -> SegmentationDecodeStage:
        classes = self.num_classes
        values = label_values(classes, self.reduce_zero_label) if classes is not None else None
        return SegmentationDecodeStage(self.train_transform if train else self.eval_transform, counter, values,
                                       self.reduce_zero_label)

    def collate_fn(self, train: bool):
        # Training crops all have crop_size; validation images keep their rescaled sizes until the batch pads them.
        return collate if train else partial(pad_collate, size_divisor=self.size_divisor)
