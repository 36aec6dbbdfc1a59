"""Shard lists: expanding a user's spec into checked URLs, splitting them across ranks, counting skips.

Shared by the image and video pipelines, so a bad path fails the same way (before any compute) and a
bad sample is counted the same way (logged as ``data/skipped``) whatever the modality.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Iterable

from webdataset.shardlists import expand_urls

log = logging.getLogger(__name__)

_REMOTE = re.compile(r"^(pipe:|[a-zA-Z][a-zA-Z0-9+.-]*://)")
_GLOB_CHARS = re.compile(r"[*?\[]")
_FIX = "run `python -m swinssl.make_shards SRC OUT` first, or point data.shards at existing shards"


def resolve_shards(spec: str | Iterable[str]) -> list[str]:
    """Expand braces, globs and directories into shard URLs, checking local ones exist.

    Remote URLs and ``pipe:`` commands pass through unchecked: only the reader can open them.
    """
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    urls = [url for item in items for url in _resolve_item(os.fspath(item))]
    if not urls:
        raise ValueError(f"no shards matched {spec!r}")
    return urls


def _resolve_item(item: str) -> list[str]:
    urls = []
    for url in expand_urls(item):
        if _REMOTE.match(url):
            urls.append(url)
            continue
        path = os.path.expanduser(url)
        if os.path.isdir(path):
            matches = sorted(glob.glob(os.path.join(glob.escape(path), "*.tar")))
        elif _GLOB_CHARS.search(path):
            matches = sorted(glob.glob(path))
        elif os.path.exists(path):
            matches = [path]
        else:
            raise FileNotFoundError(f"shard {path} does not exist; {_FIX}")
        if not matches:
            raise ValueError(f"no shards matched {url!r}; {_FIX}")
        urls.extend(matches)
    return urls


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


class SkipCounter:
    """Counts samples dropped inside one DataLoader worker, so batches can report them.

    One instance is pickled into each worker together with the pipeline; every stage of that worker's
    pipeline shares it, and the collate function drains it into the batch. More than ``limit`` skips
    without a batch in between raise: data that is all bad would otherwise spin an endless resampled
    stream forever.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.count = 0
        self.limit = limit

    def handler(self, exn: Exception) -> bool:
        """A webdataset error handler: log, count, and keep reading."""
        self.record(exn)
        return True

    def record(self, exn: Exception, key: str | None = None) -> None:
        where = f"sample {key}" if key is not None else "shard data"
        log.warning("skipping unreadable %s: %r", where, exn)
        self.count += 1
        if self.count > self.limit:
            raise RuntimeError(
                f"{self.count} unreadable samples since the last batch; check the shards (last: {exn!r})"
            )

    def take(self) -> int:
        """The number of skips since the last call."""
        count, self.count = self.count, 0
        return count
