"""SimMIM as the official Swin V2 recipe defines it: masked encoder, linear decoder, masked L1; and its
extension to Video Swin clips.

- decoder: one 1x1 conv from the encoder width to stride^2 * 3 channels, then PixelShuffle(stride);
  for clips a 1x1x1 conv to (t * s * s * 3) channels and the same shuffle over time, height and width;
- loss: sum(|target - reconstruction| * mask) / (masked pixels + 1e-5) / channels, over the whole batch;
- optional target normalization (on in the official Swin V2 recipe): every pixel and channel is
  standardized by the mean and unbiased variance of its 47 x 47 neighbourhood, padding excluded; for
  clips, within each frame.

The video decoder lays out its channels so that an image decoder inflates to it by repetition over
time (:func:`swinssl.weights.inflate.inflate_decoder`): an inflated model reconstructs a static clip
under a tube mask exactly as the image model reconstructs its frame.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from swinssl.models.registry import Triple
from swinssl.models.swin import SwinV2Encoder
from swinssl.models.video_swin import VideoSwinEncoder

NORM_TARGET_WINDOW = 47  # the official SimMIM V2 recipe's local target-normalization window (MODEL.SIMMIM.NORM_TARGET)


class SimMIMDecoder(nn.Sequential):
    """Keys ``0.weight``/``0.bias`` as in the official ``decoder.0.*``."""

    def __init__(self, in_features: int, stride: int, out_chans: int = 3) -> None:
        super().__init__(nn.Conv2d(in_features, stride**2 * out_chans, kernel_size=1), nn.PixelShuffle(stride))


class PixelShuffle3d(nn.Module):
    """(B, C * t * h * w, T, H, W) -> (B, C, T * t, H * h, W * w) for ``stride`` (t, h, w): channel
    ``((c * t + k) * h + i) * w + j`` goes to frame offset k, row i, column j (``nn.PixelShuffle``'s order
    with time in front)."""

    def __init__(self, stride: Triple) -> None:
        super().__init__()
        self.stride = tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, channels, t, h, w = x.shape
        st, sh, sw = self.stride
        x = x.view(b, channels // (st * sh * sw), st, sh, sw, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return x.reshape(b, -1, t * st, h * sh, w * sw)


class SimMIMVideoDecoder(nn.Sequential):
    """The clip decoder; keys ``0.weight``/``0.bias`` as the image decoder's."""

    def __init__(self, in_features: int, stride: Triple, out_chans: int = 3) -> None:
        super().__init__(nn.Conv3d(in_features, math.prod(stride) * out_chans, kernel_size=1), PixelShuffle3d(stride))


def per_frame(function, *clips: torch.Tensor, **kwargs) -> torch.Tensor:
    """``function`` of (N, C, H, W) images applied to every frame of (B, C, T, H, W) ``clips``."""
    b, _, t, h, w = clips[0].shape
    frames = function(*(clip.transpose(1, 2).reshape(b * t, -1, h, w) for clip in clips), **kwargs)
    return frames.view(b, t, -1, h, w).transpose(1, 2)


def local_mean_var(images: torch.Tensor, window: int = NORM_TARGET_WINDOW) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel, per-channel mean and unbiased variance over a ``window`` x ``window`` neighbourhood.

    Pixels outside the image do not count; the variance is clamped at 0 against rounding.
    """
    if window < 3 or window % 2 == 0:
        raise ValueError(f"the target-normalization window must be odd and >= 3, got {window}")
    pad = window // 2
    images = images.float()
    mean = F.avg_pool2d(images, window, stride=1, padding=pad, count_include_pad=False)
    mean_sq = F.avg_pool2d(images.square(), window, stride=1, padding=pad, count_include_pad=False)
    ones = torch.ones_like(images[:1, :1])
    count = F.avg_pool2d(ones, window, stride=1, padding=pad, count_include_pad=True) * window**2
    var = ((mean_sq - mean.square()) * count / (count - 1)).clamp_min(0.0)
    return mean, var


def normalize_targets(images: torch.Tensor, window: int = NORM_TARGET_WINDOW, eps: float = 1e-6) -> torch.Tensor:
    mean, var = local_mean_var(images, window)
    return (images.float() - mean) / torch.sqrt(var + eps)


def denormalize_targets(predicted: torch.Tensor, images: torch.Tensor, window: int = NORM_TARGET_WINDOW, eps: float = 1e-6):
    """Map predictions made in normalized-target space back to pixel space, using the input's local stats."""
    mean, var = local_mean_var(images, window)
    return predicted.float() * torch.sqrt(var + eps) + mean


def pixel_mask(mask: torch.Tensor, patch_size: int | tuple[int, ...]) -> torch.Tensor:
    """Token mask (B, h, w) -> pixel mask (B, 1, h * p, w * p); a clip's (B, t, h, w) -> (B, 1, t * pt, h * p, w * p)
    for ``patch_size`` (pt, p, p)."""
    sizes = (patch_size,) * (mask.ndim - 1) if isinstance(patch_size, int) else tuple(patch_size)
    for axis, size in enumerate(sizes, start=1):
        mask = mask.repeat_interleave(size, axis)
    return mask.unsqueeze(1)


def masked_l1_loss(
    reconstruction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, patch_size: int | tuple[int, ...]
) -> torch.Tensor:
    weight = pixel_mask(mask, patch_size).to(torch.float32)
    error = (target.float() - reconstruction.float()).abs() * weight
    return error.sum() / (weight.sum() + 1e-5) / reconstruction.shape[1]


class MaskedImageModel(nn.Module):
    """Encoder + decoder + loss. ``forward(images, mask) -> (loss, reconstruction)``.

    ``mask`` is the token-level mask from :class:`swinssl.MaskGenerator` (1 = masked).
    ``norm_target_window=None`` regresses raw (ImageNet-normalized) pixels.
    """

    def __init__(self, encoder: SwinV2Encoder, norm_target_window: int | None = NORM_TARGET_WINDOW) -> None:
        super().__init__()
        if encoder.mask_token is None:
            raise ValueError("SimMIM needs an encoder built with mask_token=True")
        self.encoder = encoder
        self.decoder = self.make_decoder(encoder)
        self.patch_size = tuple(encoder.patch_embed.patch_size)
        self.norm_target_window = norm_target_window

    def make_decoder(self, encoder: SwinV2Encoder) -> nn.Module:
        return SimMIMDecoder(encoder.num_features, encoder.stride, encoder.in_chans)

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        if self.norm_target_window is None:
            return images
        return normalize_targets(images, self.norm_target_window)

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder.forward_features(images, mask)
        reconstruction = self.decoder(features.movedim(-1, 1))
        loss = masked_l1_loss(reconstruction, self.targets(images), mask, self.patch_size)
        return loss, reconstruction

    def to_pixels(self, reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction in the input's (ImageNet-normalized) space, for pictures."""
        if self.norm_target_window is None:
            return reconstruction.float()
        return denormalize_targets(reconstruction, images, self.norm_target_window)

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{name}" for name in self.encoder.no_weight_decay()}


class MaskedVideoModel(MaskedImageModel):
    """SimMIM on Video Swin: ``forward(clips, mask) -> (loss, reconstruction)`` for (B, 3, T, H, W) clips and a
    (B, T', H', W') token mask from :class:`swinssl.masking.VideoMaskGenerator`; targets are normalized
    within each frame."""

    def make_decoder(self, encoder: VideoSwinEncoder) -> nn.Module:
        return SimMIMVideoDecoder(encoder.num_features, encoder.stride)

    def targets(self, clips: torch.Tensor) -> torch.Tensor:
        if self.norm_target_window is None:
            return clips
        return per_frame(normalize_targets, clips, window=self.norm_target_window)

    def to_pixels(self, reconstruction: torch.Tensor, clips: torch.Tensor) -> torch.Tensor:
        if self.norm_target_window is None:
            return reconstruction.float()
        return per_frame(denormalize_targets, reconstruction, clips, window=self.norm_target_window)
