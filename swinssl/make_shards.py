"""Write WebDataset shards from a folder of images or videos: ``python -m swinssl.make_shards SRC OUT``.

SRC either holds class subfolders (each one a ``cls`` label) or files directly (no labels), all images
or all videos, or image/mask pairs for semantic segmentation (:mod:`swinssl.datamodules.masks`: the ADE20K
layout ``images/`` + ``annotations/``, or ``NAME.jpg`` beside ``NAME.png``; their classes named by
``--classes FILE`` or numbered by ``--num-classes N``). Files are stored as they are, under their
extension's key (``jpg``, ``mp4``, ...; a mask under ``seg.png``), each with its source path in the
sample's ``json``; files that do not decode are skipped and listed by path, bad pairs with both paths
and the reason.
The shards form one *set* of OUT, ``<prefix>-NNNNNN.tar``, described by ``<prefix>.manifest.json``
(shard list, sample count, class names, source, tool version; :mod:`swinssl.datamodules.shards`). A
folder can hold several sets; a set never replaces another, and a set whose class names differ from
those of a set already there is refused unless ``--allow-other-classes``. ``--short-side`` and ``--gop``
re-encode videos (H.264 in mp4) to at most that short side and a keyframe every that many frames, the
preprocessing mmaction2 recommends for Video Swin: smaller frames decode faster, and a clip starts
decoding at most a GOP before its first frame. The writer core, :func:`write_shards`, takes samples from
any source (demo photos, demo videos).
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av
from av.video.reformatter import VideoReformatter
from PIL import Image
from rich.progress import track

from swinssl import __version__
from swinssl.datamodules.masks import BadPair, Pair, find_pairs, is_pair_folder, label_values, verify_pair
from swinssl.datamodules.shards import (
    IGNORE_INDEX, MASK_KEY, SEGMENTATION, SET_NAME, ShardSet, describe_classes, manifest_path, shard_sets,
)

IMAGE_EXTENSIONS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}
VIDEO_EXTENSIONS = {".mp4": "mp4", ".webm": "webm", ".avi": "avi", ".mkv": "mkv"}
EXTENSIONS = {"image": IMAGE_EXTENSIONS, "video": VIDEO_EXTENSIONS}  # file suffix -> sample key
CONTAINERS = {"libx264": "mp4", "libvpx-vp9": "webm", "mpeg4": "avi"}  # each codec's usual file format
FORMAT_NAMES = {"mkv": "matroska"}  # file extension -> FFmpeg muxer name, where they differ


class ShardItem(NamedTuple):
    """One sample to write: ``name`` is the source path (kept in the ``json`` field), ``ext`` the key;
    ``mask`` a label PNG of class indices (key ``seg.png``) and ``mask_name`` its source path."""

    name: str
    data: bytes
    ext: str
    label: int | None = None
    mask: bytes | None = None
    mask_name: str | None = None


@dataclass
class ShardSummary:
    samples: int
    shards: int
    pattern: str
    skipped: list[str] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)  # every set now in the output folder


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
    convert: Callable[[ShardItem], ShardItem] | None = None,
    total: int | None = None,
    kind: str | None = None,
    source: str | None = None,
    allow_other_classes: bool = False,
    reduce_zero_label: bool | None = None,
) -> ShardSummary:
    """Write ``items`` in order as the set ``prefix`` of ``out`` (shards and manifest), each through ``convert``
    if given; items that ``check`` or ``convert`` raises on are skipped (with the reason, for a
    :class:`~swinssl.datamodules.masks.BadPair`). ``reduce_zero_label`` not None makes a segmentation set
    (items with masks), whose manifest records it and the ignore index.

    Keys are a running index, because webdataset cuts a key at its first dot and file names have dots.
    The manifest is written last, in one rename: a set without one was interrupted.
    """
    if not SET_NAME.match(prefix):
        raise ValueError(f"--prefix {prefix!r} is not a set name: use letters, digits, '_', '.' and '-'")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    existing = shard_sets(out)
    if prefix in existing or manifest_path(out, prefix).exists():
        raise FileExistsError(f"{out} already holds the shard set {prefix!r}; remove its {prefix}-*.tar and "
                              f"{manifest_path(out, prefix).name}, or pick another --prefix")
    _check_classes(existing, classes, allow_other_classes)
    skipped, samples, written, writer = [], 0, [], None
    per_shard: dict[str, int] = {}  # recorded in the manifest: a reader can tell a truncated shard
    try:
        for item in track(items, total=total, description="writing shards"):
            try:
                if check is not None:
                    check(item)
                if convert is not None:
                    item = convert(item)
            except BadPair as exn:
                skipped.append(" + ".join(name for name in (item.name, item.mask_name) if name) + f": {exn}")
                continue
            except Exception:  # noqa: BLE001 - an unreadable source file is reported, not fatal
                skipped.append(item.name)
                continue
            if writer is None:  # opened on the first good sample, so no empty shard is ever left behind
                import webdataset as wds  # here, not at the top: it imports torch, which a recipe's config check must not wait for

                filename = str(out / f"{prefix}-%06d.tar")
                # whole-second mtimes: a fractional one costs every member an extra pax header to read
                writer = wds.ShardWriter(filename, maxcount=maxcount, maxsize=maxsize, verbose=0, mtime=int(time.time()),
                                         post=lambda name: written.append(Path(name).name))
            sample = {"__key__": f"{samples:09d}", item.ext: item.data, "json": {"path": item.name}}
            if item.label is not None:
                sample["cls"] = item.label
            if item.mask is not None:
                sample[MASK_KEY] = item.mask
                sample["json"]["mask"] = item.mask_name
            writer.write(sample)
            per_shard[Path(writer.fname).name] = per_shard.get(Path(writer.fname).name, 0) + 1
            samples += 1
    finally:
        if writer is not None:
            writer.close()
    if samples == 0:
        raise ValueError(f"no readable samples to write to {out} ({len(skipped)} unreadable)")
    segmentation = {} if reduce_zero_label is None else {
        "task": SEGMENTATION, "ignore_index": IGNORE_INDEX, "reduce_zero_label": reduce_zero_label}
    ShardSet(str(out), prefix, written, samples=samples, classes=classes, kind=kind, source=source,
             tool=f"swinssl {__version__} make_shards", skipped=skipped,
             shard_samples=[per_shard[name] for name in written], **segmentation).write_manifest()
    return ShardSummary(samples, len(written), shard_pattern(out, prefix, len(written)), skipped,
                        sets=list(shard_sets(out)))


def _check_classes(existing: dict[str, ShardSet], classes: list[str] | None, allow: bool) -> None:
    """A labeled set must name the classes of the labeled sets already in the folder, in the same order."""
    others = [other for other in existing.values() if other.classes is not None]
    if allow or classes is None or not others or all(other.classes == classes for other in others):
        return
    other = next(other for other in others if other.classes != classes)
    raise ValueError(
        f"the set {other.name!r} already in {other.folder} has other classes ({describe_classes(other.classes)}) "
        f"than this one ({describe_classes(classes)}): labels would mean different classes in the two sets; "
        "use another output folder, or pass --allow-other-classes if they are meant to differ"
    )


def find_files(src: Path, kind: str) -> tuple[list[tuple[Path, int | None]], list[str] | None]:
    """The ``kind`` ("image" or "video") files under ``src`` with their labels, and the class names
    (None when unlabeled)."""
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    extensions = EXTENSIONS[kind]

    def files_in(folder: Path, recursive: bool) -> list[Path]:
        files = folder.rglob("*") if recursive else folder.iterdir()
        return sorted(p for p in files if p.is_file() and p.suffix.lower() in extensions)

    folders = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = [p.name for p in folders if files_in(p, recursive=True)]
    loose = files_in(src, recursive=False)
    if classes and loose:
        raise ValueError(
            f"{src} mixes class folders with loose {kind}s (e.g. {loose[0].name}); use one layout"
        )
    if classes:
        files = [(path, label) for label, name in enumerate(classes) for path in files_in(src / name, True)]
        return files, classes
    if not loose:
        raise ValueError(f"no {kind}s ({', '.join(extensions)}) found in {src}")
    return [(path, None) for path in loose], None


def other_files(src: Path, kind: str) -> list[str]:
    """The files under ``src`` that are not ``kind`` files (notes, labels, other media), which shards leave out."""
    extensions = EXTENSIONS[kind]
    return sorted(p.relative_to(src).as_posix() for p in Path(src).rglob("*")
                  if p.is_file() and p.suffix.lower() not in extensions)


def media_kind(src: Path) -> str:
    """"video" when ``src`` holds video files, else "image" (whose search reports an empty folder)."""
    suffixes = {p.suffix.lower() for p in Path(src).rglob("*") if p.is_file()}
    kinds = [kind for kind, extensions in EXTENSIONS.items() if suffixes & extensions.keys()]
    if len(kinds) > 1:
        raise ValueError(f"{src} holds both images and videos; shard them into separate folders")
    return kinds[0] if kinds else "image"


def verify_image(item: ShardItem) -> None:
    """Raise unless PIL decodes every pixel (a truncated JPEG parses, but does not decode)."""
    with Image.open(io.BytesIO(item.data)) as image:
        image.load()


def verify_video(item: ShardItem) -> None:
    """Raise if PyAV cannot open the file, finds no video stream in it, cannot read all of its packets, or
    cannot decode its first frame. (Decoding every frame would cost about as much as the training epochs.)"""
    with av.open(io.BytesIO(item.data)) as container:
        if not container.streams.video:
            raise ValueError(f"{item.name} has no video stream")
        stream = container.streams.video[0]
        if not any(packet.size for packet in container.demux(stream)):
            raise ValueError(f"{item.name} has no video frames")
        container.seek(0, stream=stream)
        next(container.decode(stream))


VERIFY = {"image": verify_image, "video": verify_video}


def encode_frames(
    frames: Iterable[av.VideoFrame],
    size: tuple[int, int],
    fps: float | Fraction = 25,
    codec: str = "libx264",
    gop: int | None = None,
    container: str | None = None,
) -> bytes:
    """Encode ``frames`` (any pixel format, converted to yuv420p) at ``size`` (width, height, both even) into the
    bytes of a video file. ``gop`` is the keyframe interval (None: the encoder's default); ``container`` a file
    extension (``mp4``, ``webm``, ``avi``, ``mkv``), by default the codec's usual one."""
    extension = container or CONTAINERS.get(codec)
    if extension is None:
        raise ValueError(f"no default container for codec {codec!r}; pass container=")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=FORMAT_NAMES.get(extension, extension)) as output:
        stream = output.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        for frame in frames:
            output.mux(stream.encode(frame))
        output.mux(stream.encode())  # flush the frames the encoder still holds
    return buffer.getvalue()


def reencode_video(data: bytes, short_side: int | None = None, gop: int | None = None) -> bytes:
    """A video file's bytes as H.264 in mp4 (video only) with the short side at most ``short_side`` (bicubic,
    as FFmpeg's ``scale`` filter; the aspect ratio kept, sides rounded to even) and a keyframe every ``gop``
    frames (None: x264's default, 250). Every frame is kept, at the source's average frame rate."""
    with av.open(io.BytesIO(data)) as source:
        if not source.streams.video:
            raise ValueError("no video stream")
        stream = source.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        scale = min(1.0, short_side / min(width, height)) if short_side else 1.0
        size = (2 * max(1, round(width * scale / 2)), 2 * max(1, round(height * scale / 2)))
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        converter = VideoReformatter()

        def scaled() -> Iterable[av.VideoFrame]:
            for index, frame in enumerate(source.decode(stream)):
                out = converter.reformat(frame, *size, "yuv420p", interpolation="BICUBIC", threads=1)
                out.pts, out.time_base = index, 1 / rate  # numbered anew, one tick a frame
                yield out

        return encode_frames(scaled(), size, rate, gop=gop)


def reencoder(short_side: int | None, gop: int | None) -> Callable[[ShardItem], ShardItem]:
    def convert(item: ShardItem) -> ShardItem:
        return item._replace(data=reencode_video(item.data, short_side, gop), ext="mp4")

    return convert


def write_folder_shards(
    src: str | Path,
    out: str | Path,
    kind: str = "image",
    prefix: str = "train",
    maxcount: int = 1000,
    maxsize: float = 1e9,
    seed: int = 0,
    shuffle: bool = True,
    allow_other_classes: bool = False,
    short_side: int | None = None,
    gop: int | None = None,
) -> ShardSummary:
    """Shard the ``kind`` ("image" or "video") files of a folder as the set ``prefix`` of ``out``; files that
    do not decode are skipped and listed.

    Files are stored as they are under their extension's key, or, for videos with ``short_side`` or
    ``gop``, re-encoded (:func:`reencode_video`, key ``mp4``); the order is shuffled with ``seed`` so every
    shard mixes classes.
    """
    reencode = short_side is not None or gop is not None
    if reencode and kind != "video":
        raise ValueError("--short-side and --gop re-encode videos; the source folder holds images")
    for name, value in (("--short-side", short_side), ("--gop", gop)):
        if value is not None and value < 2:
            raise ValueError(f"{name} must be at least 2, got {value}")
    src = Path(src)
    files, classes = find_files(src, kind)
    if shuffle:
        random.Random(seed).shuffle(files)
    items = (
        ShardItem(
            path.relative_to(src).as_posix(), path.read_bytes(), EXTENSIONS[kind][path.suffix.lower()], label
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
        check=VERIFY[kind],
        convert=reencoder(short_side, gop) if reencode else None,
        total=len(files),
        kind=kind,
        source=str(src.resolve()),
        allow_other_classes=allow_other_classes,
    )


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a text file, one a line (blank lines skipped), in label order."""
    try:
        names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exn:
        raise ValueError(f"cannot read the class names file {path}: {exn}") from None
    if not names:
        raise ValueError(f"the class names file {path} names no classes (one name a line)")
    repeated = next((name for index, name in enumerate(names) if name in names[:index]), None)
    if repeated is not None:
        raise ValueError(f"the class names file {path} names {repeated!r} twice")
    return names


def write_pair_shards(
    src: str | Path,
    out: str | Path,
    classes: list[str],
    reduce_zero_label: bool = False,
    split: str | None = None,
    seed: int = 0,
    shuffle: bool = True,
    **options,
) -> ShardSummary:
    """Shard the image/mask pairs of a folder (:func:`~swinssl.datamodules.masks.find_pairs`) as the
    segmentation set ``prefix`` of ``out``: images under their extension's key, masks under ``seg.png``, both
    stored as they are. A pair is skipped, with both paths and why, when a side is missing or does not
    decode, the sizes differ, or a mask value is no class (``classes``; with ``reduce_zero_label`` 0 is
    "other" and k is class k - 1) and not the ignore index 255. ``options`` go to :func:`write_shards`
    (``prefix``, ``maxcount``, ``maxsize``, ``allow_other_classes``)."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    values = label_values(len(classes), reduce_zero_label)
    pairs = find_pairs(src, split)
    if shuffle:
        random.Random(seed).shuffle(pairs)

    def item(pair: Pair) -> ShardItem:
        image = src / pair.image if pair.image else None
        return ShardItem(pair.image or "", image.read_bytes() if image else b"",
                         IMAGE_EXTENSIONS[image.suffix.lower()] if image else "",
                         mask=(src / pair.mask).read_bytes() if pair.mask else None, mask_name=pair.mask)

    def check(item: ShardItem) -> None:
        if not item.name:
            raise BadPair("no image with the mask's name")
        if item.mask is None:
            raise BadPair("no mask (.png) with the image's name")
        verify_pair(item.data, item.mask, values)

    return write_shards((item(pair) for pair in pairs), out, classes=classes, check=check, total=len(pairs),
                        kind="image", source=str(src.resolve()), reduce_zero_label=reduce_zero_label, **options)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m swinssl.make_shards",
        description="Write WebDataset shards from a folder of images or videos (mp4, webm, avi, mkv), or of "
                    "image/mask pairs for semantic segmentation.",
    )
    parser.add_argument("src", help="image or video folder: class subfolders, or files directly; or image/mask "
                                    "pairs: images/ + annotations/ (ADE20K), or NAME.jpg beside NAME.png")
    parser.add_argument("out", help="output folder for the .tar shards")
    parser.add_argument("--prefix", default="train",
                        help="the set's name, which prefixes its shards: train-000000.tar ... (default: train)")
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per shard at most")
    parser.add_argument("--maxsize", type=float, default=1e9, help="bytes per shard at most")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample order")
    parser.add_argument("--no-shuffle", action="store_true", help="keep the sorted file order")
    parser.add_argument("--allow-other-classes", action="store_true",
                        help="allow class names that differ from those of a set already in OUT")
    parser.add_argument("--short-side", type=int,
                        help="re-encode videos (H.264, mp4) with at most this short side, e.g. 256")
    parser.add_argument("--gop", type=int,
                        help="re-encode videos (H.264, mp4) with a keyframe every GOP frames, e.g. 16")
    masks = parser.add_argument_group("image/mask pairs (semantic segmentation)")
    names = masks.add_mutually_exclusive_group()
    names.add_argument("--classes", metavar="FILE", help="the class names, one a line, in label order")
    names.add_argument("--num-classes", type=int, metavar="N", help="N classes, named by their labels 0 .. N-1")
    masks.add_argument("--reduce-zero-label", action="store_true",
                       help="mask value 0 is 'other' (ignored) and value k is class k-1, as in ADE20K")
    masks.add_argument("--split", help="the ADE20K layout's split folder to shard, e.g. training or validation")
    args = parser.parse_args(argv)
    try:
        src = Path(args.src)
        pairs = src.is_dir() and is_pair_folder(src)
        classes = _pair_classes(args, src, pairs)
        if pairs:
            summary = write_pair_shards(src, args.out, classes, args.reduce_zero_label, args.split, args.seed,
                                        not args.no_shuffle, prefix=args.prefix, maxcount=args.maxcount,
                                        maxsize=args.maxsize, allow_other_classes=args.allow_other_classes)
        else:
            summary = write_folder_shards(
                args.src, args.out, media_kind(src), args.prefix, args.maxcount, args.maxsize, args.seed,
                not args.no_shuffle, args.allow_other_classes, args.short_side, args.gop,
            )
    except (OSError, ValueError) as exn:
        print(f"make_shards: error: {exn}", file=sys.stderr)
        raise SystemExit(2) from None
    kind = "image" if pairs else media_kind(src)
    others = other_files(src, kind)
    bad = "bad pair" if pairs else "unreadable"
    print(f"wrote {summary.samples} samples in {summary.shards} shards; skipped {len(summary.skipped)} {bad}"
          + ("s" if pairs and len(summary.skipped) != 1 else "")
          + (f"; left out {len(others)} other file(s) (not {kind}s: {', '.join(EXTENSIONS[kind])})" if others else ""))
    for what, names in ((bad, summary.skipped), (f"not {'an' if kind == 'image' else 'a'} {kind}", others)):
        for name in names[:10]:
            print(f"  {what}: {name}")
        if len(names) > 10:
            print(f"  ... and {len(names) - 10} more")
    # A folder with one set means that set; with several, the set is named after a colon.
    print(f"shards: {summary.pattern}")
    print("train with: data.shards=" + (args.out if len(summary.sets) == 1 else f"{args.out}:{args.prefix}"))


def _pair_classes(args: argparse.Namespace, src: Path, pairs: bool) -> list[str] | None:
    """The classes of image/mask pairs from ``--classes`` or ``--num-classes``; the pair options without pairs,
    and pairs without classes, are errors."""
    options = [name for name, value in (("--classes", args.classes), ("--num-classes", args.num_classes),
               ("--reduce-zero-label", args.reduce_zero_label), ("--split", args.split)) if value]
    if not pairs:
        if options and src.is_dir():
            raise ValueError(f"{options[0]} is for image/mask pairs, and {src} holds none (images/ + annotations/, "
                             "or NAME.jpg beside NAME.png)")
        return None
    if args.short_side is not None or args.gop is not None:
        raise ValueError("--short-side and --gop re-encode videos; the source folder holds image/mask pairs")
    if args.classes:
        return read_class_names(args.classes)
    if args.num_classes is None:
        raise ValueError(f"{src} holds image/mask pairs: name their classes with --classes FILE (one name a line) "
                         "or number them with --num-classes N")
    if args.num_classes < 1:
        raise ValueError(f"--num-classes must be at least 1, got {args.num_classes}")
    return [str(label) for label in range(args.num_classes)]


if __name__ == "__main__":
    from swinssl.pipes import quiet_broken_pipe

    with quiet_broken_pipe():
        main()
