"""Preempted and resumed runs: one checkpoint per stop, the run reaches the step and the learning rate an
uninterrupted run reaches, and its TensorBoard points continue on the same steps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY, random_image_shards

HERE = Path(__file__).parent
# 16 samples per epoch in batches of 4: 4 steps an epoch, 12 in all.
EPOCHS = [*TINY, "trainer.max_epochs=3", "trainer.max_steps=-1", "trainer.enable_progress_bar=false", "resume=auto"]


def preempted_run(args: list[str], signal_at: list[int]) -> subprocess.CompletedProcess:
    """The pretraining CLI, sent SIGUSR1 (as SLURM preempts) when the optimizer steps ``signal_at`` end."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SIGNAL_AT_STEPS": ",".join(map(str, signal_at))}
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
    """An uninterrupted 3-epoch run, and the same run preempted after steps 4 (an epoch's last batch) and 9
    (mid-epoch), each time resumed with ``resume=auto``."""
    root = tmp_path_factory.mktemp("resume")
    shards = random_image_shards(root, images=8)
    runs = {"whole": root / "whole", "preempted": root / "preempted"}
    done = preempted_run([*EPOCHS, f"data.shards={shards}", f"out_dir={runs['whole']}"], [])
    assert done.returncode == 0, done.stderr[-3000:]
    stops = [4, 9]
    for attempt in range(len(stops) + 1):
        done = preempted_run([*EPOCHS, f"data.shards={shards}", f"out_dir={runs['preempted']}"], stops)
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
