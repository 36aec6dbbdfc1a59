"""swinssl.viz: the numbers behind each figure against the model's own computation, and figures that render."""

from __future__ import annotations

import io
import math
from itertools import product

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image
from conftest import trained_like
from torch.utils.tensorboard import SummaryWriter

from swinssl import MaskGenerator, create_encoder, viz
from swinssl.datamodules import denormalize
from swinssl.models import MaskedImageModel, build_encoder
from swinssl.weights import resize_bias_table

TINY = dict(embed_dim=16, depths=(2, 2, 2), num_heads=(2, 2, 4))


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def v2(img_size=64, window=4, **extra):
    return trained_like(build_encoder("swinv2", img_size=img_size, window_size=window, **TINY, **extra))


def timm_v2_bias(attn) -> torch.Tensor:
    """timm's own Swin V2 table from its coordinate buffer: (heads, 2h-1, 2w-1)."""
    table = 16 * torch.sigmoid(attn.cpb_mlp(attn.relative_coords_table))[0]
    return table.permute(2, 0, 1)


def rendered(figure: Figure) -> np.ndarray:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=50)
    return np.asarray(Image.open(buffer).convert("L"), dtype=float)


# ------------------------------------------------------------------------------------------ position bias


@torch.no_grad()
def test_v2_bias_tables_are_what_the_model_moved_to_each_window_computes():
    source = v2()  # 64 px / window 4: stage grids 16, 8, 4
    tables = viz.bias_tables(source, stage=1, windows=[4, 6, 8])
    torch.testing.assert_close(tables[4], timm_v2_bias(source.layers[1].blocks[0].attn))
    for window, img_size in ((6, 96), (8, 128)):
        moved = create_encoder("swinv2", img_size=img_size, window_size=window, checkpoint=source.state_dict(),
                               pretrained_window_sizes=source.pretrained_window_sizes(), **TINY)
        torch.testing.assert_close(tables[window], timm_v2_bias(moved.layers[1].blocks[0].attn))
    # the trained offsets keep their bias at every window: log-CPB's point
    torch.testing.assert_close(tables[8][:, 4:-4, 4:-4], tables[4])


@torch.no_grad()
def test_v2_bias_tables_can_fail_a_model_normalized_by_another_window():
    source = v2()
    moved = create_encoder("swinv2", img_size=128, window_size=8, checkpoint=source.state_dict(),
                           pretrained_window_sizes=[0, 0, 0], **TINY)  # coordinates / the new window
    table = viz.bias_tables(source, stage=1, windows=[8])[8]
    assert (table - timm_v2_bias(moved.layers[1].blocks[0].attn)).abs().max() > 1e-2


def test_v1_bias_tables_are_the_table_and_its_bicubic_resize():
    model = trained_like(build_encoder("swin", img_size=64, window_size=4, **TINY))
    table = model.layers[0].blocks[0].attn.relative_position_bias_table
    tables = viz.bias_tables(model, stage=0, windows=[4, 8])
    torch.testing.assert_close(tables[4], table.detach().T.reshape(2, 7, 7))
    torch.testing.assert_close(tables[8], resize_bias_table(table.detach(), 8).T.reshape(2, 15, 15))


# -------------------------------------------------------------------------------------------- attention


def attention_output(attn, x, probabilities):
    """The window attention's output from given probabilities: proj(P @ v)."""
    b, n, c = x.shape
    bias = torch.cat((attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias)) if hasattr(attn, "q_bias") \
        else attn.qkv.bias
    v = F.linear(x, attn.qkv.weight, bias)[..., 2 * c:].reshape(b, n, attn.num_heads, -1).transpose(1, 2)
    return attn.proj((probabilities @ v).transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize("family", ["swinv2", "swin"])
@pytest.mark.parametrize("block", [0, 1])  # plain and shifted windows
@torch.no_grad()
def test_attention_probabilities_reproduce_the_blocks_own_output(family, block, images):
    model = trained_like(build_encoder(family, img_size=64, window_size=4, **TINY))
    attn = model.layers[1].blocks[block].attn
    caught = {}
    handle = attn.register_forward_hook(lambda _m, args, output: caught.update(x=args[0], out=output))
    probabilities, layout = viz.attention_probabilities(model, images, stage=1, block=block)
    handle.remove()
    assert probabilities.shape == (4, 2, 16, 16) and layout["shift"] == ((2, 2) if block else (0, 0))
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(4, 2, 16))
    torch.testing.assert_close(attention_output(attn, caught["x"], probabilities), caught["out"],
                               rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_window_positions_undo_the_cyclic_shift(images):
    """Swin V2 blocks attend over their raw input (res-post-norm), so each window token is an input token."""
    model = v2()
    block = model.layers[0].blocks[1]
    caught = {}
    handles = [block.register_forward_pre_hook(lambda _m, args: caught.update(grid=args[0])),
               block.attn.register_forward_pre_hook(lambda _m, args, kw: caught.update(x=args[0]), with_kwargs=True)]
    _, layout = viz.attention_probabilities(model, images, stage=0, block=1)
    for handle in handles:
        handle.remove()
    rows, cols = layout["positions"].unbind(-1)
    torch.testing.assert_close(caught["x"], caught["grid"][0, rows, cols])
    assert layout["positions"].view(-1, 2).unique(dim=0).shape[0] == 16 * 16  # every token exactly once


def test_attention_maps_draw_one_panel_per_head_and_the_window(images):
    figure = viz.attention_maps(v2(), images, stage=2, block=0, window_index=0)
    assert len(figure.axes) == 1 + 4 + 4  # image, 4 heads, 4 colour bars
    assert rendered(figure).std() > 10


# ------------------------------------------------------------------------------------------ 3D windows


def brute_force_groups(size, window, shift):
    """Video Swin by its definition: roll by -shift, cut windows; tokens attend when they share a window and
    a shift region (the slices [0, -w), [-w, -s), [-s, end) of the rolled axis)."""
    padded = [math.ceil(s / w) * w for s, w in zip(size, window)]
    keys = {}
    for position in product(*(range(s) for s in size)):
        rolled = [(p - s) % n for p, s, n in zip(position, shift, padded)]
        cell = tuple(r // w for r, w in zip(rolled, window))
        region = tuple(0 if not s else (0 if r < n - w else 1 if r < n - s else 2)
                       for r, s, w, n in zip(rolled, shift, window, padded))
        keys[position] = (cell, region)
    return keys


@pytest.mark.parametrize("size, window", [((4, 8, 8), (2, 4, 4)), ((4, 6, 6), (2, 4, 4)), ((3, 4, 4), (2, 2, 2)),
                                          ((4, 3, 8), (2, 4, 4))])
@pytest.mark.parametrize("shifted", [False, True])
def test_attention_groups_match_the_definition_of_shifted_3d_windows(size, window, shifted):
    _, groups, clipped, shift = viz.attention_groups(size, window, tuple(w // 2 if shifted else 0 for w in window))
    keys = brute_force_groups(size, clipped, shift)
    expected = torch.tensor([sorted(set(keys.values())).index(keys[p]) for p in product(*map(range, size))])
    found = groups.flatten()  # row-major, the order of product()
    torch.testing.assert_close(found[:, None] == found[None], expected[:, None] == expected[None])


def test_attention_groups_count_and_clipping():
    windows, groups, window, shift = viz.attention_groups((4, 4, 4), (2, 2, 2), (1, 1, 1))
    assert int(windows.max()) + 1 == 8 and int(groups.max()) + 1 == 27  # 3 pieces per axis
    _, _, window, shift = viz.attention_groups((4, 4, 4), (2, 4, 8), (1, 2, 4))
    assert window == (2, 4, 4) and shift == (1, 0, 0)  # clipped axes lose their shift


def test_window_partition_figure_has_a_regular_and_a_shifted_row():
    figure = viz.window_partition_figure((4, 8, 8), (2, 4, 4))
    assert len(figure.axes) == 2 * 4
    assert figure.axes[4].get_ylabel().endswith("8 windows, 27 groups")
    assert rendered(figure).std() > 10


# ------------------------------------------------------------------------------------------- image grids


def test_mask_overlay_tints_exactly_the_masked_units(images):
    masks = MaskGenerator(64, mask_patch_size=16, model_patch_size=4, mask_ratio=0.5)
    mask = torch.stack([masks(torch.Generator().manual_seed(i)) for i in range(2)])
    grid = viz.mask_overlay(images, mask, patch_size=4)
    assert grid.shape == (3, 64 + 4, 2 * 64 + 6)
    first = grid[:, 2:66, 2:66]
    hidden = mask[0].repeat_interleave(4, 0).repeat_interleave(4, 1).bool()
    plain = denormalize(images[0])
    torch.testing.assert_close(first[:, ~hidden], plain[:, ~hidden])
    assert (first[:, hidden] - plain[:, hidden]).abs().mean() > 0.1


def test_reconstruction_grid_pastes_the_prediction_into_the_mask_only(images):
    model = MaskedImageModel(build_encoder("swinv2", img_size=64, window_size=4, mask_token=True, **TINY),
                             norm_target_window=None)
    mask = MaskGenerator(64, 16, 4, 0.5)(torch.Generator().manual_seed(0))[None].expand(2, -1, -1)
    with torch.no_grad():
        _, reconstruction = model(images, mask)
    grid = viz.reconstruction_grid(model, images, mask, reconstruction, max_images=1)
    columns = [grid[:, 2:66, 2 + 66 * i: 66 + 66 * i] for i in range(3)]
    hidden = mask[0].repeat_interleave(4, 0).repeat_interleave(4, 1).bool()
    torch.testing.assert_close(columns[2][:, ~hidden], columns[0][:, ~hidden])
    expected = denormalize(reconstruction[0]).clamp(0, 1)
    torch.testing.assert_close(columns[2][:, hidden], expected[:, hidden])


# ------------------------------------------------------------------------------------------- loss curves


def test_loss_curves_read_every_run_under_a_folder(tmp_path):
    for run, slope in (("a", 1.0), ("b", 2.0)):
        with SummaryWriter(tmp_path / run / "version_0") as writer:
            for step in range(0, 50, 10):
                writer.add_scalar("train/loss", 1.0 / (1 + slope * step), step)
            writer.add_scalar("train/lr", 0.1, 0)
    curves = viz.read_scalars(tmp_path, "train/loss")
    assert sorted(curves) == ["a/version_0", "b/version_0"]
    steps, values = curves["b/version_0"]
    np.testing.assert_array_equal(steps, [0, 10, 20, 30, 40])
    np.testing.assert_allclose(values, 1.0 / (1 + 2.0 * steps), rtol=1e-6)
    figure = viz.loss_curves(tmp_path, ["train/loss", "train/lr"])
    assert [len(ax.lines) for ax in figure.axes] == [2, 2]
    with pytest.raises(KeyError, match="train/lr"):
        viz.read_scalars(tmp_path, "val/loss")
    with pytest.raises(FileNotFoundError):
        viz.read_scalars(tmp_path / "nothing", "train/loss")


def test_bias_maps_render_one_panel_per_head_and_window():
    figure = viz.bias_maps(v2(), stage=2, windows=[4, 6, 8])  # stage 2 has 4 heads
    assert len(figure.axes) == 4 * 3 + 1
    assert rendered(figure).std() > 10


def test_save_writes_figures_and_grids(tmp_path, images):
    grid = viz.mask_overlay(images, torch.zeros(2, 16, 16, dtype=torch.uint8), patch_size=4)
    for name, picture in (("grid.png", grid), ("figure.png", viz.window_partition_figure((2, 4, 4), (2, 2, 2)))):
        path = viz.save(picture, tmp_path / "sub" / name)
        assert Image.open(path).size[0] > 50
