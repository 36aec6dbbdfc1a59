"""The streaming machinery every shard DataModule shares; subclasses only say how a sample is decoded.

Training streams resampled shards with a fixed number of batches per rank, so DDP ranks never wait on
each other at the end of an epoch; validation reads each shard once, keeping the partial last batch.
Every batch reports the samples its worker skipped since the previous one (``skipped``, ``skipped_files``);
a pass that reads each shard once ends with a batch of no samples when skips are left to report.

Training streams are exact on resume: the samples of step N, their augmentation and their masks are a function
of (seed, rank, step), whatever stopped the run before (see :class:`TrainStream`). A loader's own state cannot
give that: PyTorch's DataLoader asks its workers for batches in turn starting at worker 0 on every new iterator,
and its workers' RNGs have drawn as many numbers as samples decoded, which a resumed process cannot know without
decoding them again. So each worker plays a *role* whose stream and per-sample randomness depend only on
(seed, rank, role, epoch, sample index), and a resumed loader hands the roles round so that its worker 0 plays
the role whose batch comes next, each role skipping the encoded samples it already gave (read, not decoded).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import logging
import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import torch
import webdataset as wds

from swinssl.masking import fixed_generator

from .shards import Shards, SkipCounter, rank_shards, resolve_shards, sample_name

log = logging.getLogger(__name__)


class Decoder:
    """Pipeline stage base: raw sample -> decoded dict; a sample ``decode`` raises on is counted and dropped."""

    def __init__(self, counter: SkipCounter) -> None:
        self.counter = counter

    def start(self) -> None:
        """Called once per pass, inside the worker: OpenCV (albumentations, clip augmentation) runs one thread per
        loader worker, since its own pool in every worker would oversubscribe the cores."""
        if torch.utils.data.get_worker_info() is not None:
            import cv2

            cv2.setNumThreads(0)

    def reseed(self, seed: int) -> None:
        """Seed every random draw of the next ``decode`` (augmentation, masks); a training stream calls it once per
        sample, so a sample's randomness does not depend on the samples decoded before it."""

    def decode(self, sample: dict) -> dict:
        raise NotImplementedError

    def __call__(self, samples: Iterable[dict], seeds: Iterator[int] | None = None) -> Iterator[dict]:
        """Decoded ``samples``; with ``seeds``, each decoded after :meth:`reseed` with the next one."""
        self.start()
        for sample in samples:
            if seeds is not None:
                self.reseed(next(seeds))
            try:
                decoded = self.decode(sample)
            except Exception as exn:  # noqa: BLE001 - any unreadable sample is skipped and counted
                self.counter.record(exn, sample_name(sample))
                continue
            yield decoded


class MaskingDecoder(Decoder):
    """A stage that also draws each sample's SimMIM mask from ``masks`` (None: no mask), in the worker: in
    training from :meth:`reseed`'s seed; with ``fixed_masks`` from a generator seeded by the sample key, so every
    validation pass masks the same units."""

    def __init__(self, counter: SkipCounter, masks: Callable[..., torch.Tensor] | None = None,
                 fixed_masks: bool = False) -> None:
        super().__init__(counter)
        self.masks = masks
        self.fixed_masks = fixed_masks
        self.generator: torch.Generator | None = None

    def reseed(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def mask(self, sample: dict) -> torch.Tensor:
        return self.masks(generator=fixed_generator(sample["__key__"]) if self.fixed_masks else self.generator)


def tar_samples(counter: SkipCounter, expected: Mapping[str, int]) -> Callable[[Iterable[dict]], Iterator[dict]]:
    """``wds.tarfile_to_samples`` that counts what a shard should hold and did not give: a tar cut on a 512-byte
    boundary ends early without an error, one cut inside a member raises (in two places) and loses the samples after
    the cut. ``expected`` (samples per URL, from the manifest) says how many were lost, and a read error there is
    named but not counted; in a shard it does not name, each read error counts as one sample."""

    def stage(urls: Iterable[dict]) -> Iterator[dict]:
        for url in urls:
            known = url["url"] in expected

            def handler(exn: Exception) -> bool:
                counter.record(exn, count=0 if known else 1)
                return True

            read = 0
            for sample in wds.tariterators.tarfile_samples(iter([url]), handler=handler):
                read += 1  # a partial sample too: the decode stage counts it
                yield sample
            if known and read < expected[url["url"]]:
                counter.record(f"the shard ended after {read} of its {expected[url['url']]} samples",
                               os.path.basename(url["url"]), count=expected[url["url"]] - read)

    return stage


def collate(samples: list[dict], counter: SkipCounter) -> dict:
    """Stack tensors and turn ints into int64; ``skipped`` is this worker's skip count since its last batch
    and ``skipped_files`` names them."""
    batch = {}
    for key in samples[0] if samples else ():
        values = [sample[key] for sample in samples]
        is_tensor = isinstance(values[0], torch.Tensor)
        batch[key] = torch.stack(values) if is_tensor else torch.tensor(values, dtype=torch.int64)
    skipped, names = counter.take()
    batch["skipped"] = torch.tensor(skipped, dtype=torch.int64)
    batch["skipped_files"] = names
    return batch


def batches_reporting_skips(samples: Iterable[dict], batch_size: int, counter: SkipCounter,
                            collate_fn: Callable[[list[dict], SkipCounter], dict] = collate) -> Iterator[dict]:
    """Batches of ``batch_size`` and a partial last one; then, if skips came after it, a batch of no samples
    that reports them, so a pass that reads every shard once counts every skip."""
    pending = []
    for sample in samples:
        pending.append(sample)
        if len(pending) == batch_size:
            yield collate_fn(pending, counter)
            pending = []
    if pending or counter.count:
        yield collate_fn(pending, counter)


@dataclass(frozen=True)
class StreamSpec:
    """Where a datamodule's samples come from and how they stream: a recipe's ``data`` keys and ``seed``.

    ``epoch_size`` counts samples of the whole job per epoch (streams are resampled, so an epoch is a
    count, not a pass); None means one pass' worth: the training set's sample count, which its manifest
    records. ``shards=None`` makes an evaluation-only module.
    """

    shards: str | Sequence[str] | None = None
    val_shards: str | Sequence[str] | None = None
    batch_size: int = 64  # per device
    num_workers: int = 4
    epoch_size: int | None = None
    shuffle_buffer: int = 2000  # samples (still encoded) shuffled across shards
    seed: int = 0

    def updated(self, stream: StreamSpec | str | Sequence[str] | None = None, **fields: Any) -> StreamSpec:
        """This spec with ``stream`` (a spec, or the training shards) and ``fields`` laid over it."""
        if isinstance(stream, StreamSpec):
            fields = {**dataclasses.asdict(stream), **fields}
        elif stream is not None:
            fields = {"shards": stream, **fields}
        return dataclasses.replace(self, **fields)

    @classmethod
    def from_config(cls, data: Mapping[str, Any], seed: int = 0) -> StreamSpec:
        """From a recipe's ``data`` group (its streaming keys) and ``seed``."""
        names = {spec_field.name for spec_field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names}, seed=seed)


def stream_seed(*keys: int) -> int:
    """A 32-bit seed from integer keys (NumPy's SeedSequence: nearby keys give unrelated seeds)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


class TrainStream(torch.utils.data.IterableDataset):
    """One rank's endless training batches, exact on resume.

    Worker ``w`` of ``W`` plays role ``(w + position) % W`` in the epoch it starts in and role ``w`` after it:
    the loader asks worker 0 first, and batch ``i`` of an epoch is role ``i % W``'s. A role draws shards from
    this rank's share and shuffles their samples (still encoded) with RNGs seeded by (seed, rank, role, epoch),
    and seeds each sample's augmentation and mask by (seed, rank, role, epoch, its index), so that starting at
    batch ``position`` it skips the samples of the batches it already gave without decoding them. A sample that
    does not decode shifts the batches after it, so a resume is exact when the samples it skips all decode.
    ``passes`` counts the epochs this copy has begun: a persistent worker restarts its stream every epoch.
    """

    def __init__(self, urls: list[str], counts: Mapping[str, int], decoder: Decoder, counter: SkipCounter,
                 batch_size: int, shuffle_buffer: int, seed: int, rank: int, epoch: int = 0, position: int = 0,
                 collate_fn: Callable[[list[dict], SkipCounter], dict] = collate) -> None:
        super().__init__()
        self.urls, self.counts, self.decoder, self.counter, self.collate_fn = urls, counts, decoder, counter, collate_fn
        self.batch_size, self.shuffle_buffer = batch_size, shuffle_buffer
        self.seed, self.rank, self.epoch, self.position = seed, rank, epoch, position
        self.passes = 0

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, position = self.epoch + self.passes, self.position if self.passes == 0 else 0
        self.passes += 1
        role = (worker + position) % workers
        keys = (self.seed, self.rank, role, epoch)
        shards = random.Random(stream_seed(*keys))
        urls = ({"url": shards.choice(self.urls)} for _ in itertools.count())
        read = tar_samples(self.counter, self.counts)(urls)
        samples = wds.shuffle(self.shuffle_buffer, seed=stream_seed(*keys, 1))(read)  # the buffer holds bytes
        given = len(range(role, position, workers)) * self.batch_size  # samples of the batches this role gave
        for _ in itertools.islice(samples, given):
            pass
        self.counter.take()  # what the skipped batches reported
        seeds = (stream_seed(*keys, 2, index) for index in itertools.count(given))
        decoded = self.decoder(samples, seeds)
        collation = partial(self.collate_fn, counter=self.counter)
        yield from wds.batched(self.batch_size, partial=False, collation_fn=collation)(decoded)


def epoch_size(stream: StreamSpec, train: Shards | None) -> int | None:
    """Samples per epoch: the stream's, else one pass over the training set when its manifest counts it."""
    if stream.epoch_size is not None or train is None:
        return stream.epoch_size
    return train.samples


class ShardDataModule(L.LightningDataModule):
    """Batches from WebDataset shards (:class:`StreamSpec`); subclasses implement :meth:`decoder`.

    Each rank yields ``batches_per_rank`` full batches of ``batch_size`` per epoch. ``seed`` fixes shard
    resampling, shuffling, augmentation and masks, so a run is reproducible for a given world size and
    worker count, and a resumed run continues the stream of the uninterrupted run (:class:`TrainStream`).
    """

    def __init__(self, stream: StreamSpec) -> None:
        super().__init__()
        # Resolved here so that a bad path fails before any model is built.
        self.train_data: Shards | None = resolve_shards(stream.shards) if stream.shards is not None else None
        self.val_data: Shards | None = resolve_shards(stream.val_shards) if stream.val_shards is not None else None
        self.shard_counts = {**(self.train_data.counts if self.train_data else {}),
                             **(self.val_data.counts if self.val_data else {})}
        self.train_urls = self.train_data.urls if self.train_data is not None else None
        self.val_urls = self.val_data.urls if self.val_data is not None else None
        self.batch_size = stream.batch_size
        self.num_workers = stream.num_workers
        self.epoch_size = epoch_size(stream, self.train_data)
        self.shuffle_buffer = stream.shuffle_buffer
        self.seed = stream.seed
        self.rank, self.world_size = 0, 1

    @classmethod
    def from_config(cls, data: Mapping[str, Any], seed: int = 0, **fields: Any) -> ShardDataModule:
        """From a recipe's ``data`` group (plain values) and ``seed``: its streaming keys as the :class:`StreamSpec`,
        its other keys this module takes (augmentation, clip sampling, evaluation), and ``fields`` (what the model
        decides: sizes, masks) over them."""
        accepted = set(inspect.signature(cls.__init__).parameters) - set(StreamSpec.__dataclass_fields__)
        given = {key: value for key, value in data.items() if key in accepted}
        return cls(StreamSpec.from_config(data, seed=seed), **{**given, **fields})

    def decoder(self, counter: SkipCounter, train: bool) -> Decoder:
        """The decode stage of the training (``train``) or the validation pipeline."""
        raise NotImplementedError

    def collate_fn(self, train: bool) -> Callable[[list[dict], SkipCounter], dict]:
        """How the training (``train``) or a read-once pipeline stacks samples; a module-level function (or a
        partial of one), since it is pickled into the workers."""
        return collate

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            self.rank, self.world_size = self.trainer.global_rank, self.trainer.world_size

    @property
    def batches_per_rank(self) -> int:
        if self.epoch_size is None:
            raise ValueError(f"{self.train_data.name} does not record how many samples it holds (no manifest, or "
                             "part of a set): give the epoch size (data.epoch_size)")
        return max(1, self.epoch_size // (self.batch_size * self.world_size))

    def train_dataloader(self) -> wds.WebLoader:
        if self.train_urls is None:
            raise ValueError(f"{type(self).__name__} has no training shards; pass shards= to train")
        shards = rank_shards(self.train_urls, self.rank, self.world_size)
        log.info("rank %d of %d reads %d of %d shards (%s)", self.rank, self.world_size, len(shards),
                 len(self.train_urls), ", ".join(os.path.basename(url) for url in shards[:4])
                 + (", ..." if len(shards) > 4 else ""))
        counter = SkipCounter()
        stream = TrainStream(shards, self.shard_counts, self.decoder(counter, train=True), counter, self.batch_size,
                             self.shuffle_buffer, self.seed, self.rank, *self.resume_point(),
                             collate_fn=self.collate_fn(True))
        loader = wds.WebLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator(),  # the loader draws its workers' seeds here, not from the model's RNG
        )
        # The epoch is counted on the loader (batches of this rank), not in each worker's stream.
        return loader.with_epoch(self.batches_per_rank).with_length(self.batches_per_rank, silent=True)

    def resume_point(self) -> tuple[int, int]:
        """The epoch training starts in and the batches of it this rank already took: (0, 0), or what the trainer
        restored from a checkpoint (Lightning restores its loops before it asks for the training loader). A
        checkpoint of an epoch's end may still name that epoch; Lightning goes on with the next."""
        if self.trainer is None:
            return 0, 0
        epoch, accumulate = self.trainer.current_epoch, self.trainer.accumulate_grad_batches
        steps_per_epoch = -(-self.batches_per_rank // accumulate)  # Lightning steps at an epoch's end too
        taken = max(0, (self.trainer.global_step - epoch * steps_per_epoch) * accumulate)
        return (epoch + 1, 0) if taken >= self.batches_per_rank else (epoch, taken)

    def val_dataloader(self) -> wds.WebLoader | list:
        if self.val_urls is None:
            return []
        return self.read_once(partial(self.decoder, train=False))

    def read_once(self, make_decoder: Callable[[SkipCounter], Decoder]) -> wds.WebLoader:
        """Each of this rank's ``val_urls`` once through the stage ``make_decoder(counter)`` builds, keeping
        the partial last batch: validation, and test passes with other views of the same data."""
        counter = SkipCounter()
        urls = rank_shards(self.val_urls, self.rank, self.world_size)
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(urls),
            wds.split_by_worker,
            tar_samples(counter, self.shard_counts),
            make_decoder(counter),
            partial(batches_reporting_skips, batch_size=self.batch_size, counter=counter,
                    collate_fn=self.collate_fn(False)),
        )
        return wds.WebLoader(pipeline, batch_size=None, num_workers=min(self.num_workers, len(urls)),
                             generator=torch.Generator())  # nothing drawn from the training process's RNG
