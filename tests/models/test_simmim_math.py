"""The SimMIM definition, pinned against plain float64 references and hand-made cases."""

import math

import pytest
import torch

from swinssl import MaskGenerator
from swinssl.models import MaskedImageModel, build_encoder as create_encoder
from swinssl.models.simmim import local_mean_var, masked_l1_loss, normalize_targets

TINY = dict(arch="swinv2", embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))


@pytest.mark.parametrize(
    "size, unit, ratio, expected",
    [(192, 32, 0.6, 22), (224, 32, 0.6, 30), ((192, 256), 32, 0.6, 29), (64, 16, 0.5, 8)],
)
def test_mask_count_is_fixed_per_image(size, unit, ratio, expected):
    generator = MaskGenerator(size, mask_patch_size=unit, model_patch_size=4, mask_ratio=ratio)
    height, width = (size, size) if isinstance(size, int) else size
    units = (height // unit) * (width // unit)
    assert generator.mask_count == math.ceil(units * ratio) == expected
    scale = unit // 4
    for _ in range(5):
        mask = generator()
        assert mask.shape == (height // 4, width // 4) and mask.dtype == torch.uint8
        blocks = mask.view(height // unit, scale, width // unit, scale)
        # every masking unit is all-0 or all-1, and exactly `expected` units are masked
        assert torch.equal(blocks.amin(dim=(1, 3)), blocks.amax(dim=(1, 3)))
        assert int(blocks[:, 0, :, 0].sum()) == expected


def test_masks_are_random_and_follow_the_torch_seed():
    generator = MaskGenerator(192)
    torch.manual_seed(1)
    first = [generator() for _ in range(4)]
    torch.manual_seed(1)
    again = [generator() for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(first[0], m) for m in first[1:])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_size=200), "not divisible by mask_patch_size 32"),
        (dict(mask_patch_size=30), "not a multiple of the model patch size"),
        (dict(mask_ratio=1.0), "strictly between 0 and 1"),
    ],
)
def test_mask_generator_rejects_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MaskGenerator(**kwargs)


def test_mask_token_replaces_patch_embeddings_after_the_patch_norm():
    torch.manual_seed(0)
    encoder = create_encoder(img_size=64, window_size=2, mask_token=True, **TINY)
    images = torch.randn(2, 3, 64, 64)
    mask = MaskGenerator(64, 16, 4, 0.5)().expand(2, -1, -1)
    plain = encoder.patch_embed(images)  # conv + patch LayerNorm, NHWC
    blended = encoder.embed(images, mask)
    hidden = mask.bool()
    assert torch.equal(blended[hidden], encoder.mask_token.view(1, -1).expand(int(hidden.sum()), -1))
    assert torch.equal(blended[~hidden], plain[~hidden])
    # the masked content cannot reach the output: changing hidden pixels changes nothing
    pixels = hidden.repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1).expand_as(images)
    edited = images.masked_fill(pixels, 7.0)
    encoder.eval()
    with torch.no_grad():
        assert torch.allclose(encoder.forward_features(images, mask), encoder.forward_features(edited, mask))


def test_masked_l1_loss_on_a_hand_made_case():
    # 1 image, 2x2 tokens of 2x2 pixels, 3 channels; only the top-left token is masked.
    target = torch.zeros(1, 3, 4, 4)
    reconstruction = torch.zeros(1, 3, 4, 4)
    reconstruction[0, :, :2, :2] = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)  # error 1, 2, 3 in the masked token
    reconstruction[0, :, 2:, 2:] = 100.0  # errors outside the mask do not count
    mask = torch.tensor([[[1, 0], [0, 0]]], dtype=torch.uint8)
    loss = masked_l1_loss(reconstruction, target, mask, patch_size=2)
    # sum |error| over 4 masked pixels x 3 channels = 4 * (1 + 2 + 3) = 24; / (4 masked pixels + 1e-5) / 3
    assert loss.item() == pytest.approx(24 / (4 + 1e-5) / 3, rel=1e-6)


def _local_stats_reference(image: torch.Tensor, window: int):
    """Explicit loops in float64: mean and unbiased variance of each in-image neighbourhood."""
    channels, height, width = image.shape
    mean = torch.zeros_like(image, dtype=torch.float64)
    var = torch.zeros_like(mean)
    half = window // 2
    for c in range(channels):
        for i in range(height):
            for j in range(width):
                patch = image[c, max(0, i - half): i + half + 1, max(0, j - half): j + half + 1].double()
                mean[c, i, j] = patch.mean()
                var[c, i, j] = patch.var(unbiased=True)
    return mean, var


def test_local_target_normalization_matches_a_float64_reference():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 9, 11) * 2 + 0.5
    mean, var = local_mean_var(images, window=5)
    normalized = normalize_targets(images, window=5)
    for b in range(2):
        ref_mean, ref_var = _local_stats_reference(images[b], 5)
        assert torch.allclose(mean[b].double(), ref_mean, atol=1e-5)
        assert torch.allclose(var[b].double(), ref_var, rtol=1e-4, atol=1e-5)
        expected = (images[b].double() - ref_mean) / torch.sqrt(ref_var + 1e-6)
        assert torch.allclose(normalized[b].double(), expected, atol=1e-4)


def test_even_normalization_window_is_rejected():
    with pytest.raises(ValueError, match="odd"):
        normalize_targets(torch.zeros(1, 3, 8, 8), window=4)


def test_simmim_forward_shapes_and_gradients_reach_encoder_and_decoder():
    torch.manual_seed(0)
    model = MaskedImageModel(create_encoder(img_size=64, window_size=2, mask_token=True, **TINY), norm_target_window=7)
    images = torch.randn(2, 3, 64, 64)
    mask = torch.stack([MaskGenerator(64, 16, 4, 0.6)() for _ in range(2)])
    loss, reconstruction = model(images, mask)
    assert reconstruction.shape == images.shape and loss.ndim == 0
    expected = masked_l1_loss(reconstruction, normalize_targets(images, 7), mask, 4)
    assert torch.allclose(loss, expected)
    loss.backward()
    assert model.encoder.mask_token.grad.abs().sum() > 0
    assert model.decoder[0].weight.grad.abs().sum() > 0


def test_swinv2_base_simmim_matches_the_official_shapes():
    model = MaskedImageModel(create_encoder("swinv2_base", img_size=192, window_size=12, mask_token=True))
    assert model.encoder.mask_token.shape == (1, 1, 128)
    assert model.decoder[0].weight.shape == (3072, 1024, 1, 1)
    assert sum(p.numel() for p in model.decoder.parameters()) == 1024 * 3072 + 3072
    # stage windows 12/12/12 and clipped 6, shifts 6/6/0/0, as the official transfer configs assume
    assert [stage.blocks[0].window_size for stage in model.encoder.layers] == [(12, 12)] * 3 + [(6, 6)]
    assert [stage.blocks[-1].shift_size for stage in model.encoder.layers] == [(6, 6), (6, 6), (0, 0), (0, 0)]
    with torch.no_grad():
        features = model.encoder.forward_features(torch.zeros(1, 3, 192, 192))
    assert features.shape == (1, 6, 6, 1024)
