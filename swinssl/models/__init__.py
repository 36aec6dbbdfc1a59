"""Pure nn.Modules: no Lightning, no I/O."""

from swinssl.models.simmim import MaskedImageModel, SimMIMDecoder, masked_l1_loss, normalize_targets
from swinssl.models.swinv2 import PRESETS, SwinV2Encoder, create_encoder

__all__ = [
    "PRESETS",
    "MaskedImageModel",
    "SimMIMDecoder",
    "SwinV2Encoder",
    "create_encoder",
    "masked_l1_loss",
    "normalize_targets",
]
