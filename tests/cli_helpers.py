"""Running the real ``python -m swinssl.*`` CLIs from tests, and a tiny model's overrides."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

# A ~30k-parameter Swin V2 at 64 px: 16 px mask units, windows 2/2/2/2 (clipped at the last stage).
TINY = [
    "recipe=demo", "model.img_size=64", "model.window_size=2", "simmim.mask_patch_size=16",
    "model.encoder.embed_dim=16", "model.encoder.depths=[1,1,1,1]", "model.encoder.num_heads=[1,2,2,4]",
    "data.batch_size=4", "data.num_workers=0", "data.epoch_size=16", "data.shuffle_buffer=8",
    "trainer.log_every_n_steps=1", "trainer.enable_model_summary=false",
]


def run_cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    env.pop("SWINSSL_RUN_ID", None)
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, env=env)


def random_image_shards(folder: Path, images: int = 8, maxcount: int = 4) -> str:
    """``images`` random 72 px PNGs written into shards by the real make_shards CLI; returns the shard folder."""
    root = folder / "images" / "a"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(images):
        Image.fromarray(rng.integers(0, 255, (72, 72, 3), dtype=np.uint8)).save(root / f"{index}.png")
    done = run_cli("swinssl.make_shards", str(root.parent), str(folder / "shards"), "--maxcount", str(maxcount))
    assert done.returncode == 0, done.stderr
    return str(folder / "shards")


def fake_command(folder: Path, name: str, output: str) -> Path:
    """An executable ``name`` on a PATH folder that appends its arguments to ``name``.log and prints ``output``."""
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(f'#!/bin/sh\necho "$@" >> "{folder / name}.log"\necho "{output}"\n')
    path.chmod(0o755)
    return folder


def slurm_task_env(job_id: str, bin_dir: Path) -> dict[str, str]:
    """The environment of srun task 0 of a one-task SLURM job, with stand-in commands from ``bin_dir`` first on PATH."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "SLURM_JOB_ID": job_id, "SLURM_JOB_NAME": "swinssl-demo", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
           "SLURM_NODEID": "0", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NODELIST": "localhost"}
    env.pop("SWINSSL_RUN_ID", None)
    return env


def quick_bench(name: str, folder: Path, *args: str) -> tuple[str, object]:
    """Run ``python -m swinssl.bench <name> --quick [args] --json`` (it must succeed); what it printed, and its JSON."""
    out = folder / f"{name}.json"
    done = run_cli("swinssl.bench", name, "--quick", *args, "--json", str(out), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())
