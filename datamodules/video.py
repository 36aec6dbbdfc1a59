"""Video shards -> clip batches: ``{"video": (B, 3, T, H, W), "label", "skipped"}``, or for masked video
pretraining ``{"video", "mask": (B, T', H', W'), "skipped"}`` (no label needed).

The official Video Swin pipelines, on WebDataset shards of encoded videos (``mp4|webm|avi|mkv`` and a
``cls`` label): which frames make a clip and decoding only those (:mod:`.clips`), and one augmentation
draw for every frame of a clip (:mod:`.clip_augment`). Test batches hold every view of a video,
``(B, V, 3, T, H, W)``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import albumentations as A
import numpy as np
import torch
import webdataset as wds
from timm.data.random_erasing import RandomErasing

from swinssl.masking import VideoMaskGenerator

from .classification import LabeledShards
from .clip_augment import ClipTransform, build_rand_augment, crop_views, short_side_resize, to_tensor
from .clips import ClipSampler, read_frames, video_bytes
from .images import random_resized_crop
from .shards import SkipCounter
from .streaming import MaskingDecoder, ShardDataModule, StreamSpec
from .views import TEST_CROPS


# -------------------------------------------------------------------------------------- pipeline stages


class ClipStage(MaskingDecoder):
    """Raw sample -> ``{"video", "label"}``, or ``{"video", "mask"}`` with ``masks`` (:class:`~.streaming.MaskingDecoder`);
    subclasses say which frames to decode and what views to make.

    A sample without a video, whose video does not decode, or (without ``masks``) without a ``cls`` label is
    skipped and counted.
    """

    def decode(self, sample: dict) -> dict:
        if self.masks is None and "cls" not in sample:
            raise KeyError(f"no class label (cls) among keys {sorted(sample)}")
        video = self.views(read_frames(video_bytes(sample), self.indices))
        if self.masks is None:
            return {"video": video, "label": int(sample["cls"])}
        return {"video": video, "mask": self.mask(sample)}

    def indices(self, length: int) -> np.ndarray:
        raise NotImplementedError

    def views(self, frames: np.ndarray) -> torch.Tensor:
        raise NotImplementedError


class TrainClips(ClipStage):
    """One random clip, augmented with one draw for all its frames: ``(3, T, H, W)``."""

    def __init__(
        self, counter: SkipCounter, sampler: ClipSampler, transform: ClipTransform, erasing: RandomErasing,
        masks: VideoMaskGenerator | None = None,
    ) -> None:
        super().__init__(counter, masks)
        self.sampler = sampler
        self.transform = transform
        self.erasing = erasing
        self.rng = np.random.default_rng()

    def reseed(self, seed: int) -> None:
        # timm's erasing draws from Python's `random`.
        self.rng = np.random.default_rng(seed)
        self.transform.set_random_seed(seed)
        random.seed(seed)
        super().reseed(seed)

    def indices(self, length: int) -> np.ndarray:
        return self.sampler.train(length, self.rng)

    def views(self, frames: np.ndarray) -> torch.Tensor:
        clip = to_tensor(self.transform(frames))
        # Erasing a (3T, H, W) view puts one box, with one fill, on every frame.
        self.erasing(clip.view(-1, *clip.shape[2:]))
        return clip


class EvalClips(ClipStage):
    """``clips`` spread clips, short side resized, ``crops`` crops each: ``(V, 3, T, H, W)`` clip-major,
    or ``(3, T, H, W)`` with ``single_view`` (validation)."""

    def __init__(
        self,
        counter: SkipCounter,
        sampler: ClipSampler,
        resize: ClipTransform,
        img_size: int,
        clips: int,
        crops: int,
        single_view: bool = False,
        masks: VideoMaskGenerator | None = None,
    ) -> None:
        super().__init__(counter, masks, fixed_masks=True)
        self.sampler = sampler
        self.resize = resize
        self.img_size = img_size
        self.clips = clips
        self.crops = crops
        self.single_view = single_view

    def indices(self, length: int) -> np.ndarray:
        return self.sampler.spread(length, self.clips)

    def views(self, frames: np.ndarray) -> torch.Tensor:
        crops = [crop for clip in frames for crop in crop_views(self.resize(clip), self.img_size, self.crops)]
        views = [to_tensor(crop) for crop in crops]
        return views[0] if self.single_view else torch.stack(views)


# ---------------------------------------------------------------------------------------------- module


class VideoShardDataModule(LabeledShards, ShardDataModule):
    """Labeled video clips with the official Video Swin training, validation and test views.

    Training: a clip from ``sampling`` (``"stride"``: ``num_frames`` x ``frame_interval``, Kinetics;
    ``"uniform"``: one frame per segment, SSv2), shorter side to ``short_side``, random resized crop to
    ``img_size``, flip (``hflip=0`` for SSv2, whose classes name directions), optional RandAugment
    (``rand_augment={"num_ops": 4, "magnitude": 7}`` for SSv2, see :func:`.clip_augment.rand_augment_ops`), ImageNet
    normalisation, random erasing with probability ``re_prob`` (one box for all frames). Every random
    choice is drawn once per clip. Validation: the centred clip, shorter side to ``eval_short_side or
    short_side``, the central square. Test (:meth:`test_dataloader`, on ``val_shards``): ``test_clips`` x
    ``test_crops`` views, shorter side to ``eval_short_side or img_size``. ``stream`` is a
    :class:`~.streaming.StreamSpec` (batch 8, shuffle buffer 200 by default), or the training shards with the
    other stream settings as keywords; without training shards the module only evaluates. Class names come
    from the shard sets' manifests.

    With ``masks`` (a :class:`~swinssl.masking.VideoMaskGenerator`) the module feeds masked video pretraining:
    labels are neither needed nor read, every clip gets a mask (validation: fixed per clip), and there is no
    test loader.
    """

    default_stream = StreamSpec(batch_size=8, shuffle_buffer=200)  # encoded videos are large: a smaller buffer

    def __init__(
        self,
        stream: StreamSpec | str | Sequence[str] | None = None,
        *,
        num_classes: int | None = None,
        num_frames: int = 32,
        sampling: str = "stride",
        frame_interval: int = 2,
        img_size: int = 224,
        short_side: int = 256,
        crop_scale: Sequence[float] = (0.08, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        rand_augment: Mapping[str, float] | None = None,
        re_prob: float = 0.0,
        eval_short_side: int | None = None,
        test_clips: int = 4,
        test_crops: int = 3,
        masks: VideoMaskGenerator | None = None,
        **stream_fields: Any,
    ) -> None:
        sampler = ClipSampler(sampling, num_frames, frame_interval)  # validates its arguments
        if test_clips < 1:
            raise ValueError(f"test_clips must be at least 1, got {test_clips}")
        if sampling == "uniform" and test_clips != 1:
            raise ValueError(f"uniform sampling has one test clip (segment midpoints), got test_clips={test_clips}")
        if img_size <= 0 or short_side <= 0:
            raise ValueError(f"img_size and short_side must be positive, got {img_size} and {short_side}")
        if (eval_short_side or short_side) < img_size:
            raise ValueError(f"evaluation short side {eval_short_side or short_side} is below img_size {img_size}")
        if not (0 <= hflip <= 1 and 0 <= re_prob <= 1):
            raise ValueError(f"hflip and re_prob are probabilities, got {hflip} and {re_prob}")
        if test_crops not in TEST_CROPS:
            raise ValueError(f"test_crops must be 1 (centre) or 3 (along the long side), got {test_crops}")
        super().__init__(self.default_stream.updated(stream, **stream_fields))
        self.sampler = sampler
        train = [
            short_side_resize(short_side),
            random_resized_crop(img_size, crop_scale, crop_ratio),
            A.HorizontalFlip(p=hflip),
        ]
        if rand_augment is not None:
            train.append(build_rand_augment(rand_augment))
        self.train_transform = ClipTransform(train, num_frames)
        self.erasing = RandomErasing(probability=re_prob, mode="const", device="cpu")
        self.val_resize = ClipTransform([short_side_resize(eval_short_side or short_side)], num_frames)
        self.test_resize = ClipTransform([short_side_resize(eval_short_side or img_size)], num_frames)
        self.img_size = img_size
        self.test_clips = test_clips
        self.test_crops = test_crops
        self.masks = masks
        if masks is None:
            self.read_labels(num_classes)
        else:
            self.ignore_labels()

    def decoder(self, counter: SkipCounter, train: bool) -> ClipStage:
        if train:
            return TrainClips(counter, self.sampler, self.train_transform, self.erasing, self.masks)
        return EvalClips(
            counter, self.sampler, self.val_resize, self.img_size, clips=1, crops=1, single_view=True,
            masks=self.masks,
        )

    def test_dataloader(self) -> wds.WebLoader:
        """Every test view of each video of ``val_shards``, read once: ``video`` is ``(B, V, 3, T, H, W)``."""
        if self.val_urls is None:
            raise ValueError(f"{type(self).__name__} has no val_shards to test on; pass val_shards=")
        if self.masks is not None:
            raise ValueError("a pretraining (masked) video module has no test views")
        views = dict(img_size=self.img_size, clips=self.test_clips, crops=self.test_crops)
        return self.read_once(partial(EvalClips, sampler=self.sampler, resize=self.test_resize, **views))


