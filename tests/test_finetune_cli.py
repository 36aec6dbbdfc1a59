"""The whole chain on real photos, through the real CLIs: make_shards -> pretrain -> finetune -> evaluate -> export."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from swinssl import ImageClassifier
from cli_helpers import TINY, run_cli

skimage_data = pytest.importorskip("skimage.data")

COLOR = ("astronaut", "coffee", "chelsea", "rocket", "retina", "immunohistochemistry")
GRAY = ("camera", "coins", "moon", "page", "text", "clock")
# pretraining at 64 px / window 2 (windows 2/2/2/2), fine-tuning at 96 px / window 3 (windows 3/3/3/3)
FINETUNE = [
    "recipe=demo_ft", "model.img_size=96", "model.window_size=3", "data.batch_size=4", "data.num_workers=0",
    "data.epoch_size=16", "data.shuffle_buffer=8", "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false", "finetune.mixup={mixup_alpha:0.8,cutmix_alpha:1.0}",
    "data.auto_augment=rand-m9-mstd0.5-inc1", "data.re_prob=0.25", "finetune.ema_decay=0.9",
]


@pytest.fixture(scope="module")
def photo_shards(tmp_path_factory) -> Path:
    """Class folders of scikit-image's photos (colour vs grayscale), written by the real make_shards CLI."""
    root = tmp_path_factory.mktemp("photos")
    for label, names in (("color", COLOR), ("gray", GRAY)):
        (root / label).mkdir()
        for name in names:
            image = Image.fromarray(getattr(skimage_data, name)()).convert("RGB")
            image.thumbnail((128, 128))
            image.save(root / label / f"{name}.png")
    out = tmp_path_factory.mktemp("shards")
    done = run_cli("swinssl.make_shards", str(root), str(out), "--maxcount", "4")
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def pretrained(photo_shards, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("pretrain")
    done = run_cli("swinssl.pretrain", *TINY, f"data.shards={photo_shards}", "trainer.max_epochs=1",
                   f"out_dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def test_chain_make_shards_pretrain_finetune_evaluate_export(photo_shards, pretrained, tmp_path):
    run_dir = tmp_path / "ft"
    done = run_cli("swinssl.finetune", *FINETUNE, f"checkpoint={pretrained}", f"data.shards={photo_shards}",
                   f"data.val_shards={photo_shards}", f"out_dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    # the pretraining run was found in its folder and moved from windows 2 to 3 through log-CPB
    assert "swinssl Lightning checkpoint" in log and "normalized by windows [2, 2, 2, 2]" in log
    assert "new 2-class head" in log
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    saved = torch.load(checkpoint, map_location="cpu")  # weights-only by default: plain hyper-parameters
    assert saved["hyper_parameters"]["num_classes"] == 2 and saved["swinssl"]["position_bias_windows"] == [2] * 4
    assert "current_model_state" in saved  # EMA: state_dict holds the averaged weights, which load by default

    out = tmp_path / "eval.json"
    done = run_cli("swinssl.evaluate", f"checkpoint={checkpoint}", f"data={photo_shards}", "num_workers=0",
                   f"out={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["img_size"] == 96 and 0.0 <= results["top1"] <= 1.0 and results["top2"] == 1.0
    assert "top1" in done.stdout and str(out) in done.stdout

    # the same classifier evaluated at 128 px / window 4, moved through log-CPB on load
    done = run_cli("swinssl.evaluate", f"checkpoint={run_dir}", f"data={photo_shards}", "num_workers=0",
                   "img_size=128", "window_size=4", f"out={tmp_path / 'eval128.json'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "eval128.json").read_text())["window_size"] == 4

    exported = tmp_path / "timm" / "model.pth"
    done = run_cli("swinssl.export", str(checkpoint), str(exported), "--to", "timm")
    assert done.returncode == 0, done.stderr[-3000:]
    from timm.models.swin_transformer_v2 import SwinTransformerV2

    kwargs = json.loads(exported.with_suffix(".json").read_text())["kwargs"]
    timm_model = SwinTransformerV2(**kwargs).eval()
    timm_model.load_state_dict(torch.load(exported), strict=True)
    ours = ImageClassifier.from_checkpoint(checkpoint).eval()
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(timm_model(images), ours(images), rtol=0, atol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["recipe=simmim_v2_b"], "'simmim_v2_b' is a pretrain recipe; run it with python -m swinssl.pretrain recipe=simmim_v2_b"),
    (["checkpoint=/nonexistent/model.pth"], "checkpoint not found: /nonexistent/model.pth"),
    (["data.batch_size=3"], "Mixup/CutMix mixes pairs: data.batch_size must be even, got 3"),
])
def test_finetune_bad_input_fails_in_one_line(photo_shards, tmp_path, args, message):
    done = run_cli("swinssl.finetune", *FINETUNE, "checkpoint=null", f"data.shards={photo_shards}",
                   f"out_dir={tmp_path}", *args, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == f"error: {message}"


def test_finetune_needs_a_class_count(tmp_path):
    images = tmp_path / "flat"
    images.mkdir()
    Image.new("RGB", (64, 64)).save(images / "0.png")
    run_cli("swinssl.make_shards", str(images), str(tmp_path / "shards"))
    done = run_cli("swinssl.finetune", *FINETUNE, "checkpoint=null", f"data.shards={tmp_path / 'shards'}",
                   "data.val_shards=null", f"out_dir={tmp_path / 'run'}", timeout=120)
    assert "cannot tell the number of classes: set model.num_classes" in done.stderr


def test_evaluate_refuses_a_checkpoint_without_head(pretrained, photo_shards):
    done = run_cli("swinssl.evaluate", f"checkpoint={pretrained}", f"data={photo_shards}", "img_size=64",
                   "window_size=2", timeout=120)
    assert done.returncode != 0 and "has no classification head" in done.stderr.strip().splitlines()[-1]
