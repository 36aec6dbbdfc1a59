"""LightningDataModules and WebDataset pipelines (installed as ``swinssl.datamodules``).

Names load on first use, so tools that need only shard sets (``make_shards``) do not import timm,
albumentations and PyAV.
"""

from swinssl.lazy import lazy_exports

_PUBLIC = {
    "IMAGENET_MEAN": "swinssl.normalization",
    "IMAGENET_STD": "swinssl.normalization",
    "ClassificationShardDataModule": ".classification",
    "ImageShardDataModule": ".images",
    "SegmentationShardDataModule": ".segmentation",
    "ShardDataModule": ".streaming",
    "Shards": ".shards",
    "SkipCounter": ".shards",
    "StreamSpec": ".streaming",
    "VideoShardDataModule": ".video",
    "denormalize": "swinssl.normalization",
    "rank_shards": ".shards",
    "resolve_shards": ".shards",
    "shard_sets": ".shards",
}
__all__ = sorted(_PUBLIC)

__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
