"""Shard sets: what a shard folder holds, turning a user's spec into checked URLs, splitting them across ranks,
and counting skipped samples.

A folder of shards holds one or more *sets* (``train``, ``val``, ...): the files ``<set>-NNNNNN.tar``
and, when ``make_shards`` wrote them, the manifest ``<set>.manifest.json`` (shard list, sample count,
class names, source folder, tool version). A folder with one set means that set; a folder with several
needs the set named (``shards/in1k:val``), so a validation set in the training folder can never leak into
training. Class names belong to a set and are read from its manifest (folders written before manifests
existed: ``classes.json``). Shared by the image and video pipelines, so a bad path fails the same way
(before any compute) and a bad sample is counted the same way whatever the modality.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from braceexpand import braceexpand

log = logging.getLogger(__name__)

_REMOTE = re.compile(r"^(pipe:|[a-zA-Z][a-zA-Z0-9+.-]*://)")
_GLOB_CHARS = re.compile(r"[*?\[]")
_FIX = "run `python -m swinssl.make_shards SRC OUT` first, or point data.shards at existing shards"
SHARD_FILE = re.compile(r"^(?P<set>.+)-(?P<index>\d{6})\.tar$")
MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = "swinssl shard set 1"
LEGACY_CLASSES = "classes.json"  # the class list of folders written before manifests
# A folder:set spec: the set name is what make_shards accepts as --prefix.
_FOLDER_SET = re.compile(r"^(?P<folder>.+):(?P<set>[A-Za-z0-9_][A-Za-z0-9_.-]*)$")
SET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
SEGMENTATION = "segmentation"  # the task of a set of images with label masks (``seg.png``)
MASK_KEY = "seg.png"
IGNORE_INDEX = 255  # the label of pixels no class is scored on (and of padding)
# Manifest fields only segmentation sets write, so other manifests stay as they were.
_SEGMENTATION_FIELDS = ("task", "ignore_index", "reduce_zero_label")


@dataclass
class ShardSet:
    """One set of a shard folder, as its manifest describes it (``described=False``: no manifest)."""

    folder: str
    name: str
    shards: list[str]  # file names inside ``folder``
    samples: int | None = None
    classes: list[str] | None = None
    kind: str | None = None  # "image" or "video"
    source: str | None = None
    tool: str | None = None
    skipped: list[str] = field(default_factory=list)  # source files make_shards could not read
    shard_samples: list[int] | None = None  # per shard, in the order of ``shards``
    task: str | None = None  # SEGMENTATION for image + mask sets; None: class labels (``cls``) or none
    ignore_index: int | None = None  # segmentation: the mask value scored on no class
    reduce_zero_label: bool | None = None  # segmentation: mask value 0 is "other" (ignored), k means class k - 1
    described: bool = True

    @property
    def urls(self) -> list[str]:
        return [os.path.join(self.folder, shard) for shard in self.shards]

    @property
    def label(self) -> str:
        """``<folder name>:<set>``: how messages and result files name the set."""
        return f"{Path(self.folder).name}:{self.name}"

    def write_manifest(self) -> Path:
        """Write ``<folder>/<set>.manifest.json`` in one rename, so a reader never sees half of it."""
        path = manifest_path(self.folder, self.name)
        fields = {key: value for key, value in asdict(self).items() if key not in ("folder", "described")
                  and not (key in _SEGMENTATION_FIELDS and value is None)}
        data = {"format": MANIFEST_FORMAT, **fields}
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)
        return path


def manifest_path(folder: str | Path, name: str) -> Path:
    return Path(folder) / f"{name}{MANIFEST_SUFFIX}"


def shard_sets(folder: str | Path) -> dict[str, ShardSet]:
    """The sets of a shard folder by name: those with a manifest, and ``<set>-NNNNNN.tar`` files without one."""
    folder = str(folder)
    sets: dict[str, ShardSet] = {}
    for path in sorted(Path(folder).glob(f"*{MANIFEST_SUFFIX}")):
        data = _read_json(path)
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or "shards" not in data:
            raise ValueError(f"{path} is not a swinssl shard manifest")
        fields = {key: data[key] for key in ("shards", "samples", "classes", "kind", "source", "tool", "skipped",
                                             "shard_samples", *_SEGMENTATION_FIELDS) if key in data}
        shard_set = ShardSet(folder, path.name[: -len(MANIFEST_SUFFIX)], **fields)
        missing = [shard for shard in shard_set.shards if not os.path.isfile(os.path.join(folder, shard))]
        if missing:
            raise FileNotFoundError(f"{path} lists {len(missing)} shard(s) that are missing, e.g. "
                                    f"{os.path.join(folder, missing[0])}; copy the whole folder or write the set again")
        sets[shard_set.name] = shard_set
    described = {shard for shard_set in sets.values() for shard in shard_set.shards}
    loose: dict[str, list[str]] = {}
    for path in sorted(Path(folder).glob("*.tar")):
        if path.name not in described:
            match = SHARD_FILE.match(path.name)
            loose.setdefault(match["set"] if match else path.stem, []).append(path.name)
    legacy_classes = _legacy_classes(folder)
    for name, files in loose.items():
        if name in sets:
            raise ValueError(f"{folder}: {files[0]} is not in the manifest of set {name!r}; "
                             "remove it, or write the set again")
        sets[name] = ShardSet(folder, name, files, classes=legacy_classes, described=False)
    return dict(sorted(sets.items()))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None


def _legacy_classes(folder: str) -> list[str] | None:
    path = Path(folder) / LEGACY_CLASSES
    return _read_json(path) if path.is_file() else None


@dataclass
class Shards:
    """What a shard spec resolved to: URLs, and what the sets they belong to say about them.

    ``classes`` is None when no read set records class names (unlabeled shards, remote URLs, shards
    made by other tools); ``samples`` is None unless every URL belongs to a set with a manifest that
    is read whole; ``labeled`` is False when a manifest says a set has no labels, None when unknown.
    ``task`` is SEGMENTATION when the sets read hold masks, None when they do not or nothing says;
    ``described`` is False when some URLs belong to no manifest (nothing says what they hold).
    """

    urls: list[str]
    classes: list[str] | None
    name: str
    samples: int | None = None
    labeled: bool | None = None
    counts: dict[str, int] = field(default_factory=dict)  # samples per URL, where a manifest records them
    task: str | None = None
    ignore_index: int | None = None
    reduce_zero_label: bool | None = None
    described: bool = False


def resolve_shards(spec: str | os.PathLike | Iterable[str | os.PathLike]) -> Shards:
    """Expand a folder, ``folder:set``, braces, globs, files or a list of them into checked shard URLs.

    A folder means its one set, and a folder with several sets must be named with its set; every local
    shard must exist and be a tar file. Remote URLs and ``pipe:`` commands pass through unchecked: only the
    reader can open them. Class lists of the sets read must agree.
    """
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    parts = [part for item in items for part in _resolve_item(os.fspath(item))]
    if not any(part.urls for part in parts):
        raise ValueError(f"no shards matched {spec!r}")
    masks = _agreeing_masks([part for part in parts if part.described])
    known = [part for part in parts if part.classes is not None]
    for part in known[1:]:
        if part.classes != known[0].classes:
            raise ValueError(f"{known[0].name} and {part.name} have different classes "
                             f"({describe_classes(known[0].classes)} vs {describe_classes(part.classes)}); read one of them")
    samples = [part.samples for part in parts]
    labeled = {part.labeled for part in parts}
    return Shards(
        urls=[url for part in parts for url in part.urls],
        classes=known[0].classes if known else None,
        name=parts[0].name if len(parts) == 1 else f"{parts[0].name} + {len(parts) - 1} more",
        samples=sum(samples) if None not in samples else None,
        labeled=False if False in labeled else labeled.pop() if len(labeled) == 1 else None,
        counts={url: count for part in parts for url, count in part.counts.items()},
        described=all(part.described for part in parts),
        **masks,
    )


def _agreeing_masks(described: list[Shards]) -> dict:
    """The segmentation fields the described parts share; parts with and without masks, or masks that mean
    different labels, are not read together."""
    if not described:
        return {}
    first = described[0]
    for part in described[1:]:
        if part.task != first.task:
            with_masks, without = (first, part) if first.task == SEGMENTATION else (part, first)
            raise ValueError(f"{with_masks.name} is a segmentation set (images with masks) but {without.name} is "
                             "not; read one kind")
        if (part.ignore_index, part.reduce_zero_label) != (first.ignore_index, first.reduce_zero_label):
            raise ValueError(f"{first.name} and {part.name} label their masks differently (ignore index "
                             f"{first.ignore_index} vs {part.ignore_index}, reduce_zero_label {first.reduce_zero_label}"
                             f" vs {part.reduce_zero_label}); read one of them")
    return {"task": first.task, "ignore_index": first.ignore_index, "reduce_zero_label": first.reduce_zero_label}


def expand_urls(spec: str) -> list[str]:
    """``a::b`` lists and ``{000000..000099}`` ranges, as WebDataset reads them (without importing it: the
    recipe checks resolve shards before anything heavy is imported)."""
    return [url for part in spec.split("::") for url in braceexpand(part)]


def _resolve_item(item: str) -> list[Shards]:
    """One spec item as the (parts of) sets it reads, in order; files of no set form their own part."""
    if _REMOTE.match(item):
        return [Shards(list(expand_urls(item)), None, item)]
    folder_set = _FOLDER_SET.match(item)
    if folder_set and os.path.isdir(os.path.expanduser(folder_set["folder"])):
        folder = os.path.expanduser(folder_set["folder"])
        sets = shard_sets(folder)
        if folder_set["set"] not in sets:
            raise ValueError(f"{folder} has no shard set {folder_set['set']!r}; its sets: {', '.join(sets) or 'none'}")
        return [_read(sets[folder_set["set"]])]
    parts: list[Shards] = []
    files: dict[tuple[str, str] | None, list[str]] = {}  # matched files by the (folder, set) they belong to
    folders: dict[str, dict[str, ShardSet]] = {}  # the sets of each folder a matched file is in, read once
    for url in expand_urls(item):
        path = os.path.expanduser(url)
        if os.path.isdir(path):
            sets = shard_sets(path)
            if not sets:
                raise ValueError(f"no shards matched {url!r}: the folder holds no .tar files; {_FIX}")
            if len(sets) > 1:
                raise ValueError(f"{path} holds {len(sets)} shard sets ({', '.join(sets)}); name the one to read: "
                                 + " or ".join(f"{path}:{name}" for name in sets))
            parts.append(_read(next(iter(sets.values()))))
            continue
        if _GLOB_CHARS.search(path):
            matches = sorted(glob.glob(path))
            if not matches:
                raise ValueError(f"no shards matched {url!r}; {_FIX}")
        elif os.path.exists(path):
            matches = [path]
        else:
            raise FileNotFoundError(f"shard {path} does not exist; {_FIX}")
        for match in matches:
            _check_tar(match)
            folder, name = os.path.split(os.path.abspath(match))
            if folder not in folders:
                folders[folder] = shard_sets(folder)
            owner = next((set_name for set_name, shard_set in folders[folder].items() if name in shard_set.shards), None)
            files.setdefault((folder, owner) if owner else None, []).append(match)
    for key, urls in files.items():
        parts.append(_read(folders[key[0]][key[1]], urls) if key else Shards(urls, None, item))
    return parts


def _read(shard_set: ShardSet, urls: list[str] | None = None) -> Shards:
    """``urls`` of ``shard_set`` (all of them by default) and what its manifest says about them."""
    whole = urls is None or sorted(map(os.path.abspath, urls)) == sorted(map(os.path.abspath, shard_set.urls))
    name = shard_set.label if whole else f"{shard_set.label}[{len(urls)} of {len(shard_set.shards)} shards]"
    if shard_set.described:
        labeled = shard_set.classes is not None
    else:
        labeled = True if shard_set.classes is not None else None
    return Shards(
        urls=shard_set.urls if urls is None else urls,
        classes=shard_set.classes,
        name=name,
        samples=shard_set.samples if whole and shard_set.described else None,
        labeled=labeled,
        counts=dict(zip(shard_set.urls, shard_set.shard_samples)) if shard_set.shard_samples else {},
        task=shard_set.task,
        ignore_index=shard_set.ignore_index,
        reduce_zero_label=shard_set.reduce_zero_label,
        described=shard_set.described,
    )


def _check_tar(path: str) -> None:
    """A POSIX/GNU tar has ``ustar`` at byte 257 of its first header (an empty one starts with a zero block):
    catches an image or a text file given as shards."""
    with open(path, "rb") as file:
        head = file.read(512)
    if head[257:262] != b"ustar" and not (len(head) == 512 and not any(head)):
        raise ValueError(f"{path} is not a tar shard; shards are the .tar files that python -m swinssl.make_shards "
                         "writes from a folder of images or videos")


def describe_classes(classes: list[str]) -> str:
    """The first class names, and how many there are, for messages."""
    return ", ".join(classes[:4]) + (f", ... ({len(classes)} in all)" if len(classes) > 4 else "")


def rank_shards(urls: list[str], rank: int, world_size: int) -> list[str]:
    """This rank's disjoint share ``urls[rank::world_size]``, or all of them if there are too few."""
    if len(urls) < world_size:
        log.warning(
            "%d shards for %d ranks: every rank reads all shards, so ranks see overlapping data; "
            "write at least one shard per rank (make_shards --maxcount)",
            len(urls),
            world_size,
        )
        return list(urls)
    return urls[rank::world_size]


def sample_name(sample: dict) -> str:
    """The source file of a sample (its ``json`` ``path``, recorded by make_shards; ``path + mask`` for an
    image with a mask), else shard and key."""
    meta = sample.get("json")
    if isinstance(meta, (bytes, str)):
        try:
            record = json.loads(meta)
            path, mask = record.get("path"), record.get("mask")
        except (ValueError, AttributeError):
            path = mask = None
        if path:
            return f"{path} + {mask}" if mask else str(path)
    where = os.path.basename(str(sample.get("__url__", "")))
    return f"{where}/{sample.get('__key__')}" if where else f"sample {sample.get('__key__')}"


class SkipCounter:
    """Counts samples dropped inside one DataLoader worker, and names them, so batches can report them.

    One instance is pickled into each worker together with the pipeline; every stage of that worker's
    pipeline shares it, and the collate function drains it into the batch (``skipped``, and
    ``skipped_files``: up to ``names_per_batch`` (file, reason) pairs). The training process, not the worker,
    reports them, once per file (:class:`swinssl.training.skipped_samples.SkippedSamples`). More than ``limit`` skips
    without a batch in between raise: data that is all bad would otherwise spin an endless resampled
    stream forever.
    """

    def __init__(self, limit: int = 10_000, names_per_batch: int = 64) -> None:
        self.count = 0
        self.names: list[tuple[str, str]] = []
        self.limit = limit
        self.names_per_batch = names_per_batch

    def handler(self, exn: Exception) -> bool:
        """A webdataset error handler: count, and keep reading."""
        self.record(exn)
        return True

    def record(self, exn: Exception | str, name: str | None = None, count: int = 1) -> None:
        """``count`` samples lost to ``exn`` (an error, or why as text) in ``name``."""
        self.count += count
        if len(self.names) < self.names_per_batch:
            self.names.append((name or "shard data", exn if isinstance(exn, str) else _reason(exn)))
        if self.count > self.limit:
            raise RuntimeError(
                f"{self.count} unreadable samples since the last batch; check the shards (last: {exn!r})"
            )

    def take(self) -> tuple[int, list[tuple[str, str]]]:
        """The number of skips since the last call, and the names of (up to ``names_per_batch`` of) them."""
        taken = self.count, self.names
        self.count, self.names = 0, []
        return taken


def _reason(exn: Exception) -> str:
    text = str(exn).strip().splitlines()
    return f"{type(exn).__name__}: {text[0]}" if text else type(exn).__name__
