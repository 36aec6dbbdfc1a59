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

from swinssl.models.packing import StagePositions, grid_positions, kept_slots, pack, token_positions, true_positions, unpack
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


class PackedMaskedImageModel(MaskedImageModel):
    """Masked image modeling on a uniformly packed input (UM-MAE's uniform sampling + secondary masking), Swin V2.

    ``forward(images, mask) -> (loss, reconstruction)`` with ``mask`` from
    :class:`swinssl.masking.UniformMaskGenerator` (0 visible, 1 kept but hidden, 2 dropped). The encoder runs on
    the half-size image of kept units (:func:`swinssl.models.packing.pack`), hidden ones replaced by the mask
    token; its output tokens (one per kept unit) go back to their units' places on the full-size grid, the
    dropped places empty (zeros); ``spread``, a 3 x 3 convolution over that grid (identity at the centre at
    start), reaches each dropped unit from its group's kept unit and the neighbouring groups'; SimMIM's linear
    decoder then predicts the full-size image, and the loss is SimMIM's masked L1 over every unit the encoder did
    not see (dropped and hidden), as UM-MAE reconstructs both. ``true_offsets``: the position bias sees each
    pair's offset in the original image (else in the packed one).
    """

    def __init__(self, encoder: SwinV2Encoder, norm_target_window: int | None = NORM_TARGET_WINDOW,
                 true_offsets: bool = True) -> None:
        super().__init__(encoder, norm_target_window)
        if not hasattr(encoder.layers[0].blocks[0].attn, "cpb_mlp"):
            raise ValueError("uniform packing needs a Swin V2 encoder (log-CPB position bias); Swin V1 tables "
                             "cannot take the packed tokens' offsets")
        self.true_offsets = true_offsets
        self.unit = self.spatial_stride(encoder)
        self.spread = self.make_spread(encoder.num_features)

    @staticmethod
    def spatial_stride(encoder: nn.Module) -> int:
        stride = encoder.stride
        return stride if isinstance(stride, int) else stride[1]

    def make_spread(self, width: int) -> nn.Module:
        spread = nn.Conv2d(width, width, 3, padding=1)
        _identity_centre(spread)
        return spread

    def check_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The (B, h, w) unit layout of ``mask``."""
        return mask

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.unit // self.patch_size[-1]
        slots = kept_slots(self.check_mask(mask), scale)
        packed_mask = self.pack(mask.unsqueeze(1), slots, scale).squeeze(1)
        with token_positions(self.encoder.layers, self.stage_positions(slots, packed_mask.shape[1:])):
            features = self.encoder.forward_features(self.pack(images, slots, self.unit), packed_mask)
        grid = self.unpack(features.movedim(-1, 1), slots)
        reconstruction = self.decoder(self.spread(grid))
        loss = masked_l1_loss(reconstruction, self.targets(images), mask > 0, self.patch_size)
        return loss, reconstruction

    def pack(self, x: torch.Tensor, slots: torch.Tensor, unit: int) -> torch.Tensor:
        return pack(x, slots, unit)

    def unpack(self, features: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        return unpack(features, slots, 1)

    def stage_positions(self, slots: torch.Tensor, packed_tokens: tuple[int, ...]) -> list[StagePositions]:
        """Per stage: the tokens' positions, the extent of the grid they index, the bias's normalizing window."""
        scale = self.unit // self.patch_size[-1]
        out = []
        for stage, window in enumerate(self.encoder.pretrained_window_sizes()):
            window = (window, window) if isinstance(window, int) else tuple(window)
            unit = scale // 2**stage
            size = tuple(n // 2**stage for n in packed_tokens)
            if self.true_offsets:
                positions, extent = true_positions(slots, unit), tuple(2 * n for n in size)
            else:
                positions, extent = grid_positions(size, slots.device), size
            out.append((positions, extent, window))
        return out


class PackedMaskedVideoModel(PackedMaskedImageModel, MaskedVideoModel):
    """:class:`PackedMaskedImageModel` for clips: a tube mask packs every frame the same way, the time axis stays
    whole (positions and windows in time as the full-size model's); targets normalized within each frame."""

    def __init__(self, encoder: VideoSwinEncoder, norm_target_window: int | None = NORM_TARGET_WINDOW,
                 true_offsets: bool = True) -> None:
        if any(hasattr(block, "temporal_attn") for stage in encoder.layers for block in stage.blocks):
            raise ValueError("uniform packing supports joint space-time attention, not attention=factorized")
        super().__init__(encoder, norm_target_window, true_offsets)

    def make_spread(self, width: int) -> nn.Module:
        spread = nn.Conv3d(width, width, (1, 3, 3), padding=(0, 1, 1))
        _identity_centre(spread)
        return spread

    def check_mask(self, mask: torch.Tensor) -> torch.Tensor:
        if not bool((mask == mask[:, :1]).all()):
            raise ValueError("uniform packing needs a tube mask (the same units on every frame); this clip mask "
                             "differs between frames")
        return mask[:, 0]

    def pack(self, x: torch.Tensor, slots: torch.Tensor, unit: int) -> torch.Tensor:
        return _every_frame(pack, x, slots, unit)

    def unpack(self, features: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        return _every_frame(unpack, features, slots, 1)

    def stage_positions(self, slots: torch.Tensor, packed_tokens: tuple[int, ...]) -> list[StagePositions]:
        time = packed_tokens[0]
        spatial = super().stage_positions(slots, packed_tokens[1:])
        out = []
        for positions, extent, window in spatial:
            b, h, w, _ = positions.shape
            frames = torch.arange(time, device=positions.device).view(1, time, 1, 1, 1).expand(b, time, h, w, 1)
            positions = torch.cat((frames, positions.unsqueeze(1).expand(b, time, h, w, 2)), dim=-1)
            out.append((positions, (time, *extent), window))
        return out


def _every_frame(function, clips: torch.Tensor, slots: torch.Tensor, unit: int) -> torch.Tensor:
    """:func:`pack` or :func:`unpack` of every frame of (B, C, T, H, W) ``clips`` by the clip's ``slots``."""
    b, c, t, h, w = clips.shape
    frames = function(clips.transpose(1, 2).reshape(b * t, c, h, w), slots.repeat_interleave(t, 0), unit)
    return frames.view(b, t, c, *frames.shape[-2:]).transpose(1, 2)


def _identity_centre(conv: nn.Conv2d | nn.Conv3d) -> None:
    """Start as the identity (centre tap 1, others 0): kept units' features reach the decoder as SimMIM's do."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        centre = tuple(k // 2 for k in conv.kernel_size)
        conv.weight[(torch.arange(conv.out_channels), torch.arange(conv.in_channels), *centre)] = 1.0
