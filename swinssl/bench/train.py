"""``python -m swinssl.bench train``: images per second of one SimMIM training step (forward, masked L1,
backward, AdamW step, zero_grad), with peak memory and, on a GPU, model FLOPs utilization, for
swinssl against timm's eager Swin V2 and HF transformers' Swinv2ForMaskedImageModeling.

Contenders, all stepping on the same random batch (192 px images, window 12, a real SimMIM mask from
``swinssl.MaskGenerator``: 32 px units, ratio 0.6) at the same precision (``--precision bf16`` is
autocast; fp32 is the CPU default) with the same optimizer (timm's AdamW, decay / no-decay groups):

- ``swinssl <kernel>``: ``MaskedImageModel(create_encoder(arch, mask_token=True, attn_kernel=kernel))``,
  one row per ``--kernels`` entry, plus a ``torch.compile``d one with ``--compile`` (off by default:
  compiling takes far longer than a CPU run's timed steps);
- ``timm eager``: timm's own ``SwinTransformerV2`` with a mask token set in after ``patch_embed`` and our
  decoder and loss: what swinssl adds over timm, measured;
- ``HF``: ``transformers.Swinv2ForMaskedImageModeling`` with the same sizes and its own loss. transformers
  is the optional ``bench`` extra (``pip install swinssl[bench]``); without it the row is skipped.

``--packing`` adds ``swinssl packed <kernel>`` beside each SimMIM row (and ``swinssl video packed <kernel>``
beside the video row): the same encoder pretrained on uniformly packed inputs (``PackedMaskedImageModel``,
UM-MAE masks: one unit of every 2 x 2 kept, 0.8125 hidden in all, units of the encoder's stride; video: 0.9,
tubes), with its speed, memory and FLOPs as multiples of the SimMIM row's (``x SimMIM``).

``--video-frames N`` adds ``swinssl video <kernel>``: masked video pretraining (``MaskedVideoModel`` on
Video Swin V2 of the same arch, N frames of the same size, windows (min(8, N / 2), window, window), tube
masks at 90%) on ``--video-batch`` clips a step. Its rate is frames/s (clips/s x N, the images/s
equivalent); it has no peer, so no ratio and no MFU.

Same loss for all: masked L1 on the raw pixels. HF has no target normalization, so ours runs with
``norm_target_window=None`` here (the official recipe's 47x47 normalization adds two avg-pools on the
input). Drop path 0.1 for all, the official SimMIM Swin V2 value. Warm-up steps are excluded; then the
contenders take turns (round robin, the starting one rotating) for ``--repeats`` rounds of ``--steps``
steps; each reports its median images/s, and the ratios to the peers are medians of per-round ratios,
so slow drifts (clocks, other jobs) cancel. On a machine shared with other jobs single rounds still
scatter: the table shows every round.

Memory, per contender: on CUDA the peak a step allocates as if the contender were alone on the GPU (its
parameters and AdamW state plus the step's growth over them; ``max_memory_allocated``), and that per
sample. On a CPU the bytes autograd saves for backward per sample (distinct storages, parameters
excluded; ``SavedTensorMeter``), labelled so: there is no allocator peak to read.

FLOPs: one training step of every contender, counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
convolutions, attention; forward and backward). MFU (CUDA): the first swinssl model's count divided by each contender's step time and by the bf16 dense matmul rate
measured on the same GPU (8192 x 8192 matmuls), both reported.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress
from timm.layers import trunc_normal_
from timm.models.swin_transformer_v2 import SwinTransformerV2
from timm.optim import create_optimizer_v2
from torch import nn

from swinssl.bench.report import SavedTensorMeter, Stopwatch, device_name, finish, progress_bar, settings
from swinssl.masking import MaskGenerator, UniformMaskGenerator, VideoMaskGenerator
from swinssl.models import MaskedImageModel, MaskedVideoModel, SimMIMDecoder, masked_l1_loss
from swinssl.models.simmim import PackedMaskedImageModel, PackedMaskedVideoModel
from swinssl.models.attention import KERNELS
from swinssl.models.registry import last_stage_stride, resolve_arch
from swinssl.weights import create_encoder, create_video_encoder

# timm and HF have no Swin V2-H/G (the paper's extra norm), so the comparison stops at L.
ARCHS = ("swinv2_tiny", "swinv2_small", "swinv2_base", "swinv2_large")
HF, TIMM = "HF", "timm eager"
LR, WEIGHT_DECAY = 1e-4, 0.05


@dataclass
class TrainBenchConfig:
    arch: str = "swinv2_tiny"
    img_size: int = 192
    window_size: int = 12
    batch_size: int = 16
    precision: str = "fp32"
    kernels: list[str] = field(default_factory=lambda: ["fused"])
    compile: bool = False
    warmup: int = 2  # steps per contender, untimed
    steps: int = 3  # per contender per round
    repeats: int = 5  # rounds
    drop_path_rate: float = 0.1
    patch_size: int = 4
    mask_patch_size: int = 32
    mask_ratio: float = 0.6
    sizes: dict[str, Any] = field(default_factory=dict)  # embed_dim / depths / num_heads over the preset's
    video_frames: int = 0  # frames per clip of the masked video row; 0: no video row
    video_batch: int = 2  # clips per step
    video_mask_ratio: float = 0.9  # tube masks (VideoMAE's ratio)
    packing: bool = False  # add uniformly packed rows beside the SimMIM ones
    packed_mask_ratio: float = 0.8125  # UM-MAE: 3/4 dropped + 25% of the kept units hidden

    @property
    def model_sizes(self) -> dict[str, Any]:
        return resolve_arch(self.arch, self.sizes)


# A 2-stage, 50k-parameter model at 64 px (mask units 32 px: 2 x 2, 3 masked): plumbing only.
# Its video row masks 60%: at 64 px, 90% would hide all 4 units.
QUICK = dict(arch="swinv2", img_size=64, window_size=4, batch_size=2, warmup=1, steps=1, repeats=2,
             sizes=dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2)), video_mask_ratio=0.6)

@dataclass
class Contender:
    """One way to run the step: ``loss(images, mask)`` is everything before ``backward``."""

    name: str
    model: nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    inputs: tuple[torch.Tensor, torch.Tensor] | None = None  # its own batch (clips and masks); None: the images
    frames: int = 1  # images per sample: a clip counts its frames
    baseline: str | None = None  # the SimMIM contender a packed one is compared with
    flops: int = 0  # one training step, FlopCounterMode
    optimizer: torch.optim.Optimizer = field(init=False)
    seconds: list[float] = field(default_factory=list)  # per timed round
    warmup_s: float = 0.0
    memory: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.optimizer = create_optimizer_v2(self.model, "adamw", lr=LR, weight_decay=WEIGHT_DECAY)

    def step(self, images: torch.Tensor, mask: torch.Tensor, precision: str) -> torch.Tensor:
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = self.loss(images, mask)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def resident_bytes(self) -> int:
        """Parameters and optimizer state: what stays allocated between steps."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        tensors += [value for state in self.optimizer.state.values() for value in state.values()
                    if torch.is_tensor(value)]
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


# ---------------------------------------------------------------------------------------------- models

def swinssl_model(cfg: TrainBenchConfig, kernel: str) -> MaskedImageModel:
    """The product's SimMIM model, raw-pixel targets (see the module docstring)."""
    encoder = create_encoder(cfg.arch, img_size=cfg.img_size, window_size=cfg.window_size, patch_size=cfg.patch_size,
                             mask_token=True, attn_kernel=kernel, drop_path_rate=cfg.drop_path_rate, **cfg.sizes)
    return MaskedImageModel(encoder, norm_target_window=None)


def swinssl_packed_contender(cfg: TrainBenchConfig, kernel: str, images: torch.Tensor) -> Contender:
    """The same encoder pretrained on uniformly packed inputs (units of its stride), on the same images."""
    encoder = create_encoder(cfg.arch, img_size=cfg.img_size, window_size=cfg.window_size, patch_size=cfg.patch_size,
                             mask_token=True, attn_kernel=kernel, drop_path_rate=cfg.drop_path_rate, **cfg.sizes)
    model = PackedMaskedImageModel(encoder, norm_target_window=None).to(images.device).train()
    masks = UniformMaskGenerator(cfg.img_size, encoder.stride, cfg.patch_size, cfg.packed_mask_ratio, encoder.stride)
    generator = torch.Generator().manual_seed(0)
    mask = torch.stack([masks(generator) for _ in range(len(images))]).to(images.device)
    return Contender(f"swinssl packed {kernel}", model, pair_loss(model), inputs=(images, mask),
                     baseline=f"swinssl {kernel}")


def swinssl_video_contender(cfg: TrainBenchConfig, kernel: str, device: torch.device, packed: bool = False) -> Contender:
    """Masked video pretraining of the same arch on random clips with tube masks (see the module docstring);
    ``packed``: on uniformly packed clips."""
    time_tokens = cfg.video_frames // 2
    window = (min(8, time_tokens), cfg.window_size, cfg.window_size)
    encoder = create_video_encoder(f"video_{cfg.arch}", num_frames=cfg.video_frames, img_size=cfg.img_size,
                                   window_size=window, patch_size=(2, cfg.patch_size, cfg.patch_size), mask_token=True,
                                   attn_kernel=kernel, drop_path_rate=cfg.drop_path_rate, **cfg.sizes)
    model = (PackedMaskedVideoModel if packed else MaskedVideoModel)(encoder, norm_target_window=None).to(device).train()
    generator = torch.Generator().manual_seed(1)
    clips = torch.randn(cfg.video_batch, 3, cfg.video_frames, cfg.img_size, cfg.img_size, generator=generator)
    if packed:
        unit = encoder.stride[1]
        masks = VideoMaskGenerator(cfg.video_frames, cfg.img_size, unit, encoder.patch_embed.patch_size,
                                   max(cfg.video_mask_ratio, 0.75), packing="uniform", merge_unit=unit)
    else:
        masks = VideoMaskGenerator(cfg.video_frames, cfg.img_size, cfg.mask_patch_size, encoder.patch_embed.patch_size,
                                   cfg.video_mask_ratio)
    mask = torch.stack([masks(generator) for _ in range(cfg.video_batch)])
    name = f"swinssl video {'packed ' if packed else ''}{kernel}"
    return Contender(name, model, pair_loss(model), inputs=(clips.to(device), mask.to(device)),
                     frames=cfg.video_frames, baseline=f"swinssl video {kernel}" if packed else None)


class TimmEagerSimMIM(nn.Module):
    """timm's ``SwinTransformerV2`` as shipped, a mask token set in after ``patch_embed``, our decoder and loss.

    The token is an attribute of the timm model, so the state dict has our ``MaskedImageModel``'s names.
    """

    def __init__(self, encoder: SwinTransformerV2) -> None:
        super().__init__()
        encoder.mask_token = nn.Parameter(trunc_normal_(torch.zeros(1, 1, encoder.embed_dim), std=0.02))
        self.encoder = encoder
        self.patch_size = encoder.patch_embed.patch_size[0]
        self.decoder = SimMIMDecoder(encoder.num_features, self.patch_size * 2 ** (len(encoder.layers) - 1))

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.encoder.patch_embed(images)
        weight = mask.unsqueeze(-1).to(tokens.dtype)
        tokens = tokens * (1.0 - weight) + self.encoder.mask_token.to(tokens.dtype) * weight
        features = self.encoder.norm(self.encoder.layers(tokens))
        reconstruction = self.decoder(features.permute(0, 3, 1, 2))
        return masked_l1_loss(reconstruction, images, mask, self.patch_size), reconstruction


def timm_eager_model(cfg: TrainBenchConfig) -> TimmEagerSimMIM:
    sizes = cfg.model_sizes
    encoder = SwinTransformerV2(img_size=cfg.img_size, patch_size=cfg.patch_size, window_size=cfg.window_size, num_classes=0,
                                drop_path_rate=cfg.drop_path_rate, embed_dim=sizes["embed_dim"],
                                depths=tuple(sizes["depths"]), num_heads=tuple(sizes["num_heads"]))
    return TimmEagerSimMIM(encoder)


def hf_model(cfg: TrainBenchConfig) -> nn.Module:
    """``Swinv2ForMaskedImageModeling`` with our sizes; raises ImportError without transformers."""
    from transformers import Swinv2Config, Swinv2ForMaskedImageModeling

    sizes = cfg.model_sizes
    stages = len(sizes["depths"])
    config = Swinv2Config(image_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=sizes["embed_dim"],
                          depths=list(sizes["depths"]), num_heads=list(sizes["num_heads"]),
                          window_size=cfg.window_size, pretrained_window_sizes=[0] * stages,
                          drop_path_rate=cfg.drop_path_rate, encoder_stride=last_stage_stride(cfg.patch_size, stages))
    return Swinv2ForMaskedImageModeling(config)


def hf_loss(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """HF takes the token mask flattened to (B, tokens), 1 = masked, and computes its own masked L1."""
    return lambda images, mask: model(pixel_values=images, bool_masked_pos=mask.flatten(1).bool()).loss


def pair_loss(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda images, mask: model(images, mask)[0]


def build_contenders(cfg: TrainBenchConfig, device: torch.device, images: torch.Tensor | None = None
                     ) -> tuple[list[Contender], list[str]]:
    """The contenders on ``device``, in table order, and notes on any that were skipped; packed rows step on
    ``images`` (default: the shared random batch)."""
    contenders, notes = [], []
    if images is None:
        images = random_batch(cfg.batch_size, cfg.img_size, device, 0, cfg.mask_patch_size, cfg.mask_ratio,
                              cfg.patch_size)[0]
    kernels = [kernel for kernel in cfg.kernels if kernel != "triton" or device.type == "cuda"]
    if len(kernels) < len(cfg.kernels):
        notes.append(f"swinssl triton skipped: the Triton kernel runs on CUDA; on {device.type} it would time "
                     "the fused fallback (or Triton's interpreter, whose speed means nothing)")
    for kernel in kernels:
        model = swinssl_model(cfg, kernel).to(device).train()
        contenders.append(Contender(f"swinssl {kernel}", model, pair_loss(model)))
        if cfg.packing:
            contenders.append(swinssl_packed_contender(cfg, kernel, images))
    if cfg.compile and kernels:
        kernel = kernels[0]
        model = swinssl_model(cfg, kernel).to(device).train()
        contenders.append(Contender(f"swinssl {kernel} + compile", model, pair_loss(torch.compile(model))))
    if cfg.video_frames and kernels:
        contenders.append(swinssl_video_contender(cfg, kernels[0], device))
        if cfg.packing:
            contenders.append(swinssl_video_contender(cfg, kernels[0], device, packed=True))
    model = timm_eager_model(cfg).to(device).train()
    contenders.append(Contender(TIMM, model, pair_loss(model)))
    try:
        model = hf_model(cfg).to(device).train()
        contenders.append(Contender(HF, model, hf_loss(model)))
    except ImportError as error:
        notes.append(f"HF skipped: transformers is not importable ({error}); pip install 'swinssl[bench]'")
    return contenders, notes


def random_batch(batch_size: int, img_size: int, device: torch.device | str = "cpu", seed: int = 0,
                 mask_patch_size: int = 32, mask_ratio: float = 0.6, patch_size: int = 4
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized-image-like noise and one SimMIM mask per image, token resolution (B, H/patch, W/patch)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, img_size, img_size, generator=generator)
    masks = MaskGenerator(img_size, mask_patch_size, patch_size, mask_ratio)
    mask = torch.stack([masks(generator) for _ in range(batch_size)])
    return images.to(device), mask.to(device)


# ---------------------------------------------------------------------------------------------- measures

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_memory(contender: Contender, images: torch.Tensor, mask: torch.Tensor, precision: str) -> dict[str, float]:
    """CUDA: peak MiB of a step as if alone on the GPU, and per sample. CPU: saved-for-backward MiB per sample."""
    batch, mib = images.shape[0], 2.0**20
    if images.device.type == "cuda":
        synchronize(images.device)
        torch.cuda.reset_peak_memory_stats(images.device)
        before = torch.cuda.memory_allocated(images.device)
        contender.step(images, mask, precision)
        synchronize(images.device)
        growth = torch.cuda.max_memory_allocated(images.device) - before
        peak = (contender.resident_bytes() + growth) / mib
        return {"peak_mib": round(peak, 1), "peak_mib_per_sample": round(peak / batch, 2)}
    with SavedTensorMeter(exclude=[*contender.model.parameters(), *contender.model.buffers()]) as meter:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            contender.loss(images, mask)
    return {"saved_mib_per_sample": round(meter.total / mib / batch, 2)}


def step_flops(contender: Contender, images: torch.Tensor, mask: torch.Tensor, precision: str) -> int:
    """FLOPs of one training step (forward and backward matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        contender.step(images, mask, precision)
    return counter.get_total_flops()


def matmul_flops_per_s(device: torch.device, size: int = 8192, repeats: int = 20) -> float:
    """The dense bf16 matmul rate this GPU reaches: the MFU denominator, measured rather than looked up."""
    a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def run_train(cfg: TrainBenchConfig, device: torch.device, progress: Progress | None = None) -> dict[str, Any]:
    """Build, warm up, measure memory, time round robin; returns the contenders and what was measured."""
    torch.manual_seed(0)
    images, mask = random_batch(cfg.batch_size, cfg.img_size, device, 0, cfg.mask_patch_size, cfg.mask_ratio,
                                cfg.patch_size)
    contenders, notes = build_contenders(cfg, device, images)
    total = len(contenders) * (cfg.warmup + 2 + cfg.repeats * cfg.steps)
    task = progress.add_task("train", total=total) if progress else None

    def advance(description: str, steps: int = 1) -> None:
        if progress:
            progress.update(task, advance=steps, description=description)

    for contender in contenders:
        start = time.perf_counter()
        for _ in range(cfg.warmup):
            contender.step(*contender.inputs or (images, mask), cfg.precision)
            advance(f"{contender.name}: warm-up")
        synchronize(device)
        contender.warmup_s = time.perf_counter() - start
        contender.memory = measure_memory(contender, *contender.inputs or (images, mask), cfg.precision)
        advance(f"{contender.name}: memory")
        contender.flops = step_flops(contender, *contender.inputs or (images, mask), cfg.precision)
        advance(f"{contender.name}: FLOPs")
    flops = contenders[0].flops if device.type == "cuda" else None
    for round_index in range(cfg.repeats):
        shift = round_index % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            synchronize(device)
            start = time.perf_counter()
            for _ in range(cfg.steps):
                contender.step(*contender.inputs or (images, mask), cfg.precision)
            synchronize(device)
            contender.seconds.append(time.perf_counter() - start)
            advance(f"round {round_index + 1}/{cfg.repeats}: {contender.name}", cfg.steps)
    return {"contenders": contenders, "notes": notes, "flops_per_step": flops,
            "matmul_flops_per_s": matmul_flops_per_s(device) if device.type == "cuda" else None}


# ---------------------------------------------------------------------------------------------- report

def summarize(cfg: TrainBenchConfig, measured: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per contender: median images/s, the per-round rates, ratios to the peers, memory, MFU."""
    rows = []
    for contender in measured["contenders"]:
        samples = len(contender.inputs[0]) if contender.inputs else cfg.batch_size
        rates = [samples * contender.frames * cfg.steps / seconds for seconds in contender.seconds]
        median = statistics.median(rates)
        row = {"contender": contender.name, "images_per_s": round(median, 3),
               "images_per_s_per_round": [round(rate, 3) for rate in rates],
               "warmup_s": round(contender.warmup_s, 2), "gflops_per_step": round(contender.flops / 1e9, 2),
               **contender.memory}
        if contender.frames > 1:
            row["clips_per_s"] = round(median / contender.frames, 3)
        elif measured["flops_per_step"]:
            achieved = measured["flops_per_step"] * median / cfg.batch_size
            row["tflops_per_s"] = round(achieved / 1e12, 2)
            row["mfu"] = round(achieved / measured["matmul_flops_per_s"], 4)
        rows.append(row)
    by_name = {row["contender"]: row for row in rows}
    for contender, row in zip(measured["contenders"], rows):
        if contender.baseline in by_name:  # packed vs SimMIM: speed (paired per round), memory, FLOPs
            base = by_name[contender.baseline]
            row["vs SimMIM"] = round(statistics.median(
                ours / theirs for ours, theirs in zip(row["images_per_s_per_round"], base["images_per_s_per_round"])), 2)
            memory = "peak_mib_per_sample" if "peak_mib_per_sample" in row else "saved_mib_per_sample"
            row["memory_vs_SimMIM"] = round(row[memory] / base[memory], 2)
            row["flops_vs_SimMIM"] = round(row["gflops_per_step"] / base["gflops_per_step"], 2)
    for row in rows:  # paired: the ratio within each round, then the median, so load drifts cancel
        for peer in (HF, TIMM) if "clips_per_s" not in row and "vs SimMIM" not in row else ():
            if peer in by_name:
                ratios = [ours / theirs for ours, theirs in
                          zip(row["images_per_s_per_round"], by_name[peer]["images_per_s_per_round"])]
                row[f"vs {peer}"] = round(statistics.median(ratios), 2)
    return rows


def markdown_table(rows: list[dict[str, Any]], gpu: bool) -> str:
    peers = [peer for peer in (HF, TIMM) if f"vs {peer}" in rows[0]]
    packed = any("vs SimMIM" in row for row in rows)
    memory = ["peak MiB", "peak MiB / sample"] if gpu else ["saved-for-backward MiB / sample (CPU)"]
    header = ["contender", "images/s (median)", "per round", *[f"x {peer}" for peer in peers]]
    header += ["x SimMIM: speed / memory / FLOPs"] if packed else []
    header += ["GFLOP / step", *memory]
    header += ["TFLOP/s", "MFU"] if gpu else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["contender"], f"{row['images_per_s']:.2f}",
                 " ".join(f"{rate:.2f}" for rate in row["images_per_s_per_round"]),
                 *[f"{row[f'vs {peer}']:.2f}" if f"vs {peer}" in row else "—" for peer in peers]]
        if packed:
            cells.append(f"{row['vs SimMIM']:.2f} / {row['memory_vs_SimMIM']:.2f} / {row['flops_vs_SimMIM']:.2f}"
                         if "vs SimMIM" in row else "—")
        cells.append(f"{row['gflops_per_step']:.1f}")
        if gpu:
            cells += [f"{row['peak_mib']:.0f}", f"{row['peak_mib_per_sample']:.1f}"]
            cells += [f"{row['tflops_per_s']:.1f}", f"{row['mfu']:.1%}"] if "mfu" in row else ["—", "—"]
        else:
            cells.append(f"{row['saved_mib_per_sample']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace, command: str) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    options = settings(args, ("arch", "batch_size", "kernels", "compile", "warmup", "steps", "repeats",
                              "drop_path_rate", "video_frames", "video_batch", "packing"), QUICK)
    cfg = TrainBenchConfig(**options, precision=args.precision or ("bf16" if device.type == "cuda" else "fp32"))
    gpu = device.type == "cuda"
    with Stopwatch() as wall, progress_bar() as progress:
        measured = run_train(cfg, device, progress)
    rows = summarize(cfg, measured)
    sizes = cfg.model_sizes
    print(f"device: {device_name(device)}")
    for note in measured["notes"]:
        print(note)
    print(markdown_table(rows, gpu))
    print(f"\n{cfg.arch} (embed {sizes['embed_dim']}, depths {tuple(sizes['depths'])}) at {cfg.img_size} px / "
          f"window {cfg.window_size}, batch {cfg.batch_size}, {cfg.precision}, drop path {cfg.drop_path_rate}; "
          f"median of {cfg.repeats} rounds of {cfg.steps} steps after {cfg.warmup} warm-up steps.")
    if gpu:
        print(f"FLOPs per step (FlopCounterMode, {rows[0]['contender']}): {measured['flops_per_step'] / 1e12:.2f} T; "
              f"measured bf16 matmul rate: {measured['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s")
    else:
        print("CPU memory column: bytes autograd saves for backward (activations), not an allocator peak.")
    if cfg.video_frames:
        print(f"swinssl video: {cfg.video_batch} clips of {cfg.video_frames} frames a step; its images/s are frames/s "
              "(clips/s x frames) and its memory is per clip.")
    finish(args, command, wall, {
        "device": device_name(device), "config": cfg.__dict__, "notes": measured["notes"],
        "flops_per_step": measured["flops_per_step"], "matmul_flops_per_s": measured["matmul_flops_per_s"], "rows": rows,
    })


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default = TrainBenchConfig()
    parser.add_argument("--arch", choices=ARCHS, help=f"preset, at 192 px / window 12 (default {default.arch})")
    parser.add_argument("--batch-size", type=int, help=f"images per step (default {default.batch_size})")
    parser.add_argument("--precision", choices=("fp32", "bf16"), help="bf16 = autocast (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--kernels", nargs="+", choices=KERNELS, help="swinssl attention kernels, one row each (default fused)")
    parser.add_argument("--compile", action="store_true", default=None, help="add a torch.compile'd swinssl row (first kernel)")
    parser.add_argument("--warmup", type=int, help=f"untimed steps per contender (default {default.warmup})")
    parser.add_argument("--steps", type=int, help=f"timed steps per contender per round (default {default.steps})")
    parser.add_argument("--repeats", type=int, help=f"rounds; the median is reported (default {default.repeats})")
    parser.add_argument("--drop-path-rate", type=float, help=f"for every contender (default {default.drop_path_rate})")
    parser.add_argument("--video-frames", type=int, help="add a masked video pretraining row: frames a clip (e.g. 16)")
    parser.add_argument("--video-batch", type=int, help=f"clips per step, video row (default {default.video_batch})")
    parser.add_argument("--packing", action="store_true", default=None,
                        help="add uniformly packed rows (cheaper masked pretraining) beside the SimMIM ones")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--quick", action="store_true", help="a 50k-parameter model, one step a round: checks the plumbing only")
