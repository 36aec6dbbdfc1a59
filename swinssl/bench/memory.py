"""``python -m swinssl.bench memory``: the largest batch per GPU for a SimMIM training step, per preset
(SwinV2-T/B/L/H/G at 192 px / window 12) and attention kernel (plain, fused, chunked, triton), and whether
SwinV2-L fine-tuning at 384 px / window 24 (1000-class head, cross-entropy) fits in an 80 GB GPU.

Every step is the product's: swinssl's model (SimMIM with its 47 x 47 target normalization, drop path
0.1; fine-tuning drop path 0.2), timm's AdamW, fp32 weights, bf16 autocast on the GPU.

Measured (CUDA): the batch is searched from the estimate below, doubling or halving until one size fits
and the next does not, then bisecting; a ``torch.cuda.OutOfMemoryError`` is caught and the cache
emptied after every try. ``--memory-gb`` (default 80, in GiB; an "80 GB" H100 reports 79.6) caps the
process's share of a larger GPU, so an H200 answers the 80 GB question too.

Estimate (always; the only answer without a GPU): memory = 16 bytes per parameter (fp32 weights and
gradients, AdamW's two moments) + buffers + the bytes autograd saves for backward, measured by
``SavedTensorMeter`` on the real model built on the ``meta`` device: shapes without storage, so even
SwinV2-G (3B parameters) is sized in seconds on a laptop. Saved bytes are taken at batch 1 and 2: the
difference is the per-sample cost, the rest the batch-independent part (position biases, ...). Autocast
does not run on ``meta``, so each row gives two bounds: all activations fp32 (what fp32 training saves;
an upper bound for bf16 autocast) and the whole model cast to bf16 (a lower bound: autocast keeps
LayerNorm and softmax outputs in fp32). The meta device runs SDPA through its math path, as a CPU does
when the attention mask needs a gradient, so the fused row's estimate is the math kernel's memory;
CUDA's efficient-attention kernel saves less. The triton row runs the kernel's shape-only (fake) version
on ``meta``, so its estimate is what the Triton kernel saves. No allowance is made for the CUDA context, cuBLAS
workspaces, the backward pass's transient gradients or allocator fragmentation.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.progress import Progress
from timm.optim import create_optimizer_v2
from torch import nn

from swinssl.bench.report import SavedTensorMeter, Stopwatch, device_name, finish, progress_bar, settings
from swinssl.bench.train import LR, WEIGHT_DECAY, random_batch
from swinssl.models import MaskedImageModel
from swinssl.models.attention import KERNELS
from swinssl.weights import create_encoder

STATE_BYTES_PER_PARAM = 16  # fp32 weight + fp32 gradient + AdamW exp_avg + exp_avg_sq
GIB, MIB = 2.0**30, 2.0**20


@dataclass
class Workload:
    """One training step to size: SimMIM pretraining or classification fine-tuning (``num_classes`` > 0)."""

    arch: str
    img_size: int = 192
    window_size: int = 12
    num_classes: int = 0
    sizes: dict[str, Any] = field(default_factory=dict)  # embed_dim / depths / num_heads over the preset's

    @property
    def label(self) -> str:
        task = f"fine-tune ({self.num_classes} classes)" if self.num_classes else "SimMIM"
        return f"{task} {self.arch} {self.img_size}/w{self.window_size}"

    def build(self, kernel: str) -> nn.Module:
        encoder = create_encoder(self.arch, img_size=self.img_size, window_size=self.window_size,
                                 num_classes=self.num_classes, mask_token=not self.num_classes, attn_kernel=kernel,
                                 drop_path_rate=0.2 if self.num_classes else 0.1, **self.sizes)
        return encoder if self.num_classes else MaskedImageModel(encoder)

    def inputs(self, batch: int, device: torch.device | str, dtype: torch.dtype = torch.float32) -> tuple:
        if self.num_classes:
            images = torch.randn(batch, 3, self.img_size, self.img_size)
            labels = torch.randint(self.num_classes, (batch,))
            return images.to(device, dtype), labels.to(device)
        images, mask = random_batch(batch, self.img_size)
        return images.to(device, dtype), mask.to(device)

    def loss(self, model: nn.Module, inputs: tuple) -> torch.Tensor:
        if self.num_classes:
            images, labels = inputs
            return F.cross_entropy(model(images), labels)
        return model(*inputs)[0]


@dataclass
class MemoryConfig:
    presets: list[str] = field(
        default_factory=lambda: ["swinv2_tiny", "swinv2_base", "swinv2_large", "swinv2_huge", "swinv2_giant"])
    kernels: list[str] = field(default_factory=lambda: list(KERNELS))
    finetune: bool = True  # add SwinV2-L at 384 / w24
    memory_gb: float = 80.0  # GiB
    max_batch: int = 4096  # the CUDA search stops here

    def workloads(self, quick: bool) -> list[Workload]:
        if quick:  # 50k-parameter models: plumbing only
            sizes = dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2))
            return [Workload("swinv2", 64, 4, sizes=sizes), Workload("swinv2", 128, 8, 10, sizes=sizes)]
        workloads = [Workload(arch) for arch in self.presets]
        return workloads + ([Workload("swinv2_large", 384, 24, 1000)] if self.finetune else [])


QUICK = dict(max_batch=8)


# ---------------------------------------------------------------------------------------------- estimate

def saved_bytes(workload: Workload, model: nn.Module, batch: int, dtype: torch.dtype, device: str = "meta") -> int:
    """Bytes autograd saves in one forward of ``model`` (on ``device``) at ``batch``."""
    with SavedTensorMeter(exclude=[*model.parameters(), *model.buffers()]) as meter:
        workload.loss(model, workload.inputs(batch, device, dtype))
    return meter.total


def estimate(workload: Workload, kernel: str, budget_bytes: float) -> dict[str, Any]:
    """Parameters, resident training state, saved activations per sample and the largest batch in the budget."""
    with torch.device("meta"):
        model = workload.build(kernel).train()
    params = sum(p.numel() for p in model.parameters())
    state = params * STATE_BYTES_PER_PARAM + sum(b.numel() * b.element_size() for b in model.buffers())
    row = {"params": params, "state_bytes": state}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model.to(dtype)
        one, two = (saved_bytes(workload, model, batch, dtype) for batch in (1, 2))
        per_sample, fixed = two - one, 2 * one - two
        row[f"saved_bytes_per_sample_{name}"], row[f"saved_bytes_fixed_{name}"] = per_sample, fixed
        row[f"estimate_{name}"] = max(0, math.floor((budget_bytes - state - fixed) / per_sample))
    return row


# ---------------------------------------------------------------------------------------------- measure

def largest_batch(fits: Callable[[int], bool], start: int, limit: int) -> int:
    """The largest batch in [1, ``limit``] that ``fits`` (assumed monotone), 0 if batch 1 does not.

    From ``start`` (a good guess saves tries) it doubles while batches fit or halves while they do not,
    then bisects between the last fit and the first failure.
    """
    size = min(max(start, 1), limit)
    if fits(size):
        low, high = size, None
        while low < limit and high is None:
            candidate = min(2 * low, limit)
            if fits(candidate):
                low = candidate
            else:
                high = candidate
        if high is None:
            return low
    else:
        low, high = None, size
        while high > 1 and low is None:
            candidate = high // 2
            if fits(candidate):
                low = candidate
            else:
                high = candidate
        if low is None:
            return 0
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def cuda_largest_batch(workload: Workload, kernel: str, device: torch.device, start: int, limit: int) -> int:
    """Search with real bf16-autocast training steps on the GPU, out-of-memory errors caught."""
    with torch.device(device):  # built in place: SwinV2-G's 3B parameters never pass through host memory
        model = workload.build(kernel).train()
    optimizer = create_optimizer_v2(model, "adamw", lr=LR, weight_decay=WEIGHT_DECAY)

    def step(batch: int) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = workload.loss(model, workload.inputs(batch, device))
        loss.backward()
        optimizer.step()
        torch.cuda.synchronize(device)

    def fits(batch: int) -> bool:
        try:
            step(batch)
            fitted = True
        except torch.cuda.OutOfMemoryError:
            fitted = False  # leaving the handler drops the traceback and with it the step's tensors
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        return fitted

    return largest_batch(fits, start, limit)


def run_memory(cfg: MemoryConfig, workloads: list[Workload], device: torch.device,
               progress: Progress | None = None) -> list[dict[str, Any]]:
    budget = cfg.memory_gb * GIB
    if device.type == "cuda":
        budget = min(budget, torch.cuda.get_device_properties(device).total_memory)
        torch.cuda.set_per_process_memory_fraction(budget / torch.cuda.get_device_properties(device).total_memory, device)
    task = progress.add_task("memory", total=len(workloads) * len(cfg.kernels)) if progress else None
    rows = []
    for workload in workloads:
        for kernel in cfg.kernels:
            if progress:
                progress.update(task, description=f"{workload.label} {kernel}")
            row = {"workload": workload.label, "kernel": kernel, **estimate(workload, kernel, budget)}
            if device.type == "cuda":
                row["measured"] = cuda_largest_batch(workload, kernel, device, row["estimate_bf16"], cfg.max_batch)
            rows.append(row)
            if progress:
                progress.advance(task)
    return rows


# ---------------------------------------------------------------------------------------------- report

def markdown_table(rows: list[dict[str, Any]], gpu: bool) -> str:
    header = ["workload", "kernel", "params (M)", "weights+grads+AdamW GiB", "saved MiB / sample fp32",
              "saved MiB / sample bf16", "estimated batch (fp32 activations)", "estimated batch (bf16 activations)"]
    header += ["measured largest batch (bf16 autocast)"] if gpu else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["workload"], row["kernel"], f"{row['params'] / 1e6:.1f}", f"{row['state_bytes'] / GIB:.2f}",
                 f"{row['saved_bytes_per_sample_fp32'] / MIB:.1f}", f"{row['saved_bytes_per_sample_bf16'] / MIB:.1f}",
                 str(row["estimate_fp32"]), str(row["estimate_bf16"])]
        cells += [str(row["measured"])] if gpu else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def finetune_lines(rows: list[dict[str, Any]], gpu: bool, memory_gb: float) -> list[str]:
    """Per kernel: does the fine-tuning step fit, and with what batch."""
    lines = []
    for row in rows:
        if not row["workload"].startswith("fine-tune"):
            continue
        if gpu:
            verdict = f"fits up to batch {row['measured']}" if row["measured"] else "does not fit at batch 1"
            verdict += " (measured)"
        else:
            low, high = row["estimate_fp32"], row["estimate_bf16"]
            verdict = (f"fits, largest batch {low}-{high}" if low else
                       f"fits only if bf16 activations: largest batch {high}" if high else "does not fit at batch 1")
            verdict += " (estimate from saved activations)"
        lines.append(f"{row['workload']}, {row['kernel']}, in {memory_gb:g} GiB: {verdict}")
    return lines


def run(args: argparse.Namespace, command: str) -> None:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    options = settings(args, ("presets", "kernels", "memory_gb", "max_batch"), QUICK)
    if args.no_finetune:
        options["finetune"] = False
    cfg = MemoryConfig(**options)
    workloads = cfg.workloads(args.quick)
    gpu = device.type == "cuda"
    with Stopwatch() as wall, progress_bar() as progress:
        rows = run_memory(cfg, workloads, device, progress)
    print(f"device: {device_name(device)}")
    print(markdown_table(rows, gpu))
    print(f"\nBudget {cfg.memory_gb:g} GiB per GPU. Estimates: 16 B/parameter of training state + saved activations "
          "measured on the meta device (SDPA as its math path; triton as itself), fp32 and all-bf16 bounds; "
          "no CUDA context or workspace.")
    if not gpu:
        print("No GPU: every batch above is an estimate from saved activations, none was run.")
    for line in finetune_lines(rows, gpu, cfg.memory_gb):
        print(line)
    finish(args, command, wall, {"device": device_name(device), "config": cfg.__dict__,
                                 "workloads": [w.__dict__ | {"label": w.label} for w in workloads],
                                 "rows": rows, "finetune": finetune_lines(rows, gpu, cfg.memory_gb)})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default = MemoryConfig()
    parser.add_argument("--presets", nargs="+", help=f"SimMIM presets at 192/w12 (default {' '.join(default.presets)})")
    parser.add_argument("--kernels", nargs="+", choices=KERNELS, help="attention kernels (default all)")
    parser.add_argument("--no-finetune", action="store_true", help="skip SwinV2-L fine-tuning at 384/w24")
    parser.add_argument("--memory-gb", type=float, help=f"GiB per GPU (default {default.memory_gb:g})")
    parser.add_argument("--max-batch", type=int, help=f"largest batch the CUDA search tries (default {default.max_batch})")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--quick", action="store_true", help="50k-parameter models: checks the plumbing only")
