"""LightningModules (training tasks) and their optimization helpers."""

from swinssl.tasks.simmim import SimMIM

__all__ = ["SimMIM"]
