"""Write WebDataset shards from a folder of images: ``python -m swinssl.make_shards SRC OUT``.

SRC either holds class subfolders (each one a ``cls`` label, names saved to ``OUT/classes.json``) or
images directly (no labels). Image bytes are stored as they are; unreadable files are skipped and
reported. The writer core, :func:`write_shards`, takes samples from any source (demo photos, videos).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import webdataset as wds
from PIL import Image
from rich.progress import track

IMAGE_EXTENSIONS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}


class ShardItem(NamedTuple):
    """One sample to write: ``name`` is the source path (kept in the ``json`` field), ``ext`` the key."""

    name: str
    data: bytes
    ext: str
    label: int | None = None


@dataclass
class ShardSummary:
    samples: int
    shards: int
    pattern: str
    skipped: list[str] = field(default_factory=list)


def shard_pattern(out: str | Path, prefix: str, shards: int) -> str:
    """The brace pattern that names shards ``0 .. shards - 1`` (a plain path for a single shard)."""
    if shards == 1:
        return f"{out}/{prefix}-000000.tar"
    return f"{out}/{prefix}-{{000000..{shards - 1:06d}}}.tar"


def write_shards(
    items: Iterable[ShardItem],
    out: str | Path,
    *,
    prefix: str = "train",
    maxcount: int = 1000,
    maxsize: float = 1e9,
    classes: list[str] | None = None,
    check: Callable[[ShardItem], object] | None = None,
    total: int | None = None,
) -> ShardSummary:
    """Write ``items`` in order as ``OUT/{prefix}-NNNNNN.tar``; items that ``check`` raises on are skipped.

    Keys are a running index, because webdataset cuts a key at its first dot and file names have dots.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob(f"{prefix}-*.tar")):
        raise FileExistsError(
            f"{out} already holds {prefix}-*.tar shards; remove them or pick another --prefix"
        )
    skipped, samples, writer = [], 0, None
    try:
        for item in track(items, total=total, description="writing shards"):
            try:
                if check is not None:
                    check(item)
            except Exception:  # noqa: BLE001 - an unreadable source file is reported, not fatal
                skipped.append(item.name)
                continue
            if writer is None:  # opened on the first good sample, so no empty shard is ever left behind
                filename = str(out / f"{prefix}-%06d.tar")
                writer = wds.ShardWriter(filename, maxcount=maxcount, maxsize=maxsize, verbose=0)
            sample = {"__key__": f"{samples:09d}", item.ext: item.data, "json": {"path": item.name}}
            if item.label is not None:
                sample["cls"] = item.label
            writer.write(sample)
            samples += 1
        shards = writer.shard if writer is not None else 0
    finally:
        if writer is not None:
            writer.close()
    if samples == 0:
        raise ValueError(f"no readable samples to write to {out} ({len(skipped)} unreadable)")
    if classes is not None:
        (out / "classes.json").write_text(json.dumps(classes, indent=1) + "\n")
    return ShardSummary(samples, shards, shard_pattern(out, prefix, shards), skipped)


def find_images(src: Path) -> tuple[list[tuple[Path, int | None]], list[str] | None]:
    """Image files under ``src`` with their labels, and the class names (None when unlabeled)."""
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")

    def images_in(folder: Path, recursive: bool) -> list[Path]:
        files = folder.rglob("*") if recursive else folder.iterdir()
        return sorted(p for p in files if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)

    folders = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = [p.name for p in folders if images_in(p, recursive=True)]
    loose = images_in(src, recursive=False)
    if classes and loose:
        raise ValueError(
            f"{src} mixes class folders with loose images (e.g. {loose[0].name}); use one layout"
        )
    if classes:
        files = [(path, label) for label, name in enumerate(classes) for path in images_in(src / name, True)]
        return files, classes
    if not loose:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {src}")
    return [(path, None) for path in loose], None


def verify_image(item: ShardItem) -> None:
    """Raise if PIL cannot parse the file (cheap: checks structure, does not decode pixels)."""
    with Image.open(io.BytesIO(item.data)) as image:
        image.verify()


def write_image_shards(
    src: str | Path,
    out: str | Path,
    prefix: str = "train",
    maxcount: int = 1000,
    maxsize: float = 1e9,
    seed: int = 0,
    shuffle: bool = True,
) -> ShardSummary:
    """Shard an image folder; the order is shuffled with ``seed`` so every shard mixes classes."""
    src = Path(src)
    files, classes = find_images(src)
    if shuffle:
        random.Random(seed).shuffle(files)
    items = (
        ShardItem(
            path.relative_to(src).as_posix(), path.read_bytes(), IMAGE_EXTENSIONS[path.suffix.lower()], label
        )
        for path, label in files
    )
    return write_shards(
        items,
        out,
        prefix=prefix,
        maxcount=maxcount,
        maxsize=maxsize,
        classes=classes,
        check=verify_image,
        total=len(files),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m swinssl.make_shards", description="Write WebDataset shards from a folder of images."
    )
    parser.add_argument("src", help="image folder: class subfolders, or images directly")
    parser.add_argument("out", help="output folder for the .tar shards")
    parser.add_argument("--prefix", default="train", help="shard name prefix (default: train)")
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per shard at most")
    parser.add_argument("--maxsize", type=float, default=1e9, help="bytes per shard at most")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample order")
    parser.add_argument("--no-shuffle", action="store_true", help="keep the sorted file order")
    args = parser.parse_args(argv)
    try:
        summary = write_image_shards(
            args.src, args.out, args.prefix, args.maxcount, args.maxsize, args.seed, not args.no_shuffle
        )
    except (OSError, ValueError) as exn:
        print(f"make_shards: error: {exn}", file=sys.stderr)
        raise SystemExit(2) from None
    skipped = len(summary.skipped)
    print(f"wrote {summary.samples} samples in {summary.shards} shards; skipped {skipped} unreadable")
    for name in summary.skipped[:10]:
        print(f"  unreadable: {name}")
    if skipped > 10:
        print(f"  ... and {skipped - 10} more")
    # The folder is the override that survives any shell; a brace pattern needs Hydra quotes inside shell quotes.
    others = [path for path in Path(args.out).glob("*.tar") if not path.name.startswith(f"{args.prefix}-")]
    print(f"shards: {summary.pattern}")
    print("train with: " + (f"\"data.shards='{summary.pattern}'\"" if others else f"data.shards={args.out}"))


if __name__ == "__main__":
    main()
