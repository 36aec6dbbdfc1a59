"""Preempted and resumed runs: one checkpoint per stop, the run reaches the step and the learning rate an
uninterrupted run reaches, its TensorBoard points continue on the same steps, and its losses and final weights
are the uninterrupted run's (exact resume: two loader workers, one torch thread, drop path on)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import PACKED, TINY, random_image_shards, run_cli

HERE = Path(__file__).parent
# 16 samples per epoch in batches of 4: 4 steps an epoch, 12 in all. Two workers: a resume mid-epoch must hand
# the next batch to the worker whose turn it is; drop path: the training process's RNG must continue too.
EPOCHS = [*TINY, "trainer.max_epochs=3", "trainer.max_steps=-1", "trainer.enable_progress_bar=false",
          "data.num_workers=2", "threads=1", "model.drop_path_rate=0.5"]
# Preempted after an epoch's last batch (step 4) and at two steps drawn anew each time the tests run.
STOPS = sorted([4, *random.sample([step for step in range(1, 12) if step != 4], 2)])


def preempted_run(args: list[str], signal_at: list[int], kill_at: int | None = None) -> subprocess.CompletedProcess:
    """The pretraining CLI, sent SIGUSR1 (as SLURM preempts) when the optimizer steps ``signal_at`` end, and
    SIGKILL (as a crash) when step ``kill_at`` ends."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SIGNAL_AT_STEPS": ",".join(map(str, signal_at)),
           "KILL_AT_STEPS": str(kill_at or "")}
    env.pop("SWINSSL_RUN_ID", None)
    return subprocess.run([sys.executable, str(HERE / "preempted_run.py"), *args], capture_output=True, text=True,
                          env=env, timeout=300)


def scalars(run_dir: Path, tag: str) -> dict[int, float]:
    """{step: value} of one TensorBoard scalar over every event file of the run (a resumed run adds one)."""
    from swinssl.viz import read_scalars

    steps, values = read_scalars(run_dir, tag)[run_dir.name]
    points: dict[int, float] = {}
    for step, value in zip(steps.tolist(), values.tolist()):
        assert step not in points, f"{tag} logged twice at step {step}"
        points[step] = value
    return points


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """An uninterrupted 3-epoch run, and the same run preempted after the ``STOPS`` steps, each time resumed with
    ``resume=auto``."""
    root = tmp_path_factory.mktemp("resume")
    shards = random_image_shards(root, images=8)  # root / "shards"
    runs = {"whole": root / "whole", "preempted": root / "preempted"}
    done = preempted_run([*EPOCHS, f"data.shards={shards}", f"out_dir={runs['whole']}", "resume=auto"], [])
    assert done.returncode == 0, done.stderr[-3000:]
    stops = STOPS
    for attempt in range(len(stops) + 1):
        done = preempted_run([*EPOCHS, f"data.shards={shards}", f"out_dir={runs['preempted']}", "resume=auto"],
                             stops)
        assert done.returncode == 0, done.stderr[-3000:]
        names = sorted(path.name for path in (runs["preempted"] / "checkpoints").glob("*.ckpt"))
        assert "last-v1.ckpt" not in names, names  # one checkpoint per stop
        if attempt < len(stops):
            assert "preemption signal: saving" in done.stdout + done.stderr
            step = torch.load(runs["preempted"] / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
            assert step == stops[attempt]
    assert "done:" in done.stdout + done.stderr
    return runs


def test_a_preempted_run_reaches_the_step_and_schedule_of_an_uninterrupted_one(runs):
    """Today's main: each stop also wrote last-v1.ckpt recording the cut epoch as finished; resume=auto took it, so
    the run ended early (step 31 of 60) with its learning rate never decayed."""
    final = {name: torch.load(path / "checkpoints" / "last.ckpt", weights_only=True) for name, path in runs.items()}
    assert final["preempted"]["global_step"] == final["whole"]["global_step"] == 12
    assert final["preempted"]["lr_schedulers"][0]["_last_lr"] == final["whole"]["lr_schedulers"][0]["_last_lr"]
    assert scalars(runs["preempted"], "train/lr") == scalars(runs["whole"], "train/lr")


def test_a_resumed_run_logs_on_the_same_steps_and_keeps_counting_samples(runs):
    """Today's main: after a resume train/samples restarted at 0."""
    for tag in ("train/loss", "train/samples", "data/skipped"):
        assert scalars(runs["preempted"], tag).keys() == scalars(runs["whole"], tag).keys() == set(range(12)), tag
    assert scalars(runs["preempted"], "train/samples") == scalars(runs["whole"], "train/samples")


def test_a_resumed_run_is_exact(runs):
    """Same loss at every step and same final weights as the uninterrupted run. Today's main reseeded the stream
    with the step on resume, restarted the loader at worker 0 and did not save the training process's RNG."""
    losses = {name: scalars(path, "train/loss") for name, path in runs.items()}
    assert losses["preempted"].keys() == losses["whole"].keys()
    worst = max(abs(losses["preempted"][step] / losses["whole"][step] - 1) for step in losses["whole"])
    assert worst <= 1e-6, (STOPS, losses)
    final = {name: torch.load(path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
             for name, path in runs.items()}
    for key, weights in final["whole"].items():
        assert torch.equal(final["preempted"][key], weights), (STOPS, key)


def test_a_run_killed_and_resumed_from_its_last_checkpoint_is_exact(runs):
    """SIGKILL at a random step; resume=auto goes back to last.ckpt (written every 3 steps, mid-epoch) and takes
    the steps since again: every loss it logs, and its final weights, are the uninterrupted run's."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, kill_at = runs["whole"].parent / "killed", random.randint(4, 11)
    args = [*EPOCHS, f"data.shards={runs['whole'].parent / 'shards'}", f"out_dir={run_dir}", "resume=auto",
            "checkpointing.last_every_n_steps=3"]
    assert preempted_run(args, [], kill_at).returncode == -9
    done = preempted_run(args, [])
    assert done.returncode == 0, done.stderr[-3000:]
    whole, logged = scalars(runs["whole"], "train/loss"), set()
    for events in sorted(run_dir.glob("events.*")):  # a step after last.ckpt may be logged twice
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for point in accumulator.Scalars("train/loss") if "train/loss" in accumulator.Tags()["scalars"] else []:
            assert abs(point.value / whole[point.step] - 1) <= 1e-6, (kill_at, point.step)
            logged.add(point.step)
    assert logged == set(whole), kill_at
    final = {name: torch.load(path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
             for name, path in (("whole", runs["whole"]), ("killed", run_dir))}
    assert all(torch.equal(final["killed"][key], weights) for key, weights in final["whole"].items()), kill_at


def pretrain(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    shards = run_dir.parent / "shards"
    return run_cli("swinssl.pretrain", *EPOCHS, f"data.shards={shards}", f"out_dir={run_dir}", *args, timeout=300)


def last_line(done: subprocess.CompletedProcess) -> str:
    return done.stderr.strip().splitlines()[-1]


def test_a_checkpoint_with_a_non_finite_optimizer_state_is_refused(runs, tmp_path):
    """Today's main resumed it: the first step turned the weights NaN, and that state was saved."""
    saved = torch.load(runs["whole"] / "checkpoints" / "last.ckpt", weights_only=True)
    next(iter(saved["optimizer_states"][0]["state"].values()))["exp_avg"].view(-1)[0] = float("nan")
    poisoned = tmp_path / "poisoned.ckpt"
    torch.save(saved, poisoned)
    done = pretrain(runs["whole"].parent / "nan", f"resume={poisoned}", "trainer.max_epochs=4")
    assert done.returncode == 2 and last_line(done) == (
        f"error: cannot resume: {poisoned} holds NaN or inf values in its optimizer state (1 tensors, e.g. optimizer 0 "
        "param 0 exp_avg), which would turn the weights NaN at the first step; start from its weights with "
        f"checkpoint={poisoned} instead"), done.stderr[-2000:]
    assert not (runs["whole"].parent / "nan").exists()


def test_other_optimizer_settings_on_resume_are_refused(runs):
    """Today's main printed the new rate and kept training with the saved one."""
    last = runs["whole"] / "checkpoints" / "last.ckpt"
    done = pretrain(runs["whole"], "resume=auto", "optim.base_lr=0.001", "trainer.max_epochs=4")
    assert done.returncode == 2 and last_line(done) == (
        f"error: cannot resume {last} with other optimizer settings: optim.base_lr=0.001 (saved: 0.002); a resumed "
        "run continues the optimizer state and learning-rate schedule it saved. Drop the change to resume, or start a "
        f"new run from its weights with checkpoint={last}"), done.stderr[-2000:]


def test_resume_auto_without_a_readable_checkpoint_keeps_them_and_does_not_start_over(runs, tmp_path):
    """Today's main started again from step 0 (exit 0, one warning) and overwrote the unreadable last.ckpt."""
    run_dir = runs["whole"].parent / "unreadable"
    shutil.copytree(runs["whole"], run_dir)
    names = sorted(path.name for path in (run_dir / "checkpoints").glob("*.ckpt"))
    for path in (run_dir / "checkpoints").glob("*.ckpt"):
        path.write_bytes(path.read_bytes()[:1000])  # cut short
    for attempt in range(2):  # the second time, they are already aside
        done = pretrain(run_dir, "resume=auto", "trainer.max_epochs=4")
        assert done.returncode == 2 and last_line(done) == (
            f"error: resume=auto: no checkpoint of {run_dir} can be resumed from; moved aside: "
            f"{', '.join(name + '.unreadable' for name in names)}. Resume from another file with resume=<.ckpt>, or "
            "start the run over without resume=auto (resume=null)"), done.stderr[-2000:]
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == [f"{name}.unreadable" for name in names]


def test_the_preemption_handler_is_installed_before_the_heavy_imports():
    """Today's main installed it after importing Hydra: SIGUSR1 in a run's first ~0.3 s killed it (rc -10)."""
    code = """if True:
        import runpy, signal, sys
        real = signal.signal
        def spy(signum, handler):
            if signum == signal.SIGUSR1:
                print("loaded:", sorted(m for m in ("hydra", "torch", "lightning", "timm") if m in sys.modules))
                raise SystemExit(0)
            return real(signum, handler)
        signal.signal = spy
        sys.argv = ["swinssl.pretrain", "recipe=demo"]
        runpy.run_module("swinssl.pretrain", run_name="__main__")
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "loaded: []", done.stdout + done.stderr[-2000:]


def test_a_packed_run_preempted_then_killed_resumes_exactly(tmp_path):
    """Packed pretraining under test_resume's conditions (two loader workers, drop path): stopped by SIGUSR1 at one
    random step and killed at a later one, resumed with resume=auto each time, it ends at the uninterrupted run's
    step with its weights bit for bit (the uniform masks are drawn again as they were)."""
    shards = random_image_shards(tmp_path, images=8)
    stop = random.randint(1, 6)
    kill = random.randint(stop + 1, 11)

    def run(name: str, **interrupt):
        return preempted_run([*EPOCHS, *PACKED, f"data.shards={shards}", f"out_dir={tmp_path / name}", "resume=auto",
                              "checkpointing.last_every_n_steps=3"], **interrupt)

    def saved_step(name: str) -> int:
        return torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]

    assert run("whole", signal_at=[]).returncode == 0
    done = run("resumed", signal_at=[stop])
    assert done.returncode == 0 and "preemption signal: saving" in done.stdout + done.stderr, done.stderr[-3000:]
    assert saved_step("resumed") == stop
    done = run("resumed", signal_at=[], kill_at=kill)
    assert done.returncode == -9 and "(resuming " in done.stdout + done.stderr
    assert stop <= saved_step("resumed") < kill  # the stop's save, or a later step-3 one before the kill
    done = run("resumed", signal_at=[])
    assert done.returncode == 0 and "(resuming " in done.stdout + done.stderr, done.stderr[-3000:]
    whole = scalars(tmp_path / "whole", "train/loss")
    assert len(whole) == 12
    final = {name: torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)
             for name in ("whole", "resumed")}
    assert final["resumed"]["global_step"] == 12 and final["resumed"]["hyper_parameters"]["packing"] == "uniform"
    for key, weights in final["whole"]["state_dict"].items():
        assert torch.equal(final["resumed"]["state_dict"][key], weights), (stop, kill, key)
