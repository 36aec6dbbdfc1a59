"""``python -m swinssl.bench onnx``: classifier inference images/s on the CPU, onnxruntime against eager PyTorch.

One model (random weights: speed does not depend on them) is exported as ``python -m swinssl.export --to onnx``
exports (:mod:`swinssl.weights.onnx`, checked against PyTorch on the way), then both run the same batches with the
same number of threads (torch intra-op threads = onnxruntime intra-op threads, one inter-op thread), eager under
``torch.inference_mode`` with swinssl's default fused attention. The two alternate batch by batch, so a machine
shared with other jobs slows both alike; the median time per batch gives the images/s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from swinssl.bench.report import Stopwatch, cpu_name, finish, progress_bar

TINY = dict(arch="swinv2", embed_dim=16, depths=(1, 1), num_heads=(1, 2), patch_size=4)


def run(args: argparse.Namespace, command: str) -> None:
    import onnxruntime

    from swinssl.models import build_encoder
    from swinssl.weights.onnx import to_onnx

    quick = dict(TINY, img_size=32, window_size=4) if args.quick else {}
    arch = quick.pop("arch", args.arch)
    img_size, window = quick.pop("img_size", args.img_size), quick.pop("window_size", args.window_size)
    batch, iters = (2, 3) if args.quick else (args.batch, args.iters)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_encoder(arch, img_size=img_size, window_size=window, num_classes=1000, **quick).eval()
    images = torch.randn(batch, 3, img_size, img_size)
    with Stopwatch() as wall, tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        error = to_onnx(model, images, path, "image", ["logits"], {})
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {"image": images.numpy()}
        times: dict[str, list[float]] = {"eager": [], "onnxruntime": []}
        with torch.inference_mode(), progress_bar() as progress:
            model(images), session.run(None, feed)  # warm-up
            task = progress.add_task("batches", total=iters)
            for _ in range(iters):
                tic = time.perf_counter()
                model(images)
                times["eager"].append(time.perf_counter() - tic)
                tic = time.perf_counter()
                session.run(None, feed)
                times["onnxruntime"].append(time.perf_counter() - tic)
                progress.advance(task)
    rates = {name: batch / statistics.median(spent) for name, spent in times.items()}
    ratio = rates["onnxruntime"] / rates["eager"]
    print(f"| runtime | images/s | vs eager |\n|---|---|---|\n| eager PyTorch (fused attention) | {rates['eager']:.1f} | "
          f"1.00 |\n| onnxruntime (CPU) | {rates['onnxruntime']:.1f} | {ratio:.2f} |")
    print(f"\n{arch} {img_size} px / window {window}, 1000 classes, batch {batch}, {iters} batches each, {threads} "
          f"threads; {cpu_name()}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; "
          f"ONNX vs PyTorch relative error {error:.1e}.")
    finish(args, command, wall, {"cpu": cpu_name(), "arch": arch, "img_size": img_size, "window_size": window,
                                 "batch": batch, "iters": iters, "threads": threads,
                                 "images_per_s": {k: round(v, 2) for k, v in rates.items()},
                                 "onnx_vs_eager": round(ratio, 3), "relative_error": error})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="swinv2_tiny", help="preset (default swinv2_tiny)")
    parser.add_argument("--img-size", type=int, default=256, help="image size (default 256)")
    parser.add_argument("--window-size", type=int, default=8, help="window (default 8)")
    parser.add_argument("--batch", type=int, default=8, help="images per batch (default 8)")
    parser.add_argument("--iters", type=int, default=10, help="timed batches per runtime (default 10)")
    parser.add_argument("--threads", type=int, help="threads for both runtimes (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--quick", action="store_true", help="a tiny model, 3 batches: checks the plumbing")
