"""Pretraining with two CPU processes (DDP over gloo): disjoint shard streams, equal batch counts, equal weights."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from cli_helpers import run_cli

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
