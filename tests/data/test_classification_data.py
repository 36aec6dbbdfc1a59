"""The classification DataModule, on tiny class folders sharded here with make_shards."""

from __future__ import annotations

import io
import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from swinssl.datamodules import IMAGENET_MEAN, IMAGENET_STD, ClassificationShardDataModule, denormalize
from swinssl.make_shards import write_folder_shards

S = 32  # output size; sources are 40 x 52, so both the resize and the crop do something
H, W = 40, 52
COLOURS = {"blue": 2, "green": 1, "red": 0}  # class folder -> its dominant RGB channel
SMALL = dict(img_size=S, shuffle_buffer=8)


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def coloured(rng: np.random.Generator, channel: int) -> np.ndarray:
    pixels = rng.integers(0, 60, (H, W, 3), dtype=np.uint8)
    pixels[..., channel] += 180
    return pixels


def write_tar(path, samples: list[dict]) -> str:
    with wds.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)
    return str(path)


def normalise(pixels: np.ndarray) -> torch.Tensor:
    image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255
    return (image - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def decode_one(dm: ClassificationShardDataModule, pixels: np.ndarray) -> torch.Tensor:
    """``pixels`` through the module's own validation pipeline."""
    shard = write_tar(dm.tmp / "one.tar", [{"__key__": "k", "png": encode(pixels), "cls": 0}])
    dm.val_urls = [shard]
    return next(iter(dm.val_dataloader()))["image"][0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Class folders blue/green/red of coloured noise: 8 train images each (3 shards), 4 val each."""
    root = tmp_path_factory.mktemp("classes")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 4)):
        for name, channel in COLOURS.items():
            folder = root / f"src-{split}" / name
            folder.mkdir(parents=True)
            for i in range(count):
                fmt, ext = ("PNG", "png") if i % 2 else ("JPEG", "jpg")
                Image.fromarray(coloured(rng, channel)).save(folder / f"{i}.{ext}", format=fmt)
        write_folder_shards(root / f"src-{split}", root / split, prefix=split, maxcount=8)
    return SimpleNamespace(train=str(root / "train"), val=str(root / "val"), root=root)


def test_batches_have_documented_format_and_labels_follow_class_folders(data):
    dm = ClassificationShardDataModule(data.train, val_shards=data.val, batch_size=5, num_workers=0, epoch_size=12, **SMALL)
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert len(train) == 2
    for batch in train:
        assert set(batch) == {"image", "label", "skipped", "skipped_files"}
        assert batch["image"].shape == (5, 3, S, S) and batch["image"].dtype == torch.float32
        assert batch["label"].dtype == torch.int64 and set(batch["label"].tolist()) <= {0, 1, 2}
        assert batch["skipped"].shape == () and batch["skipped"].dtype == torch.int64 and batch["skipped"] == 0, batch["skipped_files"]

    val = list(dm.val_dataloader())
    assert [len(b["label"]) for b in val] == [5, 5, 2]  # each sample once, partial last batch kept
    images, labels = torch.cat([b["image"] for b in val]), torch.cat([b["label"] for b in val])
    dominant = denormalize(images).mean((2, 3)).argmax(1)
    assert dm.class_names == ["blue", "green", "red"]
    assert [COLOURS[dm.class_names[label]] for label in labels.tolist()] == dominant.tolist()
    assert sorted(labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4


def test_training_yields_exactly_batches_per_rank_full_batches(data):
    dm = ClassificationShardDataModule(data.train, batch_size=4, num_workers=0, epoch_size=30, **SMALL)
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2, global_step=0, current_epoch=0,
                                 accumulate_grad_batches=1)
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert dm.batches_per_rank == 3 and len(loader) == 3 and len(batches) == 3
    assert all(b["image"].shape[0] == 4 for b in batches)


def test_num_classes_and_class_names_from_the_set_manifests(data, tmp_path):
    assert ClassificationShardDataModule(data.train, **SMALL).num_classes == 3
    eval_only = ClassificationShardDataModule(val_shards=data.val, **SMALL)  # the val set's manifest
    assert eval_only.num_classes == 3 and eval_only.class_names == ["blue", "green", "red"]
    with pytest.raises(ValueError, match="num_classes=10 but .* has 3 classes"):
        ClassificationShardDataModule(data.train, num_classes=10, **SMALL)
    # a folder written before manifests: its classes.json; a bare tar: no names, unless num_classes says
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shard = write_tar(legacy / "x.tar", [{"__key__": "k", "png": encode(coloured(np.random.default_rng(1), 0))}])
    (legacy / "classes.json").write_text(json.dumps(["blue", "green", "red"]))
    assert ClassificationShardDataModule(shard, val_shards=data.val, **SMALL).class_names == ["blue", "green", "red"]
    (legacy / "classes.json").unlink()
    bare = ClassificationShardDataModule(shard, **SMALL)
    assert bare.num_classes is None and bare.class_names is None
    assert ClassificationShardDataModule(shard, num_classes=7, **SMALL).num_classes == 7


def test_train_and_val_sets_with_other_classes_are_refused(data, tmp_path):
    """Today's main used the train folder's classes.json for both, so val labels meant other classes."""
    rng = np.random.default_rng(6)
    for name in ("green", "red", "zebra"):
        (tmp_path / "src" / name).mkdir(parents=True)
        Image.fromarray(coloured(rng, 0)).save(tmp_path / "src" / name / "0.png")
    write_folder_shards(tmp_path / "src", tmp_path / "other", prefix="val")
    with pytest.raises(ValueError, match=r"different classes \(blue, green, red vs green, red, zebra\)"):
        ClassificationShardDataModule(data.train, val_shards=str(tmp_path / "other"), **SMALL)


def test_a_set_without_labels_is_refused_for_classification(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.fromarray(coloured(np.random.default_rng(7), 0)).save(tmp_path / "flat" / "0.png")
    write_folder_shards(tmp_path / "flat", tmp_path / "shards")
    with pytest.raises(ValueError, match="has no class labels"):
        ClassificationShardDataModule(val_shards=str(tmp_path / "shards"), **SMALL)


def test_eval_transform_matches_plain_pil_reference(tmp_path):
    """Centre mode: shorter side to int(S / 0.875) bicubic, central S x S crop, ImageNet normalisation."""
    pixels = np.random.default_rng(2).integers(0, 256, (H, W, 3), dtype=np.uint8)
    dm = ClassificationShardDataModule(num_workers=0, **SMALL)
    dm.tmp = tmp_path
    short = int(S / 0.875)  # 36: the 40 x 52 source becomes 36 x 46, cropped at (2, 7)
    resized = Image.fromarray(pixels).resize((int(short * W / H), short), Image.BICUBIC)
    top, left = (short - S) // 2, (resized.width - S) // 2
    reference = np.asarray(resized)[top : top + S, left : left + S]
    torch.testing.assert_close(decode_one(dm, pixels), normalise(reference), atol=1e-4, rtol=0)


def test_squash_mode_is_a_plain_resize(tmp_path):
    pixels = np.random.default_rng(3).integers(0, 256, (H, W, 3), dtype=np.uint8)
    dm = ClassificationShardDataModule(num_workers=0, eval_crop_mode="squash", **SMALL)  # crop_pct 0.875 ignored
    dm.tmp = tmp_path
    reference = np.asarray(Image.fromarray(pixels).resize((S, S), Image.BICUBIC))
    torch.testing.assert_close(decode_one(dm, pixels), normalise(reference), atol=1e-4, rtol=0)


def test_unlabeled_and_corrupt_samples_are_skipped_and_counted(tmp_path):
    rng = np.random.default_rng(4)
    samples = [{"__key__": f"s{i}", "png": encode(coloured(rng, 0)), "cls": 1} for i in range(8)]
    samples[1] = {"__key__": "s1", "png": encode(coloured(rng, 0))}  # no label
    samples[3] = {"__key__": "s3", "jpg": b"\xff\xd8 truncated jpeg", "cls": 1}
    samples[4] = {"__key__": "s4", "txt": b"no image here", "cls": 1}
    shard = write_tar(tmp_path / "mixed.tar", samples)
    dm = ClassificationShardDataModule(shard, val_shards=shard, batch_size=2, num_workers=0, epoch_size=20, **SMALL)
    val = list(dm.val_dataloader())  # read once: the count is exact
    assert [len(b["label"]) for b in val] == [2, 2, 1]
    assert sum(b["skipped"].item() for b in val) == 3
    assert all(b["label"].tolist() == [1] * len(b["label"]) for b in val)
    train = list(dm.train_dataloader())  # resampled: training goes on, with full batches
    assert len(train) == 10 and all(b["image"].shape[0] == 2 for b in train)
    assert sum(b["skipped"].item() for b in train) > 0


def same_image_shards(tmp_path) -> list[str]:
    same = encode(coloured(np.random.default_rng(5), 1))
    return [
        write_tar(tmp_path / f"s{i}.tar", [{"__key__": f"{i}{j}", "png": same, "cls": 0} for j in range(8)])
        for i in range(2)
    ]


def test_two_workers_reproducible_and_distinct(tmp_path):
    """Every sample is the same image: only distinct per-worker RNGs can make the batches differ.

    Without flips and random erasing (torch's RNG) every draw comes from Python's and numpy's RNGs, so
    those must differ.
    """
    paths = same_image_shards(tmp_path)

    def batches():
        dm = ClassificationShardDataModule(
            paths, batch_size=2, num_workers=2, epoch_size=8, seed=5, hflip=0.0, re_prob=0.0, **SMALL
        )
        return list(dm.train_dataloader())

    run1, run2 = batches(), batches()
    assert len(run1) == 4
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(run1, run2))
    assert not torch.equal(run1[0]["image"], run1[1]["image"])  # batches 0 and 1 come from different workers


def test_python_numpy_and_torch_rngs_are_seeded_per_sample(tmp_path):
    """timm draws from Python's, numpy's and torch's RNGs: without workers, whatever their state before, the
    stream's seed fixes the augmentation."""
    paths = same_image_shards(tmp_path)

    def first_batch(before: int):
        dm = ClassificationShardDataModule(paths, batch_size=4, num_workers=0, epoch_size=4, **SMALL)
        random.seed(before)
        np.random.seed(before)
        torch.manual_seed(before)
        return next(iter(dm.train_dataloader()))["image"]

    assert torch.equal(first_batch(1), first_batch(2))


def test_without_train_shards_training_raises(data):
    dm = ClassificationShardDataModule(val_shards=data.val, **SMALL)
    with pytest.raises(ValueError, match="no training shards"):
        dm.train_dataloader()
    assert len(list(dm.val_dataloader())) > 0


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(eval_crop_pct=0.0), "eval_crop_pct"),
        (dict(eval_crop_pct=1.2), "eval_crop_pct"),
        (dict(eval_crop_mode="border"), "eval_crop_mode"),
        (dict(img_size=0), "img_size"),
    ],
)
def test_bad_arguments_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        ClassificationShardDataModule(**{**SMALL, **bad})
