"""``python -m swinssl.bench video``: the quick run end to end, through the real CLI."""

import re

import pytest

from conftest import quick_bench

pytest.importorskip("skimage")


def test_video_quick_prints_versions_and_the_table_and_writes_json(tmp_path):
    printed, record = quick_bench("video", tmp_path)
    assert re.search(r"^decoders: PyAV \d+\.\d+.*, libavcodec \d+\.\d+\.\d+", printed, re.M)

    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| video | GOP |"))
    rows = lines[header + 2 : header + 6]
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| 340x256", "default (250)"], ["| 340x256", "16"], ["| 426x320", "default (250)"], ["| 426x320", "16"],
    ]  # fmt: skip
    for row in rows:
        clips_per_s = float(row.rstrip(" |").rsplit("| ", 1)[1])
        assert clips_per_s > 0
    assert "command: python -m swinssl.bench video --quick --json" in printed

    assert record["versions"]["PyAV"] and record["config"]["clips"] == 2
    assert [(r["width"], r["height"], r["gop"]) for r in record["rows"]] == [
        (340, 256, None), (340, 256, 16), (426, 320, None), (426, 320, 16),
    ]  # fmt: skip
    for row in record["rows"]:
        assert row["ms_per_clip"] == pytest.approx(row["decode_ms"] + row["augment_ms"], abs=0.2)
        assert row["clips_per_s"] == pytest.approx(1000 / row["ms_per_clip"], rel=0.01)
        assert row["keyframes_per_video"] >= 1 and row["kbit_per_s"] > 0
