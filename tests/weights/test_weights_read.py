"""The read side of the load path: any input -> Checkpoint in one direction (hub -> io -> formats), with a run's
task tensors kept so that nothing reads the file again by its name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import swinssl.weights
from swinssl import Segmenter
from swinssl.weights import CheckpointError, load_checkpoint
from swinssl.weights.upernet import head_weights

TINY = dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4])
WEIGHTS = Path(swinssl.weights.__file__).parent


def weights_imports() -> dict[str, set[str]]:
    """Module name -> the swinssl.weights modules it imports (at any depth of its body)."""
    graph = {}
    for path in WEIGHTS.glob("*.py"):
        found = {node.module.rpartition(".")[2] for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("swinssl.weights.")}
        graph[path.stem] = found
    return graph


def test_the_load_path_runs_one_way():
    graph = weights_imports()
    assert not graph["transfer"] & {"io", "hub", "read"}, "transfer loads a Checkpoint; reading is read.py's"
    assert not graph["formats"] & {"read", "transfer", "factories"} and not graph["io"] - {"checkpoint"}

    def reaches(start: str, seen: frozenset = frozenset()) -> None:
        assert start not in seen, f"import cycle through {start}"
        for name in graph.get(start, ()):
            reaches(name, seen | {start})

    for module in graph:
        reaches(module)


def test_a_segmenter_read_from_a_loaded_dict_keeps_its_heads():
    """Before: the heads were read again from the file the checkpoint's origin names, which a dict, a hub name or a
    URL is not."""
    task = Segmenter(encoder=dict(arch="swinv2", img_size=64, window_size=4, drop_path_rate=0.0, **TINY),
                     num_classes=5, upernet=dict(channels=24, auxiliary_channels=12))
    saved = task.state_dict()
    checkpoint = load_checkpoint({"state_dict": saved, "hyper_parameters": dict(task.hparams)})
    heads = head_weights(checkpoint)
    expected = {key.removeprefix("model."): value for key, value in saved.items()
                if key.startswith(("model.decode_head.", "model.auxiliary_head."))}
    assert heads.keys() == expected.keys() and len(heads) > 0
    assert all(torch.equal(heads[key], expected[key]) for key in heads)
    again = Segmenter.from_checkpoint(checkpoint)
    assert all(torch.equal(again.model.state_dict()[key], value) for key, value in expected.items())


def test_non_finite_head_weights_are_refused_as_encoder_weights_are():
    """A run's task tensors (segmentation heads, a packed decoder's 3x3 layer) are loaded too: before, NaN there
    passed the check that refuses it in the encoder and decoder."""
    task = Segmenter(encoder=dict(arch="swinv2", img_size=64, window_size=4, drop_path_rate=0.0, **TINY),
                     num_classes=5, upernet=dict(channels=24, auxiliary_channels=12))
    saved = task.state_dict()
    saved["model.decode_head.classifier.weight"].view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match=r"holds NaN or inf values in 1 tensors \(e.g. task.decode_head.classifier"):
        load_checkpoint({"state_dict": saved, "hyper_parameters": dict(task.hparams)})
