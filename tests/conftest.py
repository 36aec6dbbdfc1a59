"""What several test modules share: running the real ``python -m swinssl.*`` CLIs, a tiny model's overrides,
shards and videos made on the spot, models perturbed away from their identity initialization, and figure checks."""

import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import torch
import webdataset as wds
from PIL import Image

from swinssl.datamodules import resolve_shards

# A 0.3M-parameter Swin V2 at 64 px: 16 px mask units, windows 2/2/2/2 (clipped at the last stage).
TINY = [
    "recipe=demo", "model.img_size=64", "model.window_size=2", "simmim.mask_patch_size=16",
    "model.encoder.embed_dim=16", "model.encoder.depths=[1,1,1,1]", "model.encoder.num_heads=[1,2,2,4]",
    "data.batch_size=4", "data.num_workers=0", "data.epoch_size=16", "data.shuffle_buffer=8",
    "trainer.log_every_n_steps=1", "trainer.enable_model_summary=false",
]
# Uniform packing at the tiny sizes: 32 px units (the 64 px images' coarsest merge unit), 3 of 4 hidden.
PACKED = ["simmim.packing=uniform", "simmim.mask_patch_size=32", "simmim.mask_ratio=0.75"]


def pytest_configure(config):
    """Triton kernels run in Triton's CPU interpreter in these tests. Triton reads the flag once, when it is
    first imported (timm imports it), so it is set here, before any test module is collected. The GPU tests
    (``-m gpu``) run the compiled kernels and leave it alone."""
    if "gpu" not in config.getoption("markexpr").replace("not gpu", ""):
        os.environ.setdefault("TRITON_INTERPRET", "1")
    pin_worker()


def pin_worker() -> None:
    """Under pytest-xdist, this worker and every process it starts (CLIs, notebook kernels, loader workers) run on
    the worker's own share of the cores, with as many torch threads. Without it each worker's torch, and each CLI
    it starts, would spin a thread per core on cores the other workers use: tests ran up to 6x slower."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return
    cores, index, count = sorted(os.sched_getaffinity(0)), int(worker.removeprefix("gw")), int(count)
    mine = cores[index::count] or [cores[index % len(cores)]]  # every core used; more workers than cores share
    os.sched_setaffinity(0, mine)
    torch.set_num_threads(len(mine))


def run_cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    env.pop("SWINSSL_RUN_ID", None)
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, env=env)


def class_folders(root: Path, labels: tuple[str, ...] = ("a",), per_class: int = 8, size: tuple[int, int] = (72, 72),
                  smooth: bool = False, suffix: str = "png") -> Path:
    """A user's image folder: a subfolder per label of ``per_class`` images ``size`` (width, height) wide, uniform
    noise or, ``smooth``, photo-like gradients (noise summed along both axes, so neighbours correlate); ``root``."""
    rng = np.random.default_rng(0)
    width, height = size
    for label in labels:
        (root / label).mkdir(parents=True)
        for index in range(per_class):
            if smooth:
                field = rng.normal(size=(12, 12, 3)).cumsum(0).cumsum(1)
                pixels = (255 * (field - field.min()) / np.ptp(field)).astype(np.uint8)
                image = Image.fromarray(pixels).resize(size, Image.BICUBIC)
            else:
                image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
            image.save(root / label / f"{index}.{suffix}")
    return root


def cli_refusal(module: str, *args: str, monkeypatch, capsys) -> tuple[int, str]:
    """``python -m <module> ARGS`` run in this process, for a command line it must refuse: its exit code and
    stderr. Saves a process start (seconds) where the test is the check, not the process; what the CLI sets
    up in the process before refusing (signal handler, Hydra, logging handlers) is put back."""
    import importlib
    import logging
    import signal

    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.setattr(sys, "argv", [module, *args])
    monkeypatch.delenv("SWINSSL_RUN_ID", raising=False)
    root = logging.getLogger()
    handlers, level, usr1 = list(root.handlers), root.level, signal.getsignal(signal.SIGUSR1)
    capsys.readouterr()
    try:
        importlib.import_module(module).main()
        code = 0
    except SystemExit as exit:
        code = exit.code
    finally:
        signal.signal(signal.SIGUSR1, usr1)
        root.handlers[:] = handlers
        root.setLevel(level)  # not .level =: setLevel also clears the enabled-level caches of every logger
        GlobalHydra.instance().clear()
    return code, capsys.readouterr().err


def random_image_shards(folder: Path, images: int = 8, maxcount: int = 4) -> str:
    """``images`` random 72 px PNGs written into shards by the real make_shards CLI; returns the shard folder."""
    root = class_folders(folder / "images", per_class=images)
    done = run_cli("swinssl.make_shards", str(root), str(folder / "shards"), "--maxcount", str(maxcount))
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


def make_shards_cli(*args) -> subprocess.CompletedProcess:
    """``python -m swinssl.make_shards ARGS`` in a subprocess."""
    cmd = [sys.executable, "-m", "swinssl.make_shards", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

def read_back(pattern: str) -> list[dict]:
    return list(wds.WebDataset(resolve_shards(pattern).urls, shardshuffle=False, empty_check=False))

def audio_only_mp4() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream("aac", rate=16000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            output.mux(stream.encode(frame))
        output.mux(stream.encode())
    return buffer.getvalue()

def decode_all(data: bytes) -> np.ndarray:
    """The reference: every frame, in order, without seeking."""
    with av.open(io.BytesIO(data)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])

def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest absolute difference over the reference's largest magnitude."""
    return float((ours - reference).abs().max() / reference.abs().max())


def hub_cache(cache: Path, repo: str, files: dict[str, bytes], refs: tuple[str, ...] = ("main",)) -> str:
    """``files`` in ``cache`` as huggingface_hub lays out a download: blobs named by sha256 (weights) or git sha1
    (small files), a snapshot folder of links per commit, refs naming the commit."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    for name, data in files.items():
        blob = (hashlib.sha256(data).hexdigest() if name.endswith((".safetensors", ".bin"))
                else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
        (folder / "blobs").mkdir(parents=True, exist_ok=True)
        (folder / "blobs" / blob).write_bytes(data)
        link = folder / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../../blobs") / blob)
    (folder / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (folder / "refs" / ref).write_text(commit)
    return commit


def trained_like(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter: fresh Swin V2 blocks are identities, which would hide transfer errors."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return model.eval()

def official_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A model's weights as Microsoft's code saves them: merges at the end of a stage, ``head.``, buffers kept."""
    state = {}
    for key, value in {**model.state_dict(), **dict(model.named_buffers())}.items():
        if key.endswith("k_bias"):
            continue  # timm-only zero buffer
        if match := re.match(r"layers\.(\d+)\.downsample\.(.*)", key):
            key = f"layers.{int(match[1]) - 1}.downsample.{match[2]}"
        key = key.replace("head.fc.", "head.")
        state[key] = value.clone()
    return state

FIGURES = {
    "01_quickstart": ["masks", "packing", "reconstruction_before", "reconstruction_after", "loss_curves", "attention"],
    "02_resolution_transfer": ["bias_maps", "transfer"],
    "03_video_inflation": ["windows_stage1", "windows_stage2", "loss_curves", "video_reconstruction_before",
                           "video_reconstruction_after"],
    "04_from_official_weights": ["loss_curves"],
    "05_segmentation": ["demo"],
}

def check_figure(path: Path) -> None:
    """A real picture: it decodes, is not tiny, and is not one flat colour."""
    assert path.is_file(), f"missing figure {path.name}"
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert min(pixels.shape) >= 100, f"{path.name} is only {pixels.shape}"
    assert pixels.std() > 10, f"{path.name} is nearly blank (pixel std {pixels.std():.1f})"


def write_mask_pairs(folder: Path, names: list[str], size: tuple[int, int] = (24, 32), labels: int = 3,
                     mask_folder: Path | None = None, seed: int = 0) -> None:
    """``NAME.jpg`` noise images in ``folder`` and their masks ``NAME.png`` (grey, random labels below ``labels``,
    in 4 x 4 blocks) in ``mask_folder`` (default: beside them); ``size`` is (height, width)."""
    rng = np.random.default_rng(seed)
    mask_folder = mask_folder or folder
    for path in (folder, mask_folder):
        path.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{name}.jpg")
        blocks = rng.integers(0, labels, (-(-size[0] // 4), -(-size[1] // 4)), dtype=np.uint8)
        Image.fromarray(blocks.repeat(4, 0).repeat(4, 1)[: size[0], : size[1]]).save(mask_folder / f"{name}.png")


def official_simmim_checkpoint(model: torch.nn.Module) -> dict:
    """An image SimMIM model as Microsoft's SimMIM code saves it: ``encoder.``/``decoder.`` in ``model``."""
    state = {f"encoder.{key}": value for key, value in official_layout(model.encoder).items()}
    state.update({f"decoder.{key}": value for key, value in model.decoder.state_dict().items()})
    return {"model": state}
