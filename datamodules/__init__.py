"""LightningDataModules and WebDataset pipelines (installed as ``swinssl.datamodules``).

Names load on first use, so tools that need only shard sets (``make_shards``) do not import timm,
albumentations and PyAV.
"""

from importlib import import_module

_PUBLIC = {
    "IMAGENET_MEAN": ".images",
    "IMAGENET_STD": ".images",
    "ClassificationShardDataModule": ".classification",
    "ImageShardDataModule": ".images",
    "ShardDataModule": ".streaming",
    "Shards": ".shards",
    "SkipCounter": ".shards",
    "VideoShardDataModule": ".video",
    "denormalize": ".images",
    "rank_shards": ".shards",
    "resolve_shards": ".shards",
    "shard_sets": ".shards",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
