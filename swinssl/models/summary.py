"""One line that says what an encoder is: every run logs it at start, so a size is never a surprise."""

from __future__ import annotations

from torch import nn

from swinssl.models.registry import FAMILIES


def describe_encoder(model: nn.Module) -> str:
    """Family, widths, depths, heads, input, windows per stage, position-bias windows and parameter count."""
    stages = list(model.layers)
    depths = [len(stage.blocks) for stage in stages]
    heads = [stage.blocks[0].attn.num_heads for stage in stages]
    embed_dim = model.patch_embed.proj.weight.shape[0]
    if model.patch_embed.proj.weight.ndim == 5:
        size = f"{model.num_frames} x {model.img_size} px"
        windows = [tuple(window) for window in _video_windows(model)]
    else:
        height, width = model.patch_embed.img_size
        size = f"{height} px" if height == width else f"{height}x{width} px"
        windows = [stage.blocks[0].window_size[0] for stage in stages]
    parameters = sum(param.numel() for param in model.parameters())
    return (f"{FAMILIES[model.family].title}, embed_dim {embed_dim}, depths {depths}, heads {heads}, {size}, windows {windows}, "
            f"position bias for windows {model.pretrained_window_sizes()}, {parameters / 1e6:.2f}M parameters")


def _video_windows(model: nn.Module) -> list:
    from swinssl.models.windows import clip_window

    return [clip_window(size, model.window_size, (0, 0, 0))[0] for size in model.stage_sizes()]
