"""``python -m swinssl.bench video``: how many training clips one data-loading worker (one process on one core) makes
per second, decoding with swinssl's clip path and with its peers (PyAV called plainly, decord, torchcodec), each
followed by the same augmentation (VideoShardDataModule's training stage) on the same files, clips and frame indices.

Synthetic Kinetics-like videos (10 s at 25 fps, libx264 in mp4, short side 256 and 320: 340x256 and
426x320) show a window panning slowly across a real photo that scikit-image ships, with per-frame noise
so the encoder and the decoder do real work. Each size is encoded twice: with libx264's default GOP
(keyint 250: one keyframe per 10 s video) and with a dense GOP of 16 frames; the 426x320 default-GOP videos
are also re-encoded by ``make_shards --short-side 256 --gop 16``. Clips follow the official Kinetics training
pipeline: 32 frames 2 apart from a random start, short side 256, random resized crop to 224, flip,
normalisation. Something-Something-like videos (VP9 in webm, 426x240 at 12 fps, 4 s) go through the SSv2
pipeline: 32 uniform segments, no flip, RandAugment(4, 7), random erasing. Times are CPU time of the process
(all its threads), so other processes on the machine do not count and a worker that owns a core makes
``clips/s`` clips a second. Each decoder runs in a worker process of its own, as in a data loader; the
decoders take turns a block of clips at a time, and the table shows medians. Divide a GPU's
clips/s by the per-worker rate to size num_workers.

A second table times masked video pretraining's pipeline on the Kinetics-like videos, with swinssl's decode:
the clip sampling, crop and tube masks of recipe ``simmim_video_v2_b`` (read from the recipe), a mask drawn
per clip as the loader workers draw it.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import multiprocessing
import pstats
import re
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from swinssl.bench.report import Stopwatch, cpu_name, finish, progress_bar, settings
from swinssl.demo_data import PHOTOS

DECODERS = ("swinssl", "pyav", "decord", "torchcodec")
Decode = Callable[[bytes, Callable[[int], np.ndarray]], np.ndarray]  # read_frames' signature


@dataclass
class VideoBenchConfig:
    sizes: list[tuple[int, int]] = field(default_factory=lambda: [(340, 256), (426, 320)])  # width, height
    gops: list[int | None] = field(default_factory=lambda: [None, 16])  # None: libx264's default
    seconds: float = 10.0
    fps: int = 25
    reencode: tuple[int, int] = (256, 16)  # make_shards --short-side, --gop for the largest default-GOP videos
    ssv2_size: tuple[int, int] = (426, 240)  # Something-Something v2's webm files: 240 px high, 12 fps, VP9
    ssv2_fps: int = 12
    ssv2_seconds: float = 4.0
    videos: int = 4  # per kind of video
    clips: int = 40  # timed per kind of video and decoder, cycling over the videos
    noise: float = 6.0  # std of the per-frame Gaussian noise, in 0-255 pixel units
    num_frames: int = 32
    frame_interval: int = 2
    img_size: int = 224
    short_side: int = 256
    decoders: list[str] = field(default_factory=lambda: list(DECODERS))


QUICK_VIDEO = dict(seconds=2.0, ssv2_seconds=2.0, videos=1, clips=2)


@dataclass
class VideoKind:
    """One kind of video in the benchmark: its encoded files and the pipeline its clips go through."""

    label: str
    width: int
    height: int
    codec: str
    gop: int | None
    sampling: str
    seconds: float
    videos: list[bytes]


def synthetic_frames(
    photo: np.ndarray, size: tuple[int, int], cfg: VideoBenchConfig, rng: np.random.Generator, frames: int
) -> np.ndarray:
    """A ``size`` (width, height) window panning across ``photo``, plus noise: uint8 ``(T, H, W, 3)``."""
    from swinssl.demo_videos import pan

    width, height = size
    video = pan(photo, frames, (height, width), right=bool(rng.integers(2)), rng=rng)
    for frame in video:  # frame by frame: float noise for a whole 426x320 video would take 800 MB
        frame[...] = np.clip(frame + rng.normal(0, cfg.noise, frame.shape), 0, 255)
    return video


# -------------------------------------------------------------------------------------------- decoders


def pyav_frames(data: bytes, indices_for: Callable[[int], np.ndarray]) -> np.ndarray:
    """PyAV as one calls it plainly (and swinssl's clip path did before): count the frames from the packets,
    seek to the keyframe before the first needed frame, decode on to the last, ``to_ndarray`` each needed one."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        packets = sorted((p.pts, p.is_keyframe) for p in container.demux(stream) if p.pts is not None and p.size)
        timestamps = np.array([pts for pts, _ in packets])
        indices = np.asarray(indices_for(len(timestamps)))
        wanted, first, last = set(indices.ravel().tolist()), int(indices.min()), int(indices.max())
        keyframe = max((i for i, (_, key) in enumerate(packets[: first + 1]) if key), default=0)
        container.seek(int(timestamps[keyframe]), stream=stream, backward=True, any_frame=False)
        frames = {}
        for frame in container.decode(stream):
            index = int(np.searchsorted(timestamps, frame.pts, side="right")) - 1
            if index in wanted:
                frames[index] = frame.to_ndarray(format="rgb24")
            if index >= last:
                break
    return np.stack([frames[i] for i in indices.ravel()]).reshape(*indices.shape, *frames[first].shape)


def decord_frames(data: bytes, indices_for: Callable[[int], np.ndarray]) -> np.ndarray:
    """decord as mmaction2's ``DecordDecode(mode='accurate')`` uses it: ``get_batch`` on the clip's indices."""
    import decord

    reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
    indices = np.asarray(indices_for(len(reader)))
    frames = reader.get_batch(indices.ravel().tolist()).asnumpy()
    return frames.reshape(*indices.shape, *frames.shape[1:])


def torchcodec_frames(data: bytes, indices_for: Callable[[int], np.ndarray]) -> np.ndarray:
    """torchcodec's ``VideoDecoder`` on the CPU, one FFmpeg thread, exact frame count, ``get_frames_at``."""
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(data, seek_mode="exact", num_ffmpeg_threads=1, dimension_order="NHWC")
    indices = np.asarray(indices_for(decoder.metadata.num_frames))
    frames = np.ascontiguousarray(decoder.get_frames_at(indices.ravel().tolist()).data.numpy())
    return frames.reshape(*indices.shape, *frames.shape[1:])


def decoder_function(name: str) -> Decode:
    from swinssl.datamodules.clips import read_frames

    return {"swinssl": read_frames, "pyav": pyav_frames, "decord": decord_frames, "torchcodec": torchcodec_frames}[name]


def available_decoders(names: list[str], probe: bytes) -> tuple[list[str], list[str]]:
    """The decoders of ``names`` that decode ``probe`` here, and a one-line note for each that does not."""
    from importlib.metadata import PackageNotFoundError, version

    decoders, notes = [], []
    for name in names:
        try:
            decoder_function(name)(probe, lambda length: np.arange(min(length, 2)))
        except ImportError:
            notes.append(f"{name}: row skipped, not installed (pip install 'swinssl[bench]')")
            continue
        except Exception as exn:  # noqa: BLE001 - a peer that cannot decode here is reported, not fatal
            try:
                release = f" {version(name)}"
            except PackageNotFoundError:
                release = ""
            majors = sorted({int(m) for m in re.findall(r"libavutil\.so\.(\d+): cannot open shared object", str(exn))})
            reason = f"{type(exn).__name__}: {str(exn).strip().splitlines()[0]}"
            if majors:
                found = f"libavutil.so.{majors[0]}" + (f" to .{majors[-1]}" if len(majors) > 1 else "")
                reason = f"cannot load FFmpeg's shared libraries (no {found}; Debian's `ffmpeg` package installs them)"
            notes.append(f"{name}{release}: row skipped, {reason}")
            continue
        decoders.append(name)
    return decoders, notes


# ------------------------------------------------------------------------------------------- the videos


def make_videos(cfg: VideoBenchConfig, progress: Progress | None, task) -> list[VideoKind]:
    import av

    from swinssl.demo_videos import encode_video, photo_rgb
    from swinssl.make_shards import reencode_video

    def frames(i: int, size: tuple[int, int], count: int, rng: np.random.Generator) -> np.ndarray:
        return synthetic_frames(photo_rgb(PHOTOS[i % len(PHOTOS)]), size, cfg, rng, count)

    def advance(text: str) -> None:
        if progress:
            progress.update(task, advance=1, description=text)

    kinds = []
    for size in cfg.sizes:
        rng = np.random.default_rng(0)
        encoded: dict[int | None, list[bytes]] = {gop: [] for gop in cfg.gops}
        for i in range(cfg.videos):
            video = frames(i, size, round(cfg.seconds * cfg.fps), rng)  # the same content for every GOP
            for gop in cfg.gops:
                advance(f"{size[0]}x{size[1]}, GOP {gop or 'default'}: encode video {i + 1}")
                encoded[gop].append(encode_video(video, cfg.fps, gop=gop))
        kinds += [VideoKind(f"{size[0]}x{size[1]}", *size, "h264", gop, "stride", cfg.seconds, encoded[gop])
                  for gop in cfg.gops]
    if cfg.reencode and cfg.sizes and None in cfg.gops:
        short_side, gop = cfg.reencode
        source = next(kind for kind in reversed(kinds) if kind.gop is None)
        videos = []
        for video in source.videos:
            advance(f"make_shards --short-side {short_side} --gop {gop}")
            videos.append(reencode_video(video, short_side, gop))
        with av.open(io.BytesIO(videos[0])) as container:
            width, height = container.streams.video[0].width, container.streams.video[0].height
        label = f"{source.label} -> {width}x{height} (make_shards --short-side {short_side} --gop {gop})"
        kinds.append(VideoKind(label, width, height, "h264", gop, "stride", source.seconds, videos))
    if cfg.ssv2_seconds > 0:
        rng = np.random.default_rng(1)
        videos = []
        for i in range(cfg.videos):
            advance("SSv2-like VP9: encode")
            video = frames(i, cfg.ssv2_size, round(cfg.ssv2_seconds * cfg.ssv2_fps), rng)
            videos.append(encode_video(video, cfg.ssv2_fps, codec="libvpx-vp9"))
        kinds.append(VideoKind(f"{cfg.ssv2_size[0]}x{cfg.ssv2_size[1]} webm", *cfg.ssv2_size, "vp9", None, "uniform",
                               cfg.ssv2_seconds, videos))
    return kinds


def video_facts(videos: list[bytes]) -> tuple[list[int], float]:
    """The frame count of every video and the mean number of keyframes per video."""
    import av

    lengths, keyframes = [], []
    for data in videos:
        with av.open(io.BytesIO(data)) as container:
            packets = [p for p in container.demux(video=0) if p.size]
        lengths.append(len(packets))
        keyframes.append(sum(p.is_keyframe for p in packets))
    return lengths, float(np.mean(keyframes))


# ---------------------------------------------------------------------------------------------- timing


def training_stage(kind: VideoKind, cfg: VideoBenchConfig):
    """VideoShardDataModule's training stage for the kind's recipe (Kinetics or SSv2), started as in a worker."""
    from swinssl.datamodules import SkipCounter
    from swinssl.datamodules.video import VideoShardDataModule

    ssv2 = {"hflip": 0.0, "rand_augment": {"num_ops": 4, "magnitude": 7}, "re_prob": 0.25}  # recipe video_v2_b_ssv2
    recipe = {} if kind.sampling == "stride" else ssv2
    dm = VideoShardDataModule(
        num_frames=cfg.num_frames, sampling=kind.sampling, frame_interval=cfg.frame_interval,
        img_size=cfg.img_size, short_side=cfg.short_side, test_clips=1, **recipe,
    )  # fmt: skip
    stage = dm.decoder(SkipCounter(), train=True)
    stage.start()
    return stage



PRETRAINING_RECIPE = "simmim_video_v2_b"


@functools.cache
def pretraining_recipe() -> dict:
    """``PRETRAINING_RECIPE``, composed once per process, as plain values; no shards (the bench brings its clips)."""
    from hydra import compose, initialize_config_module

    from swinssl.training import cli
    from swinssl.training.recipe_checks import RECIPES

    with initialize_config_module(config_module=RECIPES, version_base="1.3"):
        recipe = cli.plain(compose(config_name="pretrain", overrides=[f"recipe={PRETRAINING_RECIPE}"]),
                           "model", "simmim", "data", "seed")
    recipe["data"].update(shards=None, val_shards=None)
    return recipe


def pretraining_stage(cfg: VideoBenchConfig):
    """The masked video pretraining stage of ``PRETRAINING_RECIPE`` (its clips, crop and masks), as the pretraining
    builder makes it for the recipe's encoder (no checkpoint: the family's patch), started as in a worker."""
    from swinssl.datamodules import SkipCounter
    from swinssl.models.registry import EncoderSpec, family, last_stage_stride, resolve_arch
    from swinssl.tasks.simmim import pretraining_data

    recipe = pretraining_recipe()
    spec = EncoderSpec.from_config(recipe["model"])
    patch = family(spec.arch).patch(spec.patch_size)
    dm = pretraining_data(recipe, patch, last_stage_stride(patch, len(resolve_arch(spec.arch, spec.sizes())["depths"])))
    stage = dm.decoder(SkipCounter(), train=True)
    stage.start()
    return stage


_STAGES: dict = {}  # in a decoder's worker process: the stage of each kind of video and pipeline


def time_clips(name: str, kind: VideoKind, cfg: VideoBenchConfig, clips: list[tuple[int, np.ndarray]],
               pretraining: bool = False) -> list:
    """In the decoder's worker process: (decode, augment) CPU seconds of each clip ``(video number, indices)``;
    ``pretraining``: the masked pretraining pipeline, whose augment time includes drawing the clip's mask."""
    import cv2

    decode = decoder_function(name)
    key = (kind.label, kind.gop, pretraining)
    if key not in _STAGES:
        torch.set_num_threads(1)
        cv2.setNumThreads(0)  # OpenCV single-threaded, as in a loader worker
        _STAGES[key] = pretraining_stage(cfg) if pretraining else training_stage(kind, cfg)
        _STAGES[key].views(decode(kind.videos[0], lambda length: clips[0][1]))  # first-call costs are not per-clip
    stage = _STAGES[key]
    times = []
    for video, indices in clips:
        start = time.process_time()
        frames = decode(kind.videos[video % len(kind.videos)], lambda length, indices=indices: indices)
        middle = time.process_time()
        stage.views(frames)
        if pretraining:
            stage.masks()
        times.append((middle - start, time.process_time() - middle))
    return times


def codec_profile(kind: VideoKind, clips: list[tuple[int, np.ndarray]]) -> dict[str, float]:
    """In swinssl's worker process: where its decode time goes, per clip (cProfile, CPU time): the codec itself
    (entropy decoding and reconstruction of the frames the clip needs and of the frames those reference), the
    colour conversion to RGB, and the rest (opening, demuxing, bookkeeping, stacking the frames)."""
    decode = decoder_function("swinssl")
    profiler = cProfile.Profile(time.process_time)
    start = time.process_time()
    profiler.enable()
    for video, indices in clips:
        decode(kind.videos[video % len(kind.videos)], lambda length, indices=indices: indices)
    profiler.disable()
    total = time.process_time() - start
    seconds = {"codec": 0.0, "rgb": 0.0}
    for (_file, _line, name), (*_, own, _cumulative, _callers) in pstats.Stats(profiler).stats.items():
        if "'decode' of 'av.codec.context.CodecContext'" in name:
            seconds["codec"] += own
        elif "av.video.reformatter.VideoReformatter" in name or "'to_ndarray' of 'av.video.frame" in name:
            seconds["rgb"] += own
    seconds["rest"] = total - seconds["codec"] - seconds["rgb"]
    return {f"{key}_ms": round(value / len(clips) * 1e3, 1) for key, value in seconds.items()}


def time_kind(kind: VideoKind, workers: dict, cfg: VideoBenchConfig, advance) -> list[dict]:
    """Each decoder's rows for one kind of video: the same clips, each followed by the augmentation, timed in the
    decoder's own worker process (as a loader worker runs one decoder: another one's allocations would leave
    it page faults to pay), in blocks that take turns."""
    lengths, keyframes = video_facts(kind.videos)
    stage = training_stage(kind, cfg)
    clips = [(i, stage.indices(lengths[i % len(lengths)])) for i in range(cfg.clips)]
    reference, differences = None, {}
    for name in workers:  # agreement with the first decoder: the largest pixel difference on the first clip
        frames = decoder_function(name)(kind.videos[0], lambda length: clips[0][1])
        reference = frames if reference is None else reference
        differences[name] = int(np.abs(frames.astype(int) - reference).max())
    times = {name: [] for name in workers}
    names, block = list(workers), max(1, cfg.clips // 4)
    for turn, first in enumerate(range(0, cfg.clips, block)):
        for name in names[turn % len(names) :] + names[: turn % len(names)]:  # who goes first rotates
            advance(f"{kind.label}, GOP {kind.gop or 'default'}: {name}, clips {first + 1}-{first + block}")
            times[name] += workers[name].submit(time_clips, name, kind, cfg, clips[first : first + block]).result()
    rows = []
    for name, pairs in times.items():
        decode_ms, augment_ms = (np.median(column) * 1e3 for column in zip(*pairs))
        total_ms = round(decode_ms, 1) + round(augment_ms, 1)
        rows.append({
            "video": kind.label, "width": kind.width, "height": kind.height, "codec": kind.codec, "gop": kind.gop,
            "sampling": kind.sampling, "keyframes_per_video": keyframes,
            "kbit_per_s": round(np.mean([len(v) for v in kind.videos]) * 8 / kind.seconds / 1e3, 1),
            "decoder": name, "decode_ms": round(decode_ms, 1), "augment_ms": round(augment_ms, 1),
            "ms_per_clip": round(total_ms, 1), "clips_per_s": round(1e3 / total_ms, 2),
            "max_diff": differences[name],
        })  # fmt: skip
    peers = [row["clips_per_s"] for row in rows if row["decoder"] != "swinssl"]
    for row in rows:
        row["vs_best_peer"] = round(row["clips_per_s"] / max(peers), 2) if peers else None
    if "swinssl" in workers:
        profile = workers["swinssl"].submit(codec_profile, kind, clips[: max(2, cfg.clips // 4)]).result()
        next(row for row in rows if row["decoder"] == "swinssl")["profile"] = profile
    return rows


def time_pretraining(kind: VideoKind, worker, cfg: VideoBenchConfig, advance) -> dict:
    """swinssl's masked pretraining pipeline on one kind of Kinetics-like video: its own clips, in swinssl's worker."""
    lengths, _ = video_facts(kind.videos)
    stage = pretraining_stage(cfg)
    clips = [(i, stage.indices(lengths[i % len(lengths)])) for i in range(cfg.clips)]
    advance(f"{kind.label}, GOP {kind.gop or 'default'}: swinssl, masked pretraining")
    pairs = worker.submit(time_clips, "swinssl", kind, cfg, clips, True).result()
    decode_ms, augment_ms = (np.median(column) * 1e3 for column in zip(*pairs))
    total_ms = round(decode_ms, 1) + round(augment_ms, 1)
    return {"video": kind.label, "gop": kind.gop, "recipe": PRETRAINING_RECIPE, "decode_ms": round(decode_ms, 1),
            "augment_ms": round(augment_ms, 1), "ms_per_clip": round(total_ms, 1),
            "clips_per_s": round(1e3 / total_ms, 2)}


def run_video(cfg: VideoBenchConfig, progress: Progress | None = None) -> tuple[list[dict], list[dict], list[str]]:
    """Rows per kind of video and decoder, masked pretraining rows per Kinetics-like kind (with swinssl's decode),
    and a note for each decoder skipped."""
    from swinssl.demo_videos import encode_video

    decoders, notes = available_decoders(cfg.decoders, encode_video(np.zeros((4, 64, 64, 3), np.uint8)))
    kinds_count = len(cfg.sizes) * len(cfg.gops) + 2
    total = kinds_count * (cfg.videos + 4 * len(decoders) + 1)
    task = progress.add_task("video", total=total) if progress else None

    def advance(text: str) -> None:
        if progress:
            progress.update(task, advance=1, description=text)

    # One worker process per decoder, forked as DataLoader forks its workers where the platform allows.
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    workers = {name: ProcessPoolExecutor(1, mp_context=context) for name in decoders}
    try:
        rows, pretraining = [], []
        for kind in make_videos(cfg, progress, task):
            rows += time_kind(kind, workers, cfg, advance)
            if kind.sampling == "stride" and "swinssl" in workers:
                pretraining.append(time_pretraining(kind, workers["swinssl"], cfg, advance))
    finally:
        for worker in workers.values():
            worker.shutdown()
    return rows, pretraining, notes


def video_table(rows: list[dict]) -> str:
    lines = [
        ("| video | GOP | keyframes / video | kbit/s | decoder | decode CPU ms | augment CPU ms | CPU ms / clip "
         "| clips/s per worker | / best peer | max diff |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        gop = row["gop"] or ("default (250)" if row["codec"] == "h264" else "default")
        ratio = "–" if row["vs_best_peer"] is None else f"{row['vs_best_peer']:.2f}"
        lines.append(
            f"| {row['video']} | {gop} | {row['keyframes_per_video']:.1f} | {row['kbit_per_s']:.0f} "
            f"| {row['decoder']} | {row['decode_ms']:.1f} | {row['augment_ms']:.1f} "
            f"| {row['ms_per_clip']:.1f} | {row['clips_per_s']:.2f} | {ratio} | {row['max_diff']} |"
        )
    return "\n".join(lines)


def pretraining_table(rows: list[dict]) -> str:
    lines = ["| video | GOP | decode CPU ms | augment + mask CPU ms | CPU ms / clip | clips/s per worker |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['video']} | {row['gop'] or 'default'} | {row['decode_ms']:.1f} | {row['augment_ms']:.1f} "
                     f"| {row['ms_per_clip']:.1f} | {row['clips_per_s']:.2f} |")
    return "\n".join(lines)


def profile_table(rows: list[dict]) -> str:
    lines = [
        "| video | GOP | swinssl decode CPU ms | codec | RGB conversion | rest (open, demux, stack) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "profile" in row:
            p = row["profile"]
            lines.append(f"| {row['video']} | {row['gop'] or 'default'} | {row['decode_ms']:.1f} | {p['codec_ms']:.1f} "
                         f"| {p['rgb_ms']:.1f} | {p['rest_ms']:.1f} |")
    return "\n".join(lines)


def decoder_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import albumentations
    import av
    import cv2

    ffmpeg = ".".join(map(str, av.library_versions["libavcodec"]))
    versions = {"PyAV": av.__version__, "libavcodec": ffmpeg}
    for peer in ("decord", "torchcodec"):
        try:
            versions[peer] = version(peer)
        except PackageNotFoundError:
            versions[peer] = "not installed"
    return {**versions, "albumentations": albumentations.__version__, "OpenCV": cv2.__version__, "CPU": cpu_name()}


def run(args: argparse.Namespace, command: str) -> None:
    cfg = VideoBenchConfig(**settings(args, ("videos", "clips", "seconds", "decoders"), QUICK_VIDEO))
    versions = decoder_versions()
    print("decoders: " + ", ".join(f"{name} {version}" for name, version in versions.items()))
    with Stopwatch() as wall, progress_bar() as progress:
        rows, pretraining, notes = run_video(cfg, progress)
    for note in notes:
        print(note)
    print(video_table(rows))
    print("\nswinssl's decode time, split (cProfile):")
    print(profile_table(rows))
    if pretraining:
        print(f"\nmasked video pretraining pipeline (recipe {PRETRAINING_RECIPE}: its clips, crop and tube masks), "
              "swinssl's decode:")
        print(pretraining_table(pretraining))
    print(f"\nOne process, one thread, CPU time, medians of {cfg.clips} clips per row, one process per decoder; "
          f"Kinetics: {cfg.num_frames} frames x {cfg.frame_interval} -> {cfg.img_size} px from {cfg.videos} videos of "
          f"{cfg.seconds:g} s at {cfg.fps} fps; SSv2: {cfg.num_frames} segments of {cfg.ssv2_seconds:g} s at "
          f"{cfg.ssv2_fps} fps. '/ best peer': clips/s over the fastest peer's; 'max diff': the largest "
          f"pixel difference from the first decoder's frames ({next(iter(cfg.decoders))}) on one clip.")
    finish(args, command, wall, {"versions": versions, "config": cfg.__dict__, "notes": notes, "rows": rows,
                                 "pretraining_rows": pretraining})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default = VideoBenchConfig()
    parser.add_argument("--videos", type=int, help=f"videos per kind (default {default.videos})")
    parser.add_argument("--clips", type=int, help=f"timed clips per kind and decoder (default {default.clips})")
    parser.add_argument("--seconds", type=float, help=f"Kinetics-like video length (default {default.seconds:g})")
    parser.add_argument("--decoders", nargs="+", choices=DECODERS, help="decoders to compare (default: all)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--quick", action="store_true", help="short videos, a few clips: checks the plumbing only")
