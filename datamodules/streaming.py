"""The streaming machinery every shard DataModule shares; subclasses only say how a sample is decoded.

Training streams resampled shards with a fixed number of batches per rank, so DDP ranks never wait on
each other at the end of an epoch; validation reads each shard once, keeping the partial last batch.
Every batch reports the samples its worker skipped since the previous one (``skipped``, ``skipped_files``);
a pass that reads each shard once ends with a batch of no samples when skips are left to report.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import torch
import webdataset as wds

from .shards import Shards, SkipCounter, rank_shards, resolve_shards, sample_name

log = logging.getLogger(__name__)


class Decoder:
    """Pipeline stage base: raw sample -> decoded dict; a sample ``decode`` raises on is counted and dropped."""

    def __init__(self, counter: SkipCounter) -> None:
        self.counter = counter

    def start(self) -> None:
        """Called once per pass, inside the worker: reseed RNGs that arrive pickled with the same state."""

    def decode(self, sample: dict) -> dict:
        raise NotImplementedError

    def __call__(self, samples: Iterable[dict]) -> Iterator[dict]:
        self.start()
        for sample in samples:
            try:
                decoded = self.decode(sample)
            except Exception as exn:  # noqa: BLE001 - any unreadable sample is skipped and counted
                self.counter.record(exn, sample_name(sample))
                continue
            yield decoded


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


def epoch_size(stream: StreamSpec, train: Shards | None) -> int | None:
    """Samples per epoch: the stream's, else one pass over the training set when its manifest counts it."""
    if stream.epoch_size is not None or train is None:
        return stream.epoch_size
    return train.samples


class ShardDataModule(L.LightningDataModule):
    """Batches from WebDataset shards (:class:`StreamSpec`); subclasses implement :meth:`decoder`.

    Each rank yields ``batches_per_rank`` full batches of ``batch_size`` per epoch. ``seed`` fixes shard
    resampling, shuffling and the workers' RNGs, so a run is reproducible for a given world size and
    worker count; a run resumed at step N reads a stream seeded with N too.
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
        # One seed per rank drives shard draws, shuffling and the workers' torch RNGs (augmentation,
        # masks): reproducible for a given seed, and distinct across ranks. A resumed run's loader is built after
        # its step is restored, and that step joins the seed: the stream continues, it does not replay.
        step = self.trainer.global_step if self.trainer is not None else 0
        seed = int(np.random.SeedSequence([self.seed, self.rank, *([step] if step else [])]).generate_state(1)[0])
        counter = SkipCounter()
        pipeline = wds.DataPipeline(
            # Resampling within this rank's shards: disjoint across ranks, endless within one.
            wds.ResampledShards(shards, seed=seed, deterministic=True),
            tar_samples(counter, self.shard_counts),
            wds.detshuffle(self.shuffle_buffer, seed=seed),  # before decoding: the buffer holds bytes
            self.decoder(counter, train=True),
            wds.batched(self.batch_size, partial=False, collation_fn=partial(self.collate_fn(True), counter=counter)),
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
        return wds.WebLoader(pipeline, batch_size=None, num_workers=min(self.num_workers, len(urls)))
