"""What a ``checkpoint=`` value names besides a local path, without importing torch: the recipe checks let these
through to :mod:`swinssl.weights.hub`, which resolves them to cached files."""

from __future__ import annotations

HUB_PREFIX = "hf-hub:"
URL_PREFIXES = ("http://", "https://")


def is_remote(checkpoint: object) -> bool:
    """Whether ``checkpoint`` names weights to fetch (a hub repo or URL) rather than a local path."""
    return isinstance(checkpoint, str) and checkpoint.startswith((HUB_PREFIX, *URL_PREFIXES))
