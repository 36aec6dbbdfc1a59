"""Labeled image shards -> classification batches: ``{"image", "label", "skipped"}``.

For fine-tuning and evaluation. Streaming as in :mod:`.streaming`; the class count and names come
from the shard sets' manifests that ``make_shards`` writes next to the shards (:mod:`.shards`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from timm.data import create_transform

from swinssl.normalization import IMAGENET_MEAN, IMAGENET_STD

from .images import load_rgb
from .shards import MASK_KEY, SEGMENTATION, Shards, SkipCounter, describe_classes
from .streaming import Decoder, ShardDataModule, StreamSpec
from .views import EVAL_CROP_MODES, IMAGE_EVALUATION


class LabeledDecodeStage(Decoder):
    """Raw sample -> ``{"image", "label"}``; a sample without a ``cls`` label is skipped like a bad one."""

    def __init__(self, transform: Callable, counter: SkipCounter) -> None:
        super().__init__(counter)
        self.transform = transform

    def reseed(self, seed: int) -> None:
        # timm's transforms draw from Python's `random` (crops, magnitudes, erasing), numpy's (RandAugment's
        # op choice) and torch's (erasing's fill).
        random.seed(seed)
        np.random.seed(seed)
        torch.random.default_generator.manual_seed(seed)  # the CPU generator, which the transforms use

    def decode(self, sample: dict) -> dict:
        if "cls" not in sample:
            raise KeyError(f"no class label (cls) among keys {sorted(sample)}")
        label = int(sample["cls"])
        return {"image": self.transform(load_rgb(sample)), "label": label}


class LabeledShards:
    """Class count and names of labeled shards, for a :class:`ShardDataModule` (after its ``__init__``).

    Training and validation sets must list the same classes in the same order (a label is an index into
    that list), and :meth:`check_set` refuses a set whose manifest says it holds other labels.
    """

    same_classes_fix = "write both from folders with the same class subfolders"

    def check_set(self, data: Shards) -> None:
        """Classification reads ``cls`` labels: a set without them, or of image/mask pairs, is refused."""
        if data.task == SEGMENTATION:
            raise ValueError(f"{data.name} is a segmentation set (images with masks, {MASK_KEY}), not classification "
                             "shards: segment with a seg_* recipe, or give shards written from class folders")
        if data.labeled is False:
            raise ValueError(f"{data.name} has no class labels (make_shards found no class subfolders in its "
                             "source); classification needs shards written from class folders")

    def read_labels(self, num_classes: int | None) -> None:
        sets = [data for data in (self.train_data, self.val_data) if data is not None]
        for data in sets:
            self.check_set(data)
        named = [data for data in sets if data.classes is not None]
        if len(named) == 2 and named[0].classes != named[1].classes:
            first, second = named
            raise ValueError(
                f"the training shards {first.name} and the validation shards {second.name} have different classes "
                f"({describe_classes(first.classes)} vs {describe_classes(second.classes)}); a label would mean "
                f"another class in each: {self.same_classes_fix}"
            )
        self._class_names = named[0].classes if named else None
        self._num_classes = num_classes
        if num_classes is not None and self._class_names is not None and num_classes != len(self._class_names):
            raise ValueError(f"num_classes={num_classes} but {named[0].name} has {len(self._class_names)} classes "
                             f"({describe_classes(self._class_names)}); leave num_classes unset to take them from the shards")

    def ignore_labels(self) -> None:
        """For a module that reads no labels (masked pretraining): no classes, and unlabeled sets are fine."""
        self._class_names, self._num_classes = None, None

    @property
    def class_names(self) -> list[str] | None:
        """The class names the shard sets record (train, else val), or None."""
        return self._class_names

    @property
    def num_classes(self) -> int | None:
        """The ``num_classes`` argument if given, else the number of class names, else None."""
        if self._num_classes is not None:
            return self._num_classes
        return len(self._class_names) if self._class_names is not None else None


class ClassificationShardDataModule(LabeledShards, ShardDataModule):
    """Labeled image batches with the official Swin/SimMIM fine-tuning augmentation.

    Training: random resized crop, flip, RandAugment, random erasing (``color_jitter`` only acts with
    ``auto_augment=None``, as in timm and the official code). Evaluation: ``eval_crop_mode="center"``
    resizes the shorter side to ``int(img_size / eval_crop_pct)`` and takes the central square (official
    ``TEST.CROP=True``); ``"squash"`` resizes to ``img_size`` x ``img_size`` and ignores
    ``eval_crop_pct`` (official 384 px configs). ``stream`` is a :class:`~.streaming.StreamSpec`, or the
    training shards with the other stream settings as keywords; without training shards the module only
    evaluates.
    """

    def __init__(
        self,
        stream: StreamSpec | str | Sequence[str] | None = None,
        *,
        img_size: int = 224,
        num_classes: int | None = None,
        auto_augment: str | None = "rand-m9-mstd0.5-inc1",
        color_jitter: float | None = 0.4,
        crop_scale: Sequence[float] = (0.08, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        re_prob: float = 0.25,
        re_mode: str = "pixel",
        re_count: int = 1,
        interpolation: str = IMAGE_EVALUATION["interpolation"],
        eval_crop_pct: float = IMAGE_EVALUATION["eval_crop_pct"],
        eval_crop_mode: str = IMAGE_EVALUATION["eval_crop_mode"],
        **stream_fields: Any,
    ) -> None:
        if img_size <= 0:
            raise ValueError(f"img_size must be positive, got {img_size}")
        if not 0 < eval_crop_pct <= 1:
            raise ValueError(f"eval_crop_pct must be in (0, 1], got {eval_crop_pct}")
        if eval_crop_mode not in EVAL_CROP_MODES:
            raise ValueError(f"eval_crop_mode must be one of {EVAL_CROP_MODES}, got {eval_crop_mode!r}")
        super().__init__(StreamSpec().updated(stream, **stream_fields))
        # timm, not albumentations: albumentations has no RandAugment, and timm's is the official pipeline.
        self.train_transform = create_transform(
            img_size,
            is_training=True,
            scale=tuple(crop_scale),
            ratio=tuple(crop_ratio),
            hflip=hflip,
            color_jitter=color_jitter,
            auto_augment=auto_augment,
            interpolation=interpolation,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            re_prob=re_prob,
            re_mode=re_mode,
            re_count=re_count,
        )
        self.eval_transform = create_transform(
            img_size,
            is_training=False,
            interpolation=interpolation,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            # timm's squash resizes to img_size / crop_pct before its centre crop; 1.0 makes it a plain resize.
            crop_pct=eval_crop_pct if eval_crop_mode == "center" else 1.0,
            crop_mode=eval_crop_mode,
        )
        self.read_labels(num_classes)

    def decoder(self, counter: SkipCounter, train: bool) -> LabeledDecodeStage:
        return LabeledDecodeStage(self.train_transform if train else self.eval_transform, counter)
