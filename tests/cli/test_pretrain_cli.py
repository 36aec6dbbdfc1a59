"""The real `python -m swinssl.pretrain` CLI, end to end on tiny shards in a temporary directory."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY, class_folders, cli_refusal, run_cli


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> str:
    """Shards written by the real make_shards CLI from a folder of small photos-like images."""
    root = class_folders(tmp_path_factory.mktemp("images"), ("a", "b"), per_class=6, size=(96, 80), smooth=True,
                         suffix="jpg")
    out = tmp_path_factory.mktemp("shards")
    done = run_cli("swinssl.make_shards", str(root), str(out), "--maxcount", "4")
    assert done.returncode == 0, done.stderr
    return str(out)  # a shard folder is the simplest data.shards value


def scalars(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_pretrain_writes_config_events_images_and_checkpoints(shard_dir, tmp_path):
    run_dir = tmp_path / "run"
    pattern = f"'{shard_dir}/train-{{000000..000002}}.tar'"  # braces need quotes in Hydra overrides
    done = run_cli("swinssl.pretrain", *TINY, f"data.shards={pattern}", "trainer.max_epochs=2",
                   f"out_dir={run_dir}", "checkpointing.every_n_epochs=1", "images_every_n_steps=4",
                   f"probe.shards={shard_dir}", "probe.every_n_steps=3", "probe.num_workers=0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "window_size: 2" in (run_dir / "config.yaml").read_text()
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["epoch0000-step00000004.ckpt", "epoch0001-step00000008.ckpt", "last.ckpt"]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)  # plain hparams: no pickles
    assert last["global_step"] == 8
    encoder = last["hyper_parameters"]["encoder"]  # the whole EncoderSpec, as plain containers
    assert {key: encoder[key] for key in ("arch", "img_size", "window_size", "embed_dim", "depths", "num_heads")} == {
        "arch": "swinv2", "img_size": 64, "window_size": 2, "embed_dim": 16, "depths": [1, 1, 1, 1],
        "num_heads": [1, 2, 2, 4]}
    events = scalars(run_dir)
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/grad_norm", "train/lr", "train/device/samples_per_sec", "data/skipped"} <= tags
    assert len(events.Scalars("train/loss")) == 8
    # the k-NN probe on the 12 labeled images, leave-one-out: at steps 3 and 6, and at the end
    assert [e.step for e in events.Scalars("probe/top1")] == [3, 6, 8]
    assert all(0.0 <= e.value <= 1.0 for e in events.Scalars("probe/top1"))
    assert "k-NN top-1" in done.stdout + done.stderr and "on 12 samples (bank 12" in done.stdout + done.stderr
    assert all(np.isfinite(e.value) for e in events.Scalars("train/loss"))
    images = events.Tags()["images"]
    assert images == ["train/reconstruction"]
    assert [e.step for e in events.Images("train/reconstruction")] == [1, 4, 8]


def test_cfg_job_shows_the_official_recipe_values():
    done = run_cli("swinssl.pretrain", "recipe=simmim_v2_b", "--cfg", "job")
    assert done.returncode == 0, done.stderr
    for line in ("arch: swinv2_base", "img_size: 192", "window_size: 12", "drop_path_rate: 0.1",
                 "base_lr: 0.0001", "warmup_epochs: 10", "schedule: multistep", "- 700", "weight_decay: 0.05",
                 "norm_target_window: 47", "gradient_clip_val: 5.0", "max_epochs: 800", "batch_size: 128"):
        assert line in done.stdout, line
    tiny = run_cli("swinssl.pretrain", "recipe=simmim_v2_t", "--cfg", "job")
    assert "arch: swinv2_tiny" in tiny.stdout and "base_lr: 0.0001" in tiny.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["recipe=simmim_v9"], "unknown recipe 'simmim_v9'; choose one of: demo, demo_uniform, simmim_uniform_v2_b"),
        (["model.img_size=200"], "image size 200x200 is not divisible by mask_patch_size 32"),
        (["model.img_size=240", "simmim.mask_patch_size=16"], "img_size 240x240 must be a multiple of 32"),
        (["model.window_size=7"], "window 7 does not tile every stage"),
        (["simmim.mask_patch_size=40"], "not divisible by mask_patch_size 40"),
        (["data.shards='/nonexistent/train-{000000..000003}.tar'"], "/nonexistent/train-000000.tar"),
        (["model.arch=swinv2_medium"], "unknown arch 'swinv2_medium'"),
    ],
)
def test_bad_input_fails_in_one_line_before_any_compute(args, message, tmp_path, shard_dir, monkeypatch, capsys):
    # main() in this process: the refusal is the test (tests/training/test_faults.py starts the refusing process)
    base = ["recipe=simmim_v2_t", f"data.shards={shard_dir}", f"out_dir={tmp_path / 'run'}"]
    code, stderr = cli_refusal("swinssl.pretrain", *base, *args, monkeypatch=monkeypatch, capsys=capsys)
    assert code != 0
    last_line = stderr.strip().splitlines()[-1]
    assert message in last_line and last_line.startswith("error: ")
    assert "Traceback" not in stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_killed_run_resumes_at_the_saved_step(shard_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, f"data.shards={shard_dir}", f"out_dir={run_dir}", "trainer.max_epochs=100",
            "checkpointing.last_every_n_steps=3", "resume=auto"]
    last = run_dir / "checkpoints" / "last.ckpt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen([sys.executable, "-m", "swinssl.pretrain", *args, "trainer.max_steps=400"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while time.time() < deadline and not (last.exists() and torch.load(last, weights_only=True)["global_step"] >= 6):
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    # the newest checkpoint: last.ckpt, or an epoch-end one written after it
    newest = max((run_dir / "checkpoints").glob("*.ckpt"), key=lambda path: path.stat().st_mtime)
    saved = torch.load(newest, weights_only=True)["global_step"]
    assert 6 <= saved < 400

    done = run_cli("swinssl.pretrain", *args, f"trainer.max_steps={saved + 3}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming {newest}" in done.stdout + done.stderr
    assert torch.load(last, weights_only=True)["global_step"] == saved + 3
    newest_events = max(run_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    steps = [e.step for e in EventAccumulator(str(newest_events)).Reload().Scalars("train/loss")]
    assert min(steps) >= saved  # the restarted process logged only steps after the saved one


def test_default_command_runs_the_demo_on_scikit_image_photos(tmp_path):
    pytest.importorskip("skimage")
    done = run_cli("swinssl.pretrain", "trainer.max_steps=2", "data.num_workers=0", f"out_dir={tmp_path / 'run'}",
                   env={"SWINSSL_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "cache" / "demo-shards-v3" / "demo.manifest.json").exists()
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_swinv2_base_recipe_runs_real_steps_on_the_cpu(shard_dir, tmp_path):
    """The official SwinV2-B recipe at 192 px / window 12, two optimizer steps (~30 s, ~5 GB on a CPU)."""
    run_dir = tmp_path / "run"
    done = run_cli("swinssl.pretrain", "recipe=simmim_v2_b", f"data.shards={shard_dir}", "trainer.max_steps=2",
                   "data.batch_size=2", "data.num_workers=0", f"out_dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "lr 3.91e-07 = 0.0001 per 512 samples x global batch 2" in done.stdout + done.stderr
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)
    assert last["global_step"] == 2
    settings = {**last["hyper_parameters"]["encoder"], **last["hyper_parameters"]}
    assert {k: settings[k] for k in ("arch", "img_size", "window_size", "norm_target_window")} == {
        "arch": "swinv2_base", "img_size": 192, "window_size": 12, "norm_target_window": 47}
    weights = last["state_dict"]
    assert weights["model.encoder.mask_token"].shape == (1, 1, 128)
    assert weights["model.decoder.0.weight"].shape == (3072, 1024, 1, 1)
    assert sum(v.numel() for v in weights.values()) == 86_893_944 + 1024 * 3072 + 3072  # timm's B + decoder


def test_a_probe_on_unlabeled_shards_is_one_line_before_a_run_directory_exists(shard_dir, tmp_path):
    flat = tmp_path / "flat"  # images with no class folders: shards without labels
    flat.mkdir()
    for index in range(3):
        Image.fromarray(np.full((40, 40, 3), 60 * index, np.uint8)).save(flat / f"{index}.png")
    assert run_cli("swinssl.make_shards", str(flat), str(tmp_path / "unlabeled")).returncode == 0
    done = run_cli("swinssl.pretrain", *TINY, f"data.shards={shard_dir}", f"probe.shards={tmp_path / 'unlabeled'}",
                   f"out_dir={tmp_path / 'run'}")
    assert done.returncode == 2 and not (tmp_path / "run").exists()
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "has no class labels" in last


def test_a_folder_of_two_sets_is_refused_before_a_run_directory_exists(shard_dir, tmp_path):
    """Today's main trained on train-*.tar and val-*.tar together when the folder held both."""
    folder = tmp_path / "both"
    source = json.loads((Path(shard_dir) / "train.manifest.json").read_text())["source"]
    for name in ("train", "val"):
        assert run_cli("swinssl.make_shards", source, str(folder), "--prefix", name).returncode == 0
    run_dir = tmp_path / "run"
    done = run_cli("swinssl.pretrain", *TINY, f"data.shards={folder}", f"out_dir={run_dir}", timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {folder} holds 2 shard sets (train, val); name the one to read: {folder}:train or {folder}:val")
    assert not run_dir.exists()


def test_a_bad_sample_is_named_by_its_file_once_and_the_schedule_fits_a_short_run(tmp_path):
    """A sample that does not decode is reported by its source path, once per run rather than once per pass over
    it; trainer.max_steps shorter than the recipe's epochs compresses warmup and decay into the steps that run."""
    folder = tmp_path / "shards"
    folder.mkdir()
    rng = np.random.default_rng(0)
    with wds.TarWriter(str(folder / "train-000000.tar")) as writer:
        for index in range(6):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (72, 72, 3), dtype=np.uint8)).save(buffer, "PNG")
            writer.write({"__key__": f"{index:09d}", "png": buffer.getvalue(), "json": {"path": f"cats/{index}.png"}})
        writer.write({"__key__": "000000006", "jpg": b"\xff\xd8 broken", "json": {"path": "cats/broken.jpg"}})
    run_dir = tmp_path / "run"
    done = run_cli("swinssl.pretrain", *TINY, f"data.shards={folder}:train", "data.epoch_size=28", "data.shuffle_buffer=2",
                   "trainer.max_epochs=6", "trainer.max_steps=10", f"out_dir={run_dir}", "trainer.enable_progress_bar=false")
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert log.count("skipped unreadable sample cats/broken.jpg") == 1  # read about 6 times in 10 steps of 4
    assert ("7 steps/epoch, 10 steps in all; trainer.max_steps ends the run before the recipe's 42 steps, so warmup "
            "and decay are compressed into 10") in log
    assert "model: swinv2 Swin V2, embed_dim 16, depths [1, 1, 1, 1], heads [1, 2, 2, 4], 64 px" in log
    events = scalars(run_dir)
    assert events.Scalars("data/skipped")[-1].value >= 2
    rates = [event.value for event in events.Scalars("train/lr")]
    # demo recipe: warmup 1 of 6 epochs -> 2 of 10 steps, then cosine to min_lr (1e-5 per 512 at batch 4)
    assert rates[2] == pytest.approx(max(rates)) and rates[-1] < rates[2] / 5


def test_the_triton_kernel_on_a_cpu_trains_with_fused_and_says_so_once(shard_dir, tmp_path):
    done = run_cli("swinssl.pretrain", *TINY, f"data.shards={shard_dir}", "trainer.max_steps=2",
                   f"out_dir={tmp_path / 'run'}", "model.attn_kernel=triton", env={"TRITON_INTERPRET": "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout + done.stderr
    assert printed.count("attn_kernel=triton: Triton kernels run on CUDA (or on the CPU with TRITON_INTERPRET=1), "
                         "not on cpu; running the fused kernel instead (same function).") == 1
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
