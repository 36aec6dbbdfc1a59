"""LightningDataModules and WebDataset pipelines (installed as ``swinssl.datamodules``)."""

from .images import IMAGENET_MEAN, IMAGENET_STD, ImageShardDataModule, denormalize
from .shards import SkipCounter, rank_shards, resolve_shards

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageShardDataModule",
    "SkipCounter",
    "denormalize",
    "rank_shards",
    "resolve_shards",
]
