"""LightningModules (training tasks) and their optimization helpers."""

from swinssl.tasks.classification import ImageClassifier
from swinssl.tasks.segmentation import Segmenter
from swinssl.tasks.simmim import SimMIM
from swinssl.tasks.video import VideoClassifier

__all__ = ["ImageClassifier", "Segmenter", "SimMIM", "VideoClassifier"]
