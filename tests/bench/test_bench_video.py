"""``python -m swinssl.bench video``: the quick run end to end, through the real CLI, with whichever peers
(decord, torchcodec) this machine has: a missing or unloadable peer is a one-line note, not a failure."""

import re

import numpy as np
import pytest

from conftest import quick_bench

from swinssl.demo_videos import encode_video

pytest.importorskip("skimage")

KINDS = [
    ("340x256", "h264", None, "stride"), ("340x256", "h264", 16, "stride"),
    ("426x320", "h264", None, "stride"), ("426x320", "h264", 16, "stride"),
    ("426x320 -> 340x256 (make_shards --short-side 256 --gop 16)", "h264", 16, "stride"),
    ("426x240 webm", "vp9", None, "uniform"),
]  # fmt: skip


def test_video_quick_compares_decoders_on_the_same_clips_and_writes_json(tmp_path):
    printed, record = quick_bench("video", tmp_path)
    versions = r"^decoders: PyAV \d+\.\d+.*, libavcodec \d+\.\d+\.\d+, decord [^,]+, torchcodec [^,]+"
    assert re.search(versions, printed, re.MULTILINE)
    first_kind = [row for row in record["rows"] if row["video"] == "340x256" and not row["gop"]]
    decoders = [row["decoder"] for row in first_kind]
    assert decoders[:2] == ["swinssl", "pyav"]
    skipped = {name for name in ("decord", "torchcodec") if name not in decoders}
    assert len(record["notes"]) == len(skipped)
    for name, note in zip(sorted(skipped), sorted(record["notes"])):
        assert note.startswith(f"{name}") and "row skipped" in note and "\n" not in note
        assert note in printed

    rows = record["rows"]
    assert [(r["video"], r["codec"], r["gop"], r["sampling"], r["decoder"]) for r in rows] == [
        (*kind, decoder) for kind in KINDS for decoder in decoders
    ]
    for row in rows:
        assert row["ms_per_clip"] == pytest.approx(row["decode_ms"] + row["augment_ms"], abs=0.2)
        assert row["clips_per_s"] == pytest.approx(1000 / row["ms_per_clip"], rel=0.01)
        assert row["keyframes_per_video"] >= 1 and row["kbit_per_s"] > 0
        assert row["max_diff"] <= 2  # every peer decodes the same frames (up to colour-conversion rounding)
    for kind in KINDS:
        group = [row for row in rows if row["video"] == kind[0] and row["gop"] == kind[2]]
        peers = [row["clips_per_s"] for row in group if row["decoder"] != "swinssl"]
        for row in group:
            expected = round(row["clips_per_s"] / max(peers), 2) if peers else None
            assert row["vs_best_peer"] == pytest.approx(expected, abs=0.011) if peers else row["vs_best_peer"] is None
        profile = group[0]["profile"]
        assert profile["codec_ms"] > 0 and profile["rgb_ms"] > 0
        assert profile["codec_ms"] + profile["rgb_ms"] < group[0]["decode_ms"] * 1.5  # a split of the decode time

    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| video | GOP |"))
    table = lines[header + 2 : header + 2 + len(rows)]
    assert [line.split(" | ")[4] for line in table] == [row["decoder"] for row in rows]
    pretraining = record["pretraining_rows"]  # the masked pretraining pipeline, on the Kinetics-like kinds
    assert [(row["video"], row["gop"]) for row in pretraining] == [(k[0], k[2]) for k in KINDS if k[3] == "stride"]
    for row in pretraining:
        assert row["recipe"] == "simmim_video_v2_b" and row["decode_ms"] > 0 and row["augment_ms"] > 0
        assert row["clips_per_s"] == pytest.approx(1000 / row["ms_per_clip"], rel=0.01)
    assert "masked video pretraining pipeline (recipe simmim_video_v2_b" in printed
    assert "command: python -m swinssl.bench video --quick --json" in printed
    assert record["versions"]["PyAV"] and record["config"]["clips"] == 2


def test_a_peer_that_is_missing_or_cannot_load_ffmpeg_is_one_note(monkeypatch):
    from swinssl.bench import video

    def not_installed(*_args):
        raise ImportError("No module named 'decord'")

    def no_ffmpeg(*_args):
        raise RuntimeError("Could not load libtorchcodec.\n[start of traceback]\nFFmpeg version 8:\nOSError: "
                           "libavutil.so.60: cannot open shared object file\nFFmpeg version 7:\nOSError: "
                           "libavutil.so.59: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(video, "decord_frames", not_installed)
    monkeypatch.setattr(video, "torchcodec_frames", no_ffmpeg)
    decoders, notes = video.available_decoders(list(video.DECODERS), encode_video(np.zeros((2, 64, 64, 3), np.uint8)))
    assert list(decoders) == ["swinssl", "pyav"]
    assert notes[0] == "decord: row skipped, not installed (pip install 'swinssl[bench]')"
    assert re.fullmatch(r"torchcodec( \S+)?: row skipped, cannot load FFmpeg's shared libraries \(no libavutil\.so\.59 "
                        r"to \.60; Debian's `ffmpeg` package installs them\)", notes[1])


def test_rows_without_peers_have_no_ratio():
    from concurrent.futures import ThreadPoolExecutor

    from swinssl.bench.video import VideoBenchConfig, VideoKind, time_kind

    frames = np.random.default_rng(0).integers(0, 256, (20, 48, 64, 3), dtype=np.uint8)
    kind = VideoKind("64x48", 64, 48, "h264", 8, "stride", 0.8, [encode_video(frames, gop=8)])
    cfg = VideoBenchConfig(clips=3, num_frames=4, img_size=32, short_side=40)
    with ThreadPoolExecutor(1) as worker:  # a thread stands in for the decoder's worker process
        (row,) = time_kind(kind, {"swinssl": worker}, cfg, lambda _text: None)
    assert row["decoder"] == "swinssl" and row["vs_best_peer"] is None and row["max_diff"] == 0
    assert row["keyframes_per_video"] == 3 and row["decode_ms"] > 0 and row["profile"]["codec_ms"] > 0
