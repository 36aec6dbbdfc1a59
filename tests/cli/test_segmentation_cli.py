"""Segmentation through the real CLIs on tiny data: image/mask pairs -> make_shards -> finetune (a seg_* recipe on a
tiny encoder) -> evaluate (whole and sliding window) -> export --to hf, which HF transformers' UperNet loads and
which computes the run's logits; and the bad inputs that end in one ``error:`` line before a run directory exists."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from conftest import cli_refusal, random_image_shards, relative_error, run_cli, trained_like

from swinssl import ImageClassifier, Segmenter, create_encoder

CLASSES = 3
TINY_ENCODER = dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4])


def pairs(folder, count: int, seed: int) -> str:
    """``count`` 80x64 scenes: a dark background (class 0), a bright square (1), a striped band (2), some 255."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for index in range(count):
        image = rng.integers(0, 60, (64, 80, 3), dtype=np.uint8)
        mask = np.zeros((64, 80), dtype=np.uint8)
        top, left = rng.integers(0, 32), rng.integers(0, 40)
        image[top:top + 24, left:left + 24] = 220
        mask[top:top + 24, left:left + 24] = 1
        band = rng.integers(0, 56)
        image[band:band + 8, :, 1] = 255
        mask[band:band + 8] = 2
        mask[:2, :2] = 255
        Image.fromarray(image).save(folder / f"{index}.jpg", quality=95)
        Image.fromarray(mask).save(folder / f"{index}.png")
    return str(folder)


@pytest.fixture(scope="module")
def seg_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    for name, count, seed in (("train", 8, 0), ("val", 4, 1)):
        done = run_cli("swinssl.make_shards", pairs(root / name, count, seed), str(root / "shards"), "--prefix", name,
                       "--num-classes", str(CLASSES), "--maxcount", "4")
        assert done.returncode == 0, done.stderr[-3000:]
    return f"{root / 'shards'}:train", f"{root / 'shards'}:val"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny Swin V2 encoder state dict (timm layout) whose position bias was trained at windows 2/2/2/2."""
    encoder = trained_like(create_encoder("swinv2", img_size=32, window_size=2, **TINY_ENCODER))
    path = tmp_path_factory.mktemp("pretrained") / "encoder.pth"
    torch.save(encoder.state_dict(), path)
    return path


def seg_arguments(train: str, val: str, checkpoint, out) -> list[str]:
    return ["recipe=seg_v2_t_ade20k_512", f"checkpoint={checkpoint}", "model.arch=swinv2", "model.img_size=64",
            "model.window_size=4", "model.encoder.pretrained_window_sizes=[2,2,2,2]", "model.num_classes=null",
            f"data.shards={train}", f"data.val_shards={val}", "data.crop_size=[64,64]", "data.scale=[80,64]",
            "data.eval_scale=[80,64]", "data.batch_size=2", "data.num_workers=0", "data.epoch_size=4",
            "data.shuffle_buffer=4", "segmentation.upernet.channels=16", "segmentation.upernet.auxiliary_channels=8",
            "segmentation.inference.crop=64", "segmentation.inference.stride=16", "optim.warmup_steps=1",
            "trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.log_every_n_steps=1",
            "trainer.enable_model_summary=false", "trainer.enable_progress_bar=false", f"out_dir={out}"]


@pytest.fixture(scope="module")
def seg_run(seg_shards, pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "seg"
    done = run_cli("swinssl.finetune", *seg_arguments(*seg_shards, pretrained, out), timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_finetune_trains_a_segmenter_logging_loss_miou_and_the_picture(seg_run):
    from swinssl.viz import read_scalars

    checkpoint = seg_run / "checkpoints" / "last.ckpt"
    model = Segmenter.from_checkpoint(checkpoint)
    assert model.hparams.num_classes == CLASSES and model.hparams.class_names == ["0", "1", "2"]
    assert model.encoder_spec.img_size == 64 and model.encoder.pretrained_window_sizes() == [2, 2, 2, 2]
    scalars = {tag: read_scalars(seg_run, tag) for tag in ("train/loss", "val/mIoU")}
    assert all(values for values in scalars.values()), scalars
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(seg_run)).Reload()
    assert "val/segmentation" in events.Tags()["images"]


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_evaluate_gives_miou_maccuracy_pixel_accuracy_and_per_class_iou(seg_run, seg_shards, tmp_path, mode):
    out = tmp_path / "result.json"
    done = run_cli("swinssl.evaluate", f"checkpoint={seg_run}", f"data={seg_shards[1]}", f"inference={mode}",
                   "num_workers=0", "batch_size=2", f"out={out}", *(["flip=true"] if mode == "slide" else []))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["inference"]["mode"] == mode and result["samples"] == 4
    assert 0 <= result["mIoU"] <= 1 and 0 <= result["mAcc"] <= 1 and 0 < result["aAcc"] <= 1
    assert set(result["IoU"]) == {"0", "1", "2"} and result["pixels"] == 4 * (64 * 80 - 4)
    assert "mIoU" in done.stdout


def test_export_to_hf_is_an_upernet_that_computes_the_runs_logits(seg_run, tmp_path):
    out = tmp_path / "hf"
    done = run_cli("swinssl.export", str(seg_run), str(out), "--to", "hf")
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = transformers.UperNetForSemanticSegmentation.from_pretrained(out).eval()
    assert theirs.config.id2label == {0: "0", 1: "1", 2: "2"} and theirs.config.loss_ignore_index == 255
    ours = Segmenter.from_checkpoint(seg_run).eval()
    # a size whose stage maps the windows tile (where they do not, HF pads without masking the padding out)
    images = torch.randn(2, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert relative_error(theirs(pixel_values=images).logits, ours(images)) <= 1e-5


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    from lightning.pytorch import Trainer

    task = ImageClassifier(encoder=dict(arch="swinv2", img_size=64, window_size=4, **TINY_ENCODER), num_classes=3,
                           mixup=None)
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(task)
    path = tmp_path_factory.mktemp("classifier") / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_bad_inputs_are_one_error_line_and_no_run_directory(seg_shards, pretrained, classifier, seg_run, tmp_path,
                                                            monkeypatch, capsys):
    """main() in this process: the refusals are the test (seg_run and the evaluate tests start the processes)."""
    train, val = seg_shards
    images = random_image_shards(tmp_path / "images")
    cases = [
        (dict(shards=images), "no masks"),
        (dict(extra=["segmentation.inference.mode=slide", "segmentation.inference.crop=96"]),
         "segmentation.inference.crop=96 is larger than the validation images"),
        (dict(extra=["model.arch=swinv2_tiny"]), "does not fit arch 'swinv2_tiny'"),
    ]
    for index, (case, message) in enumerate(cases):
        out = tmp_path / f"run{index}"
        arguments = seg_arguments(case.get("shards", train), val, pretrained, out) + case.get("extra", [])
        code, stderr = cli_refusal("swinssl.finetune", *arguments, monkeypatch=monkeypatch, capsys=capsys)
        assert code == 2 and message in stderr, stderr[-3000:]
        assert stderr.strip().splitlines()[-1].startswith("error: ") and not out.exists()
    for checkpoint, data, message in ((classifier, val, "segmentation set"), (seg_run, images, "no masks")):
        code, stderr = cli_refusal("swinssl.evaluate", f"checkpoint={checkpoint}", f"data={data}", "num_workers=0",
                                   f"out={tmp_path / 'never.json'}", monkeypatch=monkeypatch, capsys=capsys)
        assert code == 2 and message in stderr, stderr[-3000:]
        assert not (tmp_path / "never.json").exists()
