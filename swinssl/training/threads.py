"""How many torch threads a training process runs: the candidates for this machine, and the faster one kept."""

from __future__ import annotations

import logging
import os
import statistics
import time

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)


def thread_candidates(threads: int | None, num_workers: int, processes: int) -> list[int]:
    """Torch thread counts for one training process, safest first: ``[threads]`` when given; else the cores this
    process may use (its CPU affinity, shared by the node's ``processes``) less one per loader worker, and,
    when that differs, all of its cores (:class:`ThreadTuning` keeps the faster).

    Loader workers decode with one thread each (torch's default in workers; OpenCV is set so in the decode
    stage). Threads that compete with the workers, or with other jobs, for the cores can make a step many
    times slower; threads beside idle workers make it faster. Which holds depends on the data and the
    machine, so it is measured (``python -m swinssl.bench threads``).
    """
    if threads is not None:
        return [threads]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = max(1, cores // max(1, processes))
    return sorted({max(1, share - num_workers), share})


class ThreadTuning(Callback):
    """Keeps the faster of the torch thread counts ``candidates`` (:func:`thread_candidates`).

    Every ``every_n_steps`` batches (first after ``start`` batches) each count runs ``probe`` batches; the one
    with the shortest median batch time (the first batch after a switch left out) is kept until the next probe.
    A shared machine's load changes, so the choice is checked again. One candidate: nothing to measure.
    """

    def __init__(self, candidates: list[int] | None = None, probe: int = 6, every_n_steps: int = 500,
                 start: int = 5) -> None:
        self.candidates = candidates or []
        self.probe, self.every_n_steps, self.start = probe, every_n_steps, start
        self.times: dict[int, list[float]] = {}
        self.probing: list[int] = []  # the counts still to try in the current probe
        self.chosen: int | None = None
        self.batches = 0
        self._started = 0.0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if len(self.candidates) < 2:
            return
        due = self.batches >= self.start and (self.batches - self.start) % self.every_n_steps == 0
        if due and not self.probing:
            self.probing, self.times = list(self.candidates), {count: [] for count in self.candidates}
            torch.set_num_threads(self.probing[0])
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if len(self.candidates) < 2:
            return
        self.batches += 1
        if not self.probing:
            return
        count = self.probing[0]
        self.times[count].append(time.perf_counter() - self._started)
        if len(self.times[count]) < self.probe:
            return
        self.probing.pop(0)
        if self.probing:
            torch.set_num_threads(self.probing[0])
            return
        medians = {count: statistics.median(times[1:]) for count, times in self.times.items()}
        best = min(medians, key=medians.get)
        if best != self.chosen:
            others = ", ".join(f"{count}: {1e3 * median:.0f} ms" for count, median in medians.items())
            log.info("torch threads: %d (median batch time %s)", best, others)
        self.chosen = best
        torch.set_num_threads(best)
