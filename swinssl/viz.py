"""Pictures of what a Swin model learned: masks, reconstructions, position bias, attention, 3D windows, losses.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot state), so they work headless, in
notebooks and in TensorBoard callbacks alike, and nothing here calls ``show()``. Image grids are
``(3, H, W)`` tensors in [0, 1] (what ``SummaryWriter.add_image`` takes). :func:`save` writes either.
Images are ImageNet-normalized ``(B, 3, H, W)`` batches, as the data pipelines produce them.

The numbers behind each figure come from a function that returns tensors (``bias_tables``,
``attention_probabilities``, ``attention_groups``, ``read_scalars``), so they can be checked on their own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn
from torchvision.utils import make_grid, save_image

from swinssl.models.simmim import MaskedImageModel, pixel_mask
from swinssl.models.windows import clip_window, pair, shift_mask, window_partition
from swinssl.normalization import denormalize

Pair = tuple[int, int]


def save(picture: Figure | torch.Tensor, path: str | Path, dpi: int = 100) -> Path:
    """Write a figure or a (3, H, W) image grid as an image file; returns the path (folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(picture, Figure):
        picture.savefig(path, dpi=dpi, bbox_inches="tight")
    else:
        save_image(picture, path)
    return path


# ------------------------------------------------------------------------------------------ image grids


def mask_overlay(images: torch.Tensor, mask: torch.Tensor, patch_size: int, max_images: int = 8,
                 color: Sequence[float] = (0.1, 0.4, 1.0), alpha: float = 0.6) -> torch.Tensor:
    """(3, H', W') grid: each image with the units a SimMIM token ``mask`` (B, h, w) hides tinted in ``color``."""
    images, mask = images[:max_images].float(), mask[:max_images] > 0
    hidden = pixel_mask(mask, patch_size).float().to(images.device)
    tint = images.new_tensor(color).view(1, 3, 1, 1)
    pictures = denormalize(images) * (1 - alpha * hidden) + alpha * hidden * tint
    return make_grid(pictures.cpu(), nrow=min(len(pictures), 4), padding=2, pad_value=1.0)


def reconstruction_grid(model: MaskedImageModel, images: torch.Tensor, mask: torch.Tensor,
                        reconstruction: torch.Tensor, max_images: int = 4, max_frames: int = 8) -> torch.Tensor:
    """(3, H', W') grid in [0, 1]; one row per image: input | masked input | prediction pasted into the mask.
    Every unit the model did not see is masked (uniform packing: the dropped units and the hidden kept ones), so
    the masked input is what the encoder saw, unpacked.
    Clips (B, 3, T, H, W) get three rows each (input, masked, prediction), up to ``max_frames`` evenly spaced
    frames in a row.

    Predictions made against locally normalized targets are mapped back with the input's local
    statistics, so the picture shows pixels either way.
    """
    images, mask, reconstruction = images[:max_images].float(), mask[:max_images] > 0, reconstruction[:max_images]
    hidden = pixel_mask(mask, model.patch_size).float()
    predicted = model.to_pixels(reconstruction, images)
    masked_input = images * (1 - hidden) + hidden * images.amin()  # masked units shown dark
    pasted = images * (1 - hidden) + predicted * hidden
    if images.ndim == 4:
        rows = torch.stack([denormalize(x) for x in (images, masked_input, pasted)], dim=1)
        return make_grid(rows.flatten(0, 1).cpu(), nrow=3, padding=2, pad_value=1.0)
    frames = torch.linspace(0, images.shape[2] - 1, min(max_frames, images.shape[2])).round().long()
    rows = torch.stack([denormalize(x[:, :, frames].transpose(1, 2)) for x in (images, masked_input, pasted)], dim=1)
    return make_grid(rows.flatten(0, 2).cpu(), nrow=len(frames), padding=2, pad_value=1.0)


def packing_grid(images: torch.Tensor, mask: torch.Tensor, patch_size: int, mask_patch_size: int, max_images: int = 4,
                 color: Sequence[float] = (0.1, 0.4, 1.0), alpha: float = 0.6) -> torch.Tensor:
    """(3, H', W') grid of uniform packing (:class:`swinssl.masking.UniformMaskGenerator` masks), one row per image:
    the input | the kept units in place (dropped ones white, kept-but-hidden ones tinted) | the half-size packed
    image the encoder reads, hidden units tinted (top left of a white frame of the input's size)."""
    from swinssl.models.packing import kept_slots, pack

    images, mask = images[:max_images].float(), mask[:max_images]
    pictures = denormalize(images)
    hidden = pixel_mask(mask == 1, patch_size).float().to(images.device)
    dropped = pixel_mask(mask == 2, patch_size).float().to(images.device)
    tint = images.new_tensor(color).view(1, 3, 1, 1)
    tinted = pictures * (1 - alpha * hidden) + alpha * hidden * tint
    kept = tinted * (1 - dropped) + dropped
    slots = kept_slots(mask, mask_patch_size // patch_size)
    frame = torch.ones_like(pictures)
    frame[..., : images.shape[-2] // 2, : images.shape[-1] // 2] = pack(tinted, slots.to(images.device), mask_patch_size)
    rows = torch.stack((pictures, kept, frame), dim=1)
    return make_grid(rows.flatten(0, 1).cpu(), nrow=3, padding=2, pad_value=1.0)


# ----------------------------------------------------------------------------------------- position bias


@torch.no_grad()
def bias_tables(encoder: nn.Module, stage: int, windows: Sequence[int]) -> dict[int, torch.Tensor]:
    """The position bias of ``stage`` (its first block) at each window: {window: (heads, 2w-1, 2w-1)}.

    Swin V2: the block's ``cpb_mlp`` evaluated at every offset of the window, coordinates normalized by
    the window the encoder's bias was trained at, i.e. exactly what a copy moved to that window computes.
    Swin V1: the learned table, bicubic-resized to the window (the transfer rule for tables). The attention
    module computes either (``position_bias_table``).
    """
    attn = encoder.layers[stage].blocks[0].attn
    return {window: attn.position_bias_table(window).T.reshape(-1, 2 * window - 1, 2 * window - 1).float().cpu()
            for window in windows}


def bias_maps(encoder: nn.Module, stage: int, windows: Sequence[int] = (12, 16, 24), max_heads: int = 8) -> Figure:
    """One map per head (rows) and window (columns): the bias a query adds to a key at offset (dy, dx).

    The dashed square marks the offsets the encoder's own window covers; outside it a Swin V2 bias is
    the MLP's extrapolation, a Swin V1 bias the bicubic stretch of the table.
    """
    tables = bias_tables(encoder, stage, windows)
    trained = pair(encoder.pretrained_window_sizes()[stage])
    heads = min(next(iter(tables.values())).shape[0], max_heads)
    low = min(float(t[:heads].min()) for t in tables.values())
    high = max(float(t[:heads].max()) for t in tables.values())
    fig = Figure(figsize=(2.6 * len(windows) + 0.8, 2.4 * heads), layout="constrained")
    axes = fig.subplots(heads, len(windows), squeeze=False)
    for column, (window, table) in enumerate(tables.items()):
        reach = window - 1
        for head in range(heads):
            ax = axes[head, column]
            image = ax.imshow(table[head].numpy(), cmap="viridis", vmin=low, vmax=high,
                              extent=(-reach - 0.5, reach + 0.5, reach + 0.5, -reach - 0.5))
            ax.add_patch(Rectangle((-trained[1] + 0.5, -trained[0] + 0.5), 2 * trained[1] - 1, 2 * trained[0] - 1,
                                   fill=False, linestyle="--", edgecolor="white", linewidth=1))
            if head == heads - 1:
                ax.set_xlabel("dx")
            else:
                ax.set_xticks([])
            if column == 0:
                ax.set_ylabel(f"head {head}\ndy")
            if head == 0:
                ax.set_title(f"window {window}")
    fig.colorbar(image, ax=axes, shrink=0.8, label="bias added to the attention logit")
    kind = "log-CPB (16 sigmoid MLP)" if hasattr(encoder.layers[stage].blocks[0].attn, "cpb_mlp") else "V1 table"
    fig.suptitle(f"stage {stage} position bias, {kind}; dashed: offsets of the trained window {trained[0]}")
    return fig


# -------------------------------------------------------------------------------------------- attention


@torch.no_grad()
def attention_probabilities(encoder: nn.Module, images: torch.Tensor, stage: int, block: int
                            ) -> tuple[torch.Tensor, dict]:
    """Attention of every window of one block for the first image: (windows, heads, N, N), and its layout.

    The layout says where each window's tokens sit: ``positions`` (windows, N, 2) token (row, col) in
    the stage's grid (-1 for padding), after undoing the block's cyclic shift, plus ``grid``, ``window``
    and ``shift``. The block's attention input is caught with a forward pre-hook and handed to the
    attention module's own ``probabilities``, so this is what the model computes, whatever its kernel.
    """
    module = encoder.layers[stage].blocks[block]
    caught = {}

    def catch_block(_module, args):
        caught["grid"] = tuple(args[0].shape[1:3])

    def catch_attn(_module, args, kwargs):
        caught["x"] = args[0]
        caught["mask"] = args[1] if len(args) > 1 else kwargs.get("mask")

    handles = [module.register_forward_pre_hook(catch_block),
               module.attn.register_forward_pre_hook(catch_attn, with_kwargs=True)]
    try:
        encoder.forward_features(images[:1])
    finally:
        for handle in handles:
            handle.remove()
    window, shift = pair(module.window_size), pair(module.shift_size)
    probabilities = module.attn.probabilities(caught["x"], caught["mask"])
    layout = {"grid": caught["grid"], "window": window, "shift": shift,
              "positions": _window_positions(caught["grid"], window, shift)}
    return probabilities, layout


def _window_positions(grid: Pair, window: Pair, shift: Pair) -> torch.Tensor:
    """(windows, N, 2): grid (row, col) of each token of each window; windows cut the grid after it is
    padded at the end to whole windows and rolled by -shift (the models' order), so rolled row r is padded
    row (r + shift) % padded height, padding where that is past the grid."""
    padded = [math.ceil(g / w) * w for g, w in zip(grid, window)]
    rows, cols = torch.meshgrid(torch.arange(padded[0]), torch.arange(padded[1]), indexing="ij")
    original = torch.stack([(rows + shift[0]) % padded[0], (cols + shift[1]) % padded[1]], -1)
    original[(original[..., 0] >= grid[0]) | (original[..., 1] >= grid[1])] = -1
    windows = original.view(padded[0] // window[0], window[0], padded[1] // window[1], window[1], 2)
    return windows.permute(0, 2, 1, 3, 4).reshape(-1, window[0] * window[1], 2)


def attention_maps(encoder: nn.Module, images: torch.Tensor, stage: int, block: int, window_index: int,
                   query: Pair | None = None) -> Figure:
    """Where one query token of one window looks, for each head, drawn over the first image.

    ``query`` is (row, col) inside the window (default: its centre). Left: the image with the window's
    tokens outlined; then one panel per head with that query's attention probabilities.
    """
    probabilities, layout = attention_probabilities(encoder, images, stage, block)
    window, grid = layout["window"], layout["grid"]
    row, col = query if query is not None else (window[0] // 2, window[1] // 2)
    slot = row * window[1] + col
    positions = layout["positions"][window_index]
    valid = positions[:, 0] >= 0
    heads = probabilities.shape[1]
    maps = torch.zeros(heads, *grid)
    maps[:, positions[valid, 0], positions[valid, 1]] = probabilities[window_index, :, slot][:, valid].float().cpu()
    picture = denormalize(images[0].float().cpu()).permute(1, 2, 0).numpy()
    scale = (picture.shape[0] / grid[0], picture.shape[1] / grid[1])  # pixels per token

    fig = Figure(figsize=(2.8 * (heads + 1), 3.2), layout="constrained")
    axes = fig.subplots(1, heads + 1, squeeze=False)[0]
    members = torch.zeros(grid)
    members[positions[valid, 0], positions[valid, 1]] = 1
    extent = (0, picture.shape[1], picture.shape[0], 0)
    axes[0].imshow(picture)
    axes[0].imshow(members.numpy(), cmap="gray", alpha=0.45, vmin=0, vmax=1, extent=extent, interpolation="nearest")
    axes[0].set_title(f"window {window_index} (bright), shift {layout['shift']}")
    query_row, query_col = positions[slot].tolist()
    for head, ax in enumerate(axes[1:]):
        ax.imshow(picture)
        shown = ax.imshow(maps[head].numpy(), cmap="inferno", alpha=0.7, extent=extent, interpolation="nearest")
        ax.set_title(f"head {head}: max {float(maps[head].max()):.2f}")
        fig.colorbar(shown, ax=ax, shrink=0.7)
    for ax in axes:
        ax.plot((query_col + 0.5) * scale[1], (query_row + 0.5) * scale[0], marker="+", color="cyan",
                markersize=12, mew=2)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"stage {stage}, block {block}: attention of the query + over its {window[0]}x{window[1]} window")
    return fig


# ---------------------------------------------------------------------------------------- 3D windows


def attention_groups(size: Sequence[int], window: Sequence[int], shift: Sequence[int]
                     ) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
    """Which tokens of a (T, H, W) grid attend to each other in a Video Swin block.

    Returns ``(windows, groups, window, shift)``: per token the index of its window and of its group
    (tokens that share a window and are not hidden from each other by the shift mask), both (T, H, W);
    then the window and shift after clipping to the grid. Computed with the model's own partition and
    mask functions, so the picture is what the model does.
    """
    size = tuple(int(s) for s in size)
    window, shift = clip_window(size, tuple(window), tuple(shift))
    padded = tuple(math.ceil(s / w) * w for s, w in zip(size, window))
    where = torch.arange(math.prod(padded)).view(padded)
    rolled = torch.roll(where, [-s for s in shift], dims=(0, 1, 2))
    members = window_partition(rolled[None, ..., None], window).squeeze(-1)  # (windows, N) token ids
    mask = shift_mask(padded, size, window, shift, torch.device("cpu"))
    tokens = members.shape[1]
    if mask is None:
        first = torch.zeros_like(members)
    else:  # the first slot a token may attend to names its group (the relation is an equivalence)
        first = (mask == 0).float().argmax(-1)
    window_of = torch.empty(math.prod(padded), dtype=torch.long)
    group_of = torch.empty(math.prod(padded), dtype=torch.long)
    index = torch.arange(members.shape[0])[:, None].expand_as(members)
    window_of[members.flatten()] = index.flatten()
    group_of[members.flatten()] = (index * tokens + first).flatten()
    crop = tuple(slice(0, s) for s in size)
    group_of = torch.unique(group_of.view(padded)[crop], return_inverse=True)[1]
    return window_of.view(padded)[crop], group_of, window, shift


def window_partition_figure(size: Sequence[int], window: Sequence[int], max_steps: int = 8) -> Figure:
    """Video Swin windows on a (T, H, W) token grid: regular blocks (top) and shifted blocks (bottom).

    One panel per time step; colours are attention groups (tokens that see each other), numbers the
    window a token is in. In the shifted row, tokens with the same number but another colour were
    brought into one window by the cyclic shift and are masked from each other.
    """
    shifted = tuple(w // 2 for w in window)
    layouts = [attention_groups(size, window, (0, 0, 0)), attention_groups(size, window, shifted)]
    steps = min(int(size[0]), max_steps)
    colours = ListedColormap(np.concatenate([_palette("tab20"), _palette("tab20b"), _palette("tab20c")]))
    fig = Figure(figsize=(2.2 * steps + 0.5, 4.8), layout="constrained")
    axes = fig.subplots(2, steps, squeeze=False)
    for row, (windows, groups, clipped, shift) in enumerate(layouts):
        for t in range(steps):
            ax = axes[row, t]
            ax.imshow(groups[t].numpy() % colours.N, cmap=colours, vmin=0, vmax=colours.N - 1,
                      interpolation="nearest")
            if windows.shape[1] * windows.shape[2] <= 256:
                for (h, w), number in np.ndenumerate(windows[t].numpy()):
                    ax.text(w, h, str(number), ha="center", va="center", fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"t = {t}", fontsize=9)
        axes[row, 0].set_ylabel(f"shift {shift}\n{int(windows.max()) + 1} windows, {int(groups.max()) + 1} groups")
    fig.suptitle(f"tokens {tuple(int(s) for s in size)} (T, H, W), window {layouts[0][2]}")
    return fig


def _palette(name: str) -> np.ndarray:
    return colormaps[name](np.arange(colormaps[name].N))


# ------------------------------------------------------------------------------------------- loss curves


def read_scalars(event_dir: str | Path, tag: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{run: (steps, values)} of one scalar tag, for every folder under ``event_dir`` that holds event files."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    root = Path(event_dir)
    runs = sorted({path.parent for path in root.rglob("events.out.tfevents.*")})
    if not runs:
        raise FileNotFoundError(f"no TensorBoard event files under {root}")
    curves, seen = {}, set()
    for run in runs:
        events = EventAccumulator(str(run), size_guidance={SCALARS: 0})  # 0: keep every point
        events.Reload()
        tags = events.Tags()["scalars"]
        seen.update(tags)
        if tag in tags:
            points = events.Scalars(tag)
            curves[str(run.relative_to(root)) if run != root else root.name] = (
                np.array([p.step for p in points]), np.array([p.value for p in points]))
    if not curves:
        raise KeyError(f"no scalar {tag!r} under {root}; found: {', '.join(sorted(seen)) or 'none'}")
    return curves


def loss_curves(event_dir: str | Path, tags: Sequence[str] = ("train/loss",)) -> Figure:
    """One panel per scalar tag, one line per run found under ``event_dir`` (TensorBoard event files)."""
    fig = Figure(figsize=(4.5 * len(tags), 3.4), layout="constrained")
    axes = fig.subplots(1, len(tags), squeeze=False)[0]
    for ax, tag in zip(axes, tags):
        for run, (steps, values) in read_scalars(event_dir, tag).items():
            ax.plot(steps, values, label=run, marker="." if len(steps) < 30 else None)
        ax.set_xlabel("step")
        ax.set_title(tag)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


# ------------------------------------------------------------------------------------------ segmentation


def label_colors(num_classes: int) -> torch.Tensor:
    """(classes, 3) fixed colours in [0, 1]: tab20 then hsv steps, the same for a class in every picture."""
    base = np.concatenate([_palette("tab20")[:, :3], _palette("tab20b")[:, :3], _palette("tab20c")[:, :3]])
    if num_classes > len(base):
        hues = colormaps["hsv"](np.linspace(0, 1, num_classes - len(base), endpoint=False))[:, :3]
        base = np.concatenate([base, hues])
    return torch.tensor(base[:num_classes], dtype=torch.float32)


def segmentation_grid(images: torch.Tensor, truth: torch.Tensor, prediction: torch.Tensor, num_classes: int,
                      ignore_index: int = 255, max_images: int = 4) -> torch.Tensor:
    """(3, H', W') grid in [0, 1]; one row per image: image | ground truth | prediction, classes in
    :func:`label_colors`, ignored pixels black."""
    colors = torch.cat([label_colors(num_classes), torch.zeros(1, 3)])

    def paint(labels: torch.Tensor) -> torch.Tensor:
        labels = labels.long().cpu().clone()
        labels[(labels < 0) | (labels >= num_classes) | (labels == ignore_index)] = num_classes
        return colors[labels].permute(0, 3, 1, 2)

    n = min(max_images, len(images))
    rows = torch.stack([denormalize(images[:n].float()).cpu(), paint(truth[:n]), paint(prediction[:n])], dim=1)
    return make_grid(rows.flatten(0, 1), nrow=3, padding=2, pad_value=1.0)
