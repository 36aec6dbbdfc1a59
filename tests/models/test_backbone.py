"""Encoders as backbones: any input size (padded windows, against a global-attention reference), timm's
features_only / feature_info / forward_intermediates (against timm itself), HF UperNet and torchvision FPN."""

from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict

import pytest
import timm
import torch
from conftest import trained_like

from swinssl import create_encoder, create_video_encoder
from swinssl.models import build_encoder, build_video_encoder

TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))


def tiny_encoder(family: str = "swinv2", img_size: int = 128, window_size: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    return trained_like(build_encoder(family, img_size=img_size, window_size=window_size, **TINY), seed)


# ------------------------------------------------------------------------------------------------ any input size


def global_reference(block, x: torch.Tensor) -> torch.Tensor:
    """A block's window attention written without padding, rolling or partitioning: every token attends to the
    real tokens that share its window and its shift region once the map is padded at the end to whole windows and
    rolled by -shift; the bias is the window's, at the two tokens' offsets inside it."""
    batch, height, width, channels = x.shape
    (wh, ww), (sh, sw) = tuple(block.window_size), tuple(block.shift_size)
    padded = (-(-height // wh) * wh, -(-width // ww) * ww)
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    places = []
    for coords, size, window, shift in ((rows, padded[0], wh, sh), (cols, padded[1], ww, sw)):
        rolled = (coords - shift) % size  # where the token sits once the padded map is rolled by -shift
        region = torch.zeros_like(rolled) if not shift else (rolled >= size - window).long() + (rolled >= size - shift)
        places.append((rolled.flatten() // window, rolled.flatten() % window, region.flatten()))
    (row_window, row_in, row_region), (col_window, col_in, col_region) = places
    same = lambda values: values[:, None] == values[None, :]  # noqa: E731
    allowed = same(row_window) & same(col_window) & same(row_region) & same(col_region)
    attn = block.attn
    tokens = x.reshape(batch, height * width, channels)
    q, k, v, bias, scale = attn.attention_inputs(tokens)  # per-token projections; bias (heads, N, N) of the window
    inside = row_in * ww + col_in  # each token's index inside its window
    scores = q @ k.transpose(-2, -1) * (1.0 if scale is None else scale) + bias[:, inside][:, :, inside]
    probabilities = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    out = (probabilities @ v).transpose(1, 2).reshape(batch, height * width, channels)
    return attn.proj(out).view(batch, height, width, channels)


@pytest.mark.parametrize("family", ["swinv2", "swin"])
@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("grid", [(8, 8), (10, 6), (5, 11)])
def test_padded_windows_match_a_global_attention_reference(family, shifted, grid):
    model = tiny_encoder(family, img_size=32, window_size=4).double()
    block = model.layers[0].blocks[1 if shifted else 0]
    x = torch.randn(2, *grid, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block._attn(x), global_reference(block, x), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("family", ["swinv2", "swin"])
def test_an_encoder_runs_at_sizes_other_than_the_built_one_non_square_too(family):
    model = tiny_encoder(family).eval()  # built at 128 px, window 8: stage windows 8, 8, 8, 4
    with torch.no_grad():
        built = model.forward_features(torch.randn(1, 3, 128, 128))
        larger = model.forward_features(torch.randn(2, 3, 160, 160))  # timm: "Input height (160) doesn't match"
        wide = model.forward_features(torch.randn(1, 3, 96, 224))
        tall = model.forward_features(torch.randn(1, 3, 200, 52))  # grids that no window divides
    assert built.shape == (1, 4, 4, 128) and larger.shape == (2, 5, 5, 128)
    assert wide.shape == (1, 3, 7, 128) and tall.shape == (1, 7, 2, 128)
    assert torch.isfinite(tall).all()
    assert [tuple(stage.blocks[0].window_size) for stage in model.layers] == [(8, 8)] * 3 + [(4, 4)]


def test_a_size_the_patch_does_not_divide_is_a_one_line_error():
    model = tiny_encoder()
    with pytest.raises(ValueError, match=r"multiples of the patch size 4, got shape \(1, 3, 130, 128\); pad or crop"):
        model(torch.randn(1, 3, 130, 128))


# ------------------------------------------------------------------------------------------ timm's backbone API


def test_features_only_is_timms_features_only_on_the_same_weights():
    ours = create_encoder("swinv2", img_size=64, window_size=4, checkpoint=tiny_encoder(img_size=64, window_size=4)
                          .state_dict(), features_only=True, out_indices=(1, 3), attn_kernel="plain").eval()
    reference = timm.create_model("swinv2_tiny_window8_256", img_size=64, window_size=4, features_only=True,
                                  out_indices=(1, 3), **TINY).eval()
    # timm's Swin features_only hooks the stages of a flattened copy (layers_N) and gives NHWC maps; ours are the
    # NCHW maps of timm's forward_intermediates, which detection and segmentation heads take.
    reference.load_state_dict({key.removeprefix("model.").replace("layers.", "layers_", 1): value
                               for key, value in ours.state_dict().items()}, strict=True)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps, expected = ours(images), reference(images)
    assert [m.shape for m in maps] == [(2, 32, 8, 8), (2, 128, 2, 2)]
    for got, want in zip(maps, expected):
        assert torch.equal(got, want.permute(0, 3, 1, 2))
    assert ours.feature_info.channels() == reference.feature_info.channels() == [32, 128]
    assert ours.feature_info.reduction() == [8, 32]
    assert ours.feature_info.module_name() == ["layers.1", "layers.3"]
    assert ours.load_report.format == "timm"


def test_features_only_prunes_the_stages_after_the_last_map():
    model = create_encoder("swinv2", img_size=64, window_size=4, features_only=True, out_indices=(0, -3), **TINY)
    assert len(model.model.layers) == 2 and model.feature_info.channels() == [16, 32]
    maps = model(torch.randn(1, 3, 96, 64))  # and at another size
    assert [m.shape for m in maps] == [(1, 16, 24, 16), (1, 32, 12, 8)]


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(features_only=True, out_indices=(0, 4)), r"out_indices \(0, 4\) do not name stages of this 4-stage"),
    (dict(features_only=True, out_indices=0), "out_indices 0 do not name stages"),
    (dict(out_indices=(1, 2)), "pass features_only=True with it"),
])
def test_bad_out_indices_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_encoder("swinv2", img_size=64, window_size=4, **kwargs, **TINY)


def tiny_video(style: str = "video_swinv2", seed: int = 0):
    torch.manual_seed(seed)
    return trained_like(build_video_encoder(style, num_frames=8, img_size=64, window_size=(2, 4, 4), **TINY), seed)


def test_video_forward_intermediates_give_ncthw_stage_maps():
    model = tiny_video()
    video = torch.randn(2, 3, 8, 48, 80)  # not the built size, not square
    with torch.no_grad():
        final, maps = model.forward_intermediates(video, norm=True)
        features = model.forward_features(video)
        last_two = model.forward_intermediates(video, indices=2, intermediates_only=True)
        channels_last = model.forward_intermediates(video, indices=[0], output_fmt="NTHWC", intermediates_only=True)
        early = model.forward_intermediates(video, indices=[1], stop_early=True)
    assert [m.shape for m in maps] == [(2, 16, 4, 12, 20), (2, 32, 4, 6, 10), (2, 64, 4, 3, 5), (2, 128, 4, 2, 3)]
    assert torch.equal(final, features) and torch.equal(maps[3], features.permute(0, 4, 1, 2, 3))
    assert torch.equal(last_two[0], maps[2]) and torch.equal(channels_last[0], maps[0].permute(0, 2, 3, 4, 1))
    assert torch.equal(early[1][0], maps[1]) and early[0].shape == (2, 4, 6, 10, 32)  # not normed: stage 2 width
    with pytest.raises(ValueError, match="output_fmt must be one of"):
        model.forward_intermediates(video, output_fmt="NCHW")


def test_video_features_only_from_a_checkpoint():
    source = tiny_video()
    model = create_video_encoder("video_swinv2", num_frames=8, img_size=64, window_size=(2, 4, 4),
                                 checkpoint=source.state_dict(), features_only=True, out_indices=(0, 2)).eval()
    assert model.feature_info.channels() == [16, 64] and model.feature_info.reduction() == [4, 16]
    assert len(model.model.layers) == 3
    video = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        expected = source.forward_intermediates(video, indices=(0, 2), intermediates_only=True)
        maps = model(video)
    for got, want in zip(maps, expected):
        assert torch.equal(got, want)


# ----------------------------------------------------------------------------------------------- real clients


def test_hf_upernet_trains_on_a_swinssl_encoder():
    pytest.importorskip("transformers")
    from swinssl.models.backbone import hf_upernet

    pretrained = tiny_encoder(img_size=64, window_size=4)
    backbone = create_encoder("swinv2", img_size=64, window_size=4, checkpoint=pretrained.state_dict(),
                              features_only=True)
    model = hf_upernet(backbone, num_labels=5, hidden_size=32, auxiliary_channels=16)
    images, labels = torch.randn(2, 3, 96, 64), torch.randint(0, 5, (2, 96, 64))
    out = model(pixel_values=images, labels=labels)
    assert out.logits.shape == (2, 5, 96, 64) and torch.isfinite(out.loss)
    out.loss.backward()
    encoder = model.backbone.features.model
    assert encoder is backbone.model  # the pretrained weights are what UperNet trains
    assert encoder.layers[0].blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.decode_head.classifier.weight.grad.abs().sum() > 0
    with torch.no_grad():
        maps = model.eval().backbone(images).feature_maps
        expected = pretrained.forward_intermediates(images, intermediates_only=True)
    for got, want in zip(maps, expected):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="names the stand-in backbone"):
        model.save_pretrained("unused")


def test_transformers_is_needed_only_by_the_hf_adapter_and_its_absence_names_the_extra(monkeypatch):
    code = "import sys, swinssl.models.backbone; assert 'transformers' not in sys.modules, 'imported transformers'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0
    from swinssl.models.backbone import hf_upernet

    monkeypatch.setitem(sys.modules, "transformers", None)  # what an environment without it gives
    with pytest.raises(ImportError, match=r"needs transformers: pip install 'swinssl\[interop\]'"):
        hf_upernet(create_encoder("swinv2", img_size=64, window_size=4, features_only=True, **TINY), num_labels=3)


def test_torchvision_fpn_on_features_only():
    ops = pytest.importorskip("torchvision.ops")
    backbone = create_encoder("swinv2", img_size=64, window_size=4, features_only=True, out_indices=(1, 2, 3), **TINY)
    fpn = ops.FeaturePyramidNetwork(backbone.feature_info.channels(), out_channels=24)
    maps = backbone(torch.randn(1, 3, 96, 128))
    pyramid = fpn(OrderedDict((name, m) for name, m in zip(backbone.feature_info.module_name(), maps)))
    assert [p.shape for p in pyramid.values()] == [(1, 24, 12, 16), (1, 24, 6, 8), (1, 24, 3, 4)]

