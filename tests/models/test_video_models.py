"""Video Swin: the static-video property of inflation, official Video Swin checkpoints, geometry and errors."""

from __future__ import annotations

import pytest
import torch
from official_video_swin import OfficialI3DHead, OfficialSwinTransformer3D, official_checkpoint, official_inflate
from conftest import official_layout, trained_like

from swinssl import create_video_encoder
from swinssl.models import build_encoder, build_video_encoder
from swinssl.models.windows import relative_position_index, shift_mask
from swinssl.weights import CheckpointError, load_checkpoint, resize_bias_table

TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))


def static_clip(images: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, frames, H, W): every frame the same image."""
    return images.unsqueeze(2).expand(-1, -1, frames, -1, -1).contiguous()


@pytest.mark.parametrize("family", ["swinv2", "swin"])
@pytest.mark.parametrize("attention", ["joint", "factorized"])
@pytest.mark.parametrize("patch_init", ["inflate", "center"])
def test_inflated_model_on_a_static_clip_gives_the_image_features_at_every_time_step(family, attention, patch_init):
    torch.manual_seed(0)
    # 8 frames give 4 time steps in windows of 2, so blocks shift in time as well as in space. V2 at 64 px /
    # window 4 (stage grids 16/8/4/2) also clips the last stage's window; V1 uses window 2, as a clipped
    # timm V1 stage stores a table of the clipped size, which no video window reproduces.
    window = 4 if family == "swinv2" else 2
    image_model = trained_like(build_encoder(family, img_size=64, window_size=window, **TINY)).eval()
    video_model = create_video_encoder(
        f"video_{family}", num_frames=8, img_size=64, window_size=(2, window, window), attention=attention,
        checkpoint=image_model.state_dict(), patch_init=patch_init,
    ).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = image_model.forward_features(images)
        features = video_model.forward_features(static_clip(images, 8))
    assert features.shape == (2, 4, *expected.shape[1:])
    for step in range(4):
        torch.testing.assert_close(features[:, step], expected, rtol=1e-4, atol=1e-5)


def test_the_property_can_fail_a_model_that_ignores_the_inflation_rules():
    torch.manual_seed(0)
    image_model = trained_like(build_encoder("swinv2", img_size=64, window_size=4, **TINY)).eval()
    video_model = create_video_encoder("video_swinv2", num_frames=8, img_size=64, window_size=(2, 4, 4),
                                       checkpoint=image_model.state_dict()).eval()
    with torch.no_grad():  # a temporal column that is not zero makes the bias depend on time
        video_model.layers[0].blocks[1].attn.cpb_mlp[0].weight[:, 0].normal_()
        images = torch.randn(1, 3, 64, 64)
        features = video_model.forward_features(static_clip(images, 8))
        expected = image_model.forward_features(images)
    assert (features[:, 0] - expected).abs().max() > 1e-3


def test_v2_inflation_keeps_the_windows_the_image_bias_was_trained_at():
    torch.manual_seed(0)
    image_model = trained_like(build_encoder("swinv2", img_size=64, window_size=4, pretrained_window_sizes=(8, 8, 8, 4),
                                             **TINY)).eval()
    source = load_checkpoint(image_model.state_dict())
    source.pretrained_window_sizes = [8, 8, 8, 4]  # what a swinssl or official checkpoint records
    video_model = create_video_encoder("video_swinv2", num_frames=4, img_size=64, window_size=(2, 4, 4),
                                       checkpoint=source).eval()
    assert video_model.pretrained_window_sizes() == [[2, 8, 8], [2, 8, 8], [2, 8, 8], [2, 4, 4]]
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(video_model.forward_features(static_clip(images, 4))[:, 1],
                                   image_model.forward_features(images), rtol=1e-4, atol=1e-5)


def official_pair(window=(2, 4, 4), seed=0):
    torch.manual_seed(seed)
    backbone = OfficialSwinTransformer3D(window_size=window, **TINY).eval()
    head = OfficialI3DHead(num_classes=5, in_channels=backbone.num_features).eval()
    with torch.no_grad():
        for parameter in [*backbone.parameters(), *head.parameters()]:
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return backbone, head


def test_official_video_swin_checkpoint_gives_the_official_function(tmp_path):
    backbone, head = official_pair()
    path = tmp_path / "swin_tiny_patch244_window877_kinetics400_1k.pth"
    torch.save(official_checkpoint(backbone, head), path)
    # 128 px: stage grids 32/16/8/4 hold whole windows of 4, where the official bias slicing is exact.
    model = create_video_encoder("video_swin", num_frames=8, img_size=128, window_size=(2, 4, 4), checkpoint=path,
                                 num_classes=5).eval()
    assert model.load_report.format == "mmaction" and model.load_report.reinitialized == []
    video = torch.randn(2, 3, 8, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(video), head(backbone(video)), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.forward_features(video), backbone(video).permute(0, 2, 3, 4, 1),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [112, 96])
def test_official_weights_give_the_official_function_where_windows_are_clipped_or_padded(tmp_path, size):
    """112 px with windows of 7: the last stage's 4x4 map clips the window spatially, where the official code reads
    relative_position_index[:16, :16] of the full window; 96 px also pads 24 and 12 to whole windows, and the
    official code lets real tokens attend to the padding."""
    backbone, head = official_pair(window=(2, 7, 7))
    path = tmp_path / "swin_tiny_patch244_window877_kinetics400_1k.pth"
    torch.save(official_checkpoint(backbone, head), path)
    model = create_video_encoder("video_swin", num_frames=4, img_size=size, window_size=(2, 7, 7), checkpoint=path,
                                 num_classes=5).eval()
    assert model.window_rule == "official"
    video = torch.randn(2, 3, 4, size, size)
    with torch.no_grad():
        torch.testing.assert_close(model(video), head(backbone(video)), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.forward_features(video), backbone(video).permute(0, 2, 3, 4, 1),
                                   rtol=1e-4, atol=1e-5)


def test_the_geometric_rule_is_an_explicit_option_and_differs_where_windows_are_clipped():
    backbone, head = official_pair(window=(2, 7, 7))
    checkpoint = official_checkpoint(backbone, head)
    model = create_video_encoder("video_swin", num_frames=4, img_size=112, window_size=(2, 7, 7),
                                 checkpoint=checkpoint, window_rule="geometric").eval()
    assert {m.window_rule for m in model.modules() if hasattr(m, "relative_position_bias_table")} == {"geometric"}
    video = torch.randn(1, 3, 4, 112, 112)
    with torch.no_grad():
        difference = (model.forward_features(video) - backbone(video).permute(0, 2, 3, 4, 1)).abs().max()
        at_whole_windows = torch.randn(1, 3, 4, 224, 224)  # 56/28/14/7: nothing clipped in space, nothing padded
        torch.testing.assert_close(model.forward_features(at_whole_windows),
                                   backbone(at_whole_windows).permute(0, 2, 3, 4, 1), rtol=1e-4, atol=1e-5)
    assert difference > 1e-3


def test_the_window_rule_defaults_and_errors():
    v2 = build_video_encoder("video_swinv2", num_frames=8, img_size=64, window_size=(2, 4, 4), **TINY)
    assert v2.window_rule == "geometric"
    assert build_video_encoder("video_swin", num_frames=8, img_size=64, window_size=(2, 4, 4),
                               attention="factorized", **TINY).window_rule == "geometric"  # not the official layout
    with pytest.raises(ValueError, match="window_rule='official' is the official Video Swin .V1. rule"):
        build_video_encoder("video_swinv2", num_frames=8, img_size=64, window_size=(2, 4, 4), window_rule="official",
                            **TINY)
    with pytest.raises(ValueError, match="window_rule must be one of"):
        build_video_encoder("video_swin", num_frames=8, img_size=64, window_size=(2, 4, 4), window_rule="mmaction",
                            **TINY)


def test_the_window_rule_is_an_encoder_setting_a_task_records():
    from swinssl import VideoClassifier

    task = VideoClassifier(arch="video_swin", num_frames=8, img_size=64, window_size=(2, 4, 4), num_classes=2,
                           window_rule="geometric", **TINY)
    assert task.model.window_rule == "geometric" and task.hparams.encoder["window_rule"] == "geometric"
    assert VideoClassifier(arch="video_swin", num_frames=8, img_size=64, window_size=(2, 4, 4), num_classes=2,
                           **TINY).model.window_rule == "official"


def test_mmaction2_v1x_final_norm_name_is_read(tmp_path):
    backbone, head = official_pair()
    checkpoint = official_checkpoint(backbone, head)
    state = checkpoint["state_dict"]
    for key in [key for key in state if key.startswith("backbone.norm.")]:
        state[key.replace("backbone.norm.", "backbone.norm3.")] = state.pop(key)
    model = create_video_encoder("video_swin", num_frames=8, img_size=128, window_size=(2, 4, 4),
                                 checkpoint=checkpoint, num_classes=5)
    torch.testing.assert_close(model.norm.weight, backbone.norm.weight)


def test_official_2d_to_3d_inflation_is_reproduced(tmp_path):
    torch.manual_seed(1)
    image_model = trained_like(build_encoder("swin", img_size=128, window_size=4, num_classes=7, **TINY))
    backbone, _ = official_pair(seed=2)
    official_inflate(official_layout(image_model), backbone)
    path = tmp_path / "swin_tiny_patch4_window4.pth"
    torch.save({"model": official_layout(image_model)}, path)
    model = create_video_encoder("video_swin", num_frames=8, img_size=128, window_size=(2, 4, 4), checkpoint=path).eval()
    video = torch.randn(1, 3, 8, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(video), backbone(video).permute(0, 2, 3, 4, 1),
                                   rtol=1e-4, atol=1e-5)


def test_v1_tables_are_resized_to_the_video_window_before_tiling():
    image_model = trained_like(build_encoder("swin", img_size=96, window_size=6, **TINY))
    model = create_video_encoder("video_swin", num_frames=8, img_size=96, window_size=(2, 3, 3),
                                 checkpoint=image_model.state_dict())
    table = model.layers[0].blocks[0].attn.relative_position_bias_table
    resized = resize_bias_table(image_model.layers[0].blocks[0].attn.relative_position_bias_table, 3)
    assert table.shape == (3 * 25, 1)
    torch.testing.assert_close(table.detach(), resized.repeat(3, 1))  # one copy per temporal offset
    assert any("inflated the patch kernel" in note for note in model.load_report.conversions)


def test_our_video_checkpoint_reloads_exactly():
    torch.manual_seed(0)
    model = trained_like(build_video_encoder("video_swinv2", num_frames=8, img_size=64, window_size=(2, 4, 4),
                                             num_classes=3, **TINY)).eval()
    again = create_video_encoder("video_swinv2", num_frames=8, img_size=64, window_size=(2, 4, 4), num_classes=3,
                                 checkpoint=model.state_dict()).eval()
    video = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(video), model(video))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = build_video_encoder("video_swinv2", num_frames=4, img_size=32, window_size=(2, 4, 4), num_classes=2,
                                **TINY).eval()  # eval: no dropout draws to differ between the two passes
    video = torch.randn(2, 3, 4, 32, 32)
    model(video).sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(video).sum().backward()
    for expected, parameter in zip(plain, model.parameters()):
        torch.testing.assert_close(parameter.grad, expected)


def test_padding_tokens_are_hidden_from_real_tokens():
    mask = shift_mask((4, 4, 4), (3, 4, 4), (4, 4, 4), (0, 0, 0), torch.device("cpu"))
    real, padded = slice(0, 48), slice(48, 64)  # time-major: the last time step is padding
    assert (mask[0][real, padded] == -100).all() and (mask[0][real, real] == 0).all()
    assert shift_mask((4, 4, 4), (4, 4, 4), (4, 4, 4), (0, 0, 0), torch.device("cpu")) is None


def test_a_clipped_window_reads_the_bias_of_its_own_offsets():
    index = relative_position_index((1, 2, 2), (2, 3, 3), torch.device("cpu"))
    spans = (3, 5, 5)
    # query (0,0,0) with key (0,1,1): offsets (0,-1,-1) -> ((0+1)*5 + (-1+2))*5 + (-1+2)
    assert index[0, 3] == ((0 + 1) * spans[1] + 1) * spans[2] + 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_frames=8, attention="divided"), "attention must be one of"),
        (dict(num_frames=8, window_size=(2, 4)), "three positive ints"),
    ],
)
def test_bad_geometry_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_video_encoder("video_swinv2", **{"img_size": 64, **kwargs}, **TINY)


def test_a_v1_image_checkpoint_does_not_become_a_v2_video_model():
    image_model = build_encoder("swin", img_size=64, window_size=4, **TINY)
    with pytest.raises(CheckpointError, match="Swin V1 checkpoint; 'video_swinv2' takes Swin V2 weights"):
        create_video_encoder("video_swinv2", num_frames=8, img_size=64, window_size=(2, 4, 4),
                             checkpoint=image_model.state_dict())


def test_presets_have_the_official_sizes():
    model = build_video_encoder("video_swin_tiny", num_frames=32, img_size=224)
    params = sum(p.numel() for p in model.parameters())
    assert model.num_features == 768
    # 28.2M in the paper counts a 400-class head (768 * 400 + 400).
    assert abs(params + 768 * 400 + 400 - 28.2e6) < 0.1e6
