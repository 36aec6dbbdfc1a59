"""Built-in demo data: shards of the real photographs scikit-image ships, built once and cached.

Offline and small (18 photos), so the demo recipe and the tests run anywhere. Each photo is labeled
``color`` or ``grayscale``, so the same shards also serve a toy classification.
"""

from __future__ import annotations

import importlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy, PIL and make_shards load only when shards are built: a recipe check reads the path
    import numpy as np

    from swinssl.make_shards import ShardItem

# Real photographs only; synthetic images (checkerboard, binary blobs, ...) teach nothing.
PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
)  # fmt: skip
CLASSES = ["color", "grayscale"]
# The cache folder of each built-in demo set: bump a name when that demo's content changes, so stale caches are not reused.
DEMO_FOLDERS = {"image": "demo-shards-v3", "video": "demo-videos-v2", "segmentation": "demo-seg-shards-v1"}
DEMO_BUILDERS = {"image": ("swinssl.demo_data", "demo_shards"), "video": ("swinssl.demo_videos", "demo_video_shards"),
                 "segmentation": ("swinssl.demo_segmentation", "demo_seg_shards")}
CACHE_NAME = DEMO_FOLDERS["image"]
PREFIX = "demo"
SHORT_SIDE = 256  # plenty for the demo's 128 px crops; full-size photos (up to 1411 px) make decoding the bottleneck


def cache_root() -> Path:
    """``$SWINSSL_CACHE``, else ``$XDG_CACHE_HOME/swinssl``, else ``~/.cache/swinssl``."""
    if os.environ.get("SWINSSL_CACHE"):
        return Path(os.environ["SWINSSL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "swinssl"


def demo_set(kind: str) -> str:
    """The folder of the built-in ``kind`` shards (``DEMO_FOLDERS``) in the cache, built on first use. Its builder
    (PIL, PyAV, OpenCV: a quarter of a second) loads only then, so a recipe check that reads the path stays quick."""
    folder = cache_root() / DEMO_FOLDERS[kind]
    if folder.is_dir():
        return str(folder)
    module, builder = DEMO_BUILDERS[kind]
    return getattr(importlib.import_module(module), builder)()


def demo_shards(cache_dir: str | Path | None = None) -> str:
    """The folder of the demo shards (one set, ``demo``), built on first use."""
    # maxcount 5 gives 4 shards, so loader workers have shards to split.
    return cached_shards(Path(cache_dir or cache_root()) / CACHE_NAME, {PREFIX: _photo_items()}, maxcount=5,
                         classes=CLASSES, kind="image")


def cached_shards(target: Path, sets: Mapping[str, Iterable[ShardItem]], maxcount: int, classes: list[str], kind: str,
                  **manifest) -> str:
    """Write each of ``sets`` (name -> items) as a set of ``target`` unless already there; the folder.
    ``manifest`` holds further :func:`~swinssl.make_shards.write_shards` keywords (``reduce_zero_label``).

    The shards are written to a temporary sibling and moved into place in one rename, so ranks that
    race here either build identical copies or reuse the finished one, never a half-written folder.
    """
    if not target.is_dir():
        from swinssl.make_shards import write_shards

        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            for name, items in sets.items():
                write_shards(items, tmp, prefix=name, maxcount=maxcount, classes=classes, kind=kind,
                             source=f"swinssl built-in {kind} demo", **manifest)
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():
                raise  # a real failure, not another process having finished first
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _photo_items() -> Iterator[ShardItem]:
    """Lazily: scikit-image is needed only when the shards are built."""
    from PIL import Image

    from swinssl.make_shards import ShardItem

    try:
        from skimage import data
    except ImportError as exn:
        raise ImportError("the demo data needs scikit-image: pip install 'swinssl[dev]'") from exn
    for name, pixels in _photos(data):
        buffer = io.BytesIO()
        image = Image.fromarray(pixels).convert("RGB")
        scale = SHORT_SIDE / min(image.size)
        if scale < 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        image.save(buffer, format="JPEG", quality=95)
        label = CLASSES.index("grayscale" if pixels.ndim == 2 else "color")
        yield ShardItem(f"{name}.jpg", buffer.getvalue(), "jpg", label)


def photo_rgb(name: str) -> np.ndarray:
    """The scikit-image photo ``name`` as uint8 RGB ``(H, W, 3)``."""
    import numpy as np

    try:
        from skimage import data
    except ImportError as exn:
        raise ImportError("the demo data needs scikit-image: pip install 'swinssl[dev]'") from exn
    photo = getattr(data, name)()
    return np.stack([photo] * 3, -1) if photo.ndim == 2 else photo[..., :3]


def _photos(data) -> Iterator[tuple[str, np.ndarray]]:
    for name in PHOTOS:
        yield name, getattr(data, name)()
    left, right, _disparity = data.stereo_motorcycle()
    yield "stereo_motorcycle_left", left
    yield "stereo_motorcycle_right", right
