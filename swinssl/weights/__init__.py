"""Checkpoints in and out: format detection, loading at any size and window, 2D->3D inflation, export to timm."""

from swinssl.weights.formats import Checkpoint, parse_checkpoint, swinssl_metadata, to_timm
from swinssl.weights.inflate import create_video_encoder, inflate_checkpoint
from swinssl.weights.io import CheckpointError, checkpoint_file, read_checkpoint
from swinssl.weights.transfer import LoadReport, create_encoder, load_checkpoint, load_into, resize_bias_table

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "LoadReport",
    "checkpoint_file",
    "create_encoder",
    "create_video_encoder",
    "inflate_checkpoint",
    "load_checkpoint",
    "load_into",
    "parse_checkpoint",
    "read_checkpoint",
    "resize_bias_table",
    "swinssl_metadata",
    "to_timm",
]
