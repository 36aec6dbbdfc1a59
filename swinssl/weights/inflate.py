"""Image -> video: inflating a Swin checkpoint to Video Swin (a step of :func:`swinssl.create_video_encoder`).

Inflation is a tensor operation on timm-layout keys (our video encoder mirrors timm's names):

- the patch kernel (C, 3, p, p) gains time: repeated over the t frames of a patch and divided by t
  (``"inflate"``, the official rule) or put on frame t // 2 with zeros elsewhere (``"center"``, the
  paper's ablation);
- a Swin V1 bias table is resized bicubically when the spatial window differs, then tiled over the 2P - 1
  temporal offsets, so every offset in time starts with the image model's spatial bias;
- a Swin V2 ``cpb_mlp`` gains a zero first-layer column for the temporal coordinate, so its bias starts
  independent of the offset in time.

Either way, a clip whose frames are all one image gives, per time step, the image model's features on
that image. The SimMIM mask token is carried over unchanged to a model that has one, and a SimMIM
decoder inflates by repeating its outputs over the frames of a token (:func:`inflate_decoder`), so masked
video pretraining starts from the image model's reconstructions. The image head is not carried over (a
video head is new). Parameters an image model has no
counterpart for (the factorized temporal branch) keep their initialization, which makes them identities.
"""

from __future__ import annotations


import torch

from swinssl.models.registry import PATCH_INITS
from swinssl.models.video_swin import VideoSwinEncoder
from swinssl.models.windows import resize_bias_table
from swinssl.weights.checkpoint import Checkpoint, CheckpointError
from swinssl.weights.formats import ANCHOR


def inflate_patch_kernel(kernel: torch.Tensor, frames: int, mode: str) -> torch.Tensor:
    """(C, 3, p, p) -> (C, 3, frames, p, p); both modes embed a static clip exactly as the image."""
    if mode == "inflate":
        return kernel.unsqueeze(2).repeat(1, 1, frames, 1, 1) / frames
    inflated = kernel.new_zeros(*kernel.shape[:2], frames, *kernel.shape[2:])
    inflated[:, :, frames // 2] = kernel
    return inflated


def inflate_bias_table(table: torch.Tensor, window: tuple[int, int, int]) -> torch.Tensor:
    """A 2-D ((2M'-1)^2, heads) table -> the ((2P-1)(2M-1)^2, heads) table of a (P, M, M) window."""
    if window[1] != window[2]:
        raise CheckpointError(f"Swin V1 tables inflate to square spatial windows only, got {window}")
    if table.shape[0] != (2 * window[1] - 1) ** 2:
        table = resize_bias_table(table, window[1])
    return table.repeat(2 * window[0] - 1, 1)


def inflate_checkpoint(image: Checkpoint, model: VideoSwinEncoder, patch_init: str = "inflate") -> Checkpoint:
    """The video-layout checkpoint that ``load_into(model, ...)`` loads strictly."""
    if patch_init not in PATCH_INITS:
        raise ValueError(f"patch_init must be one of {PATCH_INITS}, got {patch_init!r}")
    target = model.state_dict()
    frames = model.patch_embed.patch_size[0]
    state, dropped, tables, columns = {}, [], 0, 0
    for key, value in image.state.items():
        if key == ANCHOR:
            value = inflate_patch_kernel(value, frames, patch_init)
        elif key.endswith("relative_position_bias_table"):
            value, tables = inflate_bias_table(value, model.get_submodule(key.rpartition(".")[0]).window_size), tables + 1
        elif key.endswith("cpb_mlp.0.weight"):
            value, columns = torch.cat((value.new_zeros(value.shape[0], 1), value), dim=1), columns + 1
        elif key.startswith("head.") or (key == "mask_token" and key not in target):
            dropped.append(key)
            continue
        state[key] = value
    fresh = sorted(key for key in target if key not in state and ".temporal_" in key)
    state.update({key: target[key] for key in fresh})
    notes = [f"inflated the patch kernel to {frames} frames ({patch_init})"]
    if tables:
        notes.append(f"tiled {tables} bias tables over the temporal offsets")
    if columns:
        notes.append(f"gave {columns} position-bias MLPs a zero temporal input column")
    if dropped:
        notes.append(f"left out the image model's {', '.join(dropped)}")
    if "mask_token" in state:
        notes.append("carried the SimMIM mask token over unchanged")
    if fresh:
        notes.append(f"kept the initialization of {len(fresh)} temporal-attention tensors (identity at start)")
    return Checkpoint(
        format=image.format, family=f"video_{image.family}", state=state, sizes=image.sizes, pretrained_window_sizes=image.pretrained_window_sizes,
        conversions=image.conversions + notes, origin=image.origin, sha256=image.sha256,
    )


def inflate_decoder(decoder: dict[str, torch.Tensor], frames: int) -> dict[str, torch.Tensor]:
    """An image SimMIM decoder (1x1 conv to s * s * 3 channels, ``PixelShuffle(s)``) -> the clip decoder of
    :class:`~swinssl.models.simmim.SimMIMVideoDecoder` for ``frames`` frames per token: every frame of a
    token gets the image decoder's pixels."""
    weight, bias = decoder["0.weight"], decoder["0.bias"]
    if weight.ndim != 4:
        raise CheckpointError(f"expected an image decoder (4-D 1x1 conv weight), got shape {tuple(weight.shape)}")
    out_chans = 3
    per_channel = weight.shape[0] // out_chans
    weight = weight.view(out_chans, 1, per_channel, -1).expand(-1, frames, -1, -1).reshape(-1, weight.shape[1])
    bias = bias.view(out_chans, 1, per_channel).expand(-1, frames, -1).reshape(-1)
    return {"0.weight": weight[:, :, None, None, None].contiguous(), "0.bias": bias.contiguous()}
