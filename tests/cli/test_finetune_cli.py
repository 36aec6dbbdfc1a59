"""The whole chain on real photos, through the real CLIs: make_shards -> pretrain -> finetune -> evaluate -> export."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from swinssl import ImageClassifier
from conftest import TINY, cli_refusal, run_cli

skimage_data = pytest.importorskip("skimage.data")

COLOR = ("astronaut", "coffee", "chelsea", "rocket", "retina", "immunohistochemistry")
GRAY = ("camera", "coins", "moon", "page", "text", "clock")
# pretraining at 64 px / window 2 (windows 2/2/2/2), fine-tuning at 96 px / window 3 (windows 3/3/3/3)
SIZES = ["model.encoder.embed_dim=16", "model.encoder.depths=[1,1,1,1]", "model.encoder.num_heads=[1,2,2,4]"]
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
                   f"data.val_shards={photo_shards}", f"out_dir={run_dir}", "data.eval_crop_mode=squash")
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    # the pretraining run was found in its folder and moved from windows 2 to 3 through log-CPB
    assert "swinssl Lightning checkpoint" in log and "normalized by windows [2, 2, 2, 2]" in log
    assert "new 2-class head" in log
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    saved = torch.load(checkpoint, map_location="cpu")  # weights-only by default: plain hyper-parameters
    assert saved["hyper_parameters"]["num_classes"] == 2 and saved["swinssl"]["pretrained_window_sizes"] == [2] * 4
    assert saved["hyper_parameters"]["class_names"] == ["color", "gray"]
    assert "current_model_state" in saved  # EMA: state_dict holds the averaged weights, which load by default

    # named after the data set, recording what produced it, read as fine-tuning validated (squash, not centre crop)
    done = run_cli("swinssl.evaluate", f"checkpoint={checkpoint}", f"data={photo_shards}", "num_workers=0")
    assert done.returncode == 0, done.stderr[-3000:]
    out = checkpoint.with_suffix(f".eval-{photo_shards.name}.train-96px.json")
    results = json.loads(out.read_text())
    assert results["img_size"] == 96 and 0.0 <= results["top1"] <= 1.0 and results["top2"] == 1.0
    assert {key: results[key] for key in ("checkpoint", "data", "data_set", "samples", "skipped", "samples_in_set",
                                         "eval_crop_mode", "eval_crop_pct")} == {
        "checkpoint": str(checkpoint), "data": str(photo_shards), "data_set": f"{photo_shards.name}:train",
        "samples": 12, "skipped": 0, "samples_in_set": 12, "eval_crop_mode": "squash", "eval_crop_pct": 0.875}
    assert f"on 12 samples of {photo_shards.name}:train (0 skipped)" in done.stdout and str(out) in done.stdout
    # an existing result is never replaced silently
    done = run_cli("swinssl.evaluate", f"checkpoint={checkpoint}", f"data={photo_shards}", "num_workers=0",
                   "eval_crop_mode=center")
    assert done.stderr.strip().splitlines()[-1] == (f"error: {out} already holds a result; pass overwrite=true to "
                                                     "replace it, or out=<file>")
    assert json.loads(out.read_text()) == results

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
    (["data.auto_augment=bogus"], "data.auto_augment='bogus' is not a timm augmentation string (e.g. "
                                  "rand-m9-mstd0.5-inc1, augmix-m5-w3, original, v0, 3a) or null"),
])
def test_finetune_bad_input_fails_in_one_line(photo_shards, tmp_path, args, message, monkeypatch, capsys):
    # main() in this process: the refusal is the test (the chain and the bare-family test start the process)
    code, stderr = cli_refusal("swinssl.finetune", *FINETUNE, *SIZES, "checkpoint=null", f"data.shards={photo_shards}",
                               "data.val_shards=null", f"out_dir={tmp_path}", *args,
                               monkeypatch=monkeypatch, capsys=capsys)
    assert code != 0
    assert stderr.strip().splitlines()[-1] == f"error: {message}"


def test_finetune_needs_labels_and_a_class_count(tmp_path, monkeypatch, capsys):
    images = tmp_path / "flat"
    images.mkdir()
    Image.new("RGB", (64, 64)).save(images / "0.png")
    run_cli("swinssl.make_shards", str(images), str(tmp_path / "shards"))
    args = [*FINETUNE, *SIZES, "checkpoint=null", f"data.shards={tmp_path / 'shards'}", "data.val_shards=null",
            f"out_dir={tmp_path / 'run'}"]
    _, stderr = cli_refusal("swinssl.finetune", *args, monkeypatch=monkeypatch, capsys=capsys)
    assert stderr.strip().splitlines()[-1] == ("error: shards:train has no class labels (make_shards found no class "
                                                     "subfolders in its source); classification needs shards written "
                                                     "from class folders")
    # shards another tool wrote say nothing about classes: the count must be given
    (tmp_path / "shards" / "train.manifest.json").unlink()
    _, stderr = cli_refusal("swinssl.finetune", *args, monkeypatch=monkeypatch, capsys=capsys)
    assert "cannot tell the number of classes: the shards record no class names; set model.num_classes" in stderr


def test_evaluate_refuses_to_evaluate_nothing(pretrained, photo_shards, tmp_path, monkeypatch, capsys):
    """Today's main exited 0 with no metric (and overwrote the previous result) on shards without labels."""
    classifier = ImageClassifier(arch="swinv2", num_classes=2, img_size=64, window_size=2, checkpoint=pretrained)
    checkpoint = tmp_path / "classifier.ckpt"
    torch.save({"state_dict": classifier.state_dict(), "hyper_parameters": dict(classifier.hparams)}, checkpoint)
    flat = tmp_path / "flat"
    flat.mkdir()
    for index in range(3):
        Image.new("RGB", (64, 64), (index, 0, 0)).save(flat / f"{index}.png")
    assert run_cli("swinssl.make_shards", str(flat), str(tmp_path / "unlabeled")).returncode == 0
    args = [f"checkpoint={checkpoint}", f"data={tmp_path / 'unlabeled'}", "num_workers=0"]
    code, stderr = cli_refusal("swinssl.evaluate", *args, monkeypatch=monkeypatch, capsys=capsys)
    assert code != 0 and stderr.strip().splitlines()[-1] == (
        "error: unlabeled:train has no class labels (make_shards found no class subfolders in its source); "
        "classification needs shards written from class folders")
    # shards from elsewhere, with no manifest to say so: every sample is skipped, and nothing is written
    (tmp_path / "unlabeled" / "train.manifest.json").unlink()
    code, stderr = cli_refusal("swinssl.evaluate", *args, monkeypatch=monkeypatch, capsys=capsys)
    assert code != 0
    assert stderr.strip().splitlines()[-1].startswith(
        "error: no sample of unlabeled:train could be evaluated (3 skipped, e.g. ")
    assert "no class label (cls)" in stderr and not list(tmp_path.glob("*.json"))


def test_a_bare_family_from_scratch_needs_its_sizes(photo_shards, tmp_path):
    """Today's main built timm's 27.6M-parameter Swin-T default for `swinv2` without a word."""
    args = [*FINETUNE, "checkpoint=null", f"data.shards={photo_shards}", "data.val_shards=null", "trainer.max_steps=1"]
    done = run_cli("swinssl.finetune", *args, f"out_dir={tmp_path / 'none'}", timeout=120)
    assert done.stderr.strip().splitlines()[-1] == (
        "error: arch 'swinv2' names a family, not a size: give embed_dim, depths, num_heads (on the command line "
        "model.encoder.embed_dim=...), start from a checkpoint to read them from, or use a preset (swinv2_tiny, "
        "swinv2_small, swinv2_base, swinv2_large, swinv2_huge, swinv2_giant)")
    done = run_cli("swinssl.finetune", *args, *SIZES, f"out_dir={tmp_path / 'sized'}", timeout=120)  # no `+` needed
    assert done.returncode == 0, done.stderr[-3000:]
    assert "model: swinv2 Swin V2, embed_dim 16, depths [1, 1, 1, 1], heads [1, 2, 2, 4], 96 px" in done.stdout


def test_the_api_takes_run_folders_as_the_cli_does(pretrained):
    """Today's main: "checkpoint not found" for a run folder in create_encoder and from_checkpoint."""
    from swinssl import SimMIM, create_encoder

    last = str(next(pretrained.rglob("last.ckpt")))
    assert create_encoder("swinv2", img_size=96, window_size=3, checkpoint=pretrained).load_report.source == last
    assert SimMIM.from_checkpoint(pretrained).hparams.checkpoint == last


def test_evaluate_refuses_a_checkpoint_without_head(pretrained, photo_shards, monkeypatch, capsys):
    code, stderr = cli_refusal("swinssl.evaluate", f"checkpoint={pretrained}", f"data={photo_shards}", "img_size=64",
                               "window_size=2", monkeypatch=monkeypatch, capsys=capsys)
    assert code != 0 and "has no classification head" in stderr.strip().splitlines()[-1]
