"""swinssl: Swin Transformer V2 self-supervised pretraining (SimMIM) and transfer.

The public names load on first use, so command-line tools that need only part of the package
(``python -m swinssl.make_shards``) start without importing Lightning and timm.
"""

from swinssl.lazy import lazy_exports

_PUBLIC = {
    "ImageClassifier": "swinssl.tasks",
    "Segmenter": "swinssl.tasks",
    "MaskGenerator": "swinssl.masking",
    "SimMIM": "swinssl.tasks",
    "VideoMaskGenerator": "swinssl.masking",
    "VideoClassifier": "swinssl.tasks",
    "create_encoder": "swinssl.weights",
    "create_video_encoder": "swinssl.weights",
}
__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
