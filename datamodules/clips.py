"""Which frames make a clip, and decoding only those: the official Video Swin clip sampling (Kinetics strides,
Something-Something segments) on encoded videos held in memory, decoded with PyAV."""

from __future__ import annotations

import io
from collections.abc import Callable

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from .views import SAMPLINGS

VIDEO_KEYS = ("mp4", "webm", "avi", "mkv")
# A loader worker is one process meant for one core; codec threads would oversubscribe the machine.
DECODE_THREADS = 1


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


def video_bytes(sample: dict) -> bytes:
    """The sample's encoded video (the first of ``VIDEO_KEYS`` present)."""
    key = next((k for k in VIDEO_KEYS if k in sample), None)
    if key is None:
        raise KeyError(f"no video ({'|'.join(VIDEO_KEYS)}) among keys {sorted(sample)}")
    return sample[key]


def read_frames(data: bytes, indices_for: Callable[[int], np.ndarray]) -> np.ndarray:
    """RGB frames ``indices_for(length)`` of an encoded video: uint8 ``(*indices.shape, H, W, 3)``.

    The packets are demuxed once (no decoding): their sorted timestamps give the frame count and where
    every frame is, exactly, whatever the container metadata says (AVI's x264 timestamps start at 1, MKV
    and WebM store no count) and at any frame rate. The decoder is then fed those packets from the
    keyframe before the first needed frame and stops once every needed frame is out. A frame no clip needs
    that no other frame references (most B-frames of H.264) is discarded before it is decoded (should that
    lose a needed frame, as a packet holding two frames can, the run is decoded again in full), and only
    the needed frames are converted to RGB, all by one converter (``to_ndarray`` on each frame would set
    up a new swscale context per frame). The pixels are those of a full decode, bit for bit. Both loops
    run over the finite bytes in memory, so a broken file ends in an exception (a skipped sample), never
    in a hang; a needed frame that does not decode raises too.
    """
    with av.open(io.BytesIO(data)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        codec = stream.codec_context
        codec.thread_count = DECODE_THREADS
        packets = [p for p in container.demux(stream) if p.pts is not None and p.size]  # in decode order
        if not packets:
            raise ValueError("the video stream has no frames")
        timestamps = np.sort([p.pts for p in packets])
        shown_at = np.searchsorted(timestamps, [p.pts for p in packets], side="right") - 1
        indices = np.asarray(indices_for(len(timestamps)))
        needed = np.zeros(len(timestamps), bool)
        needed[indices.ravel()] = True
        first = int(indices.min())
        start = max((i for i, p in enumerate(packets) if p.is_keyframe and shown_at[i] <= first), default=0)
        converter = VideoReformatter()
        frames: dict[int, np.ndarray] = {}

        def keep(decoded: list[av.VideoFrame]) -> None:
            for frame in decoded:
                if frame.pts is None:
                    raise ValueError("decoded a frame without a timestamp")
                index = int(np.searchsorted(timestamps, frame.pts, side="right")) - 1
                if needed[index]:
                    frames[index] = converter.reformat(frame, format="rgb24", threads=DECODE_THREADS).to_ndarray()

        def decode(skip: bool) -> None:
            for packet, index in zip(packets[start:], shown_at[start:]):
                codec.skip_frame = "NONREF" if skip and not needed[index] else "DEFAULT"
                keep(codec.decode(packet))
                if len(frames) == count:
                    return
            codec.skip_frame = "DEFAULT"
            keep(codec.decode(None))  # the frames the decoder still holds back for reordering

        count = int(needed.sum())
        decode(skip=True)
        if len(frames) < count:  # a skipped packet held a needed frame too (packed B-frames in old AVIs): again
            codec.flush_buffers()
            decode(skip=False)
    missing = set(np.flatnonzero(needed).tolist()) - frames.keys()
    if missing:
        raise ValueError(f"frames {sorted(missing)[:4]} of {len(timestamps)} did not decode")
    return np.stack([frames[i] for i in indices.ravel()]).reshape(*indices.shape, *frames[first].shape)
