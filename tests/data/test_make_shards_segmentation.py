"""make_shards on image/mask pairs (the CLI in a subprocess): both layouts, bad pairs, the manifest; the demo."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from conftest import make_shards_cli, read_back, write_mask_pairs
from swinssl import make_shards
from swinssl.datamodules import resolve_shards, shard_sets
from swinssl.make_shards import main


@pytest.fixture
def ade(tmp_path):
    """An ADE20K-style folder: 5 training pairs (two of them bad, plus a mask without image and an image without
    mask) and 2 validation pairs, masks with values 0..3 (0 is "other"), and a file of the 3 class names."""
    root = tmp_path / "ADE"
    for split, count in (("training", 5), ("validation", 2)):
        write_mask_pairs(root / "images" / split, [f"ADE_{split}_{i}" for i in range(count)], labels=4,
                         mask_folder=root / "annotations" / split)
    training = root / "annotations" / "training"
    Image.fromarray(np.zeros((25, 32), np.uint8)).save(training / "ADE_training_1.png")  # one row too many
    Image.fromarray(np.full((24, 32), 9, np.uint8)).save(training / "ADE_training_2.png")  # label 9 > 3 classes
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(training / "orphan.png")
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(root / "images" / "training" / "unlabeled.jpg")
    (tmp_path / "classes.txt").write_text("wall\nsky\n\nfloor\n")
    return root


def test_ade20k_layout_pairs_are_sharded_and_bad_pairs_named_with_both_paths(ade, tmp_path, capsys):
    out = tmp_path / "shards"
    common = ("--classes", tmp_path / "classes.txt", "--reduce-zero-label")
    done = make_shards_cli(ade, out, "--split", "training", *common)
    assert done.returncode == 0, done.stderr
    assert "wrote 3 samples in 1 shards; skipped 4 bad pairs" in done.stdout
    bad = [
        "images/training/ADE_training_1.jpg + annotations/training/ADE_training_1.png: the mask is 32x25 but its "
        "image is 32x24",
        "images/training/ADE_training_2.jpg + annotations/training/ADE_training_2.png: the mask holds label 9, which "
        "is no class (0..3) and not the ignore index 255",
        "annotations/training/orphan.png: no image with the mask's name",
        "images/training/unlabeled.jpg: no mask (.png) with the image's name",
    ]
    for line in bad:
        assert f"  bad pair: {line}" in done.stdout
    manifest = json.loads((out / "train.manifest.json").read_text())
    assert sorted(manifest["skipped"]) == sorted(bad)
    assert manifest["classes"] == ["wall", "sky", "floor"] and manifest["samples"] == 3
    assert (manifest["task"], manifest["ignore_index"], manifest["reduce_zero_label"]) == ("segmentation", 255, True)

    main([str(ade), str(out), "--split", "validation", "--prefix", "val", *map(str, common)])
    assert f"train with: data.shards={out}:val" in capsys.readouterr().out
    for name in ("train", "val"):
        shards = resolve_shards(f"{out}:{name}")
        assert (shards.task, shards.ignore_index, shards.reduce_zero_label) == ("segmentation", 255, True)
        for sample in read_back(f"{out}:{name}"):
            paths = json.loads(sample["json"])
            assert set(sample) >= {"jpg", "seg.png"} and "cls" not in sample
            assert sample["jpg"] == (ade / paths["path"]).read_bytes()  # both stored as they are
            assert sample["seg.png"] == (ade / paths["mask"]).read_bytes()
            assert paths["path"].startswith(f"images/{'training' if name == 'train' else 'validation'}/")


def test_plain_folder_of_pairs_with_numbered_classes(tmp_path):
    src = tmp_path / "pairs"
    write_mask_pairs(src, ["a", "b", "c"], labels=5)
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(src / "c.png")  # a colour mask is not a label mask
    done = make_shards_cli(src, tmp_path / "out", "--num-classes", 5)
    assert done.returncode == 0, done.stderr
    assert ("c.jpg + c.png: the mask's mode is RGB; a label mask holds one 8-bit class index per pixel (grey or "
            "palette PNG), not colours") in done.stdout
    manifest = shard_sets(tmp_path / "out")["train"]
    assert (manifest.classes, manifest.samples, manifest.task, manifest.reduce_zero_label) == (
        ["0", "1", "2", "3", "4"], 2, "segmentation", False)
    assert {json.loads(s["json"])["mask"] for s in read_back(str(tmp_path / "out"))} == {"a.png", "b.png"}


def test_pair_options_and_layouts_refused_in_one_line(ade, tmp_path, capsys):
    expected = {
        (ade, "--num-classes", 3): f"{ade}/images holds the splits training, validation: shard one at a time, e.g. "
                                   "--split training --prefix train",
        (ade, "--split", "test", "--num-classes", 3): f"{ade}/images has no split 'test'; its splits: training, "
                                                      "validation",
        (ade, "--split", "training"): f"{ade} holds image/mask pairs: name their classes with --classes FILE (one "
                                      "name a line) or number them with --num-classes N",
        (ade / "images" / "training", "--classes", tmp_path / "classes.txt"):
            f"--classes is for image/mask pairs, and {ade}/images/training holds none (images/ + annotations/, or "
            "NAME.jpg beside NAME.png)",
        (ade, "--split", "training", "--num-classes", 255, "--reduce-zero-label"):
            "255 classes do not fit 8-bit masks with the ignore index 255 and 0 as 'other'",
    }
    for args, line in expected.items():  # in process: the CLI's own path, without a process start each
        with pytest.raises(SystemExit) as exit:
            main([str(args[0]), str(tmp_path / "out"), *map(str, args[1:])])
        assert (exit.value.code, capsys.readouterr().err.strip().splitlines()) == (2, [f"make_shards: error: {line}"])
    assert not (tmp_path / "out").exists()


def test_demo_segmentation_shards_have_exact_masks_and_are_built_once(tmp_path, monkeypatch):
    pytest.importorskip("skimage")
    from swinssl import demo_segmentation

    monkeypatch.setenv("SWINSSL_CACHE", str(tmp_path / "cache"))
    folder = demo_segmentation.demo_seg_shards()
    sets = shard_sets(folder)
    assert {name: (s.samples, s.classes, s.task) for name, s in sets.items()} == {
        "train": (48, demo_segmentation.CLASSES, "segmentation"), "val": (16, demo_segmentation.CLASSES, "segmentation")}
    # The scenes the generator draws: the stored mask is exactly its class map, the image its pixels (JPEG).
    scenes = {f"{name}.jpg": (image, mask) for name, image, mask in demo_segmentation.demo_scenes("val")}
    for sample in read_back(f"{folder}:val"):
        image, mask = scenes[json.loads(sample["json"])["path"]]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(sample["seg.png"]))), mask)
        assert len(np.unique(mask)) > 1
        stored = np.asarray(Image.open(io.BytesIO(sample["jpg"])), dtype=float)
        assert np.abs(stored - image).mean() < 4  # JPEG at quality 95

    def no_rebuild(*_args, **_kwargs):
        raise AssertionError("demo shards rebuilt although cached")

    monkeypatch.setattr(make_shards, "write_shards", no_rebuild)
    assert demo_segmentation.demo_seg_shards() == folder


def test_demo_training_and_validation_scenes_come_from_different_columns_of_each_photo():
    from swinssl.demo_segmentation import SPLITS, texture

    photo = np.broadcast_to(np.arange(200, dtype=np.uint8)[None, :, None], (150, 200, 3))  # a pixel = its column
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert texture(photo, SPLITS["train"][1], rng).max() < 140 <= texture(photo, SPLITS["val"][1], rng).min()
