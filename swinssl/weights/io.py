"""Reading checkpoint files safely: weights-only unpickling, safetensors, HF ``save_pretrained`` folders, one clear
error per bad file."""

from __future__ import annotations

import collections
import json
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from swinssl.weights.checkpoint import CheckpointError


class PickledCheckpointError(CheckpointError):
    """A checkpoint holding pickled objects that a weights-only load refuses (``what`` names them)."""

    def __init__(self, message: str, what: str) -> None:
        super().__init__(message)
        self.what = what


class _PickledConfig:
    """Stands in for the yacs ``CfgNode`` official Swin/SimMIM training files carry: read as plain data."""

    def __new__(cls, *args: Any) -> collections.OrderedDict:
        return collections.OrderedDict()


# Metadata classes that official releases pickle next to the weights, read as plain dicts.
ALLOWED_METADATA = [(_PickledConfig, "yacs.config.CfgNode")]
# What is read next to the weights rides along in the loaded mapping under these names (never tensor names):
# an HF folder's config.json, and the record ``python -m swinssl.export`` writes beside a timm export.
HF_CONFIG = "config.json"
EXPORT_RECORD = "swinssl export record"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def checkpoint_file(path: str | Path) -> Path:
    """A file as is; an HF ``save_pretrained`` folder (``config.json``) as is; another folder (a run, or all runs of
    a recipe) -> the newest ``last.ckpt`` inside it."""
    path = Path(path)
    if path.is_dir() and (path / HF_CONFIG).is_file():
        return path
    if path.is_dir():
        found = sorted(path.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise FileNotFoundError(f"no last.ckpt under {path}; train one first or pass a checkpoint file")
        return found[-1]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def read_checkpoint(path: str | Path, trust_checkpoint: bool = False, mmap: bool = False) -> Mapping[str, Any]:
    """The object stored in ``path`` (a file, an HF folder, or a run folder: :func:`checkpoint_file`), loaded on the
    CPU without running pickled code, with what was read beside the weights under :data:`HF_CONFIG` /
    :data:`EXPORT_RECORD` (which only a swinssl export record beside the file gives: ``OUT.json``).

    ``trust_checkpoint=True`` allows arbitrary pickled objects (only for files you trust). ``mmap`` maps the
    tensors of a zip-format file instead of reading them (a quick look at a large file).
    """
    path = checkpoint_file(path)
    if path.is_dir():
        return _read_hf_folder(path, trust_checkpoint, mmap)
    loaded = _read_file(path, trust_checkpoint, mmap)
    record = _export_record(path.with_suffix(".json"))
    return {**loaded, EXPORT_RECORD: record} if record else loaded


def _export_record(path: Path) -> dict[str, Any] | None:
    """The record ``python -m swinssl.export --to timm`` wrote beside its weights, if that is what ``path`` is."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and {"class", "kwargs"} <= record.keys() else None


def _read_hf_folder(folder: Path, trust_checkpoint: bool, mmap: bool) -> dict[str, Any]:
    """The weights of an HF ``save_pretrained`` folder (one file, or shards listed in an index) and its config."""
    config = _json(folder / HF_CONFIG)
    for name in HF_WEIGHTS:
        if (folder / name).is_file():
            return {**_read_file(folder / name, trust_checkpoint, mmap), HF_CONFIG: config}
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set((_json(index).get("weight_map") or {}).values()))
            state: dict[str, Any] = {}
            for shard in shards:
                state.update(_read_file(folder / shard, trust_checkpoint, mmap))
            return {**state, HF_CONFIG: config}
    raise CheckpointError(f"{folder} holds {HF_CONFIG} but no weights; expected {' or '.join(HF_WEIGHTS)} "
                          "(or their .index.json shards), as save_pretrained writes them")


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot read the JSON file ({_first_line(error)})") from None


def _read_file(path: Path, trust_checkpoint: bool, mmap: bool) -> Mapping[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as error:  # noqa: BLE001 - any parse failure means a damaged file
            raise CheckpointError(f"{path}: cannot read the safetensors file ({_first_line(error)})") from None
    try:
        with torch.serialization.safe_globals(ALLOWED_METADATA):
            mapped = mmap and zipfile.is_zipfile(path)
            loaded = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint, mmap=mapped)
    except pickle.UnpicklingError as error:
        found = re.findall(r"GLOBAL ([\w.]+)", str(error)) or re.findall(r"got <class '([\w.]+)'>", str(error))
        if "Unsupported operand" in str(error) or "invalid load key" in str(error):  # text, or other bytes
            raise CheckpointError(f"{path}: cannot read the checkpoint; it is not a PyTorch checkpoint file") from None
        if trust_checkpoint or not found and "weights_only" not in str(error).lower():
            raise CheckpointError(f"{path}: cannot read the checkpoint; the file is truncated or not a PyTorch "
                                  f"checkpoint ({_first_line(error)})") from None
        what = f"a pickled {found[0]}" if found else "pickled objects other than tensors and plain containers"
        raise PickledCheckpointError(
            f"{path} holds {what}, which a weights-only load refuses; if you trust the file, "
            "opt in with trust_checkpoint=True (command line: trust_checkpoint=true)", what
        ) from None
    except Exception as error:  # noqa: BLE001 - torch.load fails on text or cut files in many ways (IndexError, ...)
        raise CheckpointError(
            f"{path}: cannot read the checkpoint; the file is truncated or not a PyTorch checkpoint "
            f"({_first_line(error)})"
        ) from None
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path}: expected a dict of weights, found a {type(loaded).__name__}")
    return loaded


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte header length and a JSON header; torch files are zip or pickle."""
    with path.open("rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def non_finite_tensors(state: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state`` that hold a NaN or an infinity."""
    return [name for name, value in state.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())]
