"""Segmentation data: joint image/mask augmentation (alignment, labels never blended, mmseg's rules), the
datamodule's batches, and its refusals."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from conftest import write_mask_pairs
from swinssl.datamodules import ClassificationShardDataModule, SegmentationShardDataModule, resolve_shards
from swinssl.datamodules.masks import reduce_zero_label
from swinssl.datamodules.segmentation import (
    CategoryBalancedCrop, PhotoMetricDistortion, eval_transform, rescaled_size, train_transform,
)
from swinssl.make_shards import write_folder_shards, write_pair_shards
from swinssl.normalization import denormalize

# A colour per class: a mask painted with these colours can be read back from its image.
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)


def block_mask(height: int = 60, width: int = 80, block: int = 20, seed: int = 0) -> np.ndarray:
    """Labels 0..3 in blocks (no two neighbours need differ), so every block has an interior."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4, (height // block, width // block), dtype=np.uint8).repeat(block, 0).repeat(block, 1)


def as_rgb(image: torch.Tensor) -> np.ndarray:
    return (denormalize(image).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def test_augmented_image_and_mask_stay_aligned():
    """The image is painted from its mask; after rescale, crop, flip and padding, every pixel inside a region of
    one label still shows that label's colour, and padding is label 255 over image 0 (the mean colour)."""
    def pipeline(ratio_range):
        transform = train_transform((48, 48), scale=(80, 60), ratio_range=ratio_range, cat_max_ratio=0.75, hflip=0.5,
                                    photometric=None)
        transform.set_random_seed(0)
        return transform

    # Ratios below 0.8 make the 60 x 80 image smaller than the 48 x 48 crop: it is padded.
    for transform, padded in ((pipeline((0.8, 2.0)), False), (pipeline((0.5, 0.75)), True)):
        for seed in range(12):
            mask = block_mask(seed=seed)  # asymmetric: flipping only one of image and mask would show
            out = transform(image=PALETTE[mask], mask=mask)
            image, labels = as_rgb(out["image"]), out["mask"].numpy()
            assert out["image"].shape == (3, 48, 48) and labels.shape == (48, 48)
            # Pixels whose 5x5 neighbourhood has one label are away from edges, where bilinear resizing blends
            # (over one source pixel, up to 2 output pixels here) and cv2's nearest samples up to half a source
            # pixel off; the crop's border is left out too (its neighbours outside the crop are unknown).
            window = np.lib.stride_tricks.sliding_window_view(np.pad(labels, 2, constant_values=254), (5, 5))
            inner = (window == labels[..., None, None]).all((-1, -2)) & (labels != 255)
            assert inner.sum() > 100
            assert np.abs(image[inner].astype(int) - PALETTE[labels[inner]]).max() <= 2
            pad = labels == 255
            assert pad.any() == padded
            assert torch.equal(out["image"][:, torch.from_numpy(pad)], torch.zeros(3, int(pad.sum())))


def test_labels_are_never_interpolated():
    """Only values of the input mask (and 255 for padding) come out, at any scale, in training and evaluation."""
    rng = np.random.default_rng(0)
    mask = rng.choice(np.array([3, 7, 255], np.uint8), size=(37, 53))  # noise: every pixel an edge
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    train = train_transform((32, 32), scale=(100, 37), ratio_range=(0.3, 2.5), cat_max_ratio=0.75, hflip=0.5,
                            photometric={})
    for transform in (train, eval_transform((200, 80)), eval_transform((40, 20))):
        for _ in range(10):
            values = set(np.unique(transform(image=image, mask=mask)["mask"].numpy()))
            assert values <= {3, 7, 255}, values


def test_reduce_zero_label_shifts_labels_and_ignores_other():
    mask = np.array([[0, 1, 2], [150, 254, 255]], np.uint8)
    assert reduce_zero_label(mask).tolist() == [[255, 0, 1], [149, 253, 255]]


def test_rescale_follows_mmcv_keep_ratio_rule():
    # mmcv rescale_size: scale factor min(long_max / long, short_max / short), sizes rounded half up.
    assert rescaled_size(375, 500, (2048, 512), 1.0) == (512, 683)
    assert rescaled_size(300, 2000, (2048, 512), 1.0) == (307, 2048)  # the long side binds
    assert rescaled_size(512, 512, (2048, 512), 0.5) == (256, 256)


def test_crop_is_drawn_again_while_one_class_dominates():
    """mmseg RandomCrop(cat_max_ratio=0.75): a crop where one class covers >= 75% of the labelled pixels (or the
    only class) is drawn again, up to 10 times; with 1.0 crops are uniform."""
    mask = np.zeros((100, 100), np.uint8)
    mask[:40, :40] = 1
    mask[90:, 90:] = 255  # ignored pixels count for no class
    image = np.zeros((100, 100, 3), np.uint8)

    judge = CategoryBalancedCrop((40, 40), 0.75)

    def balanced_share(ratio: float) -> float:
        crop = CategoryBalancedCrop((40, 40), ratio)
        crop.set_random_seed(0)
        balanced = 0
        for _ in range(300):
            box = crop.get_params_dependent_on_data({"shape": (100, 100)}, {"image": image, "mask": mask})["box"]
            assert box[1] - box[0] == 40 and box[3] - box[2] == 40
            balanced += judge.balanced(mask, box)
        return balanced / 300

    assert balanced_share(1.0) < 0.3 and balanced_share(0.75) > 0.75
    small = CategoryBalancedCrop((40, 40), 0.75)
    box = small.get_params_dependent_on_data({"shape": (30, 50)}, {"mask": np.zeros((30, 50), np.uint8)})["box"]
    assert box[:2] == (0, 30) and box[3] - box[2] == 40  # a side shorter than the crop is taken whole


def test_photometric_distortion_is_mmsegs():
    """Brightness delta, then contrast scaling, each clipped to uint8; saturation 1 and hue 0 change nothing
    beyond the HSV round trip."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    distort = PhotoMetricDistortion()
    out = distort.apply(image, brightness=20.0, contrast_first=True, contrast=1.3)
    brighter = np.clip(image.astype(np.float32) + 20, 0, 255).astype(np.uint8)
    expected = np.clip(brighter.astype(np.float32) * np.float32(1.3), 0, 255).astype(np.uint8)
    assert np.array_equal(out, expected)
    out = distort.apply(image, contrast_first=False, contrast=0.5)
    assert np.array_equal(out, (image.astype(np.float32) * np.float32(0.5)).astype(np.uint8))
    grey = np.full((4, 4, 3), 128, np.uint8)  # no saturation: a hue shift leaves grey grey
    assert np.array_equal(distort.apply(grey, saturation=1.5, hue=10), grey)


@pytest.fixture
def seg_shards(tmp_path):
    """Training (6) and validation (3) pairs of 24 x 32 with labels 0..3, ADE20K-style (0 = other, 3 classes)."""
    src = tmp_path / "src"
    write_mask_pairs(src, [f"t{i}" for i in range(6)], labels=4)
    write_mask_pairs(tmp_path / "val_src", [f"v{i}" for i in range(3)], size=(20, 36), labels=4, seed=1)
    out = tmp_path / "shards"
    write_pair_shards(src, out, ["a", "b", "c"], reduce_zero_label=True, maxcount=3)
    write_pair_shards(tmp_path / "val_src", out, ["a", "b", "c"], reduce_zero_label=True, prefix="val")
    return out


def test_datamodule_yields_segmentation_batches(seg_shards):
    data = SegmentationShardDataModule(f"{seg_shards}:train", val_shards=f"{seg_shards}:val", crop_size=16,
                                       scale=(32, 24), eval_scale=(64, 40), size_divisor=32, batch_size=2,
                                       num_workers=0)
    assert (data.num_classes, data.class_names, data.ignore_index, data.reduce_zero_label) == (3, ["a", "b", "c"],
                                                                                              255, True)
    batches = list(data.train_dataloader())
    assert len(batches) == 3 == data.batches_per_rank
    for batch in batches:
        assert batch["image"].dtype == torch.float32 and batch["image"].shape == (2, 3, 16, 16)
        assert batch["mask"].dtype == torch.int64 and batch["mask"].shape == (2, 16, 16)
        assert set(batch["mask"].unique().tolist()) <= {0, 1, 2, 255} and int(batch["skipped"]) == 0
    # Validation: 20 x 36 rescaled keeping ratio within 64 x 40 -> 36 x 64, padded to 64 x 64 (divisor 32).
    batches = list(data.val_dataloader())
    assert [batch["image"].shape for batch in batches] == [(2, 3, 64, 64), (1, 3, 64, 64)]
    val = {key: torch.cat([batch[key] for batch in batches]) for key in ("image", "mask")}
    assert (val["mask"][:, 36:] == 255).all() and (val["image"][:, :, 36:] == 0).all()
    # reduce_zero_label: the stored 0 ("other") is ignored, stored 1..3 are classes 0..2, everywhere.
    assert set(val["mask"][:, :36].unique().tolist()) == {0, 1, 2, 255}


def test_a_resumed_loader_gives_the_uninterrupted_batches_with_their_augmentation(seg_shards):
    """The decoder reseeds per sample (rescale, crop, flip, photometric), so a run resumed at step 2 reads what the
    uninterrupted run reads there; before, the transform was seeded once per worker pass."""

    def batches(step: int) -> list[dict]:
        data = SegmentationShardDataModule(f"{seg_shards}:train", crop_size=16, scale=(32, 24), batch_size=2,
                                           num_workers=0, epoch_size=6)
        data.trainer = SimpleNamespace(global_rank=0, world_size=1, global_step=step, current_epoch=0,
                                       accumulate_grad_batches=1)
        data.setup("fit")
        return list(data.train_dataloader())

    whole, resumed = batches(0), batches(2)  # the resumed loader's first batch is the uninterrupted run's third
    assert len(whole) == 3
    for key in ("image", "mask"):
        assert torch.equal(resumed[0][key], whole[2][key])
    assert not torch.equal(whole[1]["image"], whole[2]["image"])


def test_a_sample_without_mask_or_with_a_bad_mask_is_skipped_and_named(tmp_path):
    """Shards without a manifest (another tool's): samples are checked on decode."""
    def png(pixels):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        return buffer.getvalue()

    image = png(np.zeros((8, 8, 3), np.uint8))
    samples = [
        {"__key__": "0", "png": image, "seg.png": png(np.ones((8, 8), np.uint8)), "json": b'{"path": "good.png"}'},
        {"__key__": "1", "png": image, "json": b'{"path": "nomask.png"}'},
        {"__key__": "2", "png": image, "seg.png": png(np.ones((4, 8), np.uint8)),
         "json": b'{"path": "small.png", "mask": "small_mask.png"}'},
        {"__key__": "3", "png": image, "seg.png": png(np.full((8, 8), 7, np.uint8)), "json": b'{"path": "seven.png"}'},
    ]
    with wds.TarWriter(str(tmp_path / "other-000000.tar")) as sink:
        for sample in samples:
            sink.write(sample)
    data = SegmentationShardDataModule(val_shards=str(tmp_path / "other-000000.tar"), num_classes=3,
                                       eval_scale=(8, 8), batch_size=4, num_workers=0)
    (batch,) = list(data.val_dataloader())
    assert batch["mask"].shape == (1, 32, 32) and int(batch["skipped"]) == 3
    reasons = dict(batch["skipped_files"])
    assert reasons["nomask.png"].startswith("KeyError") and "no mask (seg.png)" in reasons["nomask.png"]
    assert reasons["small.png + small_mask.png"] == "BadPair: the mask is 8x4 but its image is 8x8"
    assert "label 7, which is no class (0..2)" in reasons["seven.png"]


def test_refusals_are_one_line(seg_shards, tmp_path):
    images = tmp_path / "images" / "cat"
    images.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "0.png")
    write_folder_shards(images.parent, tmp_path / "cls")
    write_mask_pairs(tmp_path / "other", ["o"], labels=2)
    write_pair_shards(tmp_path / "other", tmp_path / "other_shards", ["x", "y"], reduce_zero_label=True)
    cases = [
        (str(tmp_path / "cls"), None, {}, "cls:train holds no masks (seg.png): it is a set of images with class "
        "labels (cat); segmentation needs shards of image/mask pairs: python -m swinssl.make_shards SRC OUT --classes "
        "FILE, with SRC holding images/ + annotations/ or NAME.jpg beside NAME.png"),
        (f"{seg_shards}:train", str(tmp_path / "other_shards"), {}, "the training shards shards:train and the "
        "validation shards other_shards:train have different classes (a, b, c vs x, y); a label would mean another "
        "class in each: write both with the same --classes"),
        (f"{seg_shards}:train", None, {"crop_size": [512, 1024], "scale": [1000, 200]}, "data.crop_size [512, 1024] "
        "is larger than any rescaled training image (at most 2000 x 400: data.scale [1000, 200] x data.ratio_range "
        "max 2), so every crop would be partly padding; use a smaller crop or a larger scale"),
        (f"{seg_shards}:train", None, {"reduce_zero_label": False}, "data.reduce_zero_label=False but the manifest "
        "of shards:train says True; leave data.reduce_zero_label=null to follow it"),
    ]
    for train, val, keys, line in cases:
        with pytest.raises(ValueError) as error:
            SegmentationShardDataModule(train, val_shards=val, **keys)
        assert str(error.value) == line
    with pytest.raises(ValueError, match=r"^shards:train is a segmentation set \(images with masks, seg.png\), not "
                                         "classification shards"):
        ClassificationShardDataModule(f"{seg_shards}:train")


def test_sets_with_and_without_masks_or_with_other_label_rules_are_not_read_together(seg_shards, tmp_path):
    images = tmp_path / "images" / "a"
    images.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "0.png")
    write_folder_shards(images.parent, tmp_path / "cls")
    with pytest.raises(ValueError, match=r"^shards:train is a segmentation set \(images with masks\) but cls:train is "
                                         "not; read one kind$"):
        resolve_shards([f"{seg_shards}:train", str(tmp_path / "cls")])
    write_mask_pairs(tmp_path / "plain", ["p"], labels=3)
    write_pair_shards(tmp_path / "plain", tmp_path / "plain_shards", ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"label their masks differently \(ignore index 255 vs 255, "
                                         "reduce_zero_label True vs False\)"):
        resolve_shards([f"{seg_shards}:train", str(tmp_path / "plain_shards")])
    both = resolve_shards([f"{seg_shards}:train", f"{seg_shards}:val"])
    assert (both.task, both.reduce_zero_label, both.samples, both.described) == ("segmentation", True, 9, True)
