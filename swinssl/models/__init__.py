"""Pure nn.Modules: no Lightning, no I/O.

Names load on first use, so what needs only the registry (presets, families, geometry checks) does not
import torch and timm.
"""

from swinssl.lazy import lazy_exports

_PUBLIC = {
    "MaskedImageModel": ".simmim",
    "MaskedVideoModel": ".simmim",
    "PackedMaskedImageModel": ".simmim",
    "PackedMaskedVideoModel": ".simmim",
    "SimMIMDecoder": ".simmim",
    "SimMIMVideoDecoder": ".simmim",
    "masked_l1_loss": ".simmim",
    "normalize_targets": ".simmim",
    "SwinEncoder": ".swin",
    "SwinV2Encoder": ".swin",
    "build_encoder": ".swin",
    "VideoSwinEncoder": ".video_swin",
    "build_video_encoder": ".video_swin",
    "describe_encoder": ".summary",
    "PRESETS": ".registry",
    "family_of": ".registry",
}
__all__ = sorted(_PUBLIC)

__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
