"""The encoder spec goes down whole: the keyword factories and builders make an EncoderSpec and take the one
spec path, a checkpoint's settings are spec steps, and each family's defaults come from its Family record."""

import pytest
import torch

import swinssl
from conftest import trained_like
from swinssl.masking import VideoMaskGenerator
from swinssl.models import build_encoder, build_video_encoder
from swinssl.models.registry import EncoderSpec, family
from swinssl.weights import encoder_from_spec, load_checkpoint
from swinssl.weights.factories import checkpoint_spec

TINY = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))


def same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    one, two = first.state_dict(), second.state_dict()
    return one.keys() == two.keys() and all(torch.equal(one[key], two[key]) for key in one)


@pytest.mark.parametrize("arch", ["swinv2", "swin"])
def test_an_image_spec_builds_and_loads_what_the_keywords_do(arch):
    source = trained_like(build_encoder(arch, img_size=64, window_size=4, **TINY)).state_dict()
    torch.manual_seed(0)
    by_keywords = swinssl.create_encoder(arch, img_size=96, window_size=6, num_classes=3, checkpoint=source,
                                         drop_path_rate=0.0).eval()
    torch.manual_seed(0)
    spec = EncoderSpec(arch=arch, img_size=96, window_size=6, drop_path_rate=0.0)
    by_spec = encoder_from_spec(spec, num_classes=3, checkpoint=source).eval()
    assert same_weights(by_keywords, by_spec)
    assert by_spec.embed_dim == 16 and by_spec.patch_embed.patch_size == (4, 4)  # read off the checkpoint
    images = torch.randn(2, 3, 96, 96)
    assert torch.equal(by_keywords(images), by_spec(images))
    assert by_spec.load_report.loaded == by_keywords.load_report.loaded


def test_a_video_spec_builds_inflates_and_loads_what_the_keywords_do():
    image = trained_like(build_encoder("swinv2", img_size=64, window_size=4, mask_token=True, **TINY))
    torch.manual_seed(0)
    by_keywords = swinssl.create_video_encoder("video_swinv2", num_frames=4, img_size=64, window_size=(2, 4, 4),
                                               mask_token=True, checkpoint=image.state_dict(), patch_init="center")
    torch.manual_seed(0)
    spec = EncoderSpec(arch="video_swinv2", num_frames=4, img_size=64, window_size=(2, 4, 4), patch_init="center")
    by_spec = encoder_from_spec(spec, mask_token=True, checkpoint=image.state_dict())
    assert same_weights(by_keywords, by_spec)
    assert torch.equal(by_spec.mask_token, image.mask_token)


def test_the_spec_path_gives_backbone_maps():
    spec = EncoderSpec(arch="swinv2", img_size=64, window_size=4, **TINY)
    maps = encoder_from_spec(spec, features_only=True, out_indices=(1, 3))(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 32, 8, 8), (1, 128, 2, 2)]


def test_a_builder_takes_a_spec_and_lays_keywords_over_it():
    spec = EncoderSpec(arch="swinv2", img_size=64, window_size=4, **TINY)
    torch.manual_seed(0)
    from_spec = build_encoder(spec, num_classes=2, window_size=8, grad_checkpointing=True)
    torch.manual_seed(0)
    from_keywords = build_encoder("swinv2", num_classes=2, img_size=64, window_size=8, grad_checkpointing=True, **TINY)
    assert same_weights(from_spec, from_keywords)
    assert from_spec.layers[0].blocks[0].window_size == (8, 8) and from_spec.layers[0].grad_checkpointing


def test_checkpoint_settings_are_spec_steps_and_given_settings_win():
    image = build_encoder("swinv2", img_size=64, window_size=4, pretrained_window_sizes=(8, 8, 8, 4), **TINY)
    source = load_checkpoint(image.state_dict())
    source.pretrained_window_sizes = image.pretrained_window_sizes()  # a plain state dict does not record them
    spec = checkpoint_spec(EncoderSpec(arch="swinv2", img_size=128, window_size=8, embed_dim=16), source)
    assert (spec.depths, spec.num_heads, spec.patch_size) == (TINY["depths"], TINY["num_heads"], 4)
    assert spec.pretrained_window_sizes == (8, 8, 8, 4)
    video = checkpoint_spec(EncoderSpec(arch="video_swinv2", window_size=None, pretrained_window_sizes=(4, 4, 4, 4)),
                            source)
    assert video.patch_size == family("video_swinv2").inflated_patch(4) == (2, 4, 4)
    assert video.pretrained_window_sizes == (4, 4, 4, 4)  # given: kept


def test_family_defaults_come_from_the_record():
    record = family("video_swin")
    spec = EncoderSpec(arch="video_swin", num_frames=4, img_size=32, window_size=None, **TINY)
    model = build_video_encoder(spec)
    assert (model.patch_embed.patch_size, model.window_size) == (record.patch_size, record.window_size)
    assert model.window_rule == record.window_rule("joint") == "official"
    assert build_encoder(EncoderSpec(arch="swinv2", img_size=64, window_size=4, **TINY)).patch_embed.patch_size == (
        (family("swinv2").patch_size,) * 2)
    frames, patch, _ = family("video_swinv2").patch_size
    assert VideoMaskGenerator(num_frames=16, input_size=192).token_shape == (16 // frames, 192 // patch, 192 // patch)


@pytest.mark.parametrize(("build", "message"), [
    (lambda: swinssl.create_encoder("video_swin_tiny", checkpoint="missing.pth"), "is a video arch"),
    (lambda: swinssl.create_video_encoder("swin_tiny", checkpoint="missing.pth"), "is an image arch"),
    (lambda: build_video_encoder("video_swinv2", num_frames=4, img_size=32, extra_norm_period=2, **TINY),
     "Video Swin has none"),
    (lambda: swinssl.create_encoder("swinv2", img_size=64, window_size=4, mlp_ratio=2.0, **TINY),
     "unknown encoder setting"),
])
def test_a_wrong_setting_is_one_clear_error_before_reading_a_checkpoint(build, message):
    with pytest.raises(ValueError, match=message):
        build()
