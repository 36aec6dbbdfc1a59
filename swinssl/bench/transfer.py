"""``python -m swinssl.bench transfer``: does what a model learned about relative position survive moving it, with no further
training, to a larger image and a larger window that covers the same field of view? This is the
Swin V2 paper's Table 1 question (log-spaced continuous position bias vs Swin V1's bicubic-resized
bias tables), asked of tiny models trained for a minute on real photos.

The task has to need position, or the position bias is never used and there is nothing to keep:
classifying crops by source photo is solved from a bag of patch features, and re-initializing the
bias did not change its accuracy. So each image here is two crops side by side, from two different
photos that scikit-image ships (the 16 of ``swinssl.demo_data``), and the label is the photo in the
*left* half. A model blind to relative position can name both photos but not say which is on the
left; a control row shows that. Training crops come from the first 60% of each photo along its long
side and test crops from the rest, so no test pixel is ever trained on. The larger sizes show the
same 192 px field of view at more pixels, with the window scaled by the same factor: the default
trains at 32 px / patch 2 / window 8 and tests at 48 px / W12 and 64 px / W16, Table 1's W8 -> W12 -> W16.

Every model is built by ``swinssl.create_encoder`` and moved to the larger sizes by passing the
trained state dict as ``checkpoint``: the product's transfer path is what is measured.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn

from swinssl.bench.report import Stopwatch, finish, progress_bar, settings
from swinssl.demo_data import PHOTOS

SHORT_SIDE = 512  # photos are first resampled to this short side, so every photo has room for both splits
FIELD_OF_VIEW = 192  # native pixels per crop side, at every model size
TRAIN_FRACTION = 0.6  # along the long side: train crops before, test crops after


@dataclass
class TransferConfig:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 500
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    img_size: int = 32
    window: int = 8
    scales: list[float] = field(default_factory=lambda: [1.0, 1.5, 2.0])
    patch_size: int = 2
    embed_dim: int = 32
    depths: tuple[int, ...] = (2, 2, 2)
    num_heads: tuple[int, ...] = (2, 4, 8)
    bias_lr_scale: float = 10.0  # Swin V1 tables only; see train()
    train_crops: int = 96  # per photo
    test_crops: int = 24  # per photo

    def size(self, scale: float) -> tuple[int, int]:
        """(image side, window) at ``scale`` times the training size; both must come out whole."""
        side, window = self.img_size * scale, self.window * scale
        if side != round(side) or window != round(window):
            raise ValueError(f"scale {scale} gives image {side} px / window {window}; both must be whole")
        return round(side), round(window)


# --quick checks the plumbing only: every variant and both sizes, on a two-stage model for a few small steps
QUICK = dict(seeds=[0], steps=20, batch_size=8, embed_dim=16, depths=(2, 2), num_heads=(1, 2), train_crops=8,
             test_crops=4, scales=[1.0, 2.0])

# (key, label); the table keeps this order.
VARIANTS = [
    ("v2_logcpb", "Swin V2, log-CPB, coords / training window (product default)"),
    ("v2_logcpb_new_window", "Swin V2, log-CPB, coords / new window (pretrained_window_sizes=0)"),
    ("v2_cpb_reinit", "Swin V2, cpb_mlp re-initialized (control)"),
    ("v1_bicubic", "Swin V1, bias tables bicubic-resized"),
    ("v1_zero", "Swin V1, bias tables zeroed (control)"),
]


# ---------------------------------------------------------------------------------------------- data


@dataclass
class Photos:
    """Crops of every photo: train crops at training size, test crops at native resolution."""

    train: torch.Tensor  # (P, N, 3, s, s), normalized
    test: torch.Tensor  # (P, M, 3, FOV, FOV), [0, 1]
    mean: torch.Tensor
    std: torch.Tensor

    def test_batch(self, side: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every test crop as the left half, beside crop i of another photo (a different one per i)."""
        n_photos, n_crops = self.test.shape[:2]
        crops = (_resize(self.test.flatten(0, 1), side) - self.mean) / self.std
        crops = crops.view(n_photos, n_crops, *crops.shape[1:])
        photo = torch.arange(n_photos).repeat_interleave(n_crops)
        index = torch.arange(n_crops).repeat(n_photos)
        partner = (photo + 1 + index % (n_photos - 1)) % n_photos
        return side_by_side(crops[photo, index], crops[partner, index]), photo


def load_photos(train_crops: int, test_crops: int, side: int, seed: int = 1234) -> Photos:
    from skimage import data

    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for name in PHOTOS:
        photo = _as_tensor(getattr(data, name)())
        train.append(_resize(_random_crops(photo, train_crops, True, gen), side))
        test.append(_random_crops(photo, test_crops, False, gen))
    train = torch.stack(train)
    mean = train.mean((0, 1, 3, 4)).view(1, 3, 1, 1)
    std = train.std((0, 1, 3, 4)).view(1, 3, 1, 1)
    return Photos((train - mean) / std, torch.stack(test), mean, std)


def _as_tensor(pixels: np.ndarray) -> torch.Tensor:
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, -1)
    image = torch.from_numpy(np.ascontiguousarray(pixels[..., :3])).permute(2, 0, 1).float() / 255
    h, w = image.shape[1:]
    scale = SHORT_SIDE / min(h, w)
    return _resize(image[None], (round(h * scale), round(w * scale)))[0]


def _resize(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    size = (size, size) if isinstance(size, int) else size
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


def _random_crops(photo: torch.Tensor, count: int, train: bool, gen: torch.Generator) -> torch.Tensor:
    """Crops from the train part (first 60% of the long side) or the test part (the rest)."""
    long_axis = 2 if photo.shape[2] >= photo.shape[1] else 1
    length, other = photo.shape[long_axis], photo.shape[3 - long_axis]
    cut = int(length * TRAIN_FRACTION)
    low, high = (0, cut) if train else (cut, length)
    if high - low < FIELD_OF_VIEW or other < FIELD_OF_VIEW:
        raise ValueError(f"photo of shape {tuple(photo.shape)} is too small for {FIELD_OF_VIEW} px crops")
    crops = []
    for _ in range(count):
        along = int(torch.randint(low, high - FIELD_OF_VIEW + 1, (1,), generator=gen))
        across = int(torch.randint(0, other - FIELD_OF_VIEW + 1, (1,), generator=gen))
        rows, cols = (along, across) if long_axis == 1 else (across, along)
        crops.append(photo[:, rows : rows + FIELD_OF_VIEW, cols : cols + FIELD_OF_VIEW])
    return torch.stack(crops)


def side_by_side(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Left half of ``left`` next to the right half of ``right``, joined after resizing so no pixel
    blends the two (a blended seam would be a local cue that needs no position bias)."""
    half = left.shape[-1] // 2
    return torch.cat([left[..., :half], right[..., half:]], -1)


def train_batch(photos: Photos, batch_size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    n_photos, n_crops = photos.train.shape[:2]
    photo = torch.randint(0, n_photos, (batch_size,), generator=gen)
    other = (photo + torch.randint(1, n_photos, (batch_size,), generator=gen)) % n_photos
    halves = []
    for p in (photo, other):
        crops = photos.train[p, torch.randint(0, n_crops, (batch_size,), generator=gen)]
        flip = torch.rand(batch_size, generator=gen) < 0.5
        halves.append(torch.where(flip.view(-1, 1, 1, 1), crops.flip(-1), crops))
    return side_by_side(*halves), photo


# -------------------------------------------------------------------------------------------- models


def build(arch: str, cfg: TransferConfig, scale: float, checkpoint=None, **overrides) -> nn.Module:
    import swinssl

    side, window = cfg.size(scale)
    return swinssl.create_encoder(
        arch, img_size=side, window_size=window, patch_size=cfg.patch_size, num_classes=len(PHOTOS),
        embed_dim=cfg.embed_dim, depths=cfg.depths, num_heads=cfg.num_heads, checkpoint=checkpoint, **overrides,
    )


def is_position_bias(name: str) -> bool:
    return "relative_position_bias_table" in name or "cpb_mlp" in name


def train(arch: str, cfg: TransferConfig, photos: Photos, seed: int, advance) -> nn.Module:
    """AdamW + one-cycle schedule at the training size.

    Swin V1's bias tables are raw per-offset parameters and at the shared rate barely leave their 0.02
    init in a few hundred steps: at window 8 V1 then reached 0.70 instead of 0.80 at the training size,
    and at window 4 it learned "which side" from the shifted-window layout instead (zeroing its tables
    cost 0.01), a cue that does not survive a size change. So V1's tables get ``bias_lr_scale`` x the
    rate (``--bias-lr-scale 1`` turns this off); V2's ``cpb_mlp`` learns fast through its MLP as it is.
    """
    torch.manual_seed(seed)
    model = build(arch, cfg, 1.0).train()
    bias_lr = cfg.lr * (cfg.bias_lr_scale if arch == "swin" else 1.0)
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if p.ndim > 1 and not is_position_bias(n)], "lr": cfg.lr},
        {"params": [p for n, p in named if p.ndim <= 1 and not is_position_bias(n)], "lr": cfg.lr,
         "weight_decay": 0.0},
        {"params": [p for n, p in named if is_position_bias(n)], "lr": bias_lr, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=cfg.steps, pct_start=0.1
    )
    gen = torch.Generator().manual_seed(seed)
    for _ in range(cfg.steps):
        images, labels = train_batch(photos, cfg.batch_size, gen)
        loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        advance()
    return model.eval()


def transfer(arch: str, variant: str, cfg: TransferConfig, state: dict, source: nn.Module, scale: float, seed: int):
    """The trained model at ``scale``, through create_encoder's checkpoint path (plus the controls)."""
    overrides = {}
    if arch == "swinv2":
        # A plain state dict does not record the windows the coordinates were normalized by.
        trained = source.pretrained_window_sizes()
        overrides["pretrained_window_sizes"] = [0] * len(trained) if variant == "v2_logcpb_new_window" else trained
    model = build(arch, cfg, scale, checkpoint=state, **overrides).eval()
    if variant == "v2_cpb_reinit":
        torch.manual_seed(10_000 + seed)
        for module in model.modules():
            if hasattr(module, "cpb_mlp"):
                for layer in module.cpb_mlp:
                    if isinstance(layer, nn.Linear):  # timm's init for every Linear
                        nn.init.trunc_normal_(layer.weight, std=0.02)
                        if layer.bias is not None:
                            nn.init.zeros_(layer.bias)
    elif variant == "v1_zero":
        for module in model.modules():
            if hasattr(module, "relative_position_bias_table"):
                nn.init.zeros_(module.relative_position_bias_table)
    return model


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, chunk: int = 128) -> float:
    correct = sum(int((model(images[i : i + chunk]).argmax(1) == labels[i : i + chunk]).sum())
                  for i in range(0, len(images), chunk))
    return correct / len(images)


# ---------------------------------------------------------------------------------------------- main


def run_transfer(cfg: TransferConfig, progress: Progress | None = None) -> dict:
    photos = load_photos(cfg.train_crops, cfg.test_crops, cfg.img_size)
    tests = {scale: photos.test_batch(cfg.size(scale)[0]) for scale in cfg.scales}
    by_arch = {"swinv2": [v for v, _ in VARIANTS if v.startswith("v2")],
               "swin": [v for v, _ in VARIANTS if v.startswith("v1")]}
    total = len(cfg.seeds) * sum(cfg.steps + len(variants) * len(cfg.scales) for variants in by_arch.values())
    task = progress.add_task("transfer", total=total) if progress else None

    def advance(label: str | None = None) -> None:
        if progress:
            progress.update(task, advance=1, **({"description": label} if label else {}))

    results = {variant: [] for variant, _ in VARIANTS}
    for seed in cfg.seeds:
        for arch, variants in by_arch.items():
            if progress:
                progress.update(task, description=f"seed {seed}: train {arch} at {cfg.img_size} px")
            model = train(arch, cfg, photos, seed, advance)
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            for variant in variants:
                row = []
                for scale in cfg.scales:
                    advance(f"seed {seed}: {variant} at {cfg.size(scale)[0]} px")
                    row.append(accuracy(transfer(arch, variant, cfg, state, model, scale, seed), *tests[scale]))
                results[variant].append(row)
    return results


def markdown_table(cfg: TransferConfig, results: dict) -> str:
    columns = []
    for scale in cfg.scales:
        side, window = cfg.size(scale)
        columns.append(f"{side} px / W{window}" + (" (train)" if scale == 1 else ""))
    lines = ["| variant | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for variant, label in VARIANTS:
        accs = np.array(results[variant])
        cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(accs.mean(0), accs.std(0))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)




def add_arguments(parser: argparse.ArgumentParser) -> None:
    default = TransferConfig()
    parser.add_argument("--seeds", type=int, nargs="+", help=f"training seeds (default {default.seeds})")
    parser.add_argument("--steps", type=int, help=f"training steps per model (default {default.steps})")
    parser.add_argument("--batch-size", type=int, help=f"default {default.batch_size}")
    parser.add_argument("--scales", type=float, nargs="+",
                        help=f"evaluation sizes as multiples of the training size (default {default.scales})")
    parser.add_argument("--bias-lr-scale", type=float,
                        help=f"learning-rate multiplier for Swin V1's bias tables (default {default.bias_lr_scale})")
    parser.add_argument("--test-crops", type=int, help=f"test crops per photo (default {default.test_crops})")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write per-seed accuracies here")
    parser.add_argument("--quick", action="store_true", help="one seed, a few steps: checks the plumbing only")


def run(args: argparse.Namespace, command: str) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TransferConfig(**settings(args, ("seeds", "steps", "batch_size", "scales", "test_crops", "bias_lr_scale"), QUICK))
    for scale in cfg.scales:
        cfg.size(scale)
    with Stopwatch() as wall, progress_bar() as progress:
        results = run_transfer(cfg, progress)
    print(markdown_table(cfg, results))
    print(f"\nTop-1 accuracy, mean ± std over seeds {cfg.seeds}; {len(PHOTOS)} classes (chance "
          f"{1 / len(PHOTOS):.3f}), {len(PHOTOS) * cfg.test_crops} test images per size.")
    finish(args, command, wall, {
        "config": cfg.__dict__,
        "columns": [dict(zip(("img_size", "window"), cfg.size(s)), scale=s) for s in cfg.scales],
        "variants": {key: {"label": label, "per_seed": results[key],
                           "mean": np.mean(results[key], 0).tolist(), "std": np.std(results[key], 0).tolist()}
                     for key, label in VARIANTS},
    }, where=f" on {torch.get_num_threads()} threads")
