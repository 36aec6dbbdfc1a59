"""Masked video pretraining: clip masks, the 3D decoder, inflation from an image SimMIM model, the task and its data."""

import logging
import math

import pytest
import torch
from torch import nn

from conftest import official_simmim_checkpoint, trained_like
from swinssl import SimMIM
from swinssl.masking import MaskGenerator, VideoMaskGenerator
from swinssl.models import MaskedImageModel, MaskedVideoModel, build_encoder, build_video_encoder
from swinssl.models.simmim import PixelShuffle3d, normalize_targets, pixel_mask
from swinssl.weights import create_video_encoder, inflate_decoder

TINY = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))


# ---------------------------------------------------------------------------------------------- masks


def test_tube_masks_hide_the_same_units_on_every_frame():
    masks = VideoMaskGenerator(8, 64, 16, (2, 4, 4), 0.75, "tube")
    mask = masks(torch.Generator().manual_seed(0))
    assert mask.shape == masks.token_shape == (4, 16, 16) and mask.dtype == torch.uint8
    assert all(torch.equal(mask[0], frame) for frame in mask)
    assert mask[0].float().mean() == 12 / 16  # ceil(16 units * 0.75), each 4 x 4 tokens


def test_cube_masks_draw_cells_in_time_with_a_fixed_count():
    masks = VideoMaskGenerator(8, 64, 16, (2, 4, 4), 0.5, "cube", mask_frames=4)
    assert masks.cells == 2 and masks.cell_tokens == 2 and masks.mask_count == 16  # ceil(2 x 16 x 0.5)
    differs = False
    for seed in range(5):
        mask = masks(torch.Generator().manual_seed(seed))
        assert mask.sum() == 16 * 2 * 4 * 4  # cells x tokens per cell
        assert torch.equal(mask[0], mask[1]) and torch.equal(mask[2], mask[3])  # a cell spans 2 time tokens
        differs |= not torch.equal(mask[0], mask[2])
    assert differs


def test_tube_masks_equal_the_image_masks_of_the_same_draw():
    video, image = VideoMaskGenerator(4, 64, 16, (2, 4, 4), 0.6), MaskGenerator(64, 16, 4, 0.6)
    assert torch.equal(video(torch.Generator().manual_seed(3))[1], image(torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("args, message", [
    (dict(num_frames=7), "not a multiple of the patch's 2 frames"),
    (dict(mode="cube", mask_frames=3), "mask_frames 3 must be a multiple"),
    (dict(mode="random"), "mask mode must be one of"),
    (dict(mask_ratio=1.0), "strictly between 0 and 1"),
    (dict(input_size=72), "not divisible by mask_patch_size 16"),
])
def test_bad_clip_masks_fail_with_a_reason(args, message):
    settings = dict(num_frames=8, input_size=64, mask_patch_size=16, model_patch_size=(2, 4, 4), mask_ratio=0.5)
    with pytest.raises(ValueError, match=message):
        VideoMaskGenerator(**{**settings, **args})


# ---------------------------------------------------------------------------------------------- decoder


def test_pixel_shuffle_3d_against_a_loop_reference():
    x = torch.randn(2, 3 * 2 * 3 * 3, 2, 4, 5, dtype=torch.float64)
    out = PixelShuffle3d((2, 3, 3))(x)
    reference = torch.zeros(2, 3, 4, 12, 15, dtype=torch.float64)
    for c in range(3):
        for k in range(2):
            for i in range(3):
                for j in range(3):
                    reference[:, c, k::2, i::3, j::3] = x[:, ((c * 2 + k) * 3 + i) * 3 + j]
    assert torch.equal(out, reference)
    frames = x.view(2, 3, 2, 9, 2, 4, 5)[:, :, 0].reshape(2, 27, 2, 4, 5)  # time offset 0 of every channel
    per_frame = torch.stack([nn.PixelShuffle(3)(frames[:, :, t]) for t in range(2)], 2)
    assert torch.equal(out[:, :, 0::2], per_frame)


def test_pixel_mask_of_a_clip_covers_its_patches():
    mask = torch.zeros(1, 2, 3, 3, dtype=torch.uint8)
    mask[0, 1, 2, 0] = 1
    pixels = pixel_mask(mask, (2, 4, 4))
    assert pixels.shape == (1, 1, 4, 12, 12) and pixels.sum() == 2 * 4 * 4
    assert pixels[0, 0, 2:4, 8:12, 0:4].all()


# ---------------------------------------------------------------------------------- inflation property


def image_simmim(seed: int = 0) -> MaskedImageModel:
    torch.manual_seed(seed)
    model = MaskedImageModel(build_encoder("swinv2", img_size=64, window_size=4, mask_token=True, **TINY),
                             norm_target_window=7)
    return trained_like(model, seed)


@pytest.mark.parametrize("window", [(2, 4, 4), (4, 4, 4)])
def test_an_inflated_model_reconstructs_a_static_clip_as_the_image_model_each_frame(window):
    """With a tube mask equal to a 2D mask on every frame, the inflated encoder, mask token and decoder give the
    image model's reconstruction on every frame, and its loss."""
    image_model = image_simmim()
    encoder = create_video_encoder("video_swinv2", num_frames=8, img_size=64, window_size=window, mask_token=True,
                                   checkpoint=image_model.encoder.state_dict(),
                                   drop_path_rate=0.0)
    video_model = MaskedVideoModel(encoder, norm_target_window=7).eval()
    video_model.decoder.load_state_dict(inflate_decoder(image_model.decoder.state_dict(), 2))
    assert torch.equal(encoder.mask_token, image_model.encoder.mask_token)

    images = torch.randn(2, 3, 64, 64)
    image_mask = torch.stack([MaskGenerator(64, 16, 4, 0.6)(torch.Generator().manual_seed(i)) for i in range(2)])
    clip, clip_mask = images.unsqueeze(2).expand(-1, -1, 8, -1, -1), image_mask.unsqueeze(1).expand(-1, 4, -1, -1)
    with torch.no_grad():
        image_loss, image_reconstruction = image_model(images, image_mask)
        video_loss, video_reconstruction = video_model(clip, clip_mask)
    assert video_reconstruction.shape == (2, 3, 8, 64, 64)
    scale = image_reconstruction.abs().max()
    for frame in range(8):
        assert (video_reconstruction[:, :, frame] - image_reconstruction).abs().max() <= 1e-5 * scale
    assert math.isclose(video_loss.item(), image_loss.item(), rel_tol=1e-5)
    pictures = video_model.to_pixels(video_reconstruction, clip)
    assert torch.allclose(pictures[:, :, 3], image_model.to_pixels(image_reconstruction, images), atol=1e-4)


def test_video_targets_are_normalized_within_each_frame():
    clip = torch.randn(2, 3, 4, 32, 32, dtype=torch.float64)
    model = MaskedVideoModel(build_video_encoder("video_swinv2", num_frames=4, img_size=32, window_size=(2, 2, 2),
                                                 mask_token=True, **TINY), norm_target_window=7)
    targets = model.targets(clip)
    for frame in range(4):
        assert torch.allclose(targets[:, :, frame], normalize_targets(clip[:, :, frame], 7))


def test_a_mask_that_does_not_fit_the_token_grid_is_refused():
    encoder = build_video_encoder("video_swinv2", num_frames=4, img_size=32, window_size=(2, 2, 2), mask_token=True,
                                  **TINY)
    with pytest.raises(ValueError, match=r"mask of shape \(2, 4, 4\) does not match the \(2, 8, 8\) token grid"):
        encoder.forward_features(torch.randn(1, 3, 4, 32, 32), torch.zeros(1, 2, 4, 4))


# ----------------------------------------------------------------------------------------------- task


def test_the_task_inflates_an_image_simmim_checkpoint_with_its_decoder():
    image_model = image_simmim()
    task = SimMIM(arch="video_swinv2", num_frames=4, img_size=64, window_size=(2, 4, 4), drop_path_rate=0.0,
                  checkpoint=official_simmim_checkpoint(image_model), norm_target_window=7)
    assert task.input_key == "video" and isinstance(task.model, MaskedVideoModel)
    assert torch.equal(task.model.encoder.mask_token, image_model.encoder.mask_token)
    weight = task.model.decoder[0].weight
    assert weight.shape == (3 * 2 * 32 * 32, 128, 1, 1, 1)
    image_weight = image_model.decoder[0].weight
    assert torch.equal(weight.view(3, 2, 32 * 32, 128)[:, 1], image_weight.view(3, 32 * 32, 128))


def test_masked_video_pretraining_learns_on_tiny_clips():
    """A few optimizer steps on fixed clips lower the masked loss."""
    torch.manual_seed(0)
    task = SimMIM(arch="video_swinv2", num_frames=4, img_size=32, window_size=(2, 2, 2), drop_path_rate=0.0,
                  norm_target_window=None, **TINY)
    masks = VideoMaskGenerator(4, 32, 8, (2, 4, 4), 0.5)
    frames = torch.linspace(0, 1, 32).view(1, 1, 1, 1, 32).expand(4, 3, 4, 32, 32)
    clips = frames + 0.5 * torch.randn(4, 3, 1, 32, 32)  # a static pattern per clip: predictable under a tube
    mask = torch.stack([masks(torch.Generator().manual_seed(i)) for i in range(4)])
    optimizer = torch.optim.AdamW(task.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss, _ = task(clips, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


# ---------------------------------------------------------------------------------------------- probe


def test_knn_vote_against_a_loop_reference():
    from swinssl.training.probe import knn_predict

    generator = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(30, 8, generator=generator), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(10, 8, generator=generator), dim=1)
    labels = torch.randint(0, 3, (30,), generator=generator)
    for exclude_self, q in ((False, queries), (True, bank)):
        predicted = knn_predict(bank, labels, q, 3, k=5, temperature=0.1, exclude_self=exclude_self)
        for i, query in enumerate(q):
            scores = [(float(query @ bank[j]), j) for j in range(30) if not (exclude_self and j == i)]
            votes = [0.0] * 3
            for similarity, j in sorted(scores, reverse=True)[:5]:
                votes[int(labels[j])] += math.exp(similarity / 0.1)
            assert predicted[i] == max(range(3), key=votes.__getitem__)


def test_knn_probe_separates_separable_features():
    from swinssl.training.probe import knn_predict

    centers = torch.eye(4)
    labels = torch.arange(4).repeat_interleave(5)
    noise = 0.1 * torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    features = torch.nn.functional.normalize(centers[labels] + noise, dim=1)
    assert torch.equal(knn_predict(features, labels, features, 4, k=3, exclude_self=True), labels)


def test_knn_probe_on_a_tiny_balanced_set_is_not_outvoted_by_class_sizes():
    """Today's main: with k=20 and 4 samples per class, leave-one-out votes over the whole bank, where a sample's own
    class has 3 members and the other 4: every sample is labeled wrong although its 3 nearest are its own class."""
    from swinssl.training.probe import knn_predict

    labels = torch.arange(2).repeat_interleave(4)
    noise = 0.005 * torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    features = torch.nn.functional.normalize(torch.eye(3)[0] + 0.05 * torch.eye(3)[1 + labels] + noise, dim=1)
    assert torch.equal(knn_predict(features, labels, features, 2, k=20, exclude_self=True), labels)


def test_knn_probe_warns_below_chance_on_a_set_that_pairs_samples_across_classes(caplog):
    """As the demo videos: every photo once per class, features that see the photo. Each sample's nearest is its twin
    of the other class, so leave-one-out scores 0 of 16, which is reported, not only logged as a number."""
    from swinssl.training.probe import knn_top1

    photos = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    twins = photos.repeat_interleave(2, dim=0) + 0.01 * torch.randn(16, 16, generator=torch.Generator().manual_seed(1))
    features, labels = torch.nn.functional.normalize(twins, dim=1), torch.arange(2).repeat(8)
    with caplog.at_level(logging.WARNING, logger="swinssl.training.probe"):
        top1 = knn_top1(features, labels, features, labels, 2, k=20, exclude_self=True)
    assert top1 == 0.0
    assert "probe/top1 0.000 is below chance (0.500 for 2 balanced classes)" in caplog.text
    caplog.clear()
    centers = torch.nn.functional.normalize(torch.eye(2)[labels] + 0.1 * twins[:, :2], dim=1)
    assert knn_top1(centers, labels, centers, labels, 2, k=3, exclude_self=True) == 1.0 and not caplog.records


def test_a_mask_that_hides_every_unit_is_refused():
    with pytest.raises(ValueError, match="hides all 4 mask units of a 64x64 px"):
        VideoMaskGenerator(8, 64, 32, (2, 4, 4), 0.9)  # tube: ceil(4 x 0.9) = 4 of 4 units
    with pytest.raises(ValueError, match="hides all 4 mask units of a 64x64 px"):
        MaskGenerator(64, 32, 4, 0.9)
    VideoMaskGenerator(8, 64, 32, (2, 4, 4), 0.9, "cube", mask_frames=2)  # 16 cells, 15 hidden: allowed


# ----------------------------------------------------------------------------------------------- data


def test_masked_clip_batches_need_no_labels_and_fix_the_validation_masks(tmp_path):
    pytest.importorskip("skimage.data")
    from conftest import make_shards_cli
    from swinssl.datamodules import VideoShardDataModule
    from swinssl.demo_videos import write_demo_videos

    write_demo_videos(tmp_path / "videos", videos_per_class=2)
    done = make_shards_cli(tmp_path / "videos" / "pan_left", tmp_path / "shards", "--maxcount", "2")  # no class folders
    assert done.returncode == 0, done.stderr
    shards = str(tmp_path / "shards")
    data = VideoShardDataModule(shards, val_shards=shards, batch_size=2, num_workers=0, epoch_size=4, shuffle_buffer=2,
                                num_frames=8, frame_interval=2, img_size=64, short_side=64,
                                masks=VideoMaskGenerator(8, 64, 16, (2, 4, 4), 0.75))
    assert data.num_classes is None
    batch = next(iter(data.train_dataloader()))
    assert batch["video"].shape == (2, 3, 8, 64, 64) and batch["mask"].shape == (2, 4, 16, 16)
    assert "label" not in batch and batch["mask"].sum() == 2 * 4 * 12 * 16  # 12 of 16 units, every time step
    passes = [[batch["mask"] for batch in data.val_dataloader() if "mask" in batch] for _ in range(2)]
    assert len(passes[0]) == 1 and all(torch.equal(a, b) for a, b in zip(*passes, strict=True))
    with pytest.raises(ValueError, match="no test views"):
        data.test_dataloader()
    with pytest.raises(ValueError, match="has no class labels"):  # classification still needs them
        VideoShardDataModule(shards, num_frames=8, img_size=64, short_side=64)
