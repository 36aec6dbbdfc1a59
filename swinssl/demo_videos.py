"""Built-in demo videos: a window panning across the real photos scikit-image ships, labeled by direction.

The classes ``pan_left`` and ``pan_right`` need time to tell apart: every photo appears in both, so a
single frame says nothing about the label, only the order of the frames does. Generated offline and
small (2 classes x 8 clips of 16 frames, 64 x 80 px), so the tests, the video demo recipe and the
notebooks run on a CPU. :func:`encode_video` also serves tests that need arbitrary frames as a video file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
from PIL import Image

from swinssl.demo_data import DEMO_FOLDERS, PHOTOS, PREFIX, cache_root, cached_shards, photo_rgb
from swinssl.make_shards import ShardItem, encode_frames

CLASSES = ["pan_left", "pan_right"]
CACHE_NAME = DEMO_FOLDERS["video"]
GOP = 8  # a keyframe every 8 frames, so loading a clip exercises seeking even in these short videos


def encode_video(
    frames: np.ndarray, fps: int = 25, codec: str = "libx264", gop: int | None = None, container: str | None = None
) -> bytes:
    """uint8 RGB frames ``(T, H, W, 3)`` -> the bytes of a video file (yuv420p, so H and W must be even).

    ``gop`` is the keyframe interval (None: the encoder's default); ``container`` a file extension
    (``mp4``, ``webm``, ``avi``, ``mkv``), by default the codec's usual one.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs an even frame size, got {height} x {width}")
    video = (av.VideoFrame.from_ndarray(pixels, format="rgb24") for pixels in frames)
    return encode_frames(video, (width, height), fps, codec, gop, container)


def pan(photo: np.ndarray, num_frames: int, size: tuple[int, int], right: bool, rng: np.random.Generator) -> np.ndarray:
    """A ``size`` (height, width) window sliding across ``photo`` to the right or left: ``(T, H, W, 3)``.

    The photo is scaled so the window has room to travel 1.5 to 3 px per frame at a random height.
    """
    height, width = size
    speed = rng.uniform(1.5, 3.0)
    travel = int(np.ceil(speed * (num_frames - 1)))
    image = Image.fromarray(photo)
    scale = max(1.2 * height / image.height, (width + travel) / image.width)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    pixels = np.asarray(image)
    top = rng.integers(pixels.shape[0] - height + 1)
    start = rng.integers(pixels.shape[1] - width - travel + 1)
    steps = np.round(speed * np.arange(num_frames)).astype(int)
    lefts = start + (steps if right else travel - steps)
    return np.stack([pixels[top : top + height, left : left + width] for left in lefts])


def demo_clips(
    videos_per_class: int = 8, num_frames: int = 16, size: tuple[int, int] = (64, 80), fps: int = 25, seed: int = 0
) -> Iterator[tuple[str, int, bytes]]:
    """``(relative path, label, mp4 bytes)`` of every demo clip, the classes alternating.

    Clip ``i`` of both classes pans across the same photo, ``PHOTOS[i % 16]``.
    """
    rng = np.random.default_rng(seed)
    for i in range(videos_per_class):
        name = PHOTOS[i % len(PHOTOS)]
        photo = photo_rgb(name)
        for label, cls in enumerate(CLASSES):
            frames = pan(photo, num_frames, size, right=cls == "pan_right", rng=rng)
            yield f"{cls}/{name}-{i:02d}.mp4", label, encode_video(frames, fps, gop=GOP)


def write_demo_videos(
    folder: str | Path,
    videos_per_class: int = 8,
    num_frames: int = 16,
    size: tuple[int, int] = (64, 80),
    fps: int = 25,
    seed: int = 0,
) -> list[Path]:
    """Write the demo clips as ``folder/<class>/<photo>-NN.mp4`` (the layout make_shards reads); their paths."""
    paths = []
    for relative, _label, data in demo_clips(videos_per_class, num_frames, size, fps, seed):
        path = Path(folder) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    return paths


def demo_video_shards(cache_dir: str | Path | None = None) -> str:
    """The folder of the demo video shards (one set, ``demo``), built once in the cache folder the image demo uses."""
    items = (ShardItem(path, data, "mp4", label) for path, label, data in demo_clips())
    # maxcount 4 gives 4 shards of both classes, so loader workers have shards to split.
    return cached_shards(Path(cache_dir or cache_root()) / CACHE_NAME, {PREFIX: items}, maxcount=4, classes=CLASSES,
                         kind="video")
