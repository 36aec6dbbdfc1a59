"""Pure nn.Modules: no Lightning, no I/O."""

from swinssl.models.simmim import MaskedImageModel, SimMIMDecoder, masked_l1_loss, normalize_targets
from swinssl.models.summary import describe_encoder
from swinssl.models.swin import PRESETS, SwinEncoder, SwinV2Encoder, build_encoder, family_of, position_bias_windows
from swinssl.models.video_swin import VideoSwinEncoder, build_video_encoder, video_family_of

__all__ = [
    "PRESETS",
    "MaskedImageModel",
    "SimMIMDecoder",
    "SwinEncoder",
    "SwinV2Encoder",
    "VideoSwinEncoder",
    "build_encoder",
    "build_video_encoder",
    "describe_encoder",
    "family_of",
    "masked_l1_loss",
    "normalize_targets",
    "position_bias_windows",
    "video_family_of",
]
