"""make_shards on video folders (the CLI in a subprocess), and the cached demo video shards."""

from __future__ import annotations

import io
import json
from collections import Counter

import av
import numpy as np
import pytest
from conftest import make_shards_cli, read_back
from conftest import audio_only_mp4, decode_all

from swinssl import demo_videos, make_shards
from swinssl.datamodules import shard_sets
from swinssl.demo_videos import encode_video, write_demo_videos
from swinssl.make_shards import main, write_folder_shards

FORMATS = [("libx264", "mp4"), ("libvpx-vp9", "webm"), ("mpeg4", "avi"), ("libx264", "mkv")]


@pytest.fixture
def video_folder(tmp_path):
    """``jump/`` and ``walk/`` with 8 tiny videos in four formats, plus three unreadable ones."""
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    for i in range(8):
        folder = src / ("jump" if i < 3 else "walk")
        folder.mkdir(parents=True, exist_ok=True)
        codec, ext = FORMATS[i % 4]
        frames = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
        (folder / f"clip.{i}.{ext}").write_bytes(encode_video(frames, codec=codec, container=ext))
    (src / "walk" / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom not really a video")
    (src / "walk" / "empty.webm").write_bytes(b"")
    (src / "jump" / "sound.mp4").write_bytes(audio_only_mp4())
    (src / "jump" / "notes.txt").write_text("not a video, not counted")
    return src


def test_cli_writes_labeled_video_shards_stored_as_is(video_folder, tmp_path):
    out = tmp_path / "shards"
    result = make_shards_cli(video_folder, out, "--maxcount", 3)
    assert result.returncode == 0, result.stderr
    assert "wrote 8 samples in 3 shards; skipped 3 unreadable" in result.stdout
    for name in ("walk/garbage.mp4", "walk/empty.webm", "jump/sound.mp4"):
        assert name in result.stdout
    assert shard_sets(out)["train"].classes == ["jump", "walk"] and shard_sets(out)["train"].kind == "video"

    samples = read_back(f"{out}/train-{{000000..000002}}.tar")
    paths = Counter(json.loads(s["json"])["path"] for s in samples)
    assert set(paths) == {p.relative_to(video_folder).as_posix() for p in video_folder.rglob("clip.*")}
    assert set(paths.values()) == {1}
    for sample in samples:
        path = json.loads(sample["json"])["path"]
        (ext,) = set(sample) & {"mp4", "webm", "avi", "mkv"}
        assert ext == path.rsplit(".", 1)[1]
        assert sample[ext] == (video_folder / path).read_bytes()  # stored as is, not re-encoded
        assert int(sample["cls"]) == ["jump", "walk"].index(path.split("/")[0])


def test_videos_without_class_folders_are_unlabeled(tmp_path):
    src = tmp_path / "flat"
    src.mkdir()
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    for i in range(3):
        (src / f"{i}.mp4").write_bytes(encode_video(frames + i))
    summary = write_folder_shards(src, tmp_path / "out", "video", prefix="val", shuffle=False)
    assert (summary.samples, summary.shards, summary.skipped) == (3, 1, [])
    samples = read_back(summary.pattern)
    assert [json.loads(s["json"])["path"] for s in samples] == ["0.mp4", "1.mp4", "2.mp4"]
    assert not any("cls" in s for s in samples)


def test_a_folder_of_images_and_videos_exits_2_with_one_line(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "x.mp4").write_bytes(encode_video(np.zeros((2, 8, 8, 3), np.uint8)))
    (src / "a" / "y.png").write_bytes(b"png")
    with pytest.raises(SystemExit) as exit_info:
        main([str(src), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "both images and videos" in err


def test_demo_videos_pan_both_ways_across_the_same_photos(tmp_path):
    pytest.importorskip("skimage")
    paths = write_demo_videos(tmp_path, videos_per_class=2, num_frames=6, size=(32, 48))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == [
        "pan_left/astronaut-00.mp4", "pan_left/brick-01.mp4", "pan_right/astronaut-00.mp4", "pan_right/brick-01.mp4",
    ]  # fmt: skip
    for path in paths:
        frames = decode_all(path.read_bytes()).astype(float)
        assert frames.shape == (6, 32, 48, 3)
        # How far the content moves from one frame to the next: left (< 0) when the window pans right.
        errors = {s: np.abs(frames[1:, :, 8 + s : 40 + s] - frames[:-1, :, 8:40]).mean() for s in range(-4, 5)}
        shift = min(errors, key=errors.get)
        assert shift != 0 and (shift < 0) == (path.parent.name == "pan_right"), (path, errors)


def test_demo_video_shards_built_once_then_reused(tmp_path, monkeypatch):
    pytest.importorskip("skimage")
    monkeypatch.setenv("SWINSSL_CACHE", str(tmp_path / "cache"))
    pattern = demo_videos.demo_video_shards()
    root = tmp_path / "cache" / demo_videos.CACHE_NAME
    assert pattern == str(root)
    assert shard_sets(root)["demo"].classes == ["pan_left", "pan_right"] and len(shard_sets(root)["demo"].shards) == 4
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [demo_videos.CACHE_NAME]  # no temp dir left

    samples = read_back(pattern)
    assert Counter(int(s["cls"]) for s in samples) == {0: 8, 1: 8}
    with av.open(io.BytesIO(samples[0]["mp4"])) as container:
        stream = container.streams.video[0]
        assert (stream.frames, stream.height, stream.width) == (16, 64, 80)

    def no_rebuild(*_args, **_kwargs):
        raise AssertionError("demo video shards rebuilt although cached")

    monkeypatch.setattr(make_shards, "write_shards", no_rebuild)
    assert demo_videos.demo_video_shards() == pattern


def test_reencoding_sets_short_side_and_gop_and_keeps_every_frame(tmp_path):
    """``--short-side 32 --gop 4``: H.264 mp4 with keyframes every 4 frames, at most 32 px on the short side (a
    smaller video is not upscaled), every frame kept and still the same picture; the sample json keeps the source."""
    import cv2

    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (48, 96, 3), dtype=np.uint8), (9, 9), 3)
    wide = np.stack([np.roll(smooth, 2 * t, axis=1)[:, :64] for t in range(12)])  # 48 x 64, panning
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "wide.webm").write_bytes(encode_video(wide, codec="libvpx-vp9"))
    (src / "a" / "small.mkv").write_bytes(encode_video(wide[:5, :24, :28], container="mkv"))
    result = make_shards_cli(src, tmp_path / "out", "--short-side", 32, "--gop", 4, "--no-shuffle")
    assert result.returncode == 0, result.stderr
    samples = {json.loads(s["json"])["path"]: s for s in read_back(str(tmp_path / "out" / "train-000000.tar"))}
    assert set(samples) == {"a/wide.webm", "a/small.mkv"}
    for path, (height, width, count) in {"a/wide.webm": (32, 42, 12), "a/small.mkv": (24, 28, 5)}.items():
        data = samples[path]["mp4"]
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.name, stream.height, stream.width) == ("h264", height, width)
            keyframes = [i for i, p in enumerate(container.demux(stream)) if p.size and p.is_keyframe]
        assert keyframes == list(range(0, count, 4))
        frames = decode_all(data)
        assert len(frames) == count
    # Frame 7 re-encoded is frame 7 of the source scaled down, closer to it than to its neighbours.
    source = decode_all((src / "a" / "wide.webm").read_bytes())
    frame = decode_all(samples["a/wide.webm"]["mp4"])[7].astype(float)
    errors = [np.abs(frame - cv2.resize(source[t], (42, 32), interpolation=cv2.INTER_AREA)).mean() for t in (6, 7, 8)]
    assert errors[1] < 3.5 and errors[1] < min(errors[0], errors[2])


def test_reencoding_options_are_checked(tmp_path):
    photos, videos = tmp_path / "photos", tmp_path / "videos"
    photos.mkdir()
    videos.mkdir()
    (photos / "x.png").write_bytes(b"png")
    (videos / "v.mp4").write_bytes(encode_video(np.zeros((2, 8, 8, 3), np.uint8)))
    for src, args, message in [
        (photos, ["--gop", "16"], "re-encode videos; the source folder holds images"),
        (videos, ["--short-side", "0"], "--short-side must be at least 2, got 0"),
    ]:
        result = make_shards_cli(src, tmp_path / "out", *args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
