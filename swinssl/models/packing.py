"""Uniform packing for cheaper masked pretraining (UM-MAE's uniform sampling, Li et al. 2022), for Swin V2 encoders.

A :class:`swinssl.masking.UniformMaskGenerator` mask keeps one mask unit of every 2 x 2 group. :func:`pack`
moves the kept units side by side into a half-size image (the encoder sees a quarter of the pixels and every
window stays dense); :func:`unpack` puts packed maps back where their units came from. The unit is the
encoder's coarsest merge unit, so patch merging never mixes two packed units and every stage's packed map is
made of whole units.

Packed neighbours are not image neighbours. Swin V2's log-CPB takes any offset, so :func:`positioned_attention`
gives each pair of tokens the bias of its offset in the original image (``true_offsets``) rather than in the
packed one: the positions of a stage's tokens are set on its blocks for the duration of a forward pass by
:func:`token_positions`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

from swinssl.masking import UniformMaskGenerator
from swinssl.models.windows import (
    BIAS_SCALE,
    clip_window,
    log_spaced_coordinates,
    shift_mask,
    window_partition,
    window_reverse,
)

DROPPED = UniformMaskGenerator.DROPPED


def kept_slots(mask: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, rows, cols) index 0..3 (2 * dy + dx) of the kept unit of each 2 x 2 group of a uniform token ``mask``
    (B, h, w) with ``scale`` tokens per unit side."""
    units = mask[:, ::scale, ::scale]
    batch, height, width = units.shape
    kept = (units < DROPPED).view(batch, height // 2, 2, width // 2, 2).permute(0, 1, 3, 2, 4)
    kept = kept.reshape(batch, height // 2, width // 2, 4)
    if not bool((kept.sum(-1) == 1).all()):
        raise ValueError("not a uniform mask: packing needs exactly one kept unit (value < 2) in every 2 x 2 group "
                         "(swinssl.masking.UniformMaskGenerator)")
    return kept.to(torch.uint8).argmax(-1)


def _groups_index(slots: torch.Tensor, channels: int, unit: int) -> torch.Tensor:
    batch, rows, cols = slots.shape
    return slots.long()[:, None, :, :, None, None, None].expand(batch, channels, rows, cols, 1, unit, unit)


def pack(x: torch.Tensor, slots: torch.Tensor, unit: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H / 2, W / 2): the kept ``unit`` x ``unit`` block of every 2 x 2 group, groups in place."""
    batch, channels = x.shape[:2]
    rows, cols = slots.shape[1:]
    groups = x.reshape(batch, channels, rows, 2, unit, cols, 2, unit).permute(0, 1, 2, 5, 3, 6, 4, 7)
    groups = groups.reshape(batch, channels, rows, cols, 4, unit, unit)
    kept = groups.gather(4, _groups_index(slots, channels, unit)).squeeze(4)
    return kept.permute(0, 1, 2, 4, 3, 5).reshape(batch, channels, rows * unit, cols * unit)


def unpack(packed: torch.Tensor, slots: torch.Tensor, unit: int, fill: float = 0.0) -> torch.Tensor:
    """Inverse of :func:`pack`: (B, C, H / 2, W / 2) -> (B, C, H, W), the dropped units filled with ``fill``."""
    batch, channels = packed.shape[:2]
    rows, cols = slots.shape[1:]
    kept = packed.reshape(batch, channels, rows, unit, cols, unit).permute(0, 1, 2, 4, 3, 5).unsqueeze(4)
    groups = kept.new_full((batch, channels, rows, cols, 4, unit, unit), fill)
    groups = groups.scatter(4, _groups_index(slots, channels, unit), kept)
    groups = groups.view(batch, channels, rows, cols, 2, 2, unit, unit).permute(0, 1, 2, 4, 6, 3, 5, 7)
    return groups.reshape(batch, channels, rows * 2 * unit, cols * 2 * unit)


def true_positions(slots: torch.Tensor, unit: int) -> torch.Tensor:
    """(B, rows * unit, cols * unit, 2) row and column in the original token grid of every packed token, for
    ``unit`` tokens per unit side (the stage's)."""
    rows, cols = slots.shape[1:]
    device = slots.device
    group_row, local_row = torch.arange(rows, device=device).repeat_interleave(unit), torch.arange(unit, device=device).repeat(rows)
    group_col, local_col = torch.arange(cols, device=device).repeat_interleave(unit), torch.arange(unit, device=device).repeat(cols)
    slot = slots.long()[:, group_row][:, :, group_col]  # (B, R, C): each token's group's kept slot
    row = (2 * group_row[None, :, None] + slot // 2) * unit + local_row[None, :, None]
    col = (2 * group_col[None, None, :] + slot % 2) * unit + local_col[None, None, :]
    return torch.stack((row, col), dim=-1)


def grid_positions(size: Sequence[int], device: torch.device) -> torch.Tensor:
    """(1, *size, dims) the token grid's own coordinates (packed offsets)."""
    axes = [torch.arange(n, device=device) for n in size]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).unsqueeze(0)


StagePositions = tuple[torch.Tensor, tuple[int, ...], tuple[int, ...]]


class PairOffsets(NamedTuple):
    """The offsets between the token pairs of a stage's windows: ``coordinates`` (U, dims), the log-CPB inputs of the
    U distinct offsets that occur, and ``index`` (b, N, N), each pair's row among them. Every block of a stage with
    the same windows shares them; only its MLP differs."""

    coordinates: torch.Tensor
    index: torch.Tensor


@contextmanager
def token_positions(stages: Sequence[nn.Module], positions: Sequence[StagePositions]) -> Iterator[None]:
    """Within the block, every block of ``stages[s]`` attends by ``positions[s]``: (b, *size, dims) coordinates of
    its tokens (b = batch, or 1 if shared), the extent of the grid they index (offsets span ``1 - extent ..
    extent - 1``) and the window the position bias normalizes offsets by."""
    blocks = []
    for stage, stage_positions in zip(stages, positions):
        shared: dict = {}  # (window, shift) -> PairOffsets, computed by the stage's first block with those windows
        for block in stage.blocks:
            block.token_positions, block.attn.pair_offsets = stage_positions, shared
            blocks.append(block)
    try:
        yield
    finally:
        for block in blocks:
            del block.token_positions, block.attn.pair_offsets


def pair_offsets(positions: torch.Tensor, extent: Sequence[int], pretrained: Sequence[int]) -> PairOffsets:
    """The :class:`PairOffsets` of the token pairs of every window, for tokens at ``positions`` (b, N, dims) in a
    grid of ``extent`` whose bias normalizes offsets by the ``pretrained`` window."""
    spans = [2 * n - 1 for n in extent]
    strides = [math.prod(spans[axis + 1:]) for axis in range(len(spans))]
    code = (positions.long() * torch.tensor(strides, device=positions.device)).sum(-1)  # (b, N)
    centre = sum((n - 1) * stride for n, stride in zip(extent, strides))
    full = code[:, :, None] - code[:, None, :] + centre  # (b, N, N) row of the offset in the full table
    used = torch.zeros(math.prod(spans), dtype=torch.bool, device=positions.device)
    used[full.flatten()] = True
    rows = used.nonzero().squeeze(1)
    coordinates = log_spaced_coordinates(tuple(extent), tuple(pretrained), positions.device)[rows]
    return PairOffsets(coordinates, (used.cumsum(0) - 1)[full])


def offset_bias(cpb_mlp: nn.Module, heads: int, offsets: PairOffsets) -> torch.Tensor:
    """(b, heads, N, N) Swin V2 log-CPB bias of the token pairs of :func:`pair_offsets`: ``16 sigmoid`` of the MLP
    over the offsets that occur, gathered per pair. Elementwise, so the same numbers as gathering first
    (:func:`~swinssl.models.windows.log_cpb_bias`), but backward keeps only the table and an index per pair."""
    weight = cpb_mlp[0].weight
    table = BIAS_SCALE * torch.sigmoid(cpb_mlp(offsets.coordinates.to(weight.dtype)).view(-1, heads))
    return table.index_select(0, offsets.index.flatten()).view(*offsets.index.shape, heads).permute(0, 3, 1, 2)


def positioned_attention(attn: nn.Module, x: torch.Tensor, positions: torch.Tensor, extent: Sequence[int],
                         pretrained: Sequence[int], window: Sequence[int], shift: Sequence[int],
                         inputs: Callable[[torch.Tensor, tuple[int, ...]], tuple]) -> torch.Tensor:
    """Swin V2 window attention of ``attn`` over (B, *size, C) tokens in (shifted) windows clipped to the map, with
    the position bias of each pair's offset between ``positions`` (b, *size, dims) (:func:`token_positions`).
    ``inputs(windows, window)`` gives the module's q, k, v, (its own bias, unused) and scale. The map must be
    whole windows (:func:`swinssl.models.registry.check_packed_windows`)."""
    batch, *size, _ = x.shape
    size = tuple(size)
    window, shift = clip_window(size, tuple(window), tuple(shift))
    if any(s % w for s, w in zip(size, window)):
        raise ValueError(f"window {window} does not tile the packed {size} token map")
    axes = tuple(range(1, len(size) + 1))
    if any(shift):
        x = torch.roll(x, [-s for s in shift], dims=axes)
    windows = window_partition(x, window)
    count = windows.shape[0] // batch
    q, k, v, _, scale = inputs(windows, window)
    shared = attn.pair_offsets  # the stage's (token_positions): the first block with these windows fills it
    if (window, shift) not in shared:
        rolled = torch.roll(positions, [-s for s in shift], dims=axes) if any(shift) else positions
        shared[window, shift] = pair_offsets(window_partition(rolled, window), extent, pretrained)
    bias = offset_bias(attn.cpb_mlp, attn.num_heads, shared[window, shift])
    mask = shift_mask(size, size, window, shift, x.device)
    if mask is not None:
        tokens = math.prod(window)
        bias = (bias.view(-1, count, attn.num_heads, tokens, tokens) + mask[None, :, None]).flatten(0, 1)
    out = window_reverse(attn.attend_per_window(q, k, v, bias, count, scale), window, batch, size)
    return torch.roll(out, list(shift), dims=axes) if any(shift) else out
