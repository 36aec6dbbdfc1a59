"""``python -m swinssl.bench threads``: training images/s of the demo pretraining for loader workers x torch threads.

Each setting runs the real command, ``python -m swinssl.pretrain recipe=demo data.num_workers=W threads=T``,
for ``--steps`` optimizer steps in its own process, and reads the throughput the run logged to TensorBoard
(Lightning's ThroughputMonitor, samples/s over each logging window; the first window, which includes the
start-up, is left out). ``auto`` is swinssl's default, ``threads=null``: the faster of the process's share of
the cores and that share less one per loader worker, measured while training. On a small machine, threads
that compete with the loader workers or with other jobs for the cores make a step many times slower, and
threads beside idle workers make it faster: this table shows where the default lands against fixed counts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from swinssl.bench.report import Stopwatch, cpu_name, finish, progress_bar


def run_setting(workers: int, threads: int | None, steps: int, folder: Path) -> float:
    """Median images/s of one demo pretraining run with ``workers`` loader workers and ``threads`` torch threads."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = folder / f"w{workers}-t{threads or 'auto'}"
    command = [sys.executable, "-m", "swinssl.pretrain", "recipe=demo", f"data.num_workers={workers}",
               f"threads={'null' if threads is None else threads}", f"trainer.max_steps={steps}",
               "trainer.log_every_n_steps=5", "trainer.enable_progress_bar=false", "images_every_n_steps=100000",
               f"checkpointing.last_every_n_steps={steps}", "checkpointing.every_n_epochs=null", f"out_dir={out}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SWINSSL_RUN_ID", None)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    events = EventAccumulator(str(out), size_guidance={"scalars": 0})
    events.Reload()
    rates = [event.value for event in events.Scalars("train/device/samples_per_sec")]
    return statistics.median(rates[1:] or rates)


def run(args: argparse.Namespace, command: str) -> None:
    workers = [0] if args.quick else args.workers
    threads: list[int | None] = [None] if args.quick else [*args.threads, None]
    steps = 10 if args.quick else args.steps
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = []
    with Stopwatch() as wall, tempfile.TemporaryDirectory() as folder, progress_bar() as progress:
        task = progress.add_task("settings", total=len(workers) * len(threads))
        for worker_count in workers:
            for thread_count in threads:
                rate = run_setting(worker_count, thread_count, steps, Path(folder))
                rows.append({"workers": worker_count, "threads": thread_count, "images_per_s": round(rate, 1)})
                progress.advance(task)
    best = max(row["images_per_s"] for row in rows)
    print("| loader workers | torch threads | images/s | best / this |\n|---|---|---|---|")
    for row in rows:
        shown = row["threads"] if row["threads"] is not None else "auto (measured)"
        print(f"| {row['workers']} | {shown} | {row['images_per_s']:.1f} | {best / row['images_per_s']:.2f} |")
    print(f"\n{cpu_name()}, {cores} cores; demo pretraining (128 px, batch 16), {steps} steps per setting.")
    finish(args, command, wall, {"cores": cores, "cpu": cpu_name(), "steps": steps, "rows": rows})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="loader workers to try (default 1 2)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch threads to try besides the default (default 1 2)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per setting (default 60)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--quick", action="store_true", help="one short run with the defaults: checks the plumbing")
