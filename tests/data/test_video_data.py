"""The video DataModule: frame sampling, decoding with seeks, one augmentation draw per clip, batches."""

from __future__ import annotations

import io
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
import webdataset as wds

from conftest import audio_only_mp4, decode_all

from swinssl.datamodules import IMAGENET_MEAN, IMAGENET_STD, SkipCounter, VideoShardDataModule
from swinssl.datamodules.clip_augment import crop_views
from swinssl.datamodules.clips import ClipSampler, read_frames
from swinssl.demo_videos import encode_video

S = 32  # output size
SMALL = dict(num_frames=4, img_size=S, short_side=40, shuffle_buffer=8, num_workers=0)


def write_tar(path, samples: list[dict]) -> str:
    with wds.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)
    return str(path)


def noise_frames(count: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def flat_frames(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Frame ``t`` is uniformly grey ``8 t``: its brightness names it after decoding."""
    levels = 8 * np.arange(count, dtype=np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (count, height, width, 3)).copy()


def grey_level(views: torch.Tensor) -> torch.Tensor:
    """Mean 0-255 level of each frame of normalised ``(..., 3, T, H, W)`` views: ``(..., T)``."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    return ((views * std + mean) * 255).mean((-4, -2, -1))


# -------------------------------------------------------------------------------------------- sampling


def test_stride_sampling_train_val_and_test_offsets():
    sampler = ClipSampler("stride", num_frames=8, frame_interval=2)
    # 100 frames, span 16: starts may be 0..84; val centres one clip at int(85 / 2) = 42;
    # test spreads 4 clips at int(85 / 4 * (i + 0.5)) = 10, 31, 53, 74.
    np.testing.assert_array_equal(sampler.spread(100, 1), [np.arange(42, 58, 2)])
    np.testing.assert_array_equal(sampler.spread(100, 4), [np.arange(s, s + 16, 2) for s in (10, 31, 53, 74)])
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(2000):
        clip = sampler.train(100, rng)
        np.testing.assert_array_equal(clip, clip[0] + np.arange(0, 16, 2))
        starts.add(int(clip[0]))
    assert starts == set(range(85))


def test_stride_sampling_wraps_a_short_video():
    sampler = ClipSampler("stride", num_frames=8, frame_interval=2)
    wrapped = [0, 2, 4, 6, 8, 0, 2, 4]  # 10 frames < span 16: start 0, indices modulo 10
    np.testing.assert_array_equal(sampler.train(10, np.random.default_rng(0)), wrapped)
    np.testing.assert_array_equal(sampler.spread(10, 2), [wrapped, wrapped])
    np.testing.assert_array_equal(sampler.spread(1, 1), [[0] * 8])


def test_uniform_sampling_takes_one_frame_per_segment():
    sampler = ClipSampler("uniform", num_frames=4, frame_interval=2)  # interval ignored
    # 10 frames: segments of 9/4 = 2.25 frames, bounds round(0, 2.25, 4.5, 6.75, 9) = 0, 2, 4, 7, 9
    # (NumPy rounds halves to even); midpoints (lo + hi) // 2.
    np.testing.assert_array_equal(sampler.spread(10, 1), [[1, 3, 5, 8]])
    rng = np.random.default_rng(0)
    draws = np.stack([sampler.train(10, rng) for _ in range(500)])
    for column, (low, high) in enumerate([(0, 2), (2, 4), (4, 7), (7, 9)]):
        assert set(draws[:, column].tolist()) == set(range(low, high + 1))
    # Fewer frames than segments: bounds round(0, 0.5, 1, 1.5, 2) = 0, 0, 1, 2, 2
    np.testing.assert_array_equal(sampler.spread(3, 1), [[0, 0, 1, 2]])


def test_crop_views_along_the_long_side():
    frames = np.arange(40 * 60).reshape(1, 40, 60, 1).repeat(3, -1)
    left, centre, right = crop_views(frames, 40, 3)
    assert [view[0, 0, 0, 0] for view in (left, centre, right)] == [0, 10, 20]
    (tall_centre,) = crop_views(frames.transpose(0, 2, 1, 3), 20, 1)  # 60 x 40: rows 20.., cols 10..
    assert tall_centre.shape == (1, 20, 20, 3) and tall_centre[0, 0, 0, 0] == frames[0, 10, 20, 0]


# -------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    "codec, container", [("libx264", "mp4"), ("libx264", "mkv"), ("libvpx-vp9", "webm"), ("libx264", "avi")]
)
def test_seeking_returns_exactly_the_frames_of_a_full_decode(codec, container):
    data = encode_video(noise_frames(40), codec=codec, gop=8, container=container)
    reference = decode_all(data)
    assert len(reference) == 40
    for indices in ([33, 35, 37], [9, 8, 2], [[20, 39], [0, 17]], [39]):
        frames = read_frames(data, lambda length: np.array(indices))
        np.testing.assert_array_equal(frames, reference[np.array(indices)])


def moving_frames(count: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """A textured ramp sliding 2 px a frame, with mild noise: motion x264 codes with B-frames."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (height, width + 2 * count, 3)).astype(float)
    texture = (texture + np.roll(texture, 1, 1) + np.roll(texture, 1, 0)) / 3
    frames = np.stack([texture[:, 2 * t : 2 * t + width] for t in range(count)])
    return np.clip(frames + rng.normal(0, 4, frames.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "codec, container, gop",
    [("libx264", "mp4", None), ("libx264", "mp4", 16), ("libx264", "mkv", 16), ("libvpx-vp9", "webm", None)],
)
def test_clips_of_every_sampling_are_the_frames_of_a_full_decode(codec, container, gop):
    """The clip path against PyAV's plain full decode (each frame converted on its own): identical pixels for
    Kinetics strides (training draws, 4 test clips, a short video replayed), SSv2 segments, with B-frames."""
    data = encode_video(moving_frames(70), codec=codec, gop=gop, container=container)
    reference = decode_all(data)
    assert len(reference) == 70
    rng = np.random.default_rng(0)
    stride, uniform = ClipSampler("stride", 8, 4), ClipSampler("uniform", 16, 1)
    wrapped = ClipSampler("stride", 24, 4)  # span 96 > 70 frames: indices wrap
    draws = [stride.train(70, rng) for _ in range(3)] + [stride.spread(70, 4), uniform.train(70, rng)]
    draws += [uniform.spread(70, 1), wrapped.train(70, rng)]
    for indices in draws:
        frames = read_frames(data, lambda length, indices=indices: indices)
        np.testing.assert_array_equal(frames, reference[indices])


class RecordingDecoder:
    """Wraps a codec context: which packets it was fed, with which skip setting, and what came out. With ``packed``,
    until it is flushed, it loses what the packet after a skipped one decodes to, as when the skipped packet
    also carried that frame (packed B-frames)."""

    def __init__(self, codec, packed: bool = False):
        object.__setattr__(self, "codec", codec)
        object.__setattr__(self, "fed", [])
        object.__setattr__(self, "packed", packed)

    def __getattr__(self, name):
        return getattr(self.codec, name)

    def __setattr__(self, name, value):
        setattr(self.codec, name, value)

    def flush_buffers(self):
        object.__setattr__(self, "packed", False)
        self.fed.append("flush")
        self.codec.flush_buffers()

    def decode(self, packet):
        frames = self.codec.decode(packet)
        after_skip = self.fed and self.fed[-1] != "flush" and self.fed[-1][1] == "NONREF"
        if self.packed and after_skip and self.codec.skip_frame == "DEFAULT":
            frames = []
        self.fed.append((None if packet is None else packet.pts, self.codec.skip_frame, [f.pts for f in frames]))
        return frames


def recording_open(monkeypatch, packed: bool = False) -> list[RecordingDecoder]:
    """Make ``av.open`` hand out containers whose video decoder records; the decoders, as they are made."""
    real_open, decoders = av.open, []

    class Recording:
        def __init__(self, *args, **kwargs):
            self.container = real_open(*args, **kwargs)
            self.stream = self.container.streams.video[0]
            decoders.append(RecordingDecoder(self.stream.codec_context, packed))
            self.streams = SimpleNamespace(video=[SimpleNamespace(codec_context=decoders[-1])])

        def demux(self, _stream):
            return self.container.demux(self.stream)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.container.close()

    monkeypatch.setattr(av, "open", Recording)
    return decoders


def test_decoding_starts_at_the_keyframe_before_the_clip_and_skips_unneeded_b_frames(monkeypatch):
    data = encode_video(moving_frames(48), gop=16)
    with av.open(io.BytesIO(data)) as container:
        decoded = list(container.decode(video=0))
    timestamps = [frame.pts for frame in decoded]
    keyframes = [i for i, frame in enumerate(decoded) if frame.key_frame]
    assert keyframes == [0, 16, 32]
    types = [str(frame.pict_type) for frame in decoded]
    assert types.count("3") > 10  # B-frames (PictureType.B)
    decoders = recording_open(monkeypatch)
    wanted = [20, 22, 24, 26]
    read_frames(data, lambda length: np.array(wanted))
    fed = decoders[0].fed
    assert fed[0][0] == timestamps[16]  # the keyframe before frame 20, not frame 0
    out = [timestamps.index(pts) for *_, frames in fed for pts in frames]
    assert set(wanted) <= set(out) and max(out) < 32  # stopped before the next GOP
    # Frames come out in presentation order, so a frame fed before the last one out that never came out was
    # discarded undecoded: some were, none of them needed, and those were fed to be decoded.
    lost = {timestamps.index(pts) for pts, *_ in fed[:-1] if pts < timestamps[max(out)]} - set(out)
    assert lost and not lost & set(wanted)
    assert all(skip == "DEFAULT" for pts, skip, _ in fed[:-1] if timestamps.index(pts) in wanted)
    assert "flush" not in fed  # one pass


def test_a_needed_frame_lost_with_a_skipped_packet_is_decoded_again_in_full(monkeypatch):
    data = encode_video(moving_frames(48), gop=16)
    reference = decode_all(data)
    decoders = recording_open(monkeypatch, packed=True)
    wanted = [20, 22, 24, 26]
    np.testing.assert_array_equal(read_frames(data, lambda length: np.array(wanted)), reference[wanted])
    fed = decoders[0].fed
    again = fed[fed.index("flush") + 1 :]
    assert again[0][0] == fed[0][0] and all(skip == "DEFAULT" for _, skip, _ in again)


# ---------------------------------------------------------------------------------------- augmentation


def test_one_random_draw_per_clip():
    """A static clip stays static through crop, flip and RandAugment: every frame got the same draw."""
    dm = VideoShardDataModule(rand_augment={"num_ops": 3, "magnitude": 15}, **SMALL)
    stage = dm.decoder(SkipCounter(), train=True)
    stage.reseed(0)
    static = np.repeat(noise_frames(1), 4, axis=0)
    clips = [stage.views(static.copy()) for _ in range(6)]
    for clip in clips:
        assert clip.shape == (3, 4, S, S) and clip.dtype == torch.float32
        assert all(torch.equal(clip[:, 0], clip[:, t]) for t in range(1, 4))
    assert len({clip.sum().item() for clip in clips}) == 6  # while the draws differ from clip to clip


def test_random_erasing_puts_the_same_box_on_every_frame():
    dm = VideoShardDataModule(re_prob=1.0, **SMALL)
    stage = dm.decoder(SkipCounter(), train=True)
    stage.reseed(0)
    for _ in range(4):
        clip = stage.views(noise_frames(4))
        erased = (clip == 0).all(0)  # (T, H, W): const mode fills zeros, the mean colour
        assert erased[0].any() and not erased[0].all()
        assert all(torch.equal(erased[0], erased[t]) for t in range(1, 4))


# ------------------------------------------------------------------------------------ module and batches


@pytest.fixture(scope="module")
def flat_shard(tmp_path_factory):
    """Six 20-frame videos (frame t grey 8 t), labels 0, 1, 0, 1, ..."""
    data = encode_video(flat_frames(20), gop=8)
    samples = [{"__key__": f"v{i}", "mp4": data, "cls": i % 2} for i in range(6)]
    return write_tar(tmp_path_factory.mktemp("flat") / "flat.tar", samples)


def test_batches_for_train_val_and_test(flat_shard):
    dm = VideoShardDataModule(
        flat_shard, val_shards=flat_shard, batch_size=4, epoch_size=8, frame_interval=2, test_clips=2, test_crops=3, **SMALL
    )
    train = list(dm.train_dataloader())
    assert len(train) == 2
    for batch in train:
        assert set(batch) == {"video", "label", "skipped", "skipped_files"}
        assert batch["video"].shape == (4, 3, 4, S, S) and batch["video"].dtype == torch.float32
        assert batch["label"].dtype == torch.int64 and batch["skipped"].shape == ()
    val = list(dm.val_dataloader())
    assert [len(b["label"]) for b in val] == [4, 2] and val[0]["video"].shape == (4, 3, 4, S, S)
    # 20 frames, span 8: the centred clip starts at int(13 / 2) = 6, frames 6, 8, 10, 12
    torch.testing.assert_close(grey_level(val[0]["video"][0]), 8.0 * torch.tensor([6, 8, 10, 12]), atol=2, rtol=0)
    test = list(dm.test_dataloader())
    assert [b["video"].shape for b in test] == [(4, 6, 3, 4, S, S), (2, 6, 3, 4, S, S)]
    assert torch.cat([b["label"] for b in test]).tolist() == [0, 1, 0, 1, 0, 1]
    # clip-major: 3 crops of clip 0 (start int(13 / 4) = 3), then 3 of clip 1 (start int(13 * 3 / 4) = 9)
    expected = 8.0 * torch.tensor([[3, 5, 7, 9]] * 3 + [[9, 11, 13, 15]] * 3)
    torch.testing.assert_close(grey_level(test[0]["video"][0]), expected, atol=2, rtol=0)


def test_bad_samples_are_skipped_and_counted(tmp_path):
    good = encode_video(noise_frames(12), gop=4)
    samples = [{"__key__": f"s{i}", "mp4": good, "cls": 1} for i in range(8)]
    samples[1] = {"__key__": "s1", "mp4": good[: len(good) // 2], "cls": 1}  # truncated: the index is lost
    samples[3] = {"__key__": "s3", "mp4": b"", "cls": 1}
    samples[4] = {"__key__": "s4", "mp4": audio_only_mp4(), "cls": 1}
    samples[6] = {"__key__": "s6", "mp4": good}  # no label
    shard = write_tar(tmp_path / "mixed.tar", samples)
    dm = VideoShardDataModule(shard, val_shards=shard, batch_size=2, epoch_size=6, **SMALL)
    val = list(dm.val_dataloader())  # read once: the count is exact
    assert [len(b.get("label", ())) for b in val] == [2, 2, 0][: len(val)]
    assert sum(b["skipped"].item() for b in val) == 4
    train = list(dm.train_dataloader())  # resampled: training goes on with full batches
    assert len(train) == 3 and all(b["video"].shape[0] == 2 for b in train)
    assert sum(b["skipped"].item() for b in train) > 0


def test_class_names_and_an_evaluation_only_module(tmp_path, flat_shard):
    (tmp_path / "classes.json").write_text('["still", "moving"]')
    shard = write_tar(tmp_path / "x.tar", [])
    dm = VideoShardDataModule(val_shards=shard)
    assert dm.class_names == ["still", "moving"] and dm.num_classes == 2
    with pytest.raises(ValueError, match="num_classes=5 but .* has 2 classes"):
        VideoShardDataModule(val_shards=shard, num_classes=5)
    bare = VideoShardDataModule(flat_shard)
    assert bare.class_names is None and bare.num_classes is None
    with pytest.raises(ValueError, match="no training shards"):
        dm.train_dataloader()
    with pytest.raises(ValueError, match="no val_shards"):
        bare.test_dataloader()


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(sampling="random"), "sampling"),
        (dict(num_frames=0), "num_frames"),
        (dict(frame_interval=0), "frame_interval"),
        (dict(test_clips=0), "test_clips"),
        (dict(sampling="uniform"), "uniform sampling has one test clip"),
        (dict(test_crops=2), "test_crops"),
        (dict(img_size=0), "img_size"),
        (dict(img_size=300), "below img_size"),
        (dict(eval_short_side=200), "below img_size"),
        (dict(hflip=1.5), "probabilities"),
        (dict(rand_augment={"n": 2, "m": 9}), "num_ops and magnitude"),
        (dict(rand_augment={"num_ops": 2, "magnitude": 31}), r"magnitude in \[0, 30\]"),
    ],
)
def test_bad_arguments_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        VideoShardDataModule(**bad)
