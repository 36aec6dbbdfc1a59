"""Labeled video shards -> clip batches: ``{"video": (B, 3, T, H, W), "label", "skipped"}``.

The official Video Swin pipelines, on WebDataset shards of encoded videos (``mp4|webm|avi|mkv`` and a
``cls`` label): which frames make a clip (:class:`ClipSampler`: Kinetics strides or Something-Something
segments), decoding only those (:func:`read_frames`), and one augmentation draw for every frame of a
clip (:class:`ClipTransform`). Test batches hold every view of a video, ``(B, V, 3, T, H, W)``.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import albumentations as A
import av
import cv2
import numpy as np
import torch
import webdataset as wds
from timm.data.random_erasing import RandomErasing

from .classification import LabeledShards
from .images import IMAGENET_MEAN, IMAGENET_STD, random_resized_crop
from .shards import SkipCounter
from .streaming import Decoder, ShardDataModule

VIDEO_KEYS = ("mp4", "webm", "avi", "mkv")
SAMPLINGS = ("stride", "uniform")
# A loader worker is one process meant for one core; codec threads would oversubscribe the machine.
DECODE_THREADS = 1
# imgaug's magnitude scale, on which the official SSv2 config's RandAugment(n=4, m=7) is given.
MAX_MAGNITUDE = 30


# -------------------------------------------------------------------------------------------- sampling


class ClipSampler:
    """Which frames of a video of ``length`` frames make each clip.

    ``"stride"`` (Kinetics): ``num_frames`` frames ``frame_interval`` apart. Training starts at random in
    ``[0, length - span]`` with ``span = num_frames * frame_interval`` (the official span: it reaches one
    interval past the last frame); evaluation takes ``clips`` evenly spaced starts, each centred in its
    share of that range. A video shorter than the span starts at 0 and its indices wrap modulo
    ``length``: the clip replays the video from its beginning, as the official loader does.

    ``"uniform"`` (Something-Something v2): the video is cut into ``num_frames`` equal segments of
    ``(length - 1) / num_frames`` frames; training takes a random frame of each, evaluation the midpoints,
    so there is one evaluation clip and ``frame_interval`` is ignored.
    """

    def __init__(self, sampling: str, num_frames: int, frame_interval: int) -> None:
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        if frame_interval < 1:
            raise ValueError(f"frame_interval must be at least 1, got {frame_interval}")
        self.sampling = sampling
        self.num_frames = num_frames
        self.frame_interval = frame_interval

    def train(self, length: int, rng: np.random.Generator) -> np.ndarray:
        """One random clip: ``(num_frames,)`` indices."""
        if self.sampling == "uniform":
            low, high = self._segments(length)
            return rng.integers(low, high + 1)
        start = rng.integers(max(length - self._span, 0) + 1)
        return self._strided(length, np.array([start]))[0]

    def spread(self, length: int, clips: int) -> np.ndarray:
        """``clips`` deterministic clips spread over the video: ``(clips, num_frames)`` indices."""
        if self.sampling == "uniform":
            low, high = self._segments(length)
            return ((low + high) // 2)[None]
        room = length - self._span + 1
        starts = (room / clips * (np.arange(clips) + 0.5)).astype(int) if room > 0 else np.zeros(clips, int)
        return self._strided(length, starts)

    @property
    def _span(self) -> int:
        return self.num_frames * self.frame_interval

    def _strided(self, length: int, starts: np.ndarray) -> np.ndarray:
        return (starts[:, None] + self.frame_interval * np.arange(self.num_frames)) % length

    def _segments(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        bounds = np.round((length - 1) / self.num_frames * np.arange(self.num_frames + 1)).astype(int)
        return bounds[:-1], bounds[1:]


# -------------------------------------------------------------------------------------------- decoding


def video_bytes(sample: dict) -> bytes:
    """The sample's encoded video (the first of ``VIDEO_KEYS`` present)."""
    key = next((k for k in VIDEO_KEYS if k in sample), None)
    if key is None:
        raise KeyError(f"no video ({'|'.join(VIDEO_KEYS)}) among keys {sorted(sample)}")
    return sample[key]


def read_frames(data: bytes, indices_for: Callable[[int], np.ndarray]) -> np.ndarray:
    """RGB frames ``indices_for(length)`` of an encoded video: uint8 ``(*indices.shape, H, W, 3)``.

    The packets are demuxed first (no decoding): their sorted timestamps give the frame count and where
    every frame is, exactly, whatever the container metadata says (AVI's x264 timestamps start at 1, MKV
    and WebM store no count) and at any frame rate. Decoding then seeks to the keyframe before the first
    needed frame and stops after the last one. Both loops run over the finite bytes in memory, so a
    broken file ends in an exception (a skipped sample), never in a hang; a needed frame that does not
    decode raises too.
    """
    with av.open(io.BytesIO(data)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = DECODE_THREADS
        packets = sorted((p.pts, p.is_keyframe) for p in container.demux(stream) if p.pts is not None and p.size)
        if not packets:
            raise ValueError("the video stream has no frames")
        timestamps = np.array([pts for pts, _ in packets])
        indices = np.asarray(indices_for(len(timestamps)))
        wanted = set(indices.ravel().tolist())
        first, last = min(wanted), max(wanted)
        keyframe = max((i for i, (_, key) in enumerate(packets[: first + 1]) if key), default=0)
        container.seek(int(timestamps[keyframe]), stream=stream, backward=True, any_frame=False)
        frames = {}
        for frame in container.decode(stream):
            if frame.pts is None:
                raise ValueError("decoded a frame without a timestamp")
            index = int(np.searchsorted(timestamps, frame.pts, side="right")) - 1
            if index in wanted:
                frames[index] = frame.to_ndarray(format="rgb24")
            if index >= last:
                break
    missing = wanted - frames.keys()
    if missing:
        raise ValueError(f"frames {sorted(missing)[:4]} of {len(timestamps)} did not decode")
    return np.stack([frames[i] for i in indices.ravel()]).reshape(*indices.shape, *frames[first].shape)


# ---------------------------------------------------------------------------------------- augmentation


class ClipTransform:
    """An albumentations pipeline applied to every frame of a clip with one random draw.

    The frames go in as extra targets of one call (``additional_targets``), which shares the draw as the
    ``images=`` target does but runs each op frame by frame: resize, crop and flip of 32 frames of
    256 x 340 took 2.8 ms this way and 34 ms with ``images=``, which resizes and flips the stacked array.
    """

    def __init__(self, transforms: list, num_frames: int) -> None:
        self.names = [f"frame{i}" for i in range(1, num_frames)]
        self.compose = A.Compose(transforms, additional_targets=dict.fromkeys(self.names, "image"))

    def set_random_seed(self, seed: int) -> None:
        self.compose.set_random_seed(seed)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """uint8 ``(T, H, W, 3)`` -> uint8 ``(T, h, w, 3)``."""
        out = self.compose(image=frames[0], **dict(zip(self.names, frames[1:])))
        return np.stack([out["image"], *(out[name] for name in self.names)])


def rand_augment_ops(magnitude: float) -> list[A.BasicTransform]:
    """RandAugment's operations from albumentations, for ``SomeOf(n=num_ops)``.

    ``magnitude`` is on imgaug's 0-30 scale, where the official SSv2 config gives 7. Each op's parameter
    is drawn uniformly up to ``magnitude / 30`` of its classic RandAugment maximum: rotate 30 deg, shear
    16.7 deg (slope 0.3), translate 45% of the side, colour/contrast/brightness factor 1 +- 0.9, sharpen
    blend 0.9, posterize to 4 bits, solarize above a threshold falling from 255 to 0. AutoContrast,
    Equalize, Invert and Identity have no magnitude. Cutout is left out: random erasing does that job.
    Geometric ops fill with grey 128, as imgaug does.
    """
    level = magnitude / MAX_MAGNITUDE

    def affine(**kwargs) -> A.Affine:
        return A.Affine(**kwargs, fill=128, p=1)

    def factor(name: str) -> A.ColorJitter:
        jitter = {key: 0 for key in ("brightness", "contrast", "saturation", "hue")}
        return A.ColorJitter(**{**jitter, name: (1 - 0.9 * level, 1 + 0.9 * level)}, p=1)

    rotate, shear, shift = 30 * level, 16.7 * level, 0.45 * level
    return [
        A.NoOp(p=1),
        A.AutoContrast(p=1),
        A.Equalize(p=1),
        A.InvertImg(p=1),
        affine(rotate=(-rotate, rotate)),
        affine(shear={"x": (-shear, shear), "y": 0}),
        affine(shear={"x": 0, "y": (-shear, shear)}),
        affine(translate_percent={"x": (-shift, shift), "y": 0}),
        affine(translate_percent={"x": 0, "y": (-shift, shift)}),
        factor("saturation"),
        factor("contrast"),
        factor("brightness"),
        A.Sharpen(alpha=(0, 0.9 * level), lightness=(1, 1), p=1),
        A.Posterize(num_bits=8 - round(4 * level), p=1),
        A.Solarize(threshold_range=(1 - level, 1), p=1),
    ]


# (x / 255 - mean) / std as x * scale + shift, per channel of a (3, T, H, W) clip.
_SCALE = (1 / (255 * torch.tensor(IMAGENET_STD))).view(3, 1, 1, 1)
_SHIFT = (-torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)).view(3, 1, 1, 1)


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` -> ImageNet-normalised float32 ``(3, T, H, W)``.

    One converting copy into a channel-first buffer, then in-place arithmetic: 2.9 ms for 32 frames of
    224 px on one core, against 17 ms for the same maths out of place on the frame-last array.
    """
    clip = torch.empty((3, *frames.shape[:3]))
    clip.copy_(torch.from_numpy(frames).permute(3, 0, 1, 2))
    return clip.mul_(_SCALE).add_(_SHIFT)


def crop_views(frames: np.ndarray, size: int, count: int) -> list[np.ndarray]:
    """``count`` square crops of ``(T, H, W, 3)`` frames: 1 = centre, 3 = start, centre, end of the long
    side (the official ThreeCrop), centred across the short side."""
    height, width = frames.shape[1:3]
    top, left = (height - size) // 2, (width - size) // 2
    if count == 1:
        return [frames[:, top : top + size, left : left + size]]
    if width >= height:
        return [frames[:, top : top + size, x : x + size] for x in (0, left, width - size)]
    return [frames[:, y : y + size, left : left + size] for y in (0, top, height - size)]


# -------------------------------------------------------------------------------------- pipeline stages


class ClipStage(Decoder):
    """Raw sample -> ``{"video", "label"}``; subclasses say which frames to decode and what views to make.

    A sample without a ``cls`` label, without a video, or whose video does not decode is skipped and
    counted.
    """

    def start(self) -> None:
        if torch.utils.data.get_worker_info() is not None:
            cv2.setNumThreads(0)  # one thread per worker; OpenCV's own pool oversubscribes the cores

    def decode(self, sample: dict) -> dict:
        if "cls" not in sample:
            raise KeyError(f"no class label (cls) among keys {sorted(sample)}")
        label = int(sample["cls"])
        return {"video": self.views(read_frames(video_bytes(sample), self.indices)), "label": label}

    def indices(self, length: int) -> np.ndarray:
        raise NotImplementedError

    def views(self, frames: np.ndarray) -> torch.Tensor:
        raise NotImplementedError


class TrainClips(ClipStage):
    """One random clip, augmented with one draw for all its frames: ``(3, T, H, W)``."""

    def __init__(
        self, counter: SkipCounter, sampler: ClipSampler, transform: ClipTransform, erasing: RandomErasing
    ) -> None:
        super().__init__(counter)
        self.sampler = sampler
        self.transform = transform
        self.erasing = erasing
        self.rng = np.random.default_rng()

    def start(self) -> None:
        super().start()
        # The stage arrives pickled with the same RNG states in every worker: reseed them from torch, which
        # the loader seeds per worker and seed. timm's erasing draws from Python's `random`.
        seed = int(torch.randint(2**31 - 1, ()))
        self.rng = np.random.default_rng(seed)
        self.transform.set_random_seed(seed)
        random.seed(seed)

    def indices(self, length: int) -> np.ndarray:
        return self.sampler.train(length, self.rng)

    def views(self, frames: np.ndarray) -> torch.Tensor:
        clip = to_tensor(self.transform(frames))
        # Erasing a (3T, H, W) view puts one box, with one fill, on every frame.
        self.erasing(clip.view(-1, *clip.shape[2:]))
        return clip


class EvalClips(ClipStage):
    """``clips`` spread clips, short side resized, ``crops`` crops each: ``(V, 3, T, H, W)`` clip-major,
    or ``(3, T, H, W)`` with ``single_view`` (validation)."""

    def __init__(
        self,
        counter: SkipCounter,
        sampler: ClipSampler,
        resize: ClipTransform,
        img_size: int,
        clips: int,
        crops: int,
        single_view: bool = False,
    ) -> None:
        super().__init__(counter)
        self.sampler = sampler
        self.resize = resize
        self.img_size = img_size
        self.clips = clips
        self.crops = crops
        self.single_view = single_view

    def indices(self, length: int) -> np.ndarray:
        return self.sampler.spread(length, self.clips)

    def views(self, frames: np.ndarray) -> torch.Tensor:
        crops = [crop for clip in frames for crop in crop_views(self.resize(clip), self.img_size, self.crops)]
        views = [to_tensor(crop) for crop in crops]
        return views[0] if self.single_view else torch.stack(views)


# ---------------------------------------------------------------------------------------------- module


class VideoShardDataModule(LabeledShards, ShardDataModule):
    """Labeled video clips with the official Video Swin training, validation and test views.

    Training: a clip from ``sampling`` (``"stride"``: ``num_frames`` x ``frame_interval``, Kinetics;
    ``"uniform"``: one frame per segment, SSv2), shorter side to ``short_side``, random resized crop to
    ``img_size``, flip (``hflip=0`` for SSv2, whose classes name directions), optional RandAugment
    (``rand_augment={"num_ops": 4, "magnitude": 7}`` for SSv2, see :func:`rand_augment_ops`), ImageNet
    normalisation, random erasing with probability ``re_prob`` (one box for all frames). Every random
    choice is drawn once per clip. Validation: the centred clip, shorter side to ``eval_short_side or
    short_side``, the central square. Test (:meth:`test_dataloader`, on ``val_shards``): ``test_clips`` x
    ``test_crops`` views, shorter side to ``eval_short_side or img_size``. ``shards=None`` makes an
    evaluation-only module; class names come from ``classes.json`` next to the shards.
    """

    def __init__(
        self,
        shards: str | Sequence[str] | None = None,
        val_shards: str | Sequence[str] | None = None,
        batch_size: int = 8,
        num_workers: int = 4,
        epoch_size: int = 240_436,
        shuffle_buffer: int = 200,
        seed: int = 0,
        num_classes: int | None = None,
        num_frames: int = 32,
        sampling: str = "stride",
        frame_interval: int = 2,
        img_size: int = 224,
        short_side: int = 256,
        crop_scale: Sequence[float] = (0.08, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        rand_augment: Mapping[str, float] | None = None,
        re_prob: float = 0.0,
        eval_short_side: int | None = None,
        test_clips: int = 4,
        test_crops: int = 3,
    ) -> None:
        sampler = ClipSampler(sampling, num_frames, frame_interval)  # validates its arguments
        if test_clips < 1:
            raise ValueError(f"test_clips must be at least 1, got {test_clips}")
        if sampling == "uniform" and test_clips != 1:
            raise ValueError(f"uniform sampling has one test clip (segment midpoints), got test_clips={test_clips}")
        if img_size <= 0 or short_side <= 0:
            raise ValueError(f"img_size and short_side must be positive, got {img_size} and {short_side}")
        if (eval_short_side or short_side) < img_size:
            raise ValueError(f"evaluation short side {eval_short_side or short_side} is below img_size {img_size}")
        if not (0 <= hflip <= 1 and 0 <= re_prob <= 1):
            raise ValueError(f"hflip and re_prob are probabilities, got {hflip} and {re_prob}")
        if test_crops not in (1, 3):
            raise ValueError(f"test_crops must be 1 (centre) or 3 (along the long side), got {test_crops}")
        super().__init__(shards, val_shards, batch_size, num_workers, epoch_size, shuffle_buffer, seed)
        self.sampler = sampler
        train = [
            short_side_resize(short_side),
            random_resized_crop(img_size, crop_scale, crop_ratio),
            A.HorizontalFlip(p=hflip),
        ]
        if rand_augment is not None:
            train.append(_rand_augment(rand_augment))
        self.train_transform = ClipTransform(train, num_frames)
        self.erasing = RandomErasing(probability=re_prob, mode="const", device="cpu")
        self.val_resize = ClipTransform([short_side_resize(eval_short_side or short_side)], num_frames)
        self.test_resize = ClipTransform([short_side_resize(eval_short_side or img_size)], num_frames)
        self.img_size = img_size
        self.test_clips = test_clips
        self.test_crops = test_crops
        self.read_labels(num_classes)

    def decoder(self, counter: SkipCounter, train: bool) -> ClipStage:
        if train:
            return TrainClips(counter, self.sampler, self.train_transform, self.erasing)
        return EvalClips(
            counter, self.sampler, self.val_resize, self.img_size, clips=1, crops=1, single_view=True
        )

    def test_dataloader(self) -> wds.WebLoader:
        """Every test view of each video of ``val_shards``, read once: ``video`` is ``(B, V, 3, T, H, W)``."""
        if self.val_urls is None:
            raise ValueError(f"{type(self).__name__} has no val_shards to test on; pass val_shards=")
        views = dict(img_size=self.img_size, clips=self.test_clips, crops=self.test_crops)
        return self.read_once(partial(EvalClips, sampler=self.sampler, resize=self.test_resize, **views))


def short_side_resize(short_side: int) -> A.SmallestMaxSize:
    return A.SmallestMaxSize(max_size=short_side, interpolation=cv2.INTER_LINEAR)


def _rand_augment(options: Mapping[str, float]) -> A.SomeOf:
    if set(options) != {"num_ops", "magnitude"}:
        raise ValueError(f"rand_augment takes num_ops and magnitude, got {dict(options)}")
    num_ops, magnitude = int(options["num_ops"]), float(options["magnitude"])
    if num_ops < 1 or not 0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(
            f"rand_augment needs num_ops >= 1 and magnitude in [0, {MAX_MAGNITUDE}], got {dict(options)}"
        )
    return A.SomeOf(rand_augment_ops(magnitude), n=num_ops, p=1)
