
"""``python -m swinssl.bench video``: how many Kinetics training clips one data-loading worker (one process on one core) makes
per second: decoding with PyAV plus the augmentation, through VideoShardDataModule's training stage.

Synthetic Kinetics-like videos (10 s at 25 fps, libx264 in mp4, short side 256 and 320: 340x256 and
426x320) show a window panning slowly across a real photo that scikit-image ships, with per-frame noise
so the encoder and the decoder do real work. Each size is encoded twice: with libx264's default GOP
(keyint 250: one keyframe per 10 s video) and with a dense GOP of 16 frames, the re-encoding that
mmaction2 recommends for fast seeks. The videos go through a shard, then the clock runs on the official
Kinetics training pipeline: 32 frames 2 apart from a random start, short side 256, random resized crop
to 224, flip, normalisation. Divide a GPU's clips/s by the per-worker rate to size num_workers.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from swinssl.bench.report import cpu_name, progress_bar, write_json
from swinssl.demo_data import PHOTOS


@dataclass
class VideoBenchConfig:
    sizes: list[tuple[int, int]] = field(default_factory=lambda: [(340, 256), (426, 320)])  # width, height
    gops: list[int | None] = field(default_factory=lambda: [None, 16])  # None: libx264's default
    seconds: float = 10.0
    fps: int = 25
    videos: int = 4  # per size and GOP
    clips: int = 40  # timed per size and GOP, cycling over the videos
    noise: float = 6.0  # std of the per-frame Gaussian noise, in 0-255 pixel units
    num_frames: int = 32
    frame_interval: int = 2
    img_size: int = 224
    short_side: int = 256


QUICK_VIDEO = dict(seconds=2.0, videos=1, clips=2)


def synthetic_frames(
    photo: np.ndarray, size: tuple[int, int], cfg: VideoBenchConfig, rng: np.random.Generator
) -> np.ndarray:
    """A ``size`` (width, height) window panning across ``photo``, plus noise: uint8 ``(T, H, W, 3)``."""
    from swinssl.demo_videos import pan

    width, height = size
    frames = pan(photo, round(cfg.seconds * cfg.fps), (height, width), right=bool(rng.integers(2)), rng=rng)
    for frame in frames:  # frame by frame: float noise for a whole 426x320 video would take 800 MB
        frame[...] = np.clip(frame + rng.normal(0, cfg.noise, frame.shape), 0, 255)
    return frames


def run_video(cfg: VideoBenchConfig, workdir: Path, progress: Progress | None = None) -> list[dict]:
    """One row per (size, GOP): bitrate, keyframes, and decode / augment / total ms per clip."""
    import av
    import cv2
    import webdataset as wds

    from swinssl.datamodules import SkipCounter
    from swinssl.datamodules.clips import read_frames, video_bytes
    from swinssl.datamodules.video import VideoShardDataModule
    from swinssl.demo_videos import encode_video, photo_rgb

    torch.set_num_threads(1)
    cv2.setNumThreads(0)  # OpenCV runs single-threaded, as in a loader worker
    rows = [(size, gop) for size in cfg.sizes for gop in cfg.gops]
    task = progress.add_task("video", total=len(rows) * (cfg.videos + cfg.clips)) if progress else None
    results = []
    for size, gop in rows:
        label = f"{size[0]}x{size[1]}, GOP {gop or 'default'}"
        rng = np.random.default_rng(0)  # the same content for both GOPs of a size
        shard = workdir / f"{size[0]}x{size[1]}-gop{gop or 'default'}.tar"
        with wds.TarWriter(str(shard)) as writer:
            for i in range(cfg.videos):
                if progress:
                    progress.update(task, advance=1, description=f"{label}: encode video {i + 1}")
                frames = synthetic_frames(photo_rgb(PHOTOS[i % len(PHOTOS)]), size, cfg, rng)
                writer.write({"__key__": f"{i:06d}", "mp4": encode_video(frames, cfg.fps, gop=gop), "cls": 0})
        samples = list(wds.DataPipeline(wds.SimpleShardList([str(shard)]), wds.tarfile_to_samples()))
        dm = VideoShardDataModule(
            str(shard), num_frames=cfg.num_frames, frame_interval=cfg.frame_interval,
            img_size=cfg.img_size, short_side=cfg.short_side,
        )
        stage = dm.decoder(SkipCounter(), train=True)
        stage.start()
        stage.decode(samples[0])  # warm-up: first-call costs are not per-clip costs
        decode_s = augment_s = 0.0
        for i in range(cfg.clips):  # the two steps of stage.decode, timed apart
            if progress:
                progress.update(task, advance=1, description=f"{label}: clip {i + 1}")
            start = time.perf_counter()
            frames = read_frames(video_bytes(samples[i % len(samples)]), stage.indices)
            middle = time.perf_counter()
            stage.views(frames)
            decode_s, augment_s = decode_s + middle - start, augment_s + time.perf_counter() - middle
        keyframes = []
        for sample in samples:
            with av.open(io.BytesIO(sample["mp4"])) as container:
                keyframes.append(sum(p.is_keyframe for p in container.demux(video=0)))
        total_ms = (decode_s + augment_s) / cfg.clips * 1e3
        results.append({
            "width": size[0], "height": size[1], "gop": gop, "keyframes_per_video": float(np.mean(keyframes)),
            "kbit_per_s": round(np.mean([len(s["mp4"]) for s in samples]) * 8 / cfg.seconds / 1e3, 1),
            "decode_ms": round(decode_s / cfg.clips * 1e3, 1), "augment_ms": round(augment_s / cfg.clips * 1e3, 1),
            "ms_per_clip": round(total_ms, 1), "clips_per_s": round(1e3 / total_ms, 2),
        })
    return results


def video_table(rows: list[dict]) -> str:
    lines = [
        "| video | GOP | keyframes / video | kbit/s | decode ms | augment ms | ms / clip | clips/s per worker |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        gop = row["gop"] or "default (250)"
        lines.append(
            f"| {row['width']}x{row['height']} | {gop} | {row['keyframes_per_video']:.1f} "
            f"| {row['kbit_per_s']:.0f} | {row['decode_ms']:.1f} | {row['augment_ms']:.1f} "
            f"| {row['ms_per_clip']:.1f} | {row['clips_per_s']:.2f} |"
        )
    return "\n".join(lines)


def decoder_versions() -> dict[str, str]:
    import albumentations
    import av
    import cv2

    ffmpeg = ".".join(map(str, av.library_versions["libavcodec"]))
    return {"PyAV": av.__version__, "libavcodec": ffmpeg, "albumentations": albumentations.__version__,
            "OpenCV": cv2.__version__, "CPU": cpu_name()}


def run(args: argparse.Namespace, command: str) -> None:
    cfg = VideoBenchConfig(**(QUICK_VIDEO if args.quick else {}))
    for key in ("videos", "clips", "seconds"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    versions = decoder_versions()
    print("decoders: " + ", ".join(f"{name} {version}" for name, version in versions.items()))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir, progress_bar() as progress:
        rows = run_video(cfg, Path(workdir), progress)
    wall = time.perf_counter() - start
    print(video_table(rows))
    print(f"\nOne process, one thread; {cfg.clips} clips per row of {cfg.num_frames} frames x {cfg.frame_interval} "
          f"-> {cfg.img_size} px, from {cfg.videos} videos of {cfg.seconds:g} s at {cfg.fps} fps.")
    print(f"command: {command}\nwall time: {wall:.0f} s")
    if args.json:
        write_json(args.json, {"command": command, "wall_s": round(wall, 1), "versions": versions,
                               "config": cfg.__dict__, "rows": rows})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default = VideoBenchConfig()
    parser.add_argument("--videos", type=int, help=f"videos per size and GOP (default {default.videos})")
    parser.add_argument("--clips", type=int, help=f"timed clips per size and GOP (default {default.clips})")
    parser.add_argument("--seconds", type=float, help=f"video length (default {default.seconds:g})")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--quick", action="store_true", help="short videos, a few clips: checks the plumbing only")
