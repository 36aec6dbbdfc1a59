"""The segmentation model: UperNet + FCN heads computing HF transformers' UperNet function on the same weights
(float64, random weights and BatchNorm statistics), the Segmenter task's loss, layer ids, sliding-window inference,
scores and poly schedule against plain references."""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from transformers.models.upernet.modeling_upernet import UperNetFCNHead, UperNetHead

from swinssl import Segmenter, create_encoder
from swinssl.models.upernet import UperNet, UperNetSpec
from swinssl.tasks.optim import OptimConfig, lr_at
from swinssl.tasks.segmentation import SegmentationMetrics, slide_logits

TINY = dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4])
SPEC = UperNetSpec(channels=24, auxiliary_channels=12)


def randomized(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter and BatchNorm statistic random, so no identity initialization hides a difference."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype)
                tensor.copy_(values + 0.5 if "running_var" in name else values - 0.5)
    return module


def tiny_upernet(num_classes: int = 5) -> UperNet:
    backbone = create_encoder("swinv2", img_size=64, window_size=4, features_only=True, **TINY)
    return UperNet(backbone, num_classes, SPEC)


def test_heads_compute_hf_upernets_function_on_the_same_weights():
    model = randomized(tiny_upernet().double()).eval()
    config = transformers.UperNetConfig(num_labels=5, hidden_size=24, auxiliary_channels=12, pool_scales=[1, 2, 3, 6])
    channels = model.backbone.feature_info.channels()
    decode = UperNetHead(config, in_channels=channels).double().eval()
    auxiliary = UperNetFCNHead(config, in_channels=channels).double().eval()
    decode.load_state_dict(model.decode_head.state_dict())  # strict: the same parameter names
    auxiliary.load_state_dict(model.auxiliary_head.state_dict())
    maps = [torch.randn(2, c, 64 // r, 48 // r, dtype=torch.float64) for c, r in zip(channels, (4, 8, 16, 32))]
    with torch.no_grad():
        torch.testing.assert_close(model.decode_head(maps), decode(maps), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(model.auxiliary_head(maps), auxiliary(maps), rtol=1e-12, atol=1e-12)


def test_task_loss_is_cross_entropy_plus_weighted_auxiliary_ignoring_255():
    task = Segmenter(encoder=dict(arch="swinv2", img_size=64, window_size=4, drop_path_rate=0.0, **TINY),
                     num_classes=5, upernet=SPEC.to_dict())
    logits, auxiliary = torch.randn(2, 5, 8, 8), torch.randn(2, 5, 8, 8)
    mask = torch.randint(0, 5, (2, 8, 8))
    mask[0, :4] = 255
    keep = mask != 255
    plain = lambda scores: -scores.log_softmax(1).gather(1, mask.clamp(max=4)[:, None])[:, 0][keep].mean()
    torch.testing.assert_close(task.loss(logits, auxiliary, mask), plain(logits) + 0.4 * plain(auxiliary))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out, aux = task.model.eval().forward_train(images)
    assert out.shape == aux.shape == (2, 5, 64, 64)


def test_layer_ids_put_heads_after_the_encoder_and_weight_decay_skips_position_bias():
    model = tiny_upernet()
    layer = model.group_matcher()
    assert layer("backbone.model.patch_embed.proj.weight") == 0
    assert layer("backbone.model.layers.2.blocks.1.attn.qkv.weight") == (1 + 1) + 1 + 1  # blocks before it, then its index + 1
    assert layer("decode_head.classifier.weight") == layer("auxiliary_head.convs.0.conv.weight") == 5 + 1
    assert "backbone.model.layers.0.blocks.0.attn.logit_scale" in model.no_weight_decay()


def test_slide_inference_averages_overlapping_crops_as_a_plain_loop():
    model = torch.nn.Conv2d(3, 4, 1).double()
    images = torch.randn(1, 3, 40, 56, dtype=torch.float64)
    total, count = torch.zeros(1, 4, 40, 56, dtype=torch.float64), torch.zeros(40, 56, dtype=torch.float64)
    for top in (0, 8, 16):  # rows: ceil((40 - 24) / 10) + 1 = 3, the last flush with the border
        for left in (0, 10, 20, 30, 32):
            total[..., top:top + 24, left:left + 24] += model(images[..., top:top + 24, left:left + 24])
            count[top:top + 24, left:left + 24] += 1
    with torch.no_grad():
        torch.testing.assert_close(slide_logits(model, images, 24, (10, 10)), (total / count).detach())
    with pytest.raises(ValueError, match="crop 48x48 is larger than the 40x56 image"):
        slide_logits(model, images, 48, 16)


def test_scores_are_mmsegmentations_iou_and_accuracies():
    metrics = SegmentationMetrics(3, ignore_index=255)
    truth = torch.tensor([[0, 0, 1, 1, 255, 0]])
    predicted = torch.tensor([[0, 1, 1, 1, 2, 2]])
    metrics.update(predicted, truth)
    scores = metrics.scores()
    # class 0: hits 1, truth 3, predicted 1 -> IoU 1/3; class 1: 2/(2+3-2); class 2: 0/(0+1-0); pixel 255 ignored
    assert scores["IoU"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert scores["Acc"][:2] == pytest.approx([1 / 3, 1.0]) and math.isnan(scores["Acc"][2])
    assert scores["mIoU"] == pytest.approx(1 / 3) and scores["mAcc"] == pytest.approx(2 / 3)
    assert scores["aAcc"] == pytest.approx(3 / 5) and scores["pixels"] == 5


def test_poly_schedule_warms_up_then_decays_linearly_to_the_minimum():
    config = OptimConfig(schedule="poly", power=1.0, warmup_steps=10)
    rate = lambda step: lr_at(step, lr=1.0, warmup_lr=1e-6, min_lr=0.0, warmup_steps=10, total_steps=100,
                              config=config, steps_per_epoch=1)
    assert rate(0) == pytest.approx(1e-6) and rate(5) == pytest.approx(0.5 + 0.5e-6)
    assert rate(50) == pytest.approx(0.5) and rate(100) == 0.0
