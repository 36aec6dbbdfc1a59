"""Self-checks of the official Video Swin test reference (tests/official_video_swin.py) on tiny sizes."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from official_video_swin import (
    OfficialI3DHead, OfficialSwinTransformer3D, WindowAttention3D, compute_mask, get_window_size,
    official_checkpoint, official_inflate, relative_position_index, window_partition,
)

TINY = dict(embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), window_size=(4, 4, 4))


def _tiny(**overrides):
    torch.manual_seed(0)
    return OfficialSwinTransformer3D(**{**TINY, **overrides}).eval()


@pytest.mark.parametrize("size, tokens", [((8, 64, 64), (4, 16, 16)), ((7, 60, 60), (4, 15, 15))])
def test_shapes_with_end_padding_and_spatial_only_merging(size, tokens):
    model = _tiny()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        feats = model.patch_embed(x)
        assert feats.shape == (1, 16, *tokens)
        t, h, w = tokens
        for i, layer in enumerate(model.layers):
            feats = layer(feats)
            if i < 3:
                h, w = (h + 1) // 2, (w + 1) // 2
            assert feats.shape == (1, 16 * 2 ** min(i + 1, 3), t, h, w)  # T is never reduced
        out = model(x)
        logits = OfficialI3DHead(5, model.num_features).eval()(out)
    assert out.shape == (1, 128, t, h, w) and logits.shape == (1, 5)
    assert torch.isfinite(out).all()


def test_get_window_size_clips_with_less_or_equal_and_zeroes_the_shift():
    assert get_window_size((16, 56, 56), (8, 7, 7), (4, 3, 3)) == ((8, 7, 7), (4, 3, 3))
    assert get_window_size((16, 7, 7), (8, 7, 7), (4, 3, 3)) == ((8, 7, 7), (4, 0, 0))
    assert get_window_size((8, 3, 9), (8, 7, 7), (4, 3, 3)) == ((8, 3, 7), (0, 0, 3))
    assert get_window_size((2, 3, 9), (8, 7, 7)) == (2, 3, 7)


@pytest.mark.parametrize("window, rows", [((8, 7, 7), 15 * 169), ((16, 7, 7), 31 * 169)])
def test_table_rows_and_persistent_index(window, rows):
    attn = WindowAttention3D(32, window, num_heads=2)
    n = window[0] * window[1] * window[2]
    assert attn.relative_position_bias_table.shape == (rows, 2)
    assert attn.relative_position_index.shape == (n, n)
    assert "relative_position_index" in attn.state_dict()


def test_index_is_d_major_brute_force():
    p, m = 3, 2
    coords = list(itertools.product(range(p), range(m), range(m)))  # d-major token order
    expected = torch.tensor([[(ti - tj + p - 1) * (2 * m - 1) ** 2 + (hi - hj + m - 1) * (2 * m - 1) + (wi - wj + m - 1)
                              for (tj, hj, wj) in coords] for (ti, hi, wi) in coords])
    assert torch.equal(relative_position_index((p, m, m)), expected)


def test_bias_uses_the_sliced_index_for_clipped_windows():
    torch.manual_seed(0)
    attn = WindowAttention3D(8, (2, 3, 3), num_heads=1).eval()
    with torch.no_grad():  # q = k = 0, v = x, proj = identity: output = softmax(bias) @ x
        attn.qkv.weight.zero_()
        attn.qkv.bias.zero_()
        attn.qkv.weight[16:].copy_(torch.eye(8))
        attn.proj.weight.copy_(torch.eye(8))
        attn.proj.bias.zero_()
        n = 4  # a window clipped to volume 4, e.g. (1, 2, 2), still reads index[:4, :4]
        bias = attn.relative_position_bias_table[relative_position_index((2, 3, 3))[:n, :n].reshape(-1)].view(n, n)
        x = torch.randn(3, n, 8)
        torch.testing.assert_close(attn(x), bias.softmax(-1) @ x)


def _region(pos, size, window, shift):
    if shift == 0:
        return 0
    return 0 if pos < size - window else (1 if pos < size - shift else 2)


@pytest.mark.parametrize("padded, window, shift", [((4, 6, 6), (2, 3, 3), (1, 1, 1)),
                                                    ((4, 6, 9), (4, 3, 3), (0, 1, 1)),
                                                    ((6, 4, 4), (2, 4, 2), (1, 0, 1))])
def test_mask_is_minus_100_exactly_between_different_regions(padded, window, shift):
    mask = compute_mask(*padded, window, shift)
    grid = [range(0, s, w) for s, w in zip(padded, window)]
    inner = list(itertools.product(*[range(w) for w in window]))
    expected = []
    for start in itertools.product(*grid):  # windows in (d, h, w) order, tokens d-major inside
        labels = [tuple(_region(s + o, *args) for s, o, args in zip(start, off, zip(padded, window, shift)))
                  for off in inner]
        expected.append([[0.0 if a == b else -100.0 for b in labels] for a in labels])
    assert torch.equal(mask, torch.tensor(expected))


def test_window_partition_is_d_major():
    x = torch.arange(2 * 4 * 4).float().view(1, 2, 4, 4, 1)
    windows = window_partition(x, (2, 2, 2)).squeeze(-1)
    assert windows[0].tolist() == [0, 1, 4, 5, 16, 17, 20, 21]
    assert windows[1].tolist() == [2, 3, 6, 7, 18, 19, 22, 23]  # next window along w


def _microsoft_2d_state(model3d, window2d=7, classes=10):
    torch.manual_seed(1)
    state = {}
    for key, value in model3d.state_dict().items():
        if key.endswith("relative_position_index"):
            state[key] = torch.zeros(window2d ** 2, window2d ** 2, dtype=torch.long)
        elif key.endswith("relative_position_bias_table"):
            state[key] = torch.randn((2 * window2d - 1) ** 2, value.shape[1])
        elif key == "patch_embed.proj.weight":
            state[key] = torch.randn(value.shape[0], 3, 4, 4)
        else:
            state[key] = torch.randn_like(value)
    state["layers.0.blocks.1.attn_mask"] = torch.zeros(4, window2d ** 2, window2d ** 2)
    state["head.weight"], state["head.bias"] = torch.randn(classes, model3d.num_features), torch.randn(classes)
    return state


@pytest.mark.parametrize("window", [(2, 7, 7), (2, 4, 4)])
def test_inflation_divides_the_kernel_and_tiles_the_tables(window):
    model = _tiny(depths=(1, 2, 1, 1), window_size=window)
    index_before = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("relative_position_index")}
    state_2d = _microsoft_2d_state(model)
    keys_before = set(state_2d)
    official_inflate(state_2d, model)
    assert set(state_2d) == keys_before  # the caller's dict is not modified
    loaded = model.state_dict()
    kernel = loaded["patch_embed.proj.weight"]
    assert kernel.shape == (16, 3, 2, 4, 4)
    for t in range(2):
        assert torch.equal(kernel[:, :, t], state_2d["patch_embed.proj.weight"] / 2)
    m = window[1]
    for key in [k for k in loaded if k.endswith("relative_position_bias_table")]:
        table2d = state_2d[key]
        if m != 7:
            nh = table2d.shape[1]
            table2d = F.interpolate(table2d.t().reshape(1, nh, 13, 13), size=(2 * m - 1, 2 * m - 1),
                                    mode="bicubic").reshape(nh, -1).t()
        assert loaded[key].shape == ((2 * window[0] - 1) * (2 * m - 1) ** 2, table2d.shape[1])
        for dt in range(2 * window[0] - 1):
            rows = slice(dt * (2 * m - 1) ** 2, (dt + 1) * (2 * m - 1) ** 2)
            assert torch.equal(loaded[key][rows], table2d)
    for key, value in index_before.items():
        assert torch.equal(loaded[key], value)  # index buffers keep the 3D values
    for key in ["patch_embed.proj.bias", "patch_embed.norm.weight", "layers.2.blocks.0.attn.qkv.weight",
                "layers.1.downsample.reduction.weight", "layers.0.blocks.0.mlp.fc2.bias", "norm.bias"]:
        assert torch.equal(loaded[key], state_2d[key])


def test_inflated_patch_embedding_on_a_static_clip_equals_the_2d_embedding():
    model = _tiny(window_size=(2, 7, 7))
    state_2d = _microsoft_2d_state(model)
    official_inflate(state_2d, model)
    frame = torch.randn(1, 3, 16, 16)
    clip = frame.unsqueeze(2).repeat(1, 1, 4, 1, 1)
    with torch.no_grad():
        tokens = model.patch_embed.proj(clip)
        expected = F.conv2d(frame, state_2d["patch_embed.proj.weight"], state_2d["patch_embed.proj.bias"], stride=4)
    for t in range(2):
        torch.testing.assert_close(tokens[:, :, t], expected, rtol=1e-5, atol=1e-5)


def test_inflation_with_a_head_count_mismatch_fails_at_load():
    model = _tiny(window_size=(2, 7, 7))
    state_2d = _microsoft_2d_state(model)
    state_2d["layers.0.blocks.0.attn.relative_position_bias_table"] = torch.randn(169, 3)
    with pytest.raises(RuntimeError, match="size mismatch"):
        official_inflate(state_2d, model)


def test_official_checkpoint_layout_round_trips():
    model, head = _tiny(), OfficialI3DHead(7, 128).eval()
    ckpt = official_checkpoint(model, head)
    assert set(ckpt) == {"state_dict", "meta"}
    keys = set(ckpt["state_dict"])
    assert keys == {"backbone." + k for k in model.state_dict()} | {"cls_head.fc_cls.weight", "cls_head.fc_cls.bias"}
    for key in ["backbone.patch_embed.proj.weight", "backbone.patch_embed.norm.weight", "backbone.norm.bias",
                "backbone.layers.0.downsample.reduction.weight", "backbone.layers.2.downsample.norm.weight",
                "backbone.layers.1.blocks.1.attn.relative_position_index",
                "backbone.layers.3.blocks.0.attn.relative_position_bias_table",
                "backbone.layers.0.blocks.0.mlp.fc1.weight", "backbone.layers.0.blocks.0.norm2.bias"]:
        assert key in keys
    assert not any(k.startswith("backbone.layers.3.downsample") for k in keys)
    assert ckpt["state_dict"]["backbone.patch_embed.proj.weight"].shape == (16, 3, 2, 4, 4)
    fresh = OfficialSwinTransformer3D(**TINY).eval()
    fresh.load_state_dict({k[9:]: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}, strict=True)
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("size", [(8, 64, 64), (7, 60, 52)])
def test_matches_torchvision_swin3d_port(size):
    """torchvision's port has the same math (clipping, masks, index slicing); only the names differ."""
    tv = pytest.importorskip("torchvision.models.video.swin_transformer")
    model = _tiny()
    ref = tv.SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=16, depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 4],
                               window_size=[4, 4, 4], stochastic_depth_prob=0.0, num_classes=3).eval()
    renamed = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if parts[0] == "layers":
            i = int(parts[1])
            if parts[2] == "blocks":
                rest = ".".join(parts[4:]).replace("mlp.fc1", "mlp.0").replace("mlp.fc2", "mlp.3")
                key = f"features.{2 * i}.{parts[3]}.{rest}"
            else:
                key = f"features.{2 * i + 1}.{'.'.join(parts[3:])}"
        renamed[key] = value
    missing, unexpected = ref.load_state_dict(renamed, strict=False)
    assert set(missing) == {"head.weight", "head.bias"} and not unexpected
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        expected = ref.norm(ref.features(ref.patch_embed(x))).permute(0, 4, 1, 2, 3)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def _own_offsets_index(clipped, full):
    """Rows of the full window's table for the clipped window's own token offsets (the geometric reading)."""
    coords = list(itertools.product(*(range(n) for n in clipped)))
    spans = [2 * n - 1 for n in full]
    return torch.tensor([[((a[0] - b[0] + full[0] - 1) * spans[1] + a[1] - b[1] + full[1] - 1) * spans[2]
                          + a[2] - b[2] + full[2] - 1 for b in coords] for a in coords])


def test_the_sliced_index_is_geometric_only_when_time_is_the_clipped_axis():
    full = (2, 3, 3)
    time_clipped, space_clipped = (1, 3, 3), (2, 2, 2)
    assert torch.equal(relative_position_index(full)[:9, :9], _own_offsets_index(time_clipped, full))
    assert not torch.equal(relative_position_index(full)[:8, :8], _own_offsets_index(space_clipped, full))
