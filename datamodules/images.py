"""Image shards -> SimMIM batches: ``{"image", "mask", "label", "skipped"}``.

Streaming as in :mod:`.streaming`; validation draws per-sample fixed masks, so its loss is comparable
from epoch to epoch. Training decodes through :class:`CropFirstTransform`, which draws the crop before
decoding so a JPEG can be decoded at reduced scale; :func:`train_transform` on the whole decoded image
is the plain reference it is tested against (``fast_decode=False``).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image

from swinssl.masking import MaskGenerator
from swinssl.normalization import IMAGENET_MEAN, IMAGENET_STD

from .shards import SkipCounter
from .streaming import MaskingDecoder, ShardDataModule, StreamSpec

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


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


def image_bytes(sample: dict) -> bytes:
    """The encoded bytes of the sample's image: the first of ``IMAGE_KEYS`` present."""
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        raise KeyError(f"no image ({'|'.join(IMAGE_KEYS)}) among keys {sorted(sample)}")
    return sample[key]


def load_rgb(sample: dict) -> Image.Image:
    """The sample's image as an RGB PIL image."""
    with Image.open(io.BytesIO(image_bytes(sample))) as image:
        return image.convert("RGB")


# OpenCV's reduced-size read flags; with IMREAD_COLOR_RGB they decode colour at 1/2, 1/4 or 1/8 scale.
JPEG_REDUCTIONS = {
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
}  # fmt: skip
# Neither PIL nor torchvision applies EXIF orientation: the header's size must be the decoded size.
JPEG_READ = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION


class CropFirstTransform:
    """:func:`train_transform` from encoded bytes, drawing the crop from the header before decoding.

    Knowing the crop first, a JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg-turbo's
    scaled IDCT, which averages each block) whenever the crop keeps at least ``img_size`` pixels on both
    sides there: less decoding work, and less aliasing than the plain bilinear resize of the whole crop
    (the official pipeline's PIL resize averages too). The reduced image is sampled exactly where the
    resize samples the full one. JPEGs are decoded by OpenCV straight into an array (PIL's decode,
    convert and array copy cost more), and the tensor is normalised in place, already contiguous.

    The draws are those of :func:`train_transform` (the same albumentations crop and flip, seeded as
    Compose seeds them). Without a reduction (and for other formats and colour modes, decoded by PIL as
    in the reference) the output equals the reference's up to float rounding.
    """

    def __init__(self, img_size: int, crop_scale: Sequence[float], crop_ratio: Sequence[float], hflip: float) -> None:
        self.img_size = img_size
        self.crop = random_resized_crop(img_size, crop_scale, crop_ratio)
        self.flip = A.HorizontalFlip(p=hflip)
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
        self.inv_std = 1 / (torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255)

    def set_random_seed(self, seed: int) -> None:
        self.crop.set_random_seed(seed)
        self.flip.set_random_seed(seed)

    def draw(self, height: int, width: int) -> tuple[tuple[int, int, int, int], bool]:
        """The crop box ``(x_min, y_min, x_max, y_max)`` for an image of this size, and whether to flip."""
        box = self.crop.get_params_dependent_on_data({"shape": (height, width)}, {})["crop_coords"]
        return box, self.flip.should_apply()

    def reduction(self, box: tuple[int, int, int, int]) -> int:
        """The largest JPEG scale-down (8, 4, 2, else 1) that keeps the crop at least ``img_size`` wide and high."""
        side = min(box[2] - box[0], box[3] - box[1])
        return next((factor for factor in JPEG_REDUCTIONS if side >= factor * self.img_size), 1)

    def reduced_sampling(self, box: tuple[int, int, int, int], factor: int) -> np.ndarray:
        """The affine map from output pixels to the image reduced by ``factor`` that samples where
        ``cv2.resize`` samples the crop of the full image.

        The resize samples output pixel ``d`` at ``x_min + (d + 0.5) * width / S - 0.5``; full-image pixel
        ``u`` lies at ``(u + 0.5) / factor - 0.5`` in the reduced image.
        """
        x_min, y_min, x_max, y_max = box
        scale_x = (x_max - x_min) / (self.img_size * factor)
        scale_y = (y_max - y_min) / (self.img_size * factor)
        return np.array([
            [scale_x, 0.0, x_min / factor + 0.5 * scale_x - 0.5],
            [0.0, scale_y, y_min / factor + 0.5 * scale_y - 0.5],
        ])  # fmt: skip

    def __call__(self, data: bytes) -> torch.Tensor:
        with Image.open(io.BytesIO(data)) as image:  # parses the header only
            box, flip = self.draw(image.height, image.width)
            return self.render(image, data, box, flip)

    def render(self, image: Image.Image, data: bytes, box: tuple[int, int, int, int], flip: bool) -> torch.Tensor:
        """``image`` (opened on ``data``, not yet decoded) cropped to ``box``, resized, flipped if ``flip``,
        normalised: a ``(3, S, S)`` float tensor."""
        factor = 1
        if image.format == "JPEG" and image.mode in ("RGB", "L"):
            factor = self.reduction(box)
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), JPEG_READ | JPEG_REDUCTIONS.get(factor, 0))
            if pixels is None:
                raise ValueError("OpenCV could not decode this JPEG")
        else:
            pixels = np.asarray(image.convert("RGB"))
        size = (self.img_size, self.img_size)
        if factor == 1:
            x_min, y_min, x_max, y_max = box
            pixels = cv2.resize(pixels[y_min:y_max, x_min:x_max], size, interpolation=cv2.INTER_LINEAR)
        else:
            pixels = cv2.warpAffine(
                pixels, self.reduced_sampling(box, factor), size,
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE,
            )  # fmt: skip
        if flip:
            pixels = cv2.flip(pixels, 1)
        tensor = torch.from_numpy(pixels).permute(2, 0, 1).to(torch.float32, memory_format=torch.contiguous_format)
        return tensor.sub_(self.mean).mul_(self.inv_std)


class DecodeStage(MaskingDecoder):
    """Raw sample -> ``{"image", "mask", "label"}`` (label -1 when the sample has none); in training, crop, flip
    and mask come from :meth:`reseed`'s seed (masks: :class:`~.streaming.MaskingDecoder`)."""

    def __init__(
        self, transform: A.Compose, masks: MaskGenerator, counter: SkipCounter, fixed_masks: bool = False
    ) -> None:
        super().__init__(counter, masks, fixed_masks)
        self.transform = transform

    def reseed(self, seed: int) -> None:
        self.transform.set_random_seed(seed)
        super().reseed(seed)

    def decode(self, sample: dict) -> dict:
        return {
            "image": self.view(sample),
            "mask": self.mask(sample),
            "label": int(sample["cls"]) if "cls" in sample else -1,
        }

    def view(self, sample: dict) -> torch.Tensor:
        """The whole image decoded, then ``transform``: the plain path."""
        return self.transform(image=np.asarray(load_rgb(sample)))["image"]


class CropFirstDecodeStage(DecodeStage):
    """Training's fast path: :class:`CropFirstTransform` on the encoded bytes."""

    def view(self, sample: dict) -> torch.Tensor:
        return self.transform(image_bytes(sample))


class ImageShardDataModule(ShardDataModule):
    """SimMIM (and labeled) image batches from WebDataset shards; the stream's ``seed`` also fixes the masks.

    ``stream`` is a :class:`~.streaming.StreamSpec`, or the training shards with the other stream settings
    (``val_shards``, ``batch_size``, ``num_workers``, ``epoch_size``, ``shuffle_buffer``, ``seed``) as keywords.
    ``fast_decode=False`` trains on the plain path (whole image decoded, then :func:`train_transform`).
    ``masks`` replaces the SimMIM mask generator the mask settings describe (e.g. a
    :class:`~swinssl.masking.UniformMaskGenerator` for packed pretraining).
    """

    def __init__(
        self,
        stream: StreamSpec | str | Sequence[str] | None = None,
        *,
        img_size: int = 192,
        mask_patch_size: int = 32,
        model_patch_size: int = 4,
        mask_ratio: float = 0.6,
        crop_scale: Sequence[float] = (0.67, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        fast_decode: bool = True,
        masks: MaskGenerator | None = None,
        **stream_fields: Any,
    ) -> None:
        super().__init__(StreamSpec().updated(stream, **stream_fields))
        # Built here so that a bad size fails before any model is built.
        self.masks = masks or MaskGenerator(img_size, mask_patch_size, model_patch_size, mask_ratio)
        self.train_transform = train_transform(img_size, crop_scale, crop_ratio, hflip)
        self.fast_train_transform = CropFirstTransform(img_size, crop_scale, crop_ratio, hflip) if fast_decode else None
        self.eval_transform = eval_transform(img_size)

    def decoder(self, counter: SkipCounter, train: bool) -> DecodeStage:
        if train and self.fast_train_transform is not None:
            return CropFirstDecodeStage(self.fast_train_transform, self.masks, counter)
        if train:
            return DecodeStage(self.train_transform, self.masks, counter)
        # Per-sample fixed masks keep the validation loss comparable from epoch to epoch.
        return DecodeStage(self.eval_transform, self.masks, counter, fixed_masks=True)
