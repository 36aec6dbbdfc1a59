"""``python -m swinssl.bench data``: how many SimMIM training images one data-loading worker (one process on
one core) makes per second, ours against the official recipe's torchvision pipeline on the same JPEGs.

ImageNet-like JPEGs are made from the colour photos scikit-image ships: random windows, resized to
ImageNet's usual sizes (long side 500 px for 70 % of them, 200-480 for 15 %, 600-1000 for 12 %,
1000-2000 for 3 %; aspect 4:3, 3:4, 3:2, 2:3 or 1:1), with mild sensor-like noise, saved at JPEG
quality 90 without chroma subsampling (most ImageNet JPEGs are 4:4:4, at quality 75-96). They are
written once as an ImageFolder tree (class subfolders, ``.JPEG`` files) and as WebDataset shards
through ``make_shards``, in a temporary folder.

Timed, one pass = every image once, in batches:
  swinssl        ImageShardDataModule's training decode stage behind its one-pass shard reader (tar
                 reading, decode, random resized crop 192 with scale 0.67-1 and ratio 3/4-4/3, flip,
                 normalisation, SimMIM mask, collation). Training's resampling and byte shuffle
                 buffer only reorder samples and are left out. The crop is drawn before decoding, so
                 a JPEG whose crop allows it is decoded at 1/2, 1/4 or 1/8 scale.
  swinssl_plain  the same with fast_decode=False: the whole image decoded (PIL), then albumentations.
  torchvision    torchvision.datasets.ImageFolder (PIL decoding) with the official SimMIM transforms
                 (RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize) and the official
                 NumPy mask generator, through a DataLoader with default collation.
The crops and flips follow the same distributions; the official resize is PIL's antialiased bilinear,
ours OpenCV's plain bilinear (cheaper, and it aliases on downscales; the reduced decoding averages
first, which brings the two closer).
All run in this process (no loader workers, whose pickling both would pay alike) with one thread
(torch.set_num_threads(1), cv2.setNumThreads(0)); the clock is the process's CPU time, so the rate is
per worker core and holds on a busy machine (wall-clock images/s are shown too). The pipelines take
turns (round robin, the order rotating every repeat) after an untimed warm-up pass each; the table
gives the median over repeats. Divide a GPU's images/s by the per-core rate to size num_workers.
Resume: what a training stream resumed past every image of the set pays before its first batch (the samples it
skips are read and shuffled, not decoded), less a fresh stream's first batch: CPU ms per 1000 skipped samples.
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.progress import Progress

from swinssl.bench.report import Stopwatch, cpu_name, finish, progress_bar, settings
from swinssl.demo_data import PHOTOS

# (share of the images, long side from, to): ImageNet's train set is mostly 500 px on the long side.
LONG_SIDES = ((0.15, 200, 480), (0.70, 500, 500), (0.12, 600, 1000), (0.03, 1000, 2000))
ASPECTS = ((4 / 3, 0.45), (3 / 4, 0.15), (3 / 2, 0.20), (2 / 3, 0.05), (1.0, 0.15))  # (width / height, share)


@dataclass
class DataBenchConfig:
    images: int = 256
    classes: int = 8
    shard_size: int = 64  # images per shard
    quality: int = 90
    subsampling: str = "4:4:4"  # or "4:2:0", Pillow's default
    noise: float = 3.0  # std of the Gaussian noise added before encoding, in 0-255 pixel units
    repeats: int = 5
    batch_size: int = 32
    img_size: int = 192
    crop_scale: tuple[float, float] = (0.67, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    mask_patch_size: int = 32
    model_patch_size: int = 4
    mask_ratio: float = 0.6
    seed: int = 0
    pipelines: list[str] = field(default_factory=lambda: ["swinssl", "swinssl_plain", "torchvision"])


QUICK_DATA = dict(images=16, classes=2, shard_size=8, repeats=1, batch_size=4)


# --- the images ---------------------------------------------------------------------------------


def imagenet_like_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) drawn from :data:`LONG_SIDES` and :data:`ASPECTS`."""
    share = [row[0] for row in LONG_SIDES]
    _, low, high = LONG_SIDES[rng.choice(len(LONG_SIDES), p=share)]
    long_side = int(rng.integers(low, high + 1))
    aspect = ASPECTS[rng.choice(len(ASPECTS), p=[a[1] for a in ASPECTS])][0]
    if aspect >= 1:
        return long_side, round(long_side / aspect)
    return round(long_side * aspect), long_side


def imagenet_like_jpeg(photo: Image.Image, cfg: DataBenchConfig, rng: np.random.Generator) -> bytes:
    """A random window of ``photo`` (60-100 % of the largest one with the drawn aspect), resized to an
    ImageNet-like size, plus noise, as JPEG bytes."""
    width, height = imagenet_like_size(rng)
    window_w = min(photo.width, photo.height * width / height) * rng.uniform(0.6, 1.0)
    window_h = window_w * height / width
    left, top = rng.uniform(0, photo.width - window_w), rng.uniform(0, photo.height - window_h)
    resized = photo.resize((width, height), Image.BICUBIC, box=(left, top, left + window_w, top + window_h))
    noisy = np.asarray(resized) + rng.normal(0, cfg.noise, (height, width, 3)).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(noisy.clip(0, 255).round().astype(np.uint8)).save(
        buffer, format="JPEG", quality=cfg.quality, subsampling=cfg.subsampling
    )
    return buffer.getvalue()


def write_image_folder(root: Path, cfg: DataBenchConfig, progress: Progress | None = None) -> dict:
    """``root/class_NN/NNNNN.JPEG``, the classes taking turns; sizes and bytes of what was written."""
    from swinssl.demo_videos import photo_rgb

    rng = np.random.default_rng(cfg.seed)
    # ImageNet is nearly all colour: the grayscale photos (equal channels) are left out.
    photos = [Image.fromarray(p) for p in map(photo_rgb, PHOTOS) if not (p == p[..., :1]).all()]
    task = progress.add_task("write JPEGs", total=cfg.images) if progress else None
    pixels, sizes = [], []
    for index in range(cfg.images):
        data = imagenet_like_jpeg(photos[int(rng.integers(len(photos)))], cfg, rng)
        path = root / f"class_{index % cfg.classes:02d}" / f"{index:05d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        with Image.open(path) as image:
            pixels.append(image.width * image.height)
        sizes.append(len(data))
        if progress:
            progress.update(task, advance=1)
    return {
        "mean_megapixels": round(float(np.mean(pixels)) / 1e6, 3),
        "mean_kbytes": round(float(np.mean(sizes)) / 1e3, 1),
        "bits_per_pixel": round(8 * float(np.sum(sizes)) / float(np.sum(pixels)), 2),
    }


# --- the pipelines ------------------------------------------------------------------------------


class OfficialMaskGenerator:
    """The official SimMIM mask generator (NumPy): ``ceil(units * ratio)`` of the square units, chosen by
    a uniform permutation, upsampled to the model's token grid."""

    def __init__(self, input_size: int, mask_patch_size: int, model_patch_size: int, mask_ratio: float) -> None:
        self.rand_size = input_size // mask_patch_size
        self.scale = mask_patch_size // model_patch_size
        self.token_count = self.rand_size**2
        self.mask_count = math.ceil(self.token_count * mask_ratio)

    def __call__(self) -> np.ndarray:
        mask = np.zeros(self.token_count, dtype=int)
        mask[np.random.permutation(self.token_count)[: self.mask_count]] = 1
        mask = mask.reshape(self.rand_size, self.rand_size)
        return mask.repeat(self.scale, axis=0).repeat(self.scale, axis=1)


class OfficialSimMIMTransform:
    """The official pretraining transform: an image -> (normalised tensor, mask)."""

    def __init__(self, cfg: DataBenchConfig) -> None:
        import torchvision.transforms as T
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        self.transform_img = T.Compose([
            T.RandomResizedCrop(cfg.img_size, scale=cfg.crop_scale, ratio=cfg.crop_ratio),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean=torch.tensor(IMAGENET_DEFAULT_MEAN), std=torch.tensor(IMAGENET_DEFAULT_STD)),
        ])  # fmt: skip
        self.mask_generator = OfficialMaskGenerator(
            cfg.img_size, cfg.mask_patch_size, cfg.model_patch_size, cfg.mask_ratio
        )

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, np.ndarray]:
        return self.transform_img(image), self.mask_generator()


def torchvision_batches(root: Path, cfg: DataBenchConfig) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """One pass over the ImageFolder per call: (images, masks) batches."""
    from torchvision.datasets import ImageFolder

    loader = torch.utils.data.DataLoader(
        ImageFolder(str(root), transform=OfficialSimMIMTransform(cfg)),
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=0,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return lambda: ((images, masks) for (images, masks), _labels in loader)


def swinssl_batches(
    shards: str, cfg: DataBenchConfig, fast_decode: bool = True
) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """One pass over the shards per call through the training decode stage: (images, masks) batches."""
    from functools import partial

    from swinssl.datamodules import ImageShardDataModule

    dm = ImageShardDataModule(
        shards, val_shards=shards, batch_size=cfg.batch_size, num_workers=0, img_size=cfg.img_size,
        mask_patch_size=cfg.mask_patch_size, model_patch_size=cfg.model_patch_size, mask_ratio=cfg.mask_ratio,
        crop_scale=cfg.crop_scale, crop_ratio=cfg.crop_ratio, seed=cfg.seed, fast_decode=fast_decode,
    )  # fmt: skip
    loader = dm.read_once(partial(dm.decoder, train=True))
    return lambda: ((batch["image"], batch["mask"]) for batch in loader)


def resume_skip_ms(shards: str, cfg: DataBenchConfig) -> float:
    """CPU ms per 1000 samples that a training stream resumed ``cfg.images`` samples in skips before its first
    batch, beyond a fresh stream's first batch (median over ``cfg.repeats``)."""
    from swinssl.datamodules import ImageShardDataModule
    from swinssl.datamodules.shards import SkipCounter
    from swinssl.datamodules.streaming import TrainStream

    dm = ImageShardDataModule(shards, batch_size=cfg.batch_size, num_workers=0, img_size=cfg.img_size, seed=cfg.seed)

    def first_batch_s(position: int) -> float:
        counter = SkipCounter()
        stream = TrainStream(dm.train_urls, dm.shard_counts, dm.decoder(counter, train=True), counter, dm.batch_size,
                             dm.shuffle_buffer, dm.seed, 0, 0, position)
        cpu = time.process_time()
        next(iter(stream))
        return time.process_time() - cpu

    batches = cfg.images // cfg.batch_size
    costs = [first_batch_s(batches) - first_batch_s(0) for _ in range(cfg.repeats + 1)][1:]  # the first warms up
    return 1e6 * statistics.median(costs) / (batches * cfg.batch_size)


# --- timing -------------------------------------------------------------------------------------


def timed_pass(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """One pass: images, CPU and wall seconds, and one sample's image and mask shapes."""
    wall, cpu, images = time.perf_counter(), time.process_time(), 0
    for image, mask in batches:
        images += len(image)
    return {"images": images, "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall,
            "image": tuple(image.shape[1:]), "mask": tuple(mask.shape[1:])}


def run_data(cfg: DataBenchConfig, workdir: Path) -> dict:
    """Write the images, then time the pipelines in turn: per pipeline the images/s of every repeat."""
    import cv2

    from swinssl.make_shards import write_folder_shards

    torch.set_num_threads(1)
    cv2.setNumThreads(0)  # OpenCV runs single-threaded, as in a loader worker
    folder, shard_dir = workdir / "folder", workdir / "shards"
    with progress_bar() as progress:
        dataset = write_image_folder(folder, cfg, progress)
    shards = write_folder_shards(folder, shard_dir, "image", maxcount=cfg.shard_size, seed=cfg.seed)
    makers = {
        "swinssl": lambda: swinssl_batches(shards.pattern, cfg),
        "swinssl_plain": lambda: swinssl_batches(shards.pattern, cfg, fast_decode=False),
        "torchvision": lambda: torchvision_batches(folder, cfg),
    }
    passes = {name: makers[name]() for name in cfg.pipelines}
    rates: dict[str, list[float]] = {name: [] for name in passes}
    wall_rates: dict[str, list[float]] = {name: [] for name in passes}
    shapes = {}
    with progress_bar() as progress:
        task = progress.add_task("data", total=(cfg.repeats + 1) * len(passes))
        for name, one_pass in passes.items():
            progress.update(task, advance=1, description=f"{name}: warm-up")
            warm_up = timed_pass(one_pass())
            shapes[name] = {key: warm_up[key] for key in ("images", "image", "mask")}
        for repeat in range(cfg.repeats):
            names = list(passes)[repeat % len(passes):] + list(passes)[: repeat % len(passes)]
            for name in names:
                progress.update(task, advance=1, description=f"{name}: pass {repeat + 1}")
                timed = timed_pass(passes[name]())
                rates[name].append(timed["images"] / timed["cpu_s"])
                wall_rates[name].append(timed["images"] / timed["wall_s"])
    rows = []
    for name, values in rates.items():
        median = statistics.median(values)
        rows.append({
            "pipeline": name, "images_per_s": round(median, 1), "min": round(min(values), 1),
            "max": round(max(values), 1), "ms_per_image": round(1e3 / median, 2),
            "per_repeat": [round(v, 1) for v in values],
            "wall_images_per_s": round(statistics.median(wall_rates[name]), 1), **shapes[name],
        })  # fmt: skip
    peer = next(row for row in rows if row["pipeline"] == "torchvision")["images_per_s"]
    for row in rows:
        row["vs_torchvision"] = round(row["images_per_s"] / peer, 2)
    return {"dataset": {**dataset, "images": cfg.images, "shards": shards.shards}, "rows": rows,
            "resume_skip_ms_per_1000": round(resume_skip_ms(shards.pattern, cfg), 1)}


def data_table(rows: list[dict]) -> str:
    lines = [
        "| pipeline | images per CPU-second (median) | min | max | CPU ms / image | vs torchvision | images/s (wall) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['pipeline']} | {row['images_per_s']:.1f} | {row['min']:.1f} | {row['max']:.1f} "
            f"| {row['ms_per_image']:.2f} | {row['vs_torchvision']:.2f}x | {row['wall_images_per_s']:.1f} |"
        )
    return "\n".join(lines)


def library_versions() -> dict[str, str]:
    import albumentations
    import cv2
    import PIL
    import torchvision
    from PIL import features

    return {"Pillow": PIL.__version__, "libjpeg-turbo": str(features.version("libjpeg_turbo")),
            "OpenCV": cv2.__version__, "albumentations": albumentations.__version__,
            "torchvision": torchvision.__version__, "torch": torch.__version__, "CPU": cpu_name()}


def run(args: argparse.Namespace, command: str) -> None:
    cfg = DataBenchConfig(**settings(args, ("images", "repeats", "quality", "subsampling"), QUICK_DATA))
    versions = library_versions()
    print("libraries: " + ", ".join(f"{name} {version}" for name, version in versions.items()))
    with Stopwatch() as wall, tempfile.TemporaryDirectory() as workdir:
        result = run_data(cfg, Path(workdir))
    print(data_table(result["rows"]))
    data = result["dataset"]
    print(f"\n{cfg.images} JPEGs (quality {cfg.quality}, {cfg.subsampling}, mean {data['mean_megapixels']:.3f} Mpixel, "
          f"{data['mean_kbytes']:.0f} KB, {data['bits_per_pixel']:.2f} bit/pixel) -> {cfg.img_size} px + mask; "
          f"batches of {cfg.batch_size}; one process, one thread; median of {cfg.repeats} passes each.")
    print(f"resume: a training stream resumed {cfg.images} samples in skips them (read, not decoded) at "
          f"{result['resume_skip_ms_per_1000']:.0f} CPU ms per 1000 samples before its first batch")
    finish(args, command, wall, {"versions": versions, "config": cfg.__dict__, **result})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default = DataBenchConfig()
    parser.add_argument("--images", type=int, help=f"JPEGs to write and time (default {default.images})")
    parser.add_argument("--repeats", type=int, help=f"timed passes per pipeline (default {default.repeats})")
    parser.add_argument("--quality", type=int, help=f"JPEG quality (default {default.quality})")
    parser.add_argument("--subsampling", choices=["4:4:4", "4:2:2", "4:2:0"],
                        help=f"JPEG chroma subsampling (default {default.subsampling})")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--quick", action="store_true", help="a few small passes: checks the plumbing only")
