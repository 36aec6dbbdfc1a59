"""Any reference to weights -> a :class:`~swinssl.weights.checkpoint.Checkpoint`, one way: hub names and URLs resolve
to cached files (:mod:`swinssl.weights.hub`), files and folders are read (:mod:`swinssl.weights.io`), and the loaded
dict is parsed by its format (:mod:`swinssl.weights.formats`). Loading into a model is :mod:`swinssl.weights.transfer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from swinssl.checkpoint_names import is_remote
from swinssl.weights.checkpoint import Checkpoint, CheckpointError
from swinssl.weights.formats import parse_checkpoint
from swinssl.weights.hub import fetch
from swinssl.weights.io import checkpoint_file, non_finite_tensors, read_checkpoint


def load_checkpoint(checkpoint: str | Path | Mapping[str, Any] | Checkpoint, trust_checkpoint: bool = False) -> Checkpoint:
    """Any supported checkpoint (a file, an HF ``save_pretrained`` folder, a run folder: its newest ``last.ckpt``, a
    hub name or URL, a loaded dict or state dict) in canonical form; weights holding NaN or inf are refused."""
    if isinstance(checkpoint, Checkpoint):
        return checkpoint
    fetched = fetch(checkpoint) if is_remote(checkpoint) else None
    if isinstance(checkpoint, Mapping):
        raw, origin = checkpoint, "<state dict>"
    else:
        path = fetched.path if fetched else checkpoint_file(checkpoint)
        raw, origin = read_checkpoint(path, trust_checkpoint), fetched.name if fetched else str(path)
    parsed = parse_checkpoint(raw, origin)
    if fetched:
        parsed.sha256 = fetched.sha256
        parsed.conversions.insert(0, f"read {fetched.path} (sha256 {fetched.sha256})")
    bad = non_finite_tensors({**parsed.state, **{f"decoder.{k}": v for k, v in (parsed.decoder or {}).items()},
                              **{f"task.{k}": v for k, v in (parsed.task_state or {}).items()}})
    if bad:
        raise CheckpointError(f"{parsed.origin} holds NaN or inf values in {len(bad)} tensors (e.g. {bad[0]}); "
                              "its weights cannot be used")
    return parsed
