"""Encoder presets, timm compatibility, the H/G extra norm, and size checks."""

import pytest
import timm
import torch

from swinssl import create_encoder
from swinssl.models import PRESETS


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_tiny_preset_is_timm_swinv2_with_the_same_names_and_function():
    torch.manual_seed(0)
    ours = create_encoder("swinv2_tiny", img_size=256, window_size=16, num_classes=10).eval()
    reference = timm.create_model("swinv2_tiny_window16_256", num_classes=10).eval()
    reference.load_state_dict(ours.state_dict(), strict=True)
    images = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(ours(images), reference(images))


@pytest.mark.parametrize(
    "arch, timm_name",
    [("swinv2_small", "swinv2_small_window8_256"), ("swinv2_base", "swinv2_base_window12_192"),
     ("swinv2_large", "swinv2_large_window12_192")],
)
def test_presets_have_timm_sizes(arch, timm_name):
    with torch.device("meta"):  # sizes only: skip allocating and initializing weights
        reference = timm.create_model(timm_name, num_classes=0, pretrained=False)
        img_size, window = reference.patch_embed.img_size[0], reference.layers[0].blocks[0].window_size[0]
        assert _params(create_encoder(arch, img_size=img_size, window_size=window)) == _params(reference)


def test_huge_and_giant_follow_the_paper_and_carry_the_extra_norm():
    assert PRESETS["swinv2_huge"]["embed_dim"] == 352 and PRESETS["swinv2_giant"]["embed_dim"] == 512
    with torch.device("meta"):
        huge = create_encoder("swinv2_huge", img_size=192, window_size=12)
    # every 6th block of a stage: only stage 3 (18 blocks) is deep enough
    with_norm = [(s, b) for s, stage in enumerate(huge.layers) for b, blk in enumerate(stage.blocks)
                 if hasattr(blk, "norm3")]
    assert with_norm == [(2, 5), (2, 11), (2, 17)]
    assert 640e6 < _params(huge) < 670e6  # the paper's 658M (MODELHUB 655M)


def test_extra_norm_normalizes_the_main_branch():
    torch.manual_seed(0)
    tiny = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
    encoder = create_encoder("swinv2", img_size=64, window_size=2, extra_norm_period=2, **tiny).eval()
    block = encoder.layers[0].blocks[1]
    tokens = torch.randn(2, 16, 16, 16) * 5 + 3
    with torch.no_grad():
        out = block(tokens)
    # fresh LayerNorm: every token leaves the block with zero mean and unit variance
    assert torch.allclose(out.mean(-1), torch.zeros(2, 16, 16), atol=1e-5)
    assert torch.allclose(out.var(-1, unbiased=False), torch.ones(2, 16, 16), atol=1e-3)
    assert "layers.0.blocks.1.norm3.weight" in encoder.state_dict()


def test_family_name_with_explicit_sizes():
    encoder = create_encoder("swinv2", img_size=64, window_size=2, embed_dim=24, depths=[1, 1, 1, 1],
                             num_heads=[1, 2, 3, 4])
    assert encoder.num_features == 24 * 8
    with torch.no_grad():
        assert encoder.forward_features(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 2, 192)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(arch="swinv2_medium"), "unknown arch 'swinv2_medium'"),
        (dict(img_size=200), "must be a multiple of 32"),
        (dict(window_size=7), r"window 7 does not tile every stage .* windows that fit: \[2, 3, 6, 12, 24, 48\]"),
        (dict(num_heads=(3, 6, 12, 25)), "not divisible by its 25 heads"),
        (dict(arch="swinv2"), r"arch 'swinv2' names a family, not a size: give embed_dim, depths, num_heads"),
        (dict(arch="swin", embed_dim=32), r"arch 'swin' names a family, not a size: give depths, num_heads .*swin_tiny"),
    ],
)
def test_bad_geometry_fails_in_one_line_before_building(kwargs, message):
    args = dict(arch="swinv2_tiny", img_size=192, window_size=12) | kwargs
    with pytest.raises(ValueError, match=message) as error:
        create_encoder(**args)
    assert "\n" not in str(error.value)


def test_encoder_without_mask_token_refuses_a_mask():
    encoder = create_encoder("swinv2", img_size=64, window_size=2, embed_dim=16, depths=(1, 1, 1, 1),
                             num_heads=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="mask_token=True"):
        encoder.forward_features(torch.zeros(1, 3, 64, 64), torch.zeros(1, 16, 16))


def test_a_video_family_without_sizes_is_refused():
    from swinssl import create_video_encoder

    with pytest.raises(ValueError, match="arch 'video_swinv2' names a family, not a size"):
        create_video_encoder("video_swinv2", num_frames=8, img_size=64, window_size=(2, 4, 4))
