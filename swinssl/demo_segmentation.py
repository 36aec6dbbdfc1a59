"""Built-in segmentation demo: scenes cut from the real photographs scikit-image ships, with exact masks.

Each scene is a 256 x 192 canvas: one photo fills the background and one to three shapes (ellipses,
polygons) are filled with others; a pixel's class is the photo it shows (brick, grass, gravel, cat, coffee),
so the mask is exact by construction. Training scenes take their pixels from the left 70% of every photo,
validation scenes from the right 30%: the validation set holds no pixel seen in training. Offline and
small (48 + 16 scenes), built once into the cache the other demos use. ``python -m
swinssl.demo_segmentation OUT`` writes the same scenes as an ADE20K-style folder (``images/``,
``annotations/``, ``classes.txt``) to try ``make_shards`` on.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from swinssl.demo_data import DEMO_FOLDERS, cache_root, cached_shards, photo_rgb
from swinssl.make_shards import ShardItem

CLASSES = ["brick", "grass", "gravel", "cat", "coffee"]
PHOTO_OF = {"brick": "brick", "grass": "grass", "gravel": "gravel", "cat": "chelsea", "coffee": "coffee"}
SPLITS = {"train": (48, (0.0, 0.7)), "val": (16, (0.7, 1.0))}  # scenes, and the share of each photo's width used
ADE_SPLITS = {"train": "training", "val": "validation"}
SIZE = (192, 256)  # scene height, width
CACHE_NAME = DEMO_FOLDERS["segmentation"]


def texture(photo: np.ndarray, columns: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """A random crop (with the scene's aspect ratio, 40-100% of the largest that fits) of the ``columns`` share
    of ``photo``'s width, resized to the scene."""
    height, width = photo.shape[:2]
    left, right = round(columns[0] * width), round(columns[1] * width)
    fit = min(height / SIZE[0], (right - left) / SIZE[1])
    crop_h, crop_w = (max(8, round(side * fit * rng.uniform(0.4, 1.0))) for side in SIZE)
    top, start = rng.integers(0, height - crop_h + 1), rng.integers(left, right - crop_w + 1)
    return cv2.resize(photo[top : top + crop_h, start : start + crop_w], SIZE[::-1], interpolation=cv2.INTER_AREA)


def scene_mask(rng: np.random.Generator) -> np.ndarray:
    """A (H, W) uint8 class map: a background class and one to three shapes of other classes."""
    height, width = SIZE
    background = rng.integers(len(CLASSES))
    mask = np.full(SIZE, background, np.uint8)
    for _ in range(rng.integers(1, 4)):
        label = int(rng.choice([c for c in range(len(CLASSES)) if c != background]))
        centre = (int(rng.integers(width // 8, width * 7 // 8)), int(rng.integers(height // 8, height * 7 // 8)))
        if rng.random() < 0.5:
            axes = (int(rng.integers(width // 10, width // 3)), int(rng.integers(height // 10, height // 3)))
            cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, label, thickness=-1)
        else:
            corners = rng.integers(3, 7)
            angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
            radii = rng.uniform(height / 8, height / 2.5, corners)
            points = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], -1)
            cv2.fillPoly(mask, [points.round().astype(np.int32)], label)
    return mask


def demo_scenes(split: str, seed: int = 0) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, RGB image, class mask)`` of every scene of ``split`` ("train" or "val")."""
    count, columns = SPLITS[split]
    photos = [photo_rgb(PHOTO_OF[name]) for name in CLASSES]
    rng = np.random.default_rng([seed, list(SPLITS).index(split)])
    for index in range(count):
        mask = scene_mask(rng)
        image = np.zeros((*SIZE, 3), np.uint8)
        for label in np.unique(mask):
            image[mask == label] = texture(photos[label], columns, rng)[mask == label]
        yield f"{split}_{index:03d}", image, mask


def encode(pixels: np.ndarray, format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format, **({"quality": 95} if format == "JPEG" else {}))
    return buffer.getvalue()


def _items(split: str) -> Iterator[ShardItem]:
    for name, image, mask in demo_scenes(split):
        yield ShardItem(f"{name}.jpg", encode(image, "JPEG"), "jpg", mask=encode(mask, "PNG"), mask_name=f"{name}.png")


def demo_seg_shards(cache_dir: str | Path | None = None) -> str:
    """The folder of the demo segmentation shards (sets ``train`` and ``val``), built on first use."""
    # maxcount 12 gives 4 training shards, so loader workers have shards to split.
    return cached_shards(Path(cache_dir or cache_root()) / CACHE_NAME, {split: _items(split) for split in SPLITS},
                         maxcount=12, classes=CLASSES, kind="image", reduce_zero_label=False)


def write_demo_folder(out: str | Path) -> Path:
    """The demo scenes as an ADE20K-style folder: ``images/{training,validation}/NAME.jpg``,
    ``annotations/{training,validation}/NAME.png`` and ``classes.txt``; returns ``out``."""
    out = Path(out)
    for split, folder in ADE_SPLITS.items():
        for kind in ("images", "annotations"):
            (out / kind / folder).mkdir(parents=True, exist_ok=True)
        for name, image, mask in demo_scenes(split):
            (out / "images" / folder / f"{name}.jpg").write_bytes(encode(image, "JPEG"))
            (out / "annotations" / folder / f"{name}.png").write_bytes(encode(mask, "PNG"))
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m swinssl.demo_segmentation",
                                     description="Write the built-in segmentation demo as an ADE20K-style folder.")
    parser.add_argument("out", help="folder to write images/, annotations/ and classes.txt into")
    out = write_demo_folder(parser.parse_args(argv).out)
    print(f"wrote {sum(count for count, _ in SPLITS.values())} scenes to {out}")


if __name__ == "__main__":
    main()
