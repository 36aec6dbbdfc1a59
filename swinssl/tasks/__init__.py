"""LightningModules (training tasks) and their optimization helpers."""

from swinssl.tasks.classification import ImageClassifier
from swinssl.tasks.simmim import SimMIM

__all__ = ["ImageClassifier", "SimMIM"]
