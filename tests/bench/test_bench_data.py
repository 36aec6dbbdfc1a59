"""``python -m swinssl.bench data`` through the real CLI, and training's crop-first decoding
(:class:`CropFirstTransform`) against the plain reference path (whole image decoded, then albumentations)."""

import io
import re

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
import webdataset as wds
from PIL import Image

from conftest import quick_bench
from swinssl.datamodules import IMAGENET_MEAN, IMAGENET_STD, ImageShardDataModule, SkipCounter
from swinssl.datamodules.images import CropFirstDecodeStage, CropFirstTransform, DecodeStage, train_transform
from swinssl.masking import MaskGenerator

SIZE = 64  # output side of the unit tests; the bench uses the official 192
CROP = dict(crop_scale=(0.67, 1.0), crop_ratio=(3 / 4, 4 / 3), hflip=0.5)
PIPELINES = ["swinssl", "swinssl_plain", "torchvision"]


def test_data_quick_prints_the_table_and_writes_json(tmp_path):
    pytest.importorskip("skimage")
    printed, record = quick_bench("data", tmp_path)
    assert re.search(r"^libraries: Pillow \d+\.\d+.*, libjpeg-turbo \d", printed, re.M)
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| pipeline |"))
    assert [row.split(" | ")[0] for row in lines[header + 2 : header + 5]] == [f"| {name}" for name in PIPELINES]
    assert "command: python -m swinssl.bench data --quick --json" in printed

    assert record["config"]["images"] == 16 and record["dataset"]["images"] == 16
    assert record["dataset"]["mean_kbytes"] > 0 and record["dataset"]["shards"] == 2
    assert "resume: a training stream resumed 16 samples in skips them" in printed
    assert isinstance(record["resume_skip_ms_per_1000"], float)
    rows = {row["pipeline"]: row for row in record["rows"]}
    assert list(rows) == PIPELINES
    for row in rows.values():
        assert row["images"] == 16  # a pass reads every image once
        assert row["image"] == [3, 192, 192] and row["mask"] == [48, 48]
        assert row["images_per_s"] > 0 and row["wall_images_per_s"] > 0
        assert row["min"] <= row["images_per_s"] <= row["max"]
        ratio = row["images_per_s"] / rows["torchvision"]["images_per_s"]
        assert row["vs_torchvision"] == pytest.approx(ratio, abs=0.006)


# --- crop-first decoding against the reference ---------------------------------------------------


def photo_like(rng: np.random.Generator, height: int, width: int, channels: int = 3) -> np.ndarray:
    """A smooth random field plus mild noise: JPEG-friendly, with detail at every scale like a photo."""
    field = rng.normal(size=(height // 16 + 2, width // 16 + 2, channels)).cumsum(0).cumsum(1)
    field = cv2.resize(field, (width, height), interpolation=cv2.INTER_CUBIC).reshape(height, width, channels)
    field = 255 * (field - field.min()) / np.ptp(field)
    return (field + rng.normal(0, 3, field.shape)).clip(0, 255).astype(np.uint8).squeeze()


def encode(pixels: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def reference_compose(seed: int) -> A.Compose:
    """train_transform, recording the crop box and flip it applies."""
    compose = A.Compose(train_transform(SIZE, **CROP).transforms, save_applied_params=True)
    compose.set_random_seed(seed)
    return compose


def fast_transform(seed: int) -> CropFirstTransform:
    fast = CropFirstTransform(SIZE, **CROP)
    fast.set_random_seed(seed)
    return fast


@pytest.mark.parametrize("height, width", [(48, 40), (300, 260), (90, 600), (1000, 150), (64, 64)])
def test_fast_path_draws_the_reference_crops_and_flips(height, width):
    """Same seed, same sequence of crop boxes and flips, including the too-small and too-elongated
    images that take the central-crop fallback: the crop distribution is the reference's."""
    reference, fast = reference_compose(seed=3), fast_transform(seed=3)
    image = np.zeros((height, width, 3), np.uint8)
    draws = [fast.draw(height, width) for _ in range(40)]
    applied = [dict(reference(image=image)["applied_transforms"]) for _ in range(40)]
    assert draws == [(a["RandomResizedCrop"]["crop_coords"], "HorizontalFlip" in a) for a in applied]
    assert {flip for _, flip in draws} == {True, False}


@pytest.mark.parametrize(
    "kind", ["jpeg 4:2:0", "jpeg 4:4:4", "progressive jpeg", "grayscale jpeg", "png", "rgba png"]
)
def test_without_reduction_fast_path_equals_the_reference(kind):
    """Crops under 2 x the output size are decoded whole: the output is the reference's up to float
    rounding (OpenCV and PIL both decode JPEG with libjpeg-turbo's default, exact IDCT)."""
    rng = np.random.default_rng(0)
    channels = {"grayscale jpeg": 1, "rgba png": 4}.get(kind, 3)
    pixels = photo_like(rng, 100, 120, channels)
    options = {"jpeg 4:2:0": dict(quality=90), "jpeg 4:4:4": dict(quality=90, subsampling=0),
               "progressive jpeg": dict(quality=85, progressive=True), "grayscale jpeg": dict(quality=90)}
    data = encode(pixels, "PNG" if "png" in kind else "JPEG", **options.get(kind, {}))
    sample = {"__key__": "k", "png" if "png" in kind else "jpg": data}
    reference = DecodeStage(train_transform(SIZE, **CROP), MaskGenerator(SIZE, 32, 4, 0.6), SkipCounter())
    fast = CropFirstDecodeStage(CropFirstTransform(SIZE, **CROP), MaskGenerator(SIZE, 32, 4, 0.6), SkipCounter())
    reference.transform.set_random_seed(5)
    fast.transform.set_random_seed(5)
    for _ in range(12):
        expected = reference.view(sample)
        torch.testing.assert_close(fast.view(sample), expected, atol=1e-5, rtol=0)


def official_crop(image: Image.Image, box: tuple[int, int, int, int], flip: bool) -> torch.Tensor:
    """The official pipeline's ops for a given box: PIL crop + bilinear resize (antialiased), flip, normalise."""
    x_min, y_min, x_max, y_max = box
    tensor = TF.to_tensor(TF.resized_crop(image, y_min, x_min, y_max - y_min, x_max - x_min, [SIZE, SIZE]))
    tensor = TF.normalize(tensor, IMAGENET_MEAN, IMAGENET_STD)
    return tensor.flip(-1) if flip else tensor


@pytest.mark.parametrize("height, width, factors", [(220, 180, {2}), (330, 300, {2, 4}), (640, 860, {8})])
def test_reduced_decoding_stays_close_to_the_reference_and_nearer_the_official_resize(height, width, factors):
    """Crops at least 2 x the output decode at reduced scale. Mean |fast - reference| stays under 0.04 in
    normalised units (about 2.3 levels of 255); and the DCT reduction averages what the reference's
    bilinear resize skips, so the fast path lies nearer the official antialiased PIL resize than the
    reference does."""
    rng = np.random.default_rng(1)
    data = encode(photo_like(rng, height, width), "JPEG", quality=90)
    pil = Image.open(io.BytesIO(data)).convert("RGB")
    reference, fast = reference_compose(seed=7), fast_transform(seed=7)
    used, to_reference, reference_to_official, fast_to_official = set(), [], [], []
    for _ in range(12):
        expected = reference(image=np.asarray(pil))
        applied = dict(expected["applied_transforms"])
        box, flip = applied["RandomResizedCrop"]["crop_coords"], "HorizontalFlip" in applied
        with Image.open(io.BytesIO(data)) as image:
            out = fast.render(image, data, box, flip)
        used.add(fast.reduction(box))
        official = official_crop(pil, box, flip)
        to_reference.append((out - expected["image"]).abs().mean().item())
        reference_to_official.append((expected["image"] - official).abs().mean().item())
        fast_to_official.append((out - official).abs().mean().item())
    assert used == factors
    assert max(to_reference) < 0.04
    assert np.mean(fast_to_official) < 0.75 * np.mean(reference_to_official)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_reduced_sampling_hits_the_points_the_full_resize_samples(factor):
    """On a linear ramp, bilinear sampling is exact and a reduced pixel (the mean of a factor x factor
    block) is the ramp at the block centre, so warping the reduced image must give the full crop's
    resize. The crop is 1.7 and 1.9 x the reduced output, where a pixel-centre slip moves the samples
    by a third of a reduced pixel or more."""
    side = 2 * SIZE * factor
    rows, cols = np.mgrid[0:side, 0:side].astype(np.float32)
    ramp = 0.5 * rows + cols
    reduced = ramp.reshape(side // factor, factor, side // factor, factor).mean((1, 3))
    box = (5, 3, 5 + round(1.7 * SIZE * factor), 3 + round(1.9 * SIZE * factor))
    x_min, y_min, x_max, y_max = box
    full = cv2.resize(ramp[y_min:y_max, x_min:x_max], (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    sampling = CropFirstTransform(SIZE, **CROP).reduced_sampling(box, factor)
    warped = cv2.warpAffine(reduced, sampling, (SIZE, SIZE), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
    np.testing.assert_allclose(warped, full, atol=factor / 16)  # OpenCV warps in 1/32 px steps


def test_reduction_is_the_largest_that_keeps_the_output_resolution():
    fast = CropFirstTransform(SIZE, **CROP)
    assert fast.reduction((0, 0, 2 * SIZE - 1, 500)) == 1
    assert fast.reduction((10, 10, 10 + 2 * SIZE, 10 + 4 * SIZE)) == 2
    assert fast.reduction((0, 0, 8 * SIZE - 1, 8 * SIZE)) == 4
    assert fast.reduction((0, 0, 8 * SIZE, 8 * SIZE)) == 8


def test_unreadable_images_are_skipped_and_counted():
    data = encode(photo_like(np.random.default_rng(2), 100, 120), "JPEG", quality=90)
    samples = [
        {"__key__": "good", "jpg": data, "cls": b"1"},
        {"__key__": "truncated", "jpg": data[: len(data) // 2]},  # valid header, missing scans
        {"__key__": "garbage", "jpg": b"\xff\xd8 not a jpeg"},
        {"__key__": "none", "txt": b"no image"},
    ]
    counter = SkipCounter()
    stage = CropFirstDecodeStage(CropFirstTransform(SIZE, **CROP), MaskGenerator(SIZE, 32, 4, 0.6), counter)
    out = list(stage(iter(samples)))
    assert [o["label"] for o in out] == [1] and out[0]["image"].shape == (3, SIZE, SIZE)
    assert counter.take()[0] == 3


def test_training_takes_the_fast_path_unless_told_not_to(tmp_path):
    shard = str(tmp_path / "s.tar")
    with wds.TarWriter(shard) as writer:
        writer.write({"__key__": "a", "jpg": encode(photo_like(np.random.default_rng(3), 80, 96), "JPEG")})
    small = dict(img_size=SIZE, shuffle_buffer=4, num_workers=0)
    fast = ImageShardDataModule(shard, **small).decoder(SkipCounter(), train=True)
    plain = ImageShardDataModule(shard, fast_decode=False, **small).decoder(SkipCounter(), train=True)
    evaluation = ImageShardDataModule(shard, **small).decoder(SkipCounter(), train=False)
    assert isinstance(fast, CropFirstDecodeStage)
    assert type(plain) is DecodeStage and type(evaluation) is DecodeStage and evaluation.fixed_masks
    dm = ImageShardDataModule(shard, batch_size=2, epoch_size=4, **small)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, SIZE, SIZE) and batch["image"].is_contiguous()
