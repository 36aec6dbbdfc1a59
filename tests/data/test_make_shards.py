"""make_shards end to end (the CLI in a subprocess) and the cached demo shards."""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from conftest import make_shards_cli, read_back
from swinssl import __version__, demo_data, make_shards
from swinssl.datamodules import resolve_shards, shard_sets
from swinssl.make_shards import main, write_folder_shards


@pytest.fixture
def image_folder(tmp_path):
    """``cat/`` and ``dog/`` with 12 small noise images (jpg, JPEG, png, webp) and one corrupt file."""
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    formats = [("jpg", "JPEG"), ("JPEG", "JPEG"), ("png", "PNG"), ("webp", "WEBP")]
    for i in range(12):
        folder = src / ("cat" if i < 5 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        ext, fmt = formats[i % 4]
        pixels = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img.{i}.{ext}", format=fmt)  # a dot inside the name, too
    (src / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (src / "dog" / "notes.txt").write_text("not an image, not counted")
    return src


def test_cli_writes_labeled_shards_with_every_image_once(image_folder, tmp_path):
    out = tmp_path / "shards"
    result = make_shards_cli(image_folder, out, "--maxcount", 5)
    assert result.returncode == 0, result.stderr
    assert "wrote 12 samples in 3 shards; skipped 1 unreadable" in result.stdout
    assert "dog/broken.jpg" in result.stdout
    pattern = f"{out}/train-{{000000..000002}}.tar"
    assert f"shards: {pattern}" in result.stdout
    assert f"train with: data.shards={out}" in result.stdout
    manifest = json.loads((out / "train.manifest.json").read_text())
    assert manifest["classes"] == ["cat", "dog"] and manifest["samples"] == 12 and manifest["kind"] == "image"
    assert manifest["shards"] == [f"train-00000{i}.tar" for i in range(3)] and manifest["skipped"] == ["dog/broken.jpg"]
    assert manifest["source"] == str(image_folder.resolve()) and manifest["tool"] == f"swinssl {__version__} make_shards"
    assert not (out / "classes.json").exists()

    samples = read_back(pattern)
    paths = Counter(json.loads(s["json"])["path"] for s in samples)
    expected = {p.relative_to(image_folder).as_posix() for p in image_folder.rglob("img.*")}
    assert set(paths) == expected and set(paths.values()) == {1}
    assert len({s["__key__"] for s in samples}) == 12
    for sample in samples:
        path = json.loads(sample["json"])["path"]
        (ext,) = set(sample) & {"jpg", "png", "webp"}
        assert ext == path.rsplit(".", 1)[1].lower().replace("jpeg", "jpg")
        assert sample[ext] == (image_folder / path).read_bytes()  # stored as is, not re-encoded
        assert int(sample["cls"]) == ["cat", "dog"].index(path.split("/")[0])
    labels_in_first_shard = {int(s["cls"]) for s in samples if s["__url__"].endswith("000000.tar")}
    assert labels_in_first_shard == {0, 1}  # shuffled, so shards mix classes


def test_images_without_class_folders_are_unlabeled(tmp_path):
    src = tmp_path / "flat"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(src / f"{i}.png")
    summary = write_folder_shards(src, tmp_path / "out", prefix="val", shuffle=False)
    assert (summary.samples, summary.shards, summary.skipped) == (3, 1, [])
    assert summary.pattern == f"{tmp_path}/out/val-000000.tar"
    samples = read_back(summary.pattern)
    assert [json.loads(s["json"])["path"] for s in samples] == ["0.png", "1.png", "2.png"]
    assert not any("cls" in s for s in samples)
    assert shard_sets(tmp_path / "out")["val"].classes is None
    assert resolve_shards(str(tmp_path / "out")).labeled is False


def test_cli_missing_source_exits_2_with_one_line(tmp_path):
    result = make_shards_cli(tmp_path / "nowhere", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(tmp_path / "nowhere") in result.stderr


def test_source_without_images_exits_2_with_one_line(tmp_path, capsys):
    """In process, to spare a second interpreter start; the path to SystemExit is the same."""
    src = tmp_path / "src"
    (src / "empty_class").mkdir(parents=True)
    (src / "readme.txt").write_text("no images")
    with pytest.raises(SystemExit) as exit_info:
        main([str(src), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no images" in err and str(src) in err


def test_refuses_to_mix_layouts_or_overwrite_shards(tmp_path, image_folder):
    Image.new("RGB", (8, 8)).save(image_folder / "loose.png")
    with pytest.raises(ValueError, match="mixes class folders with loose images"):
        write_folder_shards(image_folder, tmp_path / "out")
    (image_folder / "loose.png").unlink()
    write_folder_shards(image_folder, tmp_path / "out")
    with pytest.raises(FileExistsError, match="already holds the shard set 'train'"):
        write_folder_shards(image_folder, tmp_path / "out")
    with pytest.raises(ValueError, match="is not a set name"):
        write_folder_shards(image_folder, tmp_path / "out", prefix="a/b")


def test_a_truncated_jpeg_is_skipped_by_make_shards_and_named_by_its_path(tmp_path):
    """PIL's verify() passed a truncated JPEG (it does not decode), which then failed at every epoch."""
    src = tmp_path / "src" / "cat"
    src.mkdir(parents=True)
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(src / "whole.jpg", quality=95)
    data = (src / "whole.jpg").read_bytes()
    (src / "truncated.jpg").write_bytes(data[: len(data) // 2])
    Image.open(src / "truncated.jpg").verify()  # the old check: passes
    summary = write_folder_shards(tmp_path / "src", tmp_path / "out")
    assert summary.samples == 1 and summary.skipped == ["cat/truncated.jpg"]


def test_a_second_set_with_other_classes_is_refused_and_classes_are_never_overwritten(tmp_path, image_folder):
    """Today's main rewrote classes.json: the first set's labels then meant other classes."""
    out = tmp_path / "out"
    write_folder_shards(image_folder, out)
    other = tmp_path / "other"
    for name in ("science", "zebra"):
        (other / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(other / name / "0.png")
    result = make_shards_cli(other, out, "--prefix", "val")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "the set 'train' already in" in result.stderr and "(cat, dog) than this one (science, zebra)" in result.stderr
    assert list(shard_sets(out)) == ["train"] and not list(out.glob("val-*"))
    # the same classes are welcome, and an unlabeled set too
    write_folder_shards(image_folder, out, prefix="more")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "0.png")
    write_folder_shards(flat, out, prefix="unlabeled")
    summary = write_folder_shards(other, out, prefix="val", allow_other_classes=True)
    assert summary.sets == ["more", "train", "unlabeled", "val"]
    assert shard_sets(out)["train"].classes == ["cat", "dog"] and shard_sets(out)["val"].classes == ["science", "zebra"]


def test_a_folder_of_several_sets_needs_the_set_named(tmp_path, image_folder):
    """Today's main read train-*.tar and val-*.tar together: validation leaked into training."""
    out = tmp_path / "out"
    write_folder_shards(image_folder, out, maxcount=5)
    result = make_shards_cli(image_folder, out, "--prefix", "val")
    assert result.returncode == 0, result.stderr
    assert f"train with: data.shards={out}:val" in result.stdout
    with pytest.raises(ValueError, match=rf"{out} holds 2 shard sets \(train, val\); name the one to read: "
                                         rf"{out}:train or {out}:val"):
        resolve_shards(str(out))
    train, val = resolve_shards(f"{out}:train"), resolve_shards(f"{out}:val")
    assert [url.rsplit("/", 1)[1] for url in train.urls] == [f"train-00000{i}.tar" for i in range(3)]
    assert [url.rsplit("/", 1)[1] for url in val.urls] == ["val-000000.tar"]
    assert (train.name, train.samples, train.classes) == ("out:train", 12, ["cat", "dog"])
    with pytest.raises(ValueError, match="has no shard set 'vall'; its sets: train, val"):
        resolve_shards(f"{out}:vall")
    part = resolve_shards(f"{out}/train-00000[01].tar")
    assert part.name == "out:train[2 of 3 shards]" and part.samples is None and part.classes == ["cat", "dog"]


def test_demo_shards_built_once_then_reused(tmp_path, monkeypatch):
    pytest.importorskip("skimage")
    monkeypatch.setenv("SWINSSL_CACHE", str(tmp_path / "cache"))
    pattern = demo_data.demo_shards()
    root = tmp_path / "cache" / demo_data.CACHE_NAME
    assert pattern == str(root)
    assert shard_sets(root)["demo"].classes == ["color", "grayscale"]
    assert shard_sets(root)["demo"].shards == [f"demo-00000{i}.tar" for i in range(4)]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [demo_data.CACHE_NAME]  # no temp dir left

    samples = read_back(pattern)
    assert len(samples) == 18
    for sample in samples:
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert image.format == "JPEG" and image.mode == "RGB"
    labels = Counter(int(s["cls"]) for s in samples)
    assert labels == {0: 9, 1: 9}  # 9 color photos, 9 grayscale ones
    camera = next(s for s in samples if json.loads(s["json"])["path"] == "camera.jpg")
    assert int(camera["cls"]) == 1

    def no_rebuild(*_args, **_kwargs):
        raise AssertionError("demo shards rebuilt although cached")

    monkeypatch.setattr(make_shards, "write_shards", no_rebuild)
    assert demo_data.demo_shards() == pattern
