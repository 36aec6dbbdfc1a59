"""Checkpoints in and out, one way: :mod:`~swinssl.weights.read` turns any input into a :class:`Checkpoint` (hub
names resolved, files read by :mod:`~swinssl.weights.io`, formats told apart and parsed by
:mod:`~swinssl.weights.formats`), which :mod:`~swinssl.weights.transfer` loads into a model at any size and window;
2D->3D inflation; export to timm, HF transformers and ONNX beside their readers."""

from swinssl.weights.checkpoint import Checkpoint, CheckpointError
from swinssl.weights.formats import parse_checkpoint, swinssl_metadata, to_timm
from swinssl.weights.hf import to_hf
from swinssl.weights.factories import create_encoder, create_video_encoder, encoder_from_spec
from swinssl.weights.inflate import inflate_checkpoint, inflate_decoder
from swinssl.weights.io import checkpoint_file, read_checkpoint
from swinssl.models.windows import resize_bias_table
from swinssl.weights.read import load_checkpoint
from swinssl.weights.transfer import LoadReport, load_into

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "LoadReport",
    "checkpoint_file",
    "create_encoder",
    "create_video_encoder",
    "encoder_from_spec",
    "inflate_checkpoint",
    "inflate_decoder",
    "load_checkpoint",
    "load_into",
    "parse_checkpoint",
    "read_checkpoint",
    "resize_bias_table",
    "swinssl_metadata",
    "to_hf",
    "to_timm",
]
