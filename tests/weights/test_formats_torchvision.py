"""torchvision Swin checkpoints in (``swin_v2_*``, ``swin_*``, ``swin3d_*``), and timm ``swinv2_cr`` refused by name.

Each source is the installed library's own model class at a tiny size with random weights, saved as its
``state_dict``; outputs are compared at the source size (windows that tile every stage, where torchvision's
padding and swinssl's clipping agree) and after moving to a larger window. torchvision's Swin V2 normalizes
position coordinates by its window, so the moved model keeps that window as its pretrained one; the reference is
torchvision built at the new window with its coordinate tables normalized by the old one (written out here).
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2
from torchvision.models.video.swin_transformer import SwinTransformer3d

from conftest import relative_error, trained_like

from swinssl import create_encoder, create_video_encoder
from swinssl.weights import CheckpointError, load_checkpoint

SIZES = dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4])


def torchvision_swin(v2: bool, window: int) -> torch.nn.Module:
    torch.manual_seed(0)
    blocks = dict(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2) if v2 else {}
    model = SwinTransformer(patch_size=[4, 4], window_size=[window, window], num_classes=3, **SIZES, **blocks)
    return trained_like(model)


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))


def test_torchvision_swin_v2_gives_its_logits_and_keeps_its_window_when_moved(tmp_path, images, caplog):
    source = torchvision_swin(v2=True, window=4)
    path = tmp_path / "swin_v2.pth"
    torch.save(source.state_dict(), path)
    checkpoint = load_checkpoint(path)
    assert (checkpoint.format, checkpoint.family) == ("torchvision", "swinv2")
    assert checkpoint.pretrained_window_sizes == [4, 4, 4, 4]  # torchvision's window, in every stage
    ours = create_encoder("swinv2", img_size=128, window_size=4, num_classes=3, checkpoint=path).eval()
    with torch.no_grad():
        assert relative_error(ours(images[:, :, :128, :128]), source(images[:, :, :128, :128])) <= 1e-5

    caplog.clear()  # the load above may be logged at INFO (a CLI test run in-process earlier can leave INFO on)
    with caplog.at_level(logging.WARNING, logger="swinssl.weights"):
        moved = create_encoder("swinv2", img_size=256, window_size=8, num_classes=3, checkpoint=path).eval()
    assert not caplog.records
    reference = torchvision_swin(v2=True, window=8).eval()
    state = {key: value for key, value in source.state_dict().items() if not key.endswith(("relative_coords_table",
                                                                                             "relative_position_index"))}
    reference.load_state_dict(state, strict=False)
    for module in reference.modules():
        if hasattr(module, "relative_coords_table"):  # offsets d -> 8 d / (4 - 1), then sign(u) log2(1 + |u|) / 3
            offsets = torch.arange(-7, 8, dtype=torch.float32) / 3 * 8
            table = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1)[None]
            module.relative_coords_table.copy_(torch.sign(table) * torch.log2(table.abs() + 1.0) / 3.0)
    with torch.no_grad():
        assert relative_error(moved(images), reference(images)) <= 1e-5


def test_torchvision_swin_v1_gives_its_logits_and_moves_with_bicubic_tables(tmp_path, images):
    source = torchvision_swin(v2=False, window=4)
    ours = create_encoder("swin", img_size=128, window_size=4, num_classes=3, checkpoint=source.state_dict()).eval()
    with torch.no_grad():
        assert relative_error(ours(images[:, :, :128, :128]), source(images[:, :, :128, :128])) <= 1e-5
    reference = torchvision_swin(v2=False, window=8).eval()
    state = {}
    for key, value in source.state_dict().items():
        if key.endswith("relative_position_index"):
            continue
        if key.endswith("relative_position_bias_table"):  # the official rule: (2w-1)^2 rows resized bicubically
            side = math.isqrt(value.shape[0])
            grid = value.T.reshape(1, value.shape[1], side, side)
            value = F.interpolate(grid, size=(15, 15), mode="bicubic").reshape(value.shape[1], 225).T
        state[key] = value
    reference.load_state_dict(state, strict=False)
    moved = create_encoder("swin", img_size=256, window_size=8, num_classes=3, checkpoint=source.state_dict()).eval()
    with torch.no_grad():
        assert relative_error(moved(images), reference(images)) <= 1e-5


def test_torchvision_swin3d_loads_into_video_swin(tmp_path):
    torch.manual_seed(0)
    source = trained_like(SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                                            window_size=[2, 4, 4], num_classes=3))
    path = tmp_path / "swin3d.pth"
    torch.save(source.state_dict(), path)
    ours = create_video_encoder("video_swin", num_frames=4, img_size=32, window_size=(2, 4, 4), num_classes=3,
                                checkpoint=path).eval()
    assert load_checkpoint(path).format == "torchvision"
    clips = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert relative_error(ours(clips), source(clips)) <= 1e-5


def test_torchvision_swin3d_with_a_temporal_window_longer_than_the_clip_runs_its_clips():
    """Today's main: "temporal window 8 is larger than the clip". swin3d_t's window is 8 in time; on 8-frame clips
    (4 time steps) torchvision clips it to 4 and reads the official slice of its 15-row-deep bias table."""
    torch.manual_seed(0)
    source = trained_like(SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                                            window_size=[8, 4, 4], num_classes=3)).eval()
    ours = create_video_encoder("video_swin", num_frames=8, img_size=32, window_size=(8, 4, 4), num_classes=3,
                                checkpoint=source.state_dict()).eval()
    table = ours.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.shape[0] == 15 * 7 * 7  # the checkpoint's table, as it is
    clips = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert relative_error(ours(clips), source(clips)) <= 1e-5


def test_timm_swinv2_cr_is_refused_by_name():
    from timm.models.swin_transformer_v2_cr import SwinTransformerV2Cr

    model = SwinTransformerV2Cr(img_size=(64, 64), window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2))
    with pytest.raises(CheckpointError, match="timm swinv2_cr_.* state dict: another architecture"):
        create_encoder("swinv2", img_size=64, window_size=4, checkpoint=model.state_dict())
