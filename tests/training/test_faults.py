"""Fail fast and survive faults: bad configs end in one line before compute, checkpoints survive kills and full
disks, a resumed stream continues, and a preemption signal is honoured whenever it comes."""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, cli_refusal, fake_command, random_image_shards, run_cli, slurm_task_env


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return random_image_shards(tmp_path_factory.mktemp("faults"), images=8)


# --- configs checked before any compute -------------------------------------------------------------------

BAD_CONFIGS = [
    ("data.batch_size=abc", "data.batch_size must be an integer >= 1, got 'abc'"),
    ("data.batch_size=-1", "data.batch_size must be an integer >= 1, got -1"),
    ("data.batch_size=0", "data.batch_size must be an integer >= 1, got 0"),
    ("data.num_workers=-2", "data.num_workers must be an integer >= 0, got -2"),
    ("data.epoch_size=0", "data.epoch_size must be an integer >= 1 or null, got 0"),
    ("data.hflip=2", "data.hflip must be a number in [0, 1], got 2"),
    ("trainer.max_steps=-5", "trainer.max_steps must be -1 (no limit) or an integer >= 1 or null, got -5"),
    ("trainer.max_steps=0", "trainer.max_steps must be -1 (no limit) or an integer >= 1 or null, got 0"),
    ("trainer.max_epochs=0", "trainer.max_epochs must be -1 (no limit) or an integer >= 1 or null, got 0"),
    ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val must be a number >= 0 or null, got -1"),
    ("trainer.precision=fp16", "trainer.precision must be one of bf16-mixed, 16-mixed, 32-true, bf16-true, 16-true, "
                               "64-true, transformer-engine, transformer-engine-float16, bf16, 16, 32, 64 or null, "
                               "got 'fp16'"),
    ("trainer.devices=99", "trainer.devices=99 asks for 99 CPU processes, but this machine has N cores; use at most "
                           "trainer.devices=N"),
    ("checkpointing.last_every_n_steps=0", "checkpointing.last_every_n_steps must be an integer >= 1, got 0"),
    ("simmim.mask_ratio=1.5", "simmim.mask_ratio must be a number in (0, 1), got 1.5"),
    ("model.window_size=0", "model.window_size must be an integer >= 1 or [time, height, width] integers >= 1, got 0"),
    ("model.patch_size=0", "model.patch_size must be an integer >= 1 or [time, height, width] integers >= 1 or null, "
                           "got 0"),
    ("model.window_size=3", "window 3 does not tile every stage at img_size 64x64 (stage grids [(16, 16), (8, 8), "
                            "(4, 4), (2, 2)]); windows that fit: [2, 4, 8, 16]"),
    ("optim.base_lr=-0.001", "optim.base_lr must be a number > 0, got -0.001"),
    ("+data.batchsize=4", "unknown key data.batchsize; did you mean data.batch_size?"),
    ("data.batchsize=4", "unknown key data.batchsize; did you mean data.batch_size?"),
    ("optim.warmup_epoch=2", "unknown key optim.warmup_epoch; did you mean optim.warmup_epochs?"),
    ("+model.encoder.embed_dims=32", "unknown key model.encoder.embed_dims; did you mean model.encoder.embed_dim?"),
    ("+trainer.deterministik=true", "unknown key trainer.deterministik; did you mean trainer.deterministic?"),
    ("trainer.deterministic=true", "trainer.deterministic is not in the recipe; add it with +trainer.deterministic=..."),
    ("data.shards={shards}/train.manifest.json", "{shards}/train.manifest.json is not a tar shard; shards are the .tar "
                                                 "files that python -m swinssl.make_shards writes from a folder of "
                                                 "images or videos"),
    ("out_dir={shards}/train-000000.tar/run", "out_dir={shards}/train-000000.tar/run cannot be a folder: "
                                              "{shards}/train-000000.tar is a file"),
    ("resume={shards}/train.manifest.json", "cannot resume: {shards}/train.manifest.json: cannot read the checkpoint; "
                                            "it is not a PyTorch checkpoint file"),
    ("checkpoint={shards}/train.manifest.json", "{shards}/train.manifest.json: cannot read the checkpoint; it is not a "
                                                "PyTorch checkpoint file"),
    ("trainer.strategy=foo", "unknown trainer.strategy 'foo'; choose one of: auto, ..."),
    ("+trainer.val_check_interval=0", "trainer.val_check_interval must be a number > 0 or null, got 0"),
    ("optim.warmup_lr=0.01", "optim.warmup_lr=0.01 is above optim.base_lr=0.002, the peak of the schedule; give "
                             "optim.warmup_lr <= optim.base_lr"),
    ("optim.min_lr=0.01", "optim.min_lr=0.01 is above optim.base_lr=0.002, the peak of the schedule; give "
                          "optim.min_lr <= optim.base_lr"),
    ("data.epoch_size=2", "data.epoch_size=2 is smaller than one batch (data.batch_size=4); an epoch counts samples of "
                          "the whole job"),
]


def masked(line: str) -> str:
    line = re.sub(r"choose one of: auto, .*", "choose one of: auto, ...", line)  # the strategies Lightning has
    return re.sub(r"has \d+ cores; use at most trainer.devices=\d+", "has N cores; use at most trainer.devices=N", line)


def bad_config_arguments(shards: str, run_dir: Path, override: str) -> list[str]:
    args = [*TINY, f"data.shards={shards}", f"out_dir={run_dir}"]
    if not override.startswith("out_dir"):
        args.append(override.format(shards=shards))
    else:
        args[-1] = override.format(shards=shards)
    return args


@pytest.mark.parametrize("override, message", BAD_CONFIGS, ids=[override for override, _ in BAD_CONFIGS])
def test_a_bad_config_is_one_error_line_before_any_compute(shards, tmp_path, override, message, monkeypatch, capsys):
    """Today's main: tracebacks after a run directory was made, silently accepted values, 99 forked processes.
    The CLI's main() runs in this process (the checks are the test); the next test runs the real process."""
    import lightning

    def no_training(*_args, **_kwargs):
        raise AssertionError("the refusal came after training started")

    monkeypatch.setattr(lightning.Trainer, "fit", no_training)
    run_dir = tmp_path / "run"
    code, stderr = cli_refusal("swinssl.pretrain", *bad_config_arguments(shards, run_dir, override),
                               monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2, stderr[-2000:]
    assert masked(stderr.strip().splitlines()[-1]) == "error: " + message.format(shards=shards)
    assert "Traceback" not in stderr and not run_dir.exists()


def test_a_bad_config_ends_the_process_with_exit_code_2_and_one_line(shards, tmp_path):
    run_dir = tmp_path / "run"
    override, message = BAD_CONFIGS[0]
    done = run_cli("swinssl.pretrain", *bad_config_arguments(shards, run_dir, override), timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == ["error: " + message]
    assert not run_dir.exists()


def test_a_bad_checkpoint_file_is_one_line(shards, tmp_path):
    """A checkpoint holding NaN loaded without a word; a truncated or pickled-code resume file ended in tracebacks."""
    from swinssl import SimMIM

    model = SimMIM(arch="swinv2", img_size=64, window_size=2, encoder=dict(embed_dim=16, depths=[1, 1, 1, 1],
                                                                         num_heads=[1, 2, 2, 4]))
    state = {f"model.{key}": value for key, value in model.model.state_dict().items()}
    state["model.encoder.layers.0.blocks.0.mlp.fc1.weight"][0, 0] = float("nan")
    nan = tmp_path / "nan.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": dict(model.hparams)}, nan)
    done = run_cli("swinssl.pretrain", *TINY, f"data.shards={shards}", f"checkpoint={nan}", f"out_dir={tmp_path / 'a'}")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
        f"error: {nan} holds NaN or inf values in 1 tensors (e.g. layers.0.blocks.0.mlp.fc1.weight); its weights "
        "cannot be used")

    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "loops": {}, "payload": Payload()}, pickled)
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": state}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    for path, expected in ((pickled, "holds a pickled print, which a weights-only load refuses, and a run resumes only from files that load "
                       f"weights-only; if you trust the file, start a new run from its weights with checkpoint={pickled} "
                       "trust_checkpoint=true"), (truncated, "cannot read the checkpoint"),
                           (nan, "is not a Lightning training checkpoint")):
        done = run_cli("swinssl.pretrain", *TINY, f"data.shards={shards}", f"resume={path}", f"out_dir={tmp_path / 'b'}")
        last = done.stderr.strip().splitlines()[-1]
        assert done.returncode == 2 and last.startswith(f"error: cannot resume: {path}") and expected in last, last
        assert "pickled code ran" not in done.stdout + done.stderr


# --- checkpoints that survive kills and full disks --------------------------------------------------------


def test_a_checkpoint_write_cut_short_leaves_the_previous_one(tmp_path, monkeypatch):
    """Lightning's own write goes through $TMPDIR; across filesystems its final move is a copy, and a kill during
    the copy left a truncated checkpoint. Simulated here: renames across folders fail as they do across
    filesystems (EXDEV), and whatever writes the checkpoint file is "killed" halfway. The writer the trainer
    uses must leave the previous checkpoint whole, and no partial file."""
    import errno

    from omegaconf import OmegaConf

    from swinssl.training.trainer import build_trainer

    trainer = build_trainer(OmegaConf.create({"max_steps": 1, "accelerator": "cpu", "enable_progress_bar": False}),
                            tmp_path, OmegaConf.create({"every_n_epochs": 1, "last_every_n_steps": 1}), callbacks=[])
    io = trainer.strategy.checkpoint_io
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "weights": torch.arange(10_000.0)}, target)

    real_rename = os.rename

    def cross_device_rename(src, dst, *args, **kwargs):
        if Path(src).parent != Path(dst).parent:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(src, dst, *args, **kwargs)

    def killed_copy(src, dst, *args, **kwargs):
        Path(dst).write_bytes(Path(src).read_bytes()[:100])
        raise KeyboardInterrupt("killed during the copy")

    real_open = open

    class KilledFile:
        """A file whose write is killed after the first bytes."""

        def __init__(self, file):
            self.file = file

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            self.file.write(bytes(data)[:20])
            raise KeyboardInterrupt("killed during the write")

    def killed_open(name, mode="r", *args, **kwargs):
        file = real_open(name, mode, *args, **kwargs)
        return KilledFile(file) if "w" in mode and str(name).startswith(str(tmp_path)) else file

    monkeypatch.setattr(os, "rename", cross_device_rename)
    monkeypatch.setattr(shutil, "copyfile", killed_copy)
    monkeypatch.setattr("builtins.open", killed_open)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "weights": torch.arange(10_000.0)}, target)
    monkeypatch.undo()
    assert torch.load(target)["step"] == 1
    assert [path.name for path in target.parent.iterdir()] == ["last.ckpt"]  # no partial file left


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MiB tmpfs of its own (another filesystem than $TMPDIR), or None where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_a_clear_error_that_keeps_the_last_checkpoint(shards, tmp_path, small_disk):
    """Where the test may mount a small tmpfs, the disk really fills up; elsewhere a file-size limit
    (RLIMIT_FSIZE: writes past it fail with EFBIG) stands in for it."""
    run_dir = (small_disk or tmp_path) / "run"
    args = [*TINY, f"data.shards={shards}", f"out_dir={run_dir}", "checkpointing.last_every_n_steps=2", "resume=auto"]
    done = run_cli("swinssl.pretrain", *args, "trainer.max_steps=2")
    assert done.returncode == 0, done.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    saved = last.read_bytes()
    limit = None
    if small_disk is not None:
        free = shutil.disk_usage(small_disk).free
        with open(small_disk / "filler", "wb") as filler:
            filler.truncate(free - len(saved) // 2)
            os.posix_fallocate(filler.fileno(), 0, free - len(saved) // 2)
    else:
        limit = len(saved) // 2

    def limit_file_size():
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SWINSSL_RUN_ID", None)
    done = subprocess.run([sys.executable, "-m", "swinssl.pretrain", *args, "trainer.max_steps=4"], capture_output=True,
                          text=True, env=env, preexec_fn=limit_file_size, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: cannot write the checkpoint {run_dir}/checkpoints/") and (
        "No space left on device" in line or "File too large" in line), line
    assert line.endswith(f"Last good checkpoint: {last} (resume=auto continues from it)"), line
    assert last.read_bytes() == saved
    assert not list((run_dir / "checkpoints").glob(".*"))  # no partial file


def test_a_full_disk_while_writing_events_is_a_clear_error(shards, tmp_path):
    """Today's main: an OSError traceback from TensorBoard's writer thread (exit 1). A file-size limit stands in for
    the full disk; no checkpoint is due before the event file reaches it."""
    run_dir = tmp_path / "run"
    args = [*TINY, f"data.shards={shards}", f"out_dir={run_dir}", "trainer.max_steps=300", "images_every_n_steps=1",
            "checkpointing.last_every_n_steps=1000"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SWINSSL_RUN_ID", None)
    done = subprocess.run([sys.executable, "-m", "swinssl.pretrain", *args], capture_output=True, text=True, env=env,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000)), timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: cannot write in the run directory {run_dir} (File too large). Last good checkpoint: none saved yet")


def test_resume_skips_an_unreadable_newest_checkpoint_and_removes_partial_writes(shards, tmp_path):
    """Today's main: an EOFError traceback on a checkpoint left empty by a kill, though an intact one lay beside it."""
    run_dir = tmp_path / "run"
    args = [*TINY, f"data.shards={shards}", f"out_dir={run_dir}", "resume=auto", "checkpointing.every_n_epochs=1"]
    done = run_cli("swinssl.pretrain", *args, "trainer.max_steps=4", "data.epoch_size=8")  # 2 steps per epoch
    assert done.returncode == 0, done.stderr[-3000:]
    folder = run_dir / "checkpoints"
    periodic = folder / "epoch0001-step00000004.ckpt"
    assert periodic.exists()
    (folder / "last.ckpt").write_bytes(b"")  # what a kill during a non-atomic copy left
    (folder / ".last.ckpt.12345.partial").write_bytes(b"PK half")  # what a kill during our write leaves
    done = run_cli("swinssl.pretrain", *args, "trainer.max_steps=6", "data.epoch_size=8")
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert f"skipping {folder / 'last.ckpt'}: {folder / 'last.ckpt'}: cannot read the checkpoint" in log
    assert f"resuming {periodic}" in log and not (folder / ".last.ckpt.12345.partial").exists()
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 6


# --- a resumed stream continues ---------------------------------------------------------------------------


def test_a_resumed_run_continues_the_data_stream_and_the_skip_count(tmp_path):
    """Today's main replayed the run's opening batches after every resume, and data/skipped restarted at 0."""
    from lightning.pytorch import Callback, Trainer

    from swinssl import SimMIM
    from swinssl.datamodules import ImageShardDataModule
    from swinssl.training.skipped_samples import SkippedSamples

    shard_dir = random_image_shards(tmp_path, images=16, maxcount=4)

    class Digests(Callback):
        def __init__(self):
            self.digests = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.digests.append(round(float(batch["image"].sum()), 3))

    def fit(steps: int, resume: Path | None = None) -> tuple[list[float], SkippedSamples, Trainer]:
        torch.manual_seed(0)
        model = SimMIM(arch="swinv2", img_size=64, window_size=2, norm_target_window=None,
                       encoder=dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4]))
        data = ImageShardDataModule(shard_dir, batch_size=4, num_workers=0, epoch_size=400, img_size=64,
                                    mask_patch_size=16, shuffle_buffer=4)
        digests, skips = Digests(), SkippedSamples()
        trainer = Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, callbacks=[digests, skips])
        trainer.fit(model, datamodule=data, ckpt_path=resume)
        return digests.digests, skips, trainer

    first, skips, trainer = fit(3)
    skips.skipped["train"] = 5  # as if five samples had been skipped
    checkpoint = tmp_path / "step3.ckpt"
    trainer.save_checkpoint(checkpoint)
    resumed, skips, _ = fit(6, checkpoint)
    assert len(resumed) == 3 and resumed != first  # new batches, not the opening ones again
    assert skips.skipped["train"] == 5
    again, _, _ = fit(6, checkpoint)
    assert again == resumed  # still reproducible


# --- preemption signals, whenever they come ---------------------------------------------------------------


def start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "swinssl.pretrain", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)


def wait_for(process: subprocess.Popen, text: str, lines: list[str], timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return
    raise AssertionError(f"{text!r} never appeared:\n{''.join(lines)[-3000:]}")


def test_a_signal_before_training_requeues_without_saving(shards, tmp_path):
    """Today's main installed the handler only when training began: an early SIGUSR1 killed the job."""
    bin_dir = fake_command(tmp_path / "bin", "scontrol", "")
    env = slurm_task_env("77", bin_dir)
    args = [*TINY, f"data.shards={shards}", "cluster=slurm", "cluster.partition=cpu", "cluster.time=10",
            "cluster.gpus_per_node=1", "trainer.accelerator=cpu", "trainer.max_steps=50"]
    process = start(args, env, tmp_path)
    lines: list[str] = []
    wait_for(process, "Seed set to", lines)  # the config is checked; the model and data are not built yet
    process.send_signal(signal.SIGUSR1)
    output = "".join(lines) + process.communicate(timeout=240)[0]
    assert process.returncode == 0, output[-3000:]
    assert "requeued: the job resumes from its last checkpoint (the signal came before the first step)" in output
    assert (bin_dir / "scontrol.log").read_text().split() == ["requeue", "77"]
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


def test_a_signal_outside_slurm_saves_and_ends_cleanly(shards, tmp_path):
    """Today's main: KeyError 'SLURM_JOB_ID' (inside SLURM's handler) or a killed process, no checkpoint."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SWINSSL_RUN_ID", None)
    run_dir = tmp_path / "run"
    process = start([*TINY, f"data.shards={shards}", f"out_dir={run_dir}", "trainer.max_steps=100000",
                     "trainer.max_epochs=-1", "trainer.enable_progress_bar=false"], env, tmp_path)
    lines: list[str] = []
    wait_for(process, "torch thread(s)", lines)
    time.sleep(3)  # a few steps in
    process.send_signal(signal.SIGUSR1)
    output = "".join(lines) + process.communicate(timeout=240)[0]
    assert process.returncode == 0, output[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert f"preemption signal: saving {last}" in output
    assert "this is not a SLURM job that requeues, so nothing restarts it: run the same command with resume=auto" in output
    assert torch.load(last, weights_only=True)["global_step"] >= 1


# --- threads ------------------------------------------------------------------------------------------------


def test_thread_candidates_leave_a_core_to_each_loader_worker_or_take_them_all(monkeypatch):
    from swinssl.training.threads import thread_candidates

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert thread_candidates(None, num_workers=2, processes=1) == [6, 8]
    assert thread_candidates(None, num_workers=2, processes=2) == [2, 4]  # 4 cores per process
    assert thread_candidates(None, num_workers=8, processes=1) == [1, 8]
    assert thread_candidates(None, num_workers=0, processes=1) == [8]
    assert thread_candidates(3, num_workers=8, processes=1) == [3]  # asked for


@pytest.mark.parametrize("faster", [1, 2])
def test_thread_tuning_keeps_the_faster_count_and_checks_again(monkeypatch, faster):
    """On a 2-core machine 2 threads beside idle workers were 1.4x faster than 1, and 2.3x slower than 1 beside a
    busy job (bench threads): the default measures instead of guessing."""
    from types import SimpleNamespace

    from swinssl.training import threads as tuning_module

    clock = {"now": 0.0}
    threads = {"count": 1}
    monkeypatch.setattr(tuning_module.time, "perf_counter", lambda: clock["now"])
    monkeypatch.setattr(tuning_module.torch, "set_num_threads", lambda count: threads.update(count=count))
    tuning = tuning_module.ThreadTuning([1, 2], probe=3, every_n_steps=20, start=2)
    trainer = SimpleNamespace()
    chosen = []
    for step in range(42):  # probes at batches 2 and 22; the next would be at 42
        tuning.on_train_batch_start(trainer, None, None, step)
        chosen.append(threads["count"])  # what this batch runs with
        clock["now"] += 0.1 if threads["count"] == faster else 0.3
        tuning.on_train_batch_end(trainer, None, None, None, step)
    assert chosen[:2] == [1, 1] and chosen[2:5] == [1, 1, 1] and chosen[5:8] == [2, 2, 2]  # probe 1, then 2
    assert set(chosen[8:22]) == {faster} and tuning.chosen == faster
    assert chosen[22:25] == [1, 1, 1] and chosen[25:28] == [2, 2, 2]  # checked again 20 batches later
    assert set(chosen[28:]) == {faster}
