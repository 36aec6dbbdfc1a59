"""Label masks of semantic segmentation: finding image/mask pairs in a folder, reading and checking a mask.

A mask is an 8-bit PNG (grey or palette) of class indices, the size of its image; 255 marks pixels scored
on no class. With ``reduce_zero_label`` (ADE20K) the stored value 0 means "other" and value k class k - 1,
so a mask holds 0 .. num_classes. Light (PIL and numpy): ``make_shards`` checks masks with it, and the
segmentation pipeline checks them again on decode, for shards that other tools wrote.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .shards import IGNORE_INDEX

MASK_MODES = ("L", "P")  # one 8-bit class index per pixel: grey or palette PNGs
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
BESIDE_MASK_SUFFIXES = (".jpg", ".jpeg", ".webp")  # images beside their masks (plain layout): not .png, the masks'
ADE_FOLDERS = ("images", "annotations")  # the ADE20K layout: images/<split>/x.jpg, annotations/<split>/x.png


class BadPair(ValueError):
    """An image and its mask that cannot be used together; the message says why."""


@dataclass(frozen=True)
class Pair:
    """Paths of an image and its mask, relative to the source folder; either may be missing (None)."""

    image: str | None
    mask: str | None

    @property
    def name(self) -> str:
        return " + ".join(path for path in (self.image, self.mask) if path)


def label_values(num_classes: int, reduce_zero_label: bool) -> int:
    """How many mask values name a class (or "other"), below the ignore index."""
    values = num_classes + (1 if reduce_zero_label else 0)
    if not 0 < values <= IGNORE_INDEX:
        raise ValueError(f"{num_classes} classes do not fit 8-bit masks with the ignore index {IGNORE_INDEX}"
                         + (" and 0 as 'other'" if reduce_zero_label else ""))
    return values


def read_mask(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """The class indices of an encoded mask, decoded fully, as a uint8 ``(H, W)`` array; raises :class:`BadPair`
    unless it has one 8-bit index per pixel and, given ``size`` (width, height), that size."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode, mask_size = image.mode, image.size
            pixels = np.asarray(image) if mode in MASK_MODES else None
    except Exception as exn:  # noqa: BLE001 - whatever PIL raises, the mask does not decode
        raise BadPair(f"the mask does not decode ({type(exn).__name__}: {exn})") from None
    if pixels is None:
        raise BadPair(f"the mask's mode is {mode}; a label mask holds one 8-bit class index per pixel "
                      "(grey or palette PNG), not colours")
    if size is not None and mask_size != tuple(size):
        raise BadPair(f"the mask is {mask_size[0]}x{mask_size[1]} but its image is {size[0]}x{size[1]}")
    return pixels


def check_labels(mask: np.ndarray, values: int) -> None:
    """Raise :class:`BadPair` if a mask value is neither below ``values`` nor the ignore index."""
    bad = mask[(mask >= values) & (mask != IGNORE_INDEX)]
    if bad.size:
        raise BadPair(f"the mask holds label {int(bad.max())}, which is no class (0..{values - 1}) and not the "
                      f"ignore index {IGNORE_INDEX}")


def reduce_zero_label(mask: np.ndarray) -> np.ndarray:
    """ADE20K's label shift: 0 ("other") becomes the ignore index, k becomes k - 1, the ignore index stays."""
    reduced = mask - np.uint8(1)  # uint8 wraps 0 to 255
    reduced[mask == IGNORE_INDEX] = IGNORE_INDEX
    return reduced


def verify_pair(image_data: bytes, mask_data: bytes, values: int) -> None:
    """Raise :class:`BadPair` unless both decode fully, have one size, and the mask's labels are in range."""
    try:
        with Image.open(io.BytesIO(image_data)) as image:
            image.load()
            size = image.size
    except Exception as exn:  # noqa: BLE001
        raise BadPair(f"the image does not decode ({type(exn).__name__}: {exn})") from None
    check_labels(read_mask(mask_data, size), values)


def is_pair_folder(src: Path) -> bool:
    """Whether ``src`` holds image/mask pairs: the ADE20K layout, or a ``NAME.png`` beside a ``NAME.jpg``
    (or ``.jpeg``, ``.webp``)."""
    if all((src / folder).is_dir() for folder in ADE_FOLDERS):
        return True
    stems = {path.stem for path in src.iterdir() if path.suffix.lower() in BESIDE_MASK_SUFFIXES}
    return any(path.suffix.lower() == ".png" and path.stem in stems for path in src.iterdir())


def find_pairs(src: Path, split: str | None = None) -> list[Pair]:
    """The image/mask pairs of ``src``, sorted, unmatched files included (with None on the missing side).

    ADE20K layout: ``images/[SPLIT/]`` and ``annotations/[SPLIT/]`` hold files with matching paths, masks as
    ``.png``; when they hold one folder per split, ``split`` picks one. Plain layout: ``NAME.jpg`` (or
    ``.jpeg``, ``.webp``) with its mask ``NAME.png`` side by side.
    """
    if all((src / folder).is_dir() for folder in ADE_FOLDERS):
        images, masks = (src / folder for folder in ADE_FOLDERS)
        splits = sorted(path.name for path in images.iterdir() if path.is_dir())
        if split is not None:
            if split not in splits:
                raise ValueError(f"{images} has no split {split!r}; its splits: {', '.join(splits) or 'none'}")
            images, masks = images / split, masks / split
        elif splits:
            raise ValueError(f"{images} holds the splits {', '.join(splits)}: shard one at a time, e.g. "
                             f"--split {splits[0]} --prefix train")
        image_files = {path.relative_to(images).with_suffix("").as_posix(): path for path in images.rglob("*")
                       if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES}
        mask_files = {path.relative_to(masks).with_suffix("").as_posix(): path for path in masks.rglob("*")
                      if path.is_file() and path.suffix.lower() == ".png"}
    else:
        if split is not None:
            raise ValueError(f"--split picks a folder of the ADE20K layout (images/SPLIT, annotations/SPLIT); "
                             f"{src} has no images/ and annotations/ folders")
        files = [path for path in src.iterdir() if path.is_file()]
        image_files = {path.stem: path for path in files if path.suffix.lower() in BESIDE_MASK_SUFFIXES}
        mask_files = {path.stem: path for path in files if path.suffix.lower() == ".png"}
    if not image_files and not mask_files:
        raise ValueError(f"no images or masks found in {src}")

    def relative(path: Path | None) -> str | None:
        return path.relative_to(src).as_posix() if path is not None else None

    return [Pair(relative(image_files.get(stem)), relative(mask_files.get(stem)))
            for stem in sorted(image_files.keys() | mask_files.keys())]
