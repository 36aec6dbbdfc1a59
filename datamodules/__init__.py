"""LightningDataModules and WebDataset pipelines (installed as ``swinssl.datamodules``)."""

from .classification import ClassificationShardDataModule
from .images import IMAGENET_MEAN, IMAGENET_STD, ImageShardDataModule, denormalize
from .shards import SkipCounter, rank_shards, resolve_shards
from .streaming import ShardDataModule
from .video import VideoShardDataModule

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClassificationShardDataModule",
    "ImageShardDataModule",
    "ShardDataModule",
    "SkipCounter",
    "VideoShardDataModule",
    "denormalize",
    "rank_shards",
    "resolve_shards",
]
