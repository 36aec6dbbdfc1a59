"""What every benchmark shares: its settings from the command line, the stopwatch, the progress bar, the machine's
name, and the closing lines and JSON record of a run."""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def settings(args: argparse.Namespace, keys: Iterable[str], quick: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A benchmark's configuration fields: ``quick`` under ``--quick``, then each of ``keys`` the command line gives."""
    chosen = dict(quick or {}) if args.quick else {}
    chosen.update({key: getattr(args, key) for key in keys if getattr(args, key) is not None})
    return chosen


class Stopwatch:
    """The wall seconds of the ``with`` block: what a benchmark measured, its set-up included."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


def finish(args: argparse.Namespace, command: str, wall: Stopwatch, record: Mapping[str, Any], where: str = "") -> None:
    """The lines every run ends with (the command that reruns it, the wall time and ``where`` it ran) and, with
    ``--json``, the record of its figures after the same two."""
    print(f"command: {command}\nwall time: {wall.seconds:.0f} s{where}")
    if args.json:
        write_json(args.json, {"command": command, "wall_s": round(wall.seconds, 1), **record})


def progress_bar() -> Progress:
    """A transient bar: description, bar, done/total, elapsed."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_name(device: torch.device) -> str:
    """The GPU and its memory, or the CPU and the threads torch uses on it."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def write_json(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=list) + "\n")


class SavedTensorMeter:
    """Bytes of the distinct storages autograd saves for backward while this context is open: on a CPU,
    the activation memory of a training step, which ``torch.cuda.max_memory_allocated`` gives on a GPU.

    Views of one storage count once, and so do the storages of ``exclude`` (parameters and buffers: they
    are resident anyway, not activations). ``tag`` names where the bytes go (``by_tag``), for callers that
    attribute them to parts of a model.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self.excluded = {tensor.untyped_storage()._cdata for tensor in exclude}
        self.seen: set[int] = set()
        self.by_tag: Counter = Counter()
        self.tag: Any = None
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    @property
    def total(self) -> int:
        return sum(self.by_tag.values())

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in self.excluded and key not in self.seen:  # the graph keeps it alive: no reuse of the key
            self.seen.add(key)
            self.by_tag[self.tag] += storage.nbytes()
        return tensor.detach()  # the tensor itself would tie a saved output to its own grad_fn: a leaked cycle

    def __enter__(self) -> "SavedTensorMeter":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)
