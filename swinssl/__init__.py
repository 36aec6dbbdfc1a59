"""swinssl: Swin Transformer V2 self-supervised pretraining (SimMIM) and transfer.

The public names load on first use, so command-line tools that need only part of the package
(``python -m swinssl.make_shards``) start without importing Lightning and timm.
"""

from importlib import import_module

_PUBLIC = {
    "ImageClassifier": "swinssl.tasks",
    "MaskGenerator": "swinssl.masking",
    "SimMIM": "swinssl.tasks",
    "VideoClassifier": "swinssl.tasks",
    "create_encoder": "swinssl.weights",
    "create_video_encoder": "swinssl.weights",
}
__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'swinssl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
