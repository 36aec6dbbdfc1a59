"""Pretraining with two CPU processes (DDP over gloo): disjoint shard streams, equal batch counts, equal weights."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import run_cli

LEVELS = [40, 90, 140, 190]  # grey level of the images of shard 0, 1, 2, 3


def test_two_ranks_read_disjoint_shards_run_the_same_batches_and_end_identical(tmp_path):
    images = tmp_path / "images" / "a"
    images.mkdir(parents=True)
    for shard, level in enumerate(LEVELS):
        for index in range(6):  # with --no-shuffle, make_shards keeps name order: 6 per shard
            Image.fromarray(np.full((40, 40, 3), level, np.uint8)).save(images / f"{shard}-{index}.png")
    done = run_cli("swinssl.make_shards", str(images.parent), str(tmp_path / "shards"), "--maxcount", "6",
                   "--no-shuffle")
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "shards").glob("*.tar"))) == 4

    worker = Path(__file__).with_name("ddp_worker.py")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(worker),
         str(tmp_path / "shards"), str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [rank["world_size"] for rank in ranks] == [2, 2]

    seen = [{level for batch in rank["levels"] for level in batch} for rank in ranks]
    assert seen[0] == {LEVELS[0], LEVELS[2]} and seen[1] == {LEVELS[1], LEVELS[3]}  # shards[rank::2], nothing else
    # epoch_size 32 / (batch 4 x 2 ranks) = 4 batches per rank per epoch, 2 epochs
    assert [len(rank["levels"]) for rank in ranks] == [8, 8]
    assert [rank["global_step"] for rank in ranks] == [8, 8]
    assert ranks[0]["initial"] == ranks[1]["initial"]
    assert ranks[0]["final"] == ranks[1]["final"] != ranks[0]["initial"]


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def kill_tree(pid: int) -> None:
    import os
    import signal

    for process in descendants(pid):
        try:
            os.kill(process, signal.SIGKILL)
        except ProcessLookupError:
            pass


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_nodes_on_one_machine_share_one_run_and_resume_after_both_are_killed(tmp_path):
    """Two "nodes" (two torchrun launchers, static localhost rendezvous, gloo) run the real pretraining CLI: each
    reads its own half of the shards, both use one run directory named by the rendezvous id, only rank 0 writes,
    and after killing both mid-run, starting both with resume=auto continues from the last checkpoint."""
    import os
    import time

    import torch

    from conftest import TINY, random_image_shards

    shards = random_image_shards(tmp_path, images=16, maxcount=4)  # 4 shards
    port = free_port()

    def launch(node: int, *extra: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                   "--node-rank", str(node), "--master-addr", "localhost", "--master-port", str(port),
                   "--rdzv-id", "twonodes", "-m", "swinssl.pretrain", *TINY, f"data.shards={shards}",
                   "trainer.num_nodes=2", "trainer.devices=1", "trainer.accelerator=cpu", "trainer.strategy=ddp",
                   "trainer.max_epochs=-1", "trainer.enable_progress_bar=false", "checkpointing.last_every_n_steps=2",
                   "resume=auto", *extra]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("SWINSSL_RUN_ID", None)
        return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    run_dir = tmp_path / "runs" / "demo" / "twonodes"
    last = run_dir / "checkpoints" / "last.ckpt"
    nodes = [launch(node, "trainer.max_steps=100000") for node in (0, 1)]
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (last.exists() and torch.load(last, weights_only=True)["global_step"] >= 4):
            time.sleep(0.5)
    finally:
        for node in nodes:  # both nodes die at once, workers included
            kill_tree(node.pid)
    logs = [node.communicate(timeout=60)[0] for node in nodes]
    saved = torch.load(last, weights_only=True)["global_step"]
    assert saved >= 4, logs[0][-3000:]
    assert "rank 0 of 2 reads 2 of 4 shards (train-000000.tar, train-000002.tar)" in logs[0]
    assert "rank 1 of 2 reads 2 of 4 shards (train-000001.tar, train-000003.tar)" in logs[1]
    assert [path.name for path in (tmp_path / "runs" / "demo").iterdir()] == ["twonodes"]  # one run id
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1 and (run_dir / "config.yaml").exists()

    nodes = [launch(node, f"trainer.max_steps={saved + 2}") for node in (0, 1)]
    try:
        logs = [node.communicate(timeout=300)[0] for node in nodes]
    finally:
        for node in nodes:
            kill_tree(node.pid)
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    resumed = [re.search(r"resuming (runs/demo/twonodes/checkpoints/\S+)\)", log) for log in logs]
    assert all(resumed) and resumed[0][1] == resumed[1][1], logs[1][-3000:]  # both from the newest checkpoint
    assert torch.load(last, weights_only=True)["global_step"] == saved + 2, logs[0][-4000:]
