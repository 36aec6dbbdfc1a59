"""Video end to end through the real CLIs: generated videos -> make_shards -> finetune recipe=video_* -> evaluate."""

import json
from pathlib import Path

import pytest
import torch

from conftest import cli_refusal, run_cli
from swinssl import VideoClassifier
from swinssl.demo_videos import write_demo_videos
from swinssl.models import build_encoder

pytest.importorskip("skimage.data")

IMAGE_SIZES = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))
# The demo recipe at its own sizes (8 frames, 64 px, window 2x4x4) on few, short steps.
VIDEO = [
    "recipe=video_demo", "data.num_workers=0", "data.batch_size=4", "data.epoch_size=8", "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1", "trainer.enable_model_summary=false", "data.test_clips=2", "data.test_crops=3",
]


@pytest.fixture(scope="module")
def video_shards(tmp_path_factory) -> Path:
    """Panning clips (pan_left / pan_right class folders) packed by the real make_shards CLI."""
    videos = tmp_path_factory.mktemp("videos")
    write_demo_videos(videos, videos_per_class=3)
    out = tmp_path_factory.mktemp("video-shards")
    done = run_cli("swinssl.make_shards", str(videos), str(out), "--maxcount", "4")
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def image_checkpoint(tmp_path_factory) -> Path:
    """A Swin V2 image checkpoint in Microsoft's ``{"model": ...}`` wrapping of timm keys."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("image") / "swinv2_tiny_image.pth"
    torch.save({"model": build_encoder("swinv2", img_size=64, window_size=4, **IMAGE_SIZES).state_dict()}, path)
    return path


def test_chain_make_shards_finetune_evaluate_on_generated_videos(video_shards, image_checkpoint, tmp_path):
    run_dir = tmp_path / "video"
    done = run_cli("swinssl.finetune", *VIDEO, f"checkpoint={image_checkpoint}", f"data.shards={video_shards}",
                   f"data.val_shards={video_shards}", f"out_dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "inflated the patch kernel to 2 frames (inflate)" in log and "zero temporal input column" in log
    assert "new 2-class head" in log
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    model = VideoClassifier.from_checkpoint(checkpoint)
    assert model.model.patch_embed.proj.weight.shape == (16, 3, 2, 4, 4)
    assert model.hparams.clip_sampling["test_clips"] == 2 and model.hparams.head_lr_ratio == 1.0

    out = tmp_path / "eval.json"
    done = run_cli("swinssl.evaluate", f"checkpoint={run_dir}", f"data={video_shards}", "num_workers=0",
                   "batch_size=2", f"out={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["views"] == "2 clips x 3 crops" and 0.0 <= results["top1"] <= 1.0
    assert "top1" in done.stdout


def test_chain_image_simmim_to_masked_video_pretraining_to_finetune(video_shards, tmp_path):
    """An official-format image SimMIM checkpoint (encoder and decoder) -> recipe=video_pretrain_demo with a k-NN
    probe -> recipe=video_demo fine-tuned from that run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from swinssl.models import MaskedImageModel
    from conftest import official_simmim_checkpoint

    torch.manual_seed(0)
    image = MaskedImageModel(build_encoder("swinv2", img_size=64, window_size=4, mask_token=True, **IMAGE_SIZES))
    torch.save(official_simmim_checkpoint(image), tmp_path / "simmim.pth")
    pretrained = tmp_path / "video_pretrain"
    done = run_cli("swinssl.pretrain", "recipe=video_pretrain_demo", f"checkpoint={tmp_path / 'simmim.pth'}",
                   f"data.shards={video_shards}", f"data.val_shards={video_shards}", "data.num_workers=0",
                   "data.batch_size=2", "data.epoch_size=4", "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
                   "trainer.enable_model_summary=false", f"probe.shards={video_shards}", "probe.every_n_steps=2",
                   "probe.num_workers=0", "images_every_n_steps=2", f"out_dir={pretrained}")
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "carried the SimMIM mask token over" in log and "inflated the image SimMIM decoder to 2 frames" in log
    events = EventAccumulator(str(pretrained), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("probe/top1")] == [2, 4]
    assert len(events.Scalars("val/loss")) == 2 and events.Tags()["images"] == ["train/reconstruction"]

    # resumed: a bare family takes its sizes from the run's own checkpoint (the starting one is not read again)
    done = run_cli("swinssl.pretrain", "recipe=video_pretrain_demo", "checkpoint=null", f"data.shards={video_shards}",
                   f"data.val_shards={video_shards}",
                   "data.num_workers=0", "data.batch_size=2", "data.epoch_size=4", "trainer.max_epochs=3",
                   "trainer.enable_model_summary=false", "images_every_n_steps=100", f"out_dir={pretrained}",
                   "resume=auto")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(resuming" in done.stdout + done.stderr
    assert torch.load(pretrained / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6

    finetuned = tmp_path / "video_finetune"
    done = run_cli("swinssl.finetune", *VIDEO, f"checkpoint={pretrained}", f"data.shards={video_shards}",
                   f"data.val_shards={video_shards}", f"out_dir={finetuned}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SimMIM mask token (mask_token); this model has none" in done.stdout + done.stderr
    assert (finetuned / "checkpoints" / "last.ckpt").exists()


def test_official_video_swin_recipe_composes_with_its_sourced_values():
    done = run_cli("swinssl.finetune", "recipe=video_swin_b_ssv2", "--cfg", "job")
    assert done.returncode == 0, done.stderr
    for line in ("arch: video_swin_base", "- 16", "sampling: uniform", "hflip: 0.0", "num_ops: 4", "magnitude: 7",
                 "re_prob: 0.25", "label_smoothing: 0.1", "test_clips: 1", "max_epochs: 60", "base_lr: 0.0003",
                 "head_lr_ratio: 10.0", "drop_path_rate: 0.4", "checkpoint: ???"):
        assert line in done.stdout, line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model.arch=video_swinv3_base"], "unknown video arch 'video_swinv3_base'"),
        (["model.attention=divided"], "attention must be one of"),
        (["finetune.head_lr_ratio=0"], "finetune.head_lr_ratio must be a number > 0, got 0"),
        (["model.window_rule=official"], "window_rule='official' is the official Video Swin (V1) rule"),
    ],
)
def test_video_bad_input_fails_in_one_line(video_shards, tmp_path, args, message, monkeypatch, capsys):
    # main() in this process: the refusal is the test (the other video CLI tests start the processes)
    sizes = ["model.encoder.embed_dim=16", "model.encoder.depths=[1,1,1,1]", "model.encoder.num_heads=[1,2,2,4]"]
    code, stderr = cli_refusal("swinssl.finetune", *VIDEO, "checkpoint=null", *sizes, f"data.shards={video_shards}",
                               f"out_dir={tmp_path / 'run'}", *args, monkeypatch=monkeypatch, capsys=capsys)
    assert code != 0
    assert message in stderr.strip().splitlines()[-1]
