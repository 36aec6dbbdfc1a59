"""Window geometry and position bias of Swin attention in any number of dimensions: defined once, used by the
image encoders (2D), the video encoders (3D) and the pictures of :mod:`swinssl.viz`.

Geometry: windows clipped to small feature maps, partition and its inverse, the relative-position index of
a window (first axis most significant, as the official tables are laid out), the mask that hides
tokens a cyclic shift (or padding) brought into one window from each other, and attention run in windows
over a map of any size (padded at the end to whole windows, then shifted).

Position bias: Swin V2's log-spaced continuous position bias, ``16 * sigmoid(cpb_mlp(u))`` over offsets
``u = sign(d) log2(1 + |8 d / (P - 1)|) / log2(8)`` normalized by the window ``P`` the bias was trained at,
and its clamped logit scale; Swin V1's learned table and its bicubic resize to another window. The image
models read their offset tables from timm's buffers (which ``set_input_size`` rebuilds); everything else
computes them here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

Size = tuple[int, ...]
MASK_VALUE = -100.0  # the official shift-mask logit
LOGIT_SCALE_MAX = math.log(100.0)  # Swin V2 clamps the learned temperature at 100 (official: log(1 / 0.01))
BIAS_SCALE = 16.0  # Swin V2's bias = 16 * sigmoid(cpb_mlp(...)): at most 16 logits


# -------------------------------------------------------------------------------------------- geometry


def clip_window(size: Size, window: Size, shift: Size) -> tuple[Size, Size]:
    """On an axis whose feature size is at most the window, the window becomes the size and the shift 0."""
    clipped = tuple(s if s <= w else w for s, w in zip(size, window))
    shifts = tuple(0 if s <= w else h for s, w, h in zip(size, window, shift))
    return clipped, shifts


def window_partition(x: torch.Tensor, window: Size) -> torch.Tensor:
    """(B, *size, C) -> (B * windows, prod(window), C); windows and their tokens in row-major order."""
    batch, *size, channels = x.shape
    dims = len(window)
    x = x.view(batch, *(n for s, w in zip(size, window) for n in (s // w, w)), channels)
    order = [0, *range(1, 2 * dims, 2), *range(2, 2 * dims + 1, 2), 2 * dims + 1]  # (B, counts..., window..., C)
    return x.permute(order).reshape(-1, math.prod(window), channels)


def window_reverse(windows: torch.Tensor, window: Size, batch: int, size: Size) -> torch.Tensor:
    """Inverse of :func:`window_partition`."""
    dims = len(window)
    counts = [s // w for s, w in zip(size, window)]
    x = windows.view(batch, *counts, *window, -1)
    order = [0, *(axis for d in range(dims) for axis in (1 + d, 1 + dims + d)), 2 * dims + 1]
    return x.permute(order).reshape(batch, *size, -1)


@lru_cache(maxsize=64)
def relative_position_index(window: Size, table_window: Size, device: torch.device) -> torch.Tensor:
    """(N, N) rows of a prod(2M - 1) bias table laid out for ``table_window``, for the token pairs of ``window``.

    The first axis is the most significant digit, as in the official tables (time, then height, then width).
    """
    coords = torch.stack(torch.meshgrid(*(torch.arange(n) for n in window), indexing="ij")).flatten(1)
    offsets = coords[:, :, None] - coords[:, None, :]
    index = torch.zeros_like(offsets[0])
    for offset, span in zip(offsets, table_window):
        index = index * (2 * span - 1) + offset + span - 1
    return index.to(device)


@lru_cache(maxsize=64)
def log_spaced_coordinates(window: Size, pretrained_window: Size, device: torch.device) -> torch.Tensor:
    """(prod(2M - 1), dims) Swin V2 log-CPB inputs of a window M trained at window P: u = 8 d / (P - 1), then
    sign(u) log2(1 + |u|) / log2(8)."""
    axes = [torch.arange(-(n - 1), n, dtype=torch.float32) / max(p - 1, 1) for n, p in zip(window, pretrained_window)]
    table = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(window)) * 8
    return (torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)).to(device)


def trained_window(coordinates: torch.Tensor, window: int) -> int:
    """The window P that Swin V2 log-CPB coordinates of a ``window`` were normalized by: the inverse of
    :func:`log_spaced_coordinates` along one axis. Its largest value u = log2(1 + 8 (W - 1) / (P - 1)) / 3 gives
    P = 1 + 8 (W - 1) / (2^(3u) - 1). P = 1 normalizes as P = 2 does, so it reads as 2; a window of 1 has no
    offsets and gives itself."""
    peak = float(coordinates.abs().max())
    return window if window <= 1 or peak == 0 else round(1 + 8 * (window - 1) / (2 ** (3 * peak) - 1))


@lru_cache(maxsize=32)
def shift_mask(padded: Size, valid: Size, window: Size, shift: Size, device: torch.device) -> torch.Tensor | None:
    """(windows, N, N) additive mask: tokens that the cyclic shift brought together from different regions, and
    padding tokens, are hidden from each other. None when there is neither a shift nor padding."""
    if not any(shift) and padded == valid:
        return None
    labels = torch.zeros(padded, dtype=torch.long)
    for region, slices in enumerate(_region_slices(window, shift)):
        labels[slices] = region
    padding = torch.zeros(padded, dtype=torch.bool)
    for axis, end in enumerate(valid):
        padding[(slice(None),) * axis + (slice(end, None),)] = True
    regions = math.prod(3 if s else 1 for s in shift)
    labels += regions * torch.roll(padding, [-s for s in shift], dims=tuple(range(len(padded)))).long()
    windows = window_partition(labels[None, ..., None], window).squeeze(-1)
    return ((windows[:, :, None] != windows[:, None, :]).float() * MASK_VALUE).to(device)


def windowed_attention(attend, x: torch.Tensor, window: Size, shift: Size, mask_padding: bool = True) -> torch.Tensor:
    """Run ``attend(windows, mask)`` over (B, *size, C) tokens in (shifted) windows, as the official detection and
    Video Swin code do: zero-pad the end of each axis to whole windows, roll by -shift, partition, and back.

    ``attend`` maps (B * windows, N, C) tokens and a (windows, N, N) additive mask (or None) to the same shape.
    ``mask_padding=False`` lets real tokens attend to the padding, as the official code does (its mask only
    separates the regions a shift brought together).
    """
    batch, *size, _ = x.shape
    size = tuple(size)
    pads = [(-s) % w for s, w in zip(size, window)]
    if any(pads):
        x = F.pad(x, [0, 0, *(edge for pad in reversed(pads) for edge in (0, pad))])  # channels, then the last axis
    padded = tuple(x.shape[1:-1])
    axes = tuple(range(1, len(window) + 1))
    if any(shift):
        x = torch.roll(x, [-s for s in shift], dims=axes)
    mask = shift_mask(padded, size if mask_padding else padded, tuple(window), tuple(shift), x.device)
    x = window_reverse(attend(window_partition(x, window), mask), window, batch, padded)
    if any(shift):
        x = torch.roll(x, list(shift), dims=axes)
    return x[(slice(None), *(slice(0, s) for s in size))].contiguous()


def _region_slices(window: Size, shift: Size) -> list[tuple[slice, ...]]:
    """The regions a cyclic shift cuts each axis into (three on a shifted axis, one otherwise), all combinations."""
    per_axis = [[slice(0, -w), slice(-w, -s), slice(-s, None)] if s else [slice(None)] for w, s in zip(window, shift)]
    combos: list[tuple[slice, ...]] = [()]
    for slices in per_axis:
        combos = [combo + (piece,) for combo in combos for piece in slices]
    return combos


# ----------------------------------------------------------------------------------------- position bias


def clamped_logit_scale(logit_scale: torch.Tensor) -> torch.Tensor:
    """Swin V2's learned per-head temperature, ``exp(min(logit_scale, log 100))``."""
    return torch.clamp(logit_scale, max=LOGIT_SCALE_MAX).exp()


def cosine_query_key(q: torch.Tensor, k: torch.Tensor, logit_scale: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Swin V2's scaled cosine attention inputs: unit-length q and k, and the temperature that multiplies q k^T."""
    return F.normalize(q, dim=-1), F.normalize(k, dim=-1), clamped_logit_scale(logit_scale)


def log_cpb_table(cpb_mlp: nn.Module, coordinates: torch.Tensor, heads: int) -> torch.Tensor:
    """(offsets, heads) Swin V2 bias ``16 * sigmoid(cpb_mlp(u))`` of log-spaced ``coordinates`` (..., dims)."""
    return BIAS_SCALE * torch.sigmoid(cpb_mlp(coordinates).view(-1, heads))


def gather_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(heads, N, N) bias of every token pair from an (offsets, heads) ``table`` and an (N, N) row ``index``."""
    tokens = index.shape[0]
    return table[index.reshape(-1)].view(tokens, tokens, -1).permute(2, 0, 1).contiguous()


def log_cpb_bias(cpb_mlp: nn.Module, coordinates: torch.Tensor, index: torch.Tensor, heads: int) -> torch.Tensor:
    """(heads, N, N) Swin V2 position bias: the MLP over the offsets, gathered per token pair, then ``16 sigmoid``
    (timm's order of operations, so the image models give timm's numbers bit for bit)."""
    return BIAS_SCALE * torch.sigmoid(gather_bias(cpb_mlp(coordinates).view(-1, heads), index))


def window_log_cpb_bias(cpb_mlp: nn.Module, heads: int, window: Size, pretrained_window: Size) -> torch.Tensor:
    """(heads, N, N) Swin V2 position bias of a ``window``, offsets normalized by its ``pretrained_window``."""
    weight = cpb_mlp[0].weight
    coordinates = log_spaced_coordinates(tuple(window), tuple(pretrained_window), weight.device).to(weight.dtype)
    return log_cpb_bias(cpb_mlp, coordinates, relative_position_index(tuple(window), tuple(window), weight.device), heads)


def table_window(rows: int) -> int:
    """The window W of a square Swin V1 bias table of (2W-1)^2 ``rows``."""
    return (math.isqrt(rows) + 1) // 2


def resize_bias_table(table: torch.Tensor, window: int) -> torch.Tensor:
    """A Swin V1 ((2W-1)^2, heads) bias table resampled bicubically to another window (official transfer rule)."""
    size = round(table.shape[0] ** 0.5)
    target = 2 * window - 1
    grid = table.T.reshape(1, table.shape[1], size, size).float()
    resized = F.interpolate(grid, size=(target, target), mode="bicubic")
    return resized.reshape(table.shape[1], target * target).T.to(table.dtype).contiguous()


def pair(window: int | Sequence[int]) -> tuple[int, int]:
    return (window, window) if isinstance(window, int) else (int(window[0]), int(window[1]))
