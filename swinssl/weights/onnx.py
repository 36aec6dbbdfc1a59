"""ONNX out: a built model written as an ONNX graph with a dynamic batch, metadata in the file, and verified with
onnxruntime before the file is kept.

torch's TorchScript exporter (``dynamo=False``) writes Swin V1/V2 and Video Swin exactly; the torch.export-based
one fails on the window attention's reshapes (torch 2.14). It traces the model at one input shape, so the batch is
declared dynamic and the file is checked at two batch sizes: a graph that baked in the traced batch, or anything
else onnxruntime computes differently from PyTorch (relative error over :data:`TOLERANCE`), is refused and no file
is left. The fused (SDPA) and plain attention kernels export as they are; the others (chunked: a Python loop over
window chunks; Triton: no ONNX form) are swapped for the plain kernel, which computes the same.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from swinssl.weights.checkpoint import CheckpointError

OPSET = 17
TOLERANCE = 1e-4
EXPORTED_KERNELS = ("plain", "fused")


def require_onnxruntime() -> None:
    """One line, before any compute, when the optional packages are missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ImportError("ONNX export needs onnx and onnxruntime: pip install 'swinssl[onnx]'") from None


def exportable_kernel(kernel: str) -> str:
    return kernel if kernel in EXPORTED_KERNELS else "plain"


def to_onnx(model: nn.Module, example: torch.Tensor, out: Path, input_name: str, output_names: list[str],
            metadata: Mapping[str, Any], opset: int = OPSET) -> float:
    """Write ``model`` (evaluated on inputs shaped like ``example``, any batch) to ``out`` with ``metadata`` (values
    as JSON unless strings) in the file; returns the largest relative error onnxruntime showed against PyTorch."""
    import onnx

    model = model.eval()
    partial = out.with_name(f"{out.name}.partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch"} for name in [input_name, *output_names]}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and exporter-deprecation notes; the check below is what counts
            torch.onnx.export(model, (example,), str(partial), dynamo=False, input_names=[input_name],
                              output_names=output_names, dynamic_axes=axes, opset_version=opset)
        graph = onnx.load(str(partial))
        for key, value in {"opset": opset, **metadata}.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
        onnx.save(graph, str(partial))
        error = verify(model, partial, example, input_name)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return error


def verify(model: nn.Module, path: Path, example: torch.Tensor, input_name: str) -> float:
    """onnxruntime on ``path`` against ``model`` at batch 1 and 3 (neither is the traced batch of 2)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch in (1, 3):
        inputs = torch.randn(batch, *example.shape[1:], generator=generator)
        with torch.no_grad():
            expected = model(inputs)
        expected = list(expected) if isinstance(expected, (list, tuple)) else [expected]
        got = session.run(None, {input_name: inputs.numpy()})
        for index, (ours, theirs) in enumerate(zip(got, expected)):
            error = float((torch.from_numpy(ours) - theirs).abs().max() / theirs.abs().max().clamp_min(1e-12))
            if ours.shape != tuple(theirs.shape) or not error <= TOLERANCE:
                raise CheckpointError(
                    f"the ONNX graph computes something else than the model (output {index} at batch {batch}: "
                    f"shape {list(ours.shape)} vs {list(theirs.shape)}, relative error {error:.2g} > {TOLERANCE:g}); "
                    "no file written")
            worst = max(worst, error)
    return worst
