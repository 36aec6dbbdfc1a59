"""Image shards -> SimMIM batches: ``{"image", "mask", "label", "skipped"}``.

Training streams resampled shards with a fixed number of batches per rank, so DDP ranks never wait on
each other at the end of an epoch; validation reads each shard once with per-sample fixed masks, so
its loss is comparable from epoch to epoch.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterable, Iterator, Sequence
from functools import partial

import albumentations as A
import cv2
import lightning as L
import numpy as np
import torch
import webdataset as wds
from albumentations.pytorch import ToTensorV2
from PIL import Image

from swinssl.masking import MaskGenerator

from .shards import SkipCounter, rank_shards, resolve_shards

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation of ``(..., 3, H, W)`` images, to [0, 1] for image grids."""
    mean = images.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(3, 1, 1)
    return (images * std + mean).clamp(0.0, 1.0)


def train_transform(
    img_size: int, crop_scale: Sequence[float], crop_ratio: Sequence[float], hflip: float
) -> A.Compose:
    """The official SimMIM augmentation: random resized crop and horizontal flip."""
    return A.Compose(
        [
            A.RandomResizedCrop(
                size=(img_size, img_size),
                scale=tuple(crop_scale),
                ratio=tuple(crop_ratio),
                interpolation=cv2.INTER_LINEAR,
            ),
            A.HorizontalFlip(p=hflip),
            A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
            ToTensorV2(),
        ]
    )


def eval_transform(img_size: int) -> A.Compose:
    """Shorter side to ``img_size``, then the central square: deterministic."""
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=img_size, interpolation=cv2.INTER_LINEAR),
            A.CenterCrop(height=img_size, width=img_size),
            A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
            ToTensorV2(),
        ]
    )


class DecodeStage:
    """Pipeline stage: raw sample -> ``{"image", "mask", "label"}``; a bad sample is counted, never raised.

    With ``fixed_masks`` the mask is drawn from a generator seeded by the sample key, so every pass over
    the validation set masks the same units.
    """

    def __init__(
        self, transform: A.Compose, masks: MaskGenerator, counter: SkipCounter, fixed_masks: bool = False
    ) -> None:
        self.transform = transform
        self.masks = masks
        self.counter = counter
        self.fixed_masks = fixed_masks

    def __call__(self, samples: Iterable[dict]) -> Iterator[dict]:
        if torch.utils.data.get_worker_info() is not None:
            cv2.setNumThreads(0)  # one thread per worker; OpenCV's own pool oversubscribes the cores
        # The Compose arrives pickled with the same RNG state in every worker: reseed it from torch,
        # which the loader seeds differently per worker.
        self.transform.set_random_seed(int(torch.randint(2**31 - 1, ())))
        for sample in samples:
            try:
                decoded = self.decode(sample)
            except Exception as exn:  # noqa: BLE001 - any unreadable sample is skipped and counted
                self.counter.record(exn, sample.get("__key__"))
                continue
            yield decoded

    def decode(self, sample: dict) -> dict:
        key = next((k for k in IMAGE_KEYS if k in sample), None)
        if key is None:
            raise KeyError(f"no image ({'|'.join(IMAGE_KEYS)}) among keys {sorted(sample)}")
        with Image.open(io.BytesIO(sample[key])) as image:
            pixels = np.asarray(image.convert("RGB"))
        generator = None
        if self.fixed_masks:
            generator = torch.Generator().manual_seed(zlib.crc32(sample["__key__"].encode()))
        return {
            "image": self.transform(image=pixels)["image"],
            "mask": self.masks(generator=generator),
            "label": int(sample["cls"]) if "cls" in sample else -1,
        }


def collate(samples: list[dict], counter: SkipCounter) -> dict[str, torch.Tensor]:
    """Stack decoded samples; ``skipped`` carries this worker's skip count since its last batch."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "mask": torch.stack([s["mask"] for s in samples]),
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.int64),
        "skipped": torch.tensor(counter.take(), dtype=torch.int64),
    }


class ImageShardDataModule(L.LightningDataModule):
    """SimMIM (and labeled) image batches from WebDataset shards.

    ``epoch_size`` counts samples of the whole job per epoch; each rank yields ``batches_per_rank``
    batches of ``batch_size``. ``seed`` fixes shard resampling, shuffling, augmentation and masks, so a
    run is reproducible for a given world size and worker count.
    """

    def __init__(
        self,
        shards: str | Sequence[str],
        val_shards: str | Sequence[str] | None = None,
        batch_size: int = 64,
        num_workers: int = 4,
        epoch_size: int = 1_281_167,
        shuffle_buffer: int = 2000,
        img_size: int = 192,
        mask_patch_size: int = 32,
        model_patch_size: int = 4,
        mask_ratio: float = 0.6,
        crop_scale: Sequence[float] = (0.67, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        # Resolved and built here so that a bad path or size fails before any model is built.
        self.train_urls = resolve_shards(shards)
        self.val_urls = resolve_shards(val_shards) if val_shards is not None else None
        self.masks = MaskGenerator(img_size, mask_patch_size, model_patch_size, mask_ratio)
        self.train_transform = train_transform(img_size, crop_scale, crop_ratio, hflip)
        self.eval_transform = eval_transform(img_size)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.epoch_size = epoch_size
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank, self.world_size = 0, 1

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            self.rank, self.world_size = self.trainer.global_rank, self.trainer.world_size

    @property
    def batches_per_rank(self) -> int:
        return max(1, self.epoch_size // (self.batch_size * self.world_size))

    def train_dataloader(self) -> wds.WebLoader:
        # One seed per rank drives shard draws, shuffling and the workers' torch RNGs (augmentation,
        # masks): reproducible for a given seed, and distinct across ranks.
        seed = int(np.random.SeedSequence([self.seed, self.rank]).generate_state(1)[0])
        counter = SkipCounter()
        pipeline = wds.DataPipeline(
            # Resampling within this rank's shards: disjoint across ranks, endless within one.
            wds.ResampledShards(
                rank_shards(self.train_urls, self.rank, self.world_size), seed=seed, deterministic=True
            ),
            wds.tarfile_to_samples(handler=counter.handler),
            wds.detshuffle(self.shuffle_buffer, seed=seed),  # before decoding: the buffer holds bytes
            DecodeStage(self.train_transform, self.masks, counter),
            wds.batched(self.batch_size, partial=False, collation_fn=partial(collate, counter=counter)),
        )
        loader = wds.WebLoader(
            pipeline,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(seed),
        )
        # The epoch is counted on the loader (batches of this rank), not in each worker's stream.
        return loader.with_epoch(self.batches_per_rank).with_length(self.batches_per_rank, silent=True)

    def val_dataloader(self) -> wds.WebLoader | list:
        if self.val_urls is None:
            return []
        counter = SkipCounter()
        urls = rank_shards(self.val_urls, self.rank, self.world_size)
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(urls),
            wds.split_by_worker,
            wds.tarfile_to_samples(handler=counter.handler),
            DecodeStage(self.eval_transform, self.masks, counter, fixed_masks=True),
            wds.batched(self.batch_size, partial=True, collation_fn=partial(collate, counter=counter)),
        )
        return wds.WebLoader(pipeline, batch_size=None, num_workers=min(self.num_workers, len(urls)))
