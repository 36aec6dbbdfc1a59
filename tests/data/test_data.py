"""Shard resolution and the image DataModule, on tiny shards written here with plain webdataset."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from swinssl.datamodules import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageShardDataModule,
    SkipCounter,
    denormalize,
    rank_shards,
    resolve_shards,
)
from conftest import random_image_shards
from swinssl.datamodules.images import DecodeStage, eval_transform
from swinssl.masking import MaskGenerator

IMG = 64  # 2 x 2 mask units of 32 px; ratio 0.6 masks ceil(2.4) = 3 units of 8 x 8 tokens
SMALL = dict(img_size=IMG, mask_patch_size=32, model_patch_size=4, mask_ratio=0.6, shuffle_buffer=8)


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def noise(rng: np.random.Generator, size: int = 24) -> np.ndarray:
    return rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)


def write_tar(path, samples: list[dict]) -> str:
    with wds.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)
    return str(path)


@pytest.fixture
def shards(tmp_path):
    """3 shards of 8 labeled noise images (png and jpg), keys unique across shards."""
    rng = np.random.default_rng(0)
    paths = []
    for shard in range(3):
        samples = []
        for i in range(8):
            index = shard * 8 + i
            ext, fmt = ("png", "PNG") if i % 2 else ("jpg", "JPEG")
            samples.append({"__key__": f"{index:06d}", ext: encode(noise(rng), fmt), "cls": index % 2})
        paths.append(write_tar(tmp_path / f"train-{shard:06d}.tar", samples))
    return paths


# --- resolve_shards / rank_shards ---------------------------------------------------------------


def test_resolve_braces_globs_dirs_lists(shards, tmp_path):
    pattern = f"{tmp_path}/train-{{000000..000002}}.tar"
    assert resolve_shards(pattern).urls == shards
    assert resolve_shards(f"{tmp_path}/train-*.tar").urls == shards
    assert resolve_shards(str(tmp_path)).urls == shards
    assert resolve_shards(tmp_path).urls == shards
    assert resolve_shards(f"{tmp_path}:train").urls == shards
    assert resolve_shards([shards[2], f"{tmp_path}/train-00000[01].tar"]).urls == [shards[2], *shards[:2]]


def test_resolve_passes_remote_urls_through_with_braces_expanded():
    urls = resolve_shards(["https://host/a-{0..1}.tar", "pipe:curl -s s3://b/c.tar", "gs://b/d.tar"]).urls
    expected = ["https://host/a-0.tar", "https://host/a-1.tar", "pipe:curl -s s3://b/c.tar", "gs://b/d.tar"]
    assert urls == expected


def test_resolve_missing_path_names_it_and_the_fix(shards, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train-000003\.tar.*make_shards"):
        resolve_shards(f"{tmp_path}/train-{{000000..000003}}.tar")


@pytest.mark.parametrize("spec", ["{root}/nothing-*.tar", "{root}/empty", []])
def test_resolve_empty_match_is_an_error(tmp_path, spec):
    (tmp_path / "empty").mkdir()
    spec = spec.format(root=tmp_path) if isinstance(spec, str) else spec
    with pytest.raises(ValueError, match="no shards matched"):
        resolve_shards(spec)


def test_rank_shards_disjoint_and_covering():
    urls = [f"s{i}.tar" for i in range(10)]
    parts = [rank_shards(urls, rank, 3) for rank in range(3)]
    assert sorted(sum(parts, [])) == sorted(urls)
    assert all(not set(a) & set(b) for i, a in enumerate(parts) for b in parts[i + 1 :])


def test_rank_shards_fewer_than_ranks_overlap_with_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert rank_shards(["a.tar", "b.tar"], 2, 4) == ["a.tar", "b.tar"]
    assert "2 shards for 4 ranks" in caplog.text


# --- decoding and skipping ----------------------------------------------------------------------


def test_decode_stage_skips_and_counts_bad_samples_by_source_file():
    rng = np.random.default_rng(1)
    good = {"__key__": "a", "png": encode(noise(rng))}
    bad = {"__key__": "b", "jpg": b"not an image", "json": b'{"path": "cats/broken.jpg"}'}
    samples = [good, bad, {"__key__": "c", "txt": b"hi", "__url__": "/s/train-000001.tar"}, good]
    counter = SkipCounter()
    out = list(DecodeStage(eval_transform(IMG), MaskGenerator(IMG, 32, 4, 0.6), counter)(iter(samples)))
    assert len(out) == 2 and [o["label"] for o in out] == [-1, -1]
    count, names = counter.take()
    assert count == 2 and [name for name, _ in names] == ["cats/broken.jpg", "train-000001.tar/c"]
    assert "UnidentifiedImageError" in names[0][1] and "KeyError" in names[1][1]
    assert counter.take() == (0, [])


def test_eval_decode_matches_plain_pil_reference():
    """Decoded pixels are the RGB image, normalized: checked on a square image with no resize/crop."""
    pixels = np.random.default_rng(2).integers(0, 256, (IMG, IMG), dtype=np.uint8)  # grayscale
    stage = DecodeStage(eval_transform(IMG), MaskGenerator(IMG, 32, 4, 0.6), SkipCounter())
    image = next(stage(iter([{"__key__": "k", "png": encode(pixels), "cls": b"3"}])))
    reference = torch.from_numpy(np.stack([pixels] * 3)).float() / 255
    torch.testing.assert_close(denormalize(image["image"]), reference, atol=1e-5, rtol=0)
    assert image["label"] == 3
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(image["image"], (reference - mean) / std, atol=1e-5, rtol=0)


# --- the DataModule -----------------------------------------------------------------------------


def test_batches_have_documented_format(shards):
    dm = ImageShardDataModule(shards, batch_size=4, num_workers=0, epoch_size=22, **SMALL)
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert dm.batches_per_rank == 5 and len(loader) == 5 and len(batches) == 5
    for batch in batches:
        assert batch["image"].shape == (4, 3, IMG, IMG) and batch["image"].dtype == torch.float32
        assert batch["mask"].shape == (4, IMG // 4, IMG // 4) and batch["mask"].dtype == torch.uint8
        assert batch["label"].dtype == torch.int64 and set(batch["label"].tolist()) <= {0, 1}
        assert batch["skipped"].shape == () and batch["skipped"].item() == 0
        units = batch["mask"][:, ::8, ::8]  # one entry per 32 px unit
        assert units.sum((1, 2)).tolist() == [3] * 4
        assert torch.equal(batch["mask"], units.repeat_interleave(8, 1).repeat_interleave(8, 2))


def test_batches_per_rank_splits_the_epoch_over_ranks(shards):
    dm = ImageShardDataModule(shards, batch_size=4, num_workers=0, epoch_size=22, **SMALL)
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2, global_step=0, current_epoch=0,
                                 accumulate_grad_batches=1)
    dm.setup("fit")
    assert (dm.rank, dm.world_size, dm.batches_per_rank) == (1, 2, 2)
    assert len(list(dm.train_dataloader())) == 2


@pytest.mark.parametrize("workers", [0, 3])
def test_a_loader_resumed_mid_epoch_gives_the_batches_an_uninterrupted_one_gives_next(shards, workers):
    """Batch 4 of the first epoch comes from the worker whose turn it is, with the same augmentation and masks, and
    the next epoch is the uninterrupted run's. Today's main reseeded the stream with the step and began at worker 0."""

    def epochs(step: int, count: int) -> list[dict]:
        dm = ImageShardDataModule(shards, batch_size=2, num_workers=workers, epoch_size=12, **SMALL)
        dm.trainer = SimpleNamespace(global_rank=0, world_size=1, global_step=step, current_epoch=step // 6,
                                     accumulate_grad_batches=1)
        dm.setup("fit")
        loader = dm.train_dataloader()
        return [batch for _ in range(count) for batch in loader]

    whole, resumed = epochs(0, 2), epochs(4, 2)
    continued = resumed[:2] + resumed[6:]  # the resumed epoch's loader gives 6 batches; Lightning takes 2
    assert len(whole) == len(resumed) == 12
    for got, expected in zip(continued, whole[4:], strict=True):
        assert torch.equal(got["image"], expected["image"]) and torch.equal(got["mask"], expected["mask"])
    assert not torch.equal(whole[4]["image"], whole[5]["image"])


def test_ranks_sharing_one_shard_still_draw_different_batches(shards):
    def first_batch(rank):
        dm = ImageShardDataModule(shards[:1], batch_size=4, num_workers=0, epoch_size=8, **SMALL)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, global_step=0, current_epoch=0,
                                     accumulate_grad_batches=1)
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))

    assert not torch.equal(first_batch(0)["image"], first_batch(1)["image"])
    assert torch.equal(first_batch(1)["image"], first_batch(1)["image"])


def test_bad_data_is_skipped_counted_and_training_continues(shards, tmp_path):
    rng = np.random.default_rng(3)
    mixed = [{"__key__": f"m{i}", "png": encode(noise(rng))} for i in range(6)]
    mixed[2] = {"__key__": "m2", "jpg": b"\xff\xd8 truncated jpeg"}
    mixed[4] = {"__key__": "m4", "txt": b"no image here"}
    bad = write_tar(tmp_path / "mixed.tar", mixed)
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(open(shards[0], "rb").read()[:3000])  # cut inside the first samples
    dm = ImageShardDataModule([bad, str(truncated)], batch_size=4, num_workers=0, epoch_size=40, **SMALL)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 10 and all(b["image"].shape[0] == 4 for b in batches)
    assert sum(b["skipped"].item() for b in batches) > 0


def test_two_workers_reproducible_and_distinct(tmp_path):
    """Every sample is the same image: only distinct per-worker RNGs can make the batches differ."""
    same = encode(noise(np.random.default_rng(4), size=48))
    samples = [[{"__key__": f"{i}{j}", "png": same} for j in range(8)] for i in range(2)]
    paths = [write_tar(tmp_path / f"s{i}.tar", shard) for i, shard in enumerate(samples)]

    def first_batches():
        dm = ImageShardDataModule(paths, batch_size=2, num_workers=2, epoch_size=8, seed=5, **SMALL)
        dm.setup("fit")
        return list(dm.train_dataloader())

    run1, run2 = first_batches(), first_batches()
    assert len(run1) == 4
    for a, b in zip(run1, run2):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    # batches 0 and 1 come from different workers
    assert not torch.equal(run1[0]["image"], run1[1]["image"])
    assert not torch.equal(run1[0]["mask"], run1[1]["mask"])


def test_validation_masks_fixed_per_sample_across_passes(shards):
    dm = ImageShardDataModule(shards[:1], val_shards=shards, batch_size=5, num_workers=2, **SMALL)
    dm.setup("validate")
    passes = [list(dm.val_dataloader()) for _ in range(2)]
    # worker 0 reads shards 0 and 2 (16 samples), worker 1 shard 1 (8): each sample once, partial batches kept
    assert sorted(len(b["label"]) for b in passes[0]) == [1, 3, 5, 5, 5, 5]
    for a, b in zip(*passes):
        assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["image"], b["image"])
    masks = torch.cat([b["mask"] for b in passes[0]])
    assert len({m.numpy().tobytes() for m in masks}) > 1  # seeded per sample, not one mask for all


class _Counting(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen = {"train": 0, "val": 0}

    def training_step(self, batch, _):
        self.seen["train"] += 1
        return (self.weight - batch["image"].mean()) ** 2

    def validation_step(self, batch, _):
        self.seen["val"] += len(batch["label"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("with_val", [False, True])
def test_lightning_runs_exactly_batches_per_rank(shards, with_val):
    dm = ImageShardDataModule(
        shards, val_shards=shards if with_val else None, batch_size=4, num_workers=0, epoch_size=12, **SMALL
    )
    model = _Counting()
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    assert dm.batches_per_rank == 3 and trainer.num_training_batches == 3
    assert model.seen["train"] == 6
    assert model.seen["val"] == (2 * 24 if with_val else 0)


def test_skip_counter_gives_up_when_nothing_is_readable(shards, tmp_path):
    counter = SkipCounter(limit=2)
    assert counter.handler(OSError("bad")) and counter.handler(OSError("bad"))
    with pytest.raises(RuntimeError, match="3 unreadable samples since the last batch"):
        counter.handler(OSError("bad"))
    # end to end: an endless resampled stream of bad data fails instead of spinning forever
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(open(shards[0], "rb").read()[:3000])
    dm = ImageShardDataModule(str(truncated), batch_size=4, num_workers=0, epoch_size=8, **SMALL)
    with pytest.raises(RuntimeError, match="unreadable samples since the last batch"):
        next(iter(dm.train_dataloader()))


@pytest.mark.parametrize("hflip", [0.0, 1.0])
def test_flip_and_crop_are_data_keys_of_every_image_recipe(tmp_path, hflip):
    """Horizontal flip and the crop range were fixed in code: digits and text must not be flipped."""
    from hydra import compose, initialize_config_module

    from swinssl import finetune, pretrain

    left_bright = np.zeros((64, 64, 3), np.uint8)
    left_bright[:, :32] = 255
    shard = write_tar(tmp_path / "train-000000.tar", [{"__key__": "a", "png": encode(left_bright), "cls": 0}])
    common = [f"data.shards={shard}", "data.batch_size=2", "model.arch=swinv2_tiny", "model.img_size=64",
              "model.window_size=2", "data.crop_scale=[1.0,1.0]", "data.crop_ratio=[1.0,1.0]", f"data.hflip={hflip}"]
    with initialize_config_module("swinssl.recipes", version_base="1.3"):
        pretraining = compose("pretrain", [*common, "simmim.mask_patch_size=32"])
        finetuning = compose("finetune", ["recipe=ft_v2_t_192to224", *common, "checkpoint=null", "data.auto_augment=null",
                                          "data.re_prob=0", "data.val_shards=null", "model.num_classes=2"])
    image_data = pretrain.build(pretraining)[1]
    classification_data = finetune.build(finetuning)[1]
    for data in (image_data, classification_data):
        images = torch.stack([next(iter(data.train_dataloader()))["image"][0] for _ in range(4)])
        left, right = images[..., :32].mean(), images[..., 32:].mean()
        assert (left > right) == (hflip == 0.0), type(data).__name__


def test_samples_lost_to_a_truncated_shard_are_counted(tmp_path):
    """Today's main: a tar cut on a 512-byte boundary silently lost its last samples (data/skipped counted 0); the
    manifest records how many samples each shard holds."""
    folder = Path(random_image_shards(tmp_path, images=8, maxcount=4))
    assert json.loads((folder / "train.manifest.json").read_text())["shard_samples"] == [4, 4]
    shard = folder / "train-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 // 512 * 512])  # on a header boundary: the tar simply ends
    module = ImageShardDataModule(val_shards=str(folder), batch_size=2, num_workers=0, img_size=64,
                                  mask_patch_size=16)
    read = skipped = 0
    named = []
    for batch in module.val_dataloader():
        read += len(batch.get("image", ()))
        skipped += int(batch["skipped"])
        named += batch["skipped_files"]
    assert 4 <= read < 8 and read + skipped == 8, named
    assert any(name == "train-000001.tar" and "samples" in reason for name, reason in named), named
