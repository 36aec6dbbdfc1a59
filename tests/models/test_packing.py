"""Uniform packing (cheaper masked pretraining): masks, pack / unpack, true-offset position bias, the packed models'
loss, and the pretraining CLI for images and video (then fine-tuning from its checkpoint)."""

import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PACKED, TINY, run_cli
from swinssl import make_shards
from swinssl.masking import UniformMaskGenerator, VideoMaskGenerator, uniform_secondary_count
from swinssl.models.packing import (
    grid_positions,
    kept_slots,
    offset_bias,
    pack,
    pair_offsets,
    token_positions,
    true_positions,
    unpack,
)
from swinssl.models.attention import KERNELS, window_bias_attention
from swinssl.models.registry import check_packed_windows
from swinssl.models.simmim import PackedMaskedImageModel, PackedMaskedVideoModel
from swinssl.models.swin import build_encoder
from swinssl.models.video_swin import build_video_encoder
from swinssl.weights.formats import parse_checkpoint
from swinssl.models.windows import shift_mask, window_partition, window_reverse

SIZES = dict(embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4))


def draw(generator: UniformMaskGenerator, count: int, seed: int = 0) -> torch.Tensor:
    rng = torch.Generator().manual_seed(seed)
    return torch.stack([generator(rng) for _ in range(count)])


def test_uniform_masks_keep_one_unit_per_group_and_hide_the_asked_share():
    generator = UniformMaskGenerator(192, 32, 4, 0.8125)
    masks = draw(generator, 20)
    assert masks.shape == (20, 48, 48) and set(masks.unique().tolist()) == {0, 1, 2}
    units = masks[:, ::8, ::8]
    assert torch.equal(masks, units.repeat_interleave(8, 1).repeat_interleave(8, 2))  # whole 32 px units
    groups = units.view(20, 3, 2, 3, 2).permute(0, 1, 3, 2, 4).reshape(20, 9, 4)
    assert ((groups < 2).sum(-1) == 1).all()  # one kept unit in every 2x2 group
    assert ((units == 1).flatten(1).sum(1) == 3).all()  # ceil(36 * 0.8125) = 30 hidden = 27 dropped + 3 hidden
    assert len({tuple(g.tolist()) for g in (groups < 2).float().argmax(-1)}) > 1  # slots drawn, not fixed


@pytest.mark.parametrize("ratio, secondary", [(0.75, 0), (0.8125, 3), (0.9, 6), (1 - 1 / 36, 8)])
def test_the_possible_ratios_are_three_quarters_plus_whole_kept_units(ratio, secondary):
    assert uniform_secondary_count(36, ratio) == secondary


@pytest.mark.parametrize("args, message", [
    ((192, 32, 4, 0.6), "mask_ratio must lie in [0.75, 0.9722] (0.75 + k/36), got 0.6"),
    ((192, 32, 4, 0.99), "mask_ratio must lie in [0.75, 0.9722]"),
    ((192, 16, 4, 0.8), "needs mask_patch_size = the encoder's coarsest merge unit (32 px"),
    ((160, 32, 4, 0.8), "image size 160x160 must be a multiple of 64 px"),
    ((200, 32, 4, 0.8), "image size 200x200 must be a multiple of 64 px"),
])
def test_uniform_masks_refuse_what_packing_cannot_honour(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        UniformMaskGenerator(*args, merge_unit=32)


def test_packed_windows_tile_every_half_size_stage():
    check_packed_windows(192, 4, 12, 4)  # packed stages 24/12/6/3 -> windows 12/12/6/3
    check_packed_windows(192, 4, 6, 4)
    with pytest.raises(ValueError, match=r"window 2 does not tile packed stage 4: .* 6x6 tokens to 3x3; windows that "
                                         r"fit at 192 px: \[3, 6, 12, 24, 48\]"):
        check_packed_windows(192, 4, 2, 4)


def test_pack_and_unpack_against_a_loop_reference():
    generator = UniformMaskGenerator(128, 32, 4, 0.8125)
    masks = draw(generator, 3)
    slots = kept_slots(masks, 8)
    images = torch.randn(3, 2, 128, 128)
    packed = pack(images, slots, 32)
    reference = torch.zeros_like(packed)
    restored = torch.full_like(images, -7.0)
    for b in range(3):
        for gy in range(2):
            for gx in range(2):
                uy, ux = 2 * gy + int(slots[b, gy, gx]) // 2, 2 * gx + int(slots[b, gy, gx]) % 2
                assert masks[b, uy * 8, ux * 8] < 2  # the slot names the kept unit
                block = images[b, :, uy * 32:(uy + 1) * 32, ux * 32:(ux + 1) * 32]
                reference[b, :, gy * 32:(gy + 1) * 32, gx * 32:(gx + 1) * 32] = block
                restored[b, :, uy * 32:(uy + 1) * 32, ux * 32:(ux + 1) * 32] = block
    assert torch.equal(packed, reference)
    assert torch.equal(unpack(packed, slots, 32, fill=-7.0), restored)  # the inverse, for the grids
    assert torch.equal(pack(unpack(packed, slots, 32), slots, 32), packed)


def test_true_positions_against_a_loop_reference():
    slots = torch.randint(4, (2, 3, 2))
    positions = true_positions(slots, 4)
    assert positions.shape == (2, 12, 8, 2)
    for b in range(2):
        for row in range(12):
            for col in range(8):
                slot = int(slots[b, row // 4, col // 4])
                expected = [(2 * (row // 4) + slot // 2) * 4 + row % 4, (2 * (col // 4) + slot % 2) * 4 + col % 4]
                assert positions[b, row, col].tolist() == expected


def test_offset_bias_is_log_cpb_of_each_pairs_offset_in_float64():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(2, 512), torch.nn.ReLU(), torch.nn.Linear(512, 3, bias=False)).double()
    positions = torch.tensor([[[0, 0], [5, 2], [1, 7], [9, 9], [5, 2]]])
    offsets = pair_offsets(positions, (10, 10), (6, 6))
    assert len(offsets.coordinates) == 4 * 3 + 1  # the MLP sees each distinct offset once: 0 and 12 others
    bias = offset_bias(mlp, 3, offsets)
    for i in range(5):
        for j in range(5):
            d = (positions[0, i] - positions[0, j]).double() * 8 / 5
            u = torch.sign(d) * torch.log2(1 + d.abs()) / 3
            assert torch.allclose(bias[0, :, i, j], 16 * torch.sigmoid(mlp(u)), atol=1e-12)


def test_grid_positions_reproduce_the_encoder_exactly():
    """The positioned attention path, given the token grid itself, is the encoder's own function (shifts included; one
    SDPA call with bias and shift mask summed first, so equal to rounding)."""
    torch.manual_seed(0)
    encoder = awake(build_encoder("swinv2", img_size=128, window_size=8, mask_token=True, **SIZES)).eval()
    images = torch.randn(2, 3, 128, 128)
    stages = [(grid_positions((32 >> s, 32 >> s), images.device), (32 >> s, 32 >> s), (w, w))
              for s, w in enumerate(encoder.pretrained_window_sizes())]
    with torch.no_grad(), token_positions(encoder.layers, stages):
        positioned = encoder.forward_features(images)
    torch.testing.assert_close(positioned, encoder.forward_features(images), rtol=1e-5, atol=1e-5)


def awake(model: torch.nn.Module) -> torch.nn.Module:
    """Swin V2 blocks start as the identity (zero-initialized post-norms): give every norm a weight, so that
    attention (and its position bias) reaches the output."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
    return model


def packed_model(true_offsets: bool = True) -> PackedMaskedImageModel:
    torch.manual_seed(0)
    encoder = build_encoder("swinv2", img_size=128, window_size=8, mask_token=True, **SIZES)
    return awake(PackedMaskedImageModel(encoder, norm_target_window=None, true_offsets=true_offsets)).eval()


@pytest.mark.parametrize("true_offsets", [True, False])
def test_the_loss_covers_exactly_the_units_the_encoder_did_not_see(true_offsets):
    model = packed_model(true_offsets)
    mask = draw(UniformMaskGenerator(128, 32, 4, 0.8125), 2)
    images = torch.randn(2, 3, 128, 128)
    loss, reconstruction = model(images, mask)
    assert reconstruction.shape == images.shape
    hidden = (mask > 0).repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1).expand_as(images)
    expected = (reconstruction - images).abs()[hidden].mean()
    assert torch.allclose(loss, expected, rtol=1e-5)
    # what the encoder did not see cannot change the prediction: repaint dropped and hidden units
    repainted = torch.where(hidden, torch.randn_like(images), images)
    assert torch.allclose(model(repainted, mask)[1], reconstruction, atol=1e-5)
    # and what it saw does
    changed = torch.where(hidden, images, images + 1.0)
    assert not torch.allclose(model(changed, mask)[1], reconstruction, atol=1e-3)


def test_true_and_packed_offsets_give_different_functions_with_the_same_weights():
    mask = draw(UniformMaskGenerator(128, 32, 4, 0.75), 2, seed=3)
    images = torch.randn(2, 3, 128, 128)
    assert not torch.allclose(packed_model(True)(images, mask)[1], packed_model(False)(images, mask)[1], atol=1e-4)


def test_packed_video_model_packs_every_frame_by_the_tube():
    torch.manual_seed(0)
    encoder = build_video_encoder("video_swinv2", num_frames=4, img_size=128, window_size=(2, 4, 4), mask_token=True,
                                  **SIZES)
    model = awake(PackedMaskedVideoModel(encoder, norm_target_window=None)).eval()
    masks = VideoMaskGenerator(4, 128, 32, (2, 4, 4), 0.8125, packing="uniform")
    mask = torch.stack([masks(), masks()])
    clips = torch.randn(2, 3, 4, 128, 128)
    loss, reconstruction = model(clips, mask)
    assert reconstruction.shape == clips.shape and torch.isfinite(loss)
    hidden = (mask > 0).repeat_interleave(2, 1).repeat_interleave(4, 2).repeat_interleave(4, 3).unsqueeze(1)
    hidden = hidden.expand_as(clips)
    assert torch.allclose(loss, (reconstruction - clips).abs()[hidden].mean(), rtol=1e-5)
    repainted = torch.where(hidden, torch.randn_like(clips), clips)  # unseen on every frame: no effect
    assert torch.allclose(model(repainted, mask)[1], reconstruction, atol=1e-5)
    cube = mask.clone()
    cube[:, 1] = mask[:, 1].flip(-1)
    with pytest.raises(ValueError, match="needs a tube mask"):
        model(clips, cube)
    with pytest.raises(ValueError, match="packing 'uniform' keeps the time axis whole: it needs mask_mode=tube"):
        VideoMaskGenerator(4, 128, 32, (2, 4, 4), 0.8125, mode="cube", packing="uniform")


@pytest.mark.parametrize("args, message", [
    (["simmim.mask_patch_size=16"], "uniform packing needs mask_patch_size = the encoder's coarsest merge unit (32 px"),
    (["simmim.mask_ratio=0.6"], "mask_ratio must lie in [0.75, 0.75] (0.75 + k/4), got 0.6"),
    (["model.img_size=96", "model.window_size=3"], "image size 96x96 must be a multiple of 64 px"),
    (["model.img_size=192", "model.window_size=2"], "window 2 does not tile packed stage 4"),
])
def test_bad_packing_fails_in_one_line_before_any_compute(args, message, tmp_path):
    overrides = dict(arg.split("=", 1) for arg in [*TINY, *PACKED, *args])  # the last value of a key wins
    done = run_cli("swinssl.pretrain", *(f"{key}={value}" for key, value in overrides.items()),
                   f"data.shards={tmp_path}", f"out_dir={tmp_path / 'run'}", timeout=120)
    assert done.returncode == 2
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and message in last_line and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def test_packed_pretraining_cli_images_then_video_then_finetune(tmp_path):
    """recipe=demo with packing on tiny shards -> an ordinary checkpoint: fine-tuned as is, and inflated into packed
    masked video pretraining."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from swinssl.demo_videos import write_demo_videos

    root = tmp_path / "labeled"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for index in range(4):
            pixels = np.random.default_rng(index).integers(0, 255, (72, 72, 3), dtype=np.uint8)
            Image.fromarray(pixels // (2 if label == "a" else 1)).save(root / label / f"{index}.png")
    shards = str(tmp_path / "shards")
    make_shards.main([str(root), shards, "--maxcount", "4"])  # in process: the CLIs under test come after
    run_dir = tmp_path / "packed"
    done = run_cli("swinssl.pretrain", *TINY, *PACKED, f"data.shards={shards}", "trainer.max_epochs=1",
                   "images_every_n_steps=2", f"out_dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["hyper_parameters"]["packing"] == "uniform" and last["hyper_parameters"]["true_offsets"] is True
    spread = parse_checkpoint(last).task_tensors("spread")  # the 3x3 layer travels with the decoder trained behind it
    assert spread.keys() == {"weight", "bias"} and torch.equal(spread["weight"], last["state_dict"]["model.spread.weight"])
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert events.Tags()["images"] == ["train/reconstruction"]
    assert all(math.isfinite(e.value) for e in events.Scalars("train/loss"))

    finetuned = tmp_path / "finetuned"
    done = run_cli("swinssl.finetune", "recipe=demo_ft", f"checkpoint={run_dir}", "model.img_size=96",
                   "model.window_size=3", f"data.shards={shards}", f"data.val_shards={shards}", "data.batch_size=4",
                   "data.num_workers=0", "data.epoch_size=8", "trainer.max_epochs=1",
                   "trainer.enable_model_summary=false", f"out_dir={finetuned}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (finetuned / "checkpoints" / "last.ckpt").exists()

    videos = tmp_path / "videos"
    write_demo_videos(videos, videos_per_class=1)
    make_shards.main([str(videos), str(tmp_path / "clips")])
    video_run = tmp_path / "video"
    done = run_cli("swinssl.pretrain", "recipe=video_pretrain_demo", f"checkpoint={run_dir}", *PACKED,
                   f"data.shards={tmp_path / 'clips'}", "data.num_workers=0", "data.batch_size=2", "data.epoch_size=4",
                   "trainer.max_epochs=1", "trainer.enable_model_summary=false", "images_every_n_steps=1",
                   f"out_dir={video_run}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "inflated the image SimMIM decoder" in done.stdout + done.stderr
    assert "took the packed decoder's 3x3 layer" in done.stdout + done.stderr  # not back to the identity
    assert torch.load(video_run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


@pytest.mark.parametrize("shared", [True, False])
def test_per_window_bias_attention_kernels_match_the_plain_reference(shared):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2 * 4, 3, 9, 8, dtype=torch.float64).unbind(0)  # 2 images x 4 windows, 3 heads
    additive = torch.randn(4 if shared else 8, 3, 9, 9, dtype=torch.float64)  # per window, the same for both images?
    scale = torch.rand(3, 1, 1, dtype=torch.float64) * 10
    expected = torch.zeros_like(q)
    for window in range(8):
        scores = q[window] @ k[window].mT * scale + additive[window % len(additive)]
        expected[window] = scores.softmax(-1) @ v[window]
    for kernel in ("plain", "fused", "chunked", "triton"):
        torch.testing.assert_close(window_bias_attention(q, k, v, additive, 4, scale, kernel=kernel), expected)


def test_positioned_attention_is_the_plain_per_pair_reference_on_true_positions():
    """A shifted block's attention on packed tokens, after the unshifted block of its stage: the offsets shared by the
    stage's blocks with the same windows, the MLP run on the distinct offsets only, one SDPA call; against the bias
    of every pair computed on its own, in float64."""
    torch.manual_seed(0)
    sizes = dict(SIZES, depths=(2, 1, 1, 1))
    encoder = awake(build_encoder("swinv2", img_size=128, window_size=8, mask_token=True, **sizes).double())
    stage = encoder.layers[0]  # packed: 16 x 16 tokens, 8 per unit; windows 8, the second block shifted by 4
    positions = true_positions(torch.randint(4, (2, 2, 2)), 8)
    x = torch.randn(2, 16, 16, SIZES["embed_dim"], dtype=torch.float64)
    with torch.no_grad(), token_positions([stage], [(positions, (32, 32), (8, 8))]):
        stage.blocks[0]._attn(x)
        got = stage.blocks[1]._attn(x)
    attn, window = stage.blocks[1].attn, (8, 8)
    rolled, at = torch.roll(x, (-4, -4), (1, 2)), window_partition(torch.roll(positions, (-4, -4), (1, 2)), window)
    q, k, v, _, scale = attn.attention_inputs(window_partition(rolled, window))
    mask = shift_mask((16, 16), (16, 16), window, (4, 4), x.device)
    out = torch.zeros_like(q)
    with torch.no_grad():
        for w in range(len(q)):
            offsets = (at[w][:, None] - at[w][None, :]).double() * 8 / 7
            bias = 16 * torch.sigmoid(attn.cpb_mlp(torch.sign(offsets) * torch.log2(1 + offsets.abs()) / 3))
            scores = q[w] @ k[w].mT * scale + bias.permute(2, 0, 1) + mask[w % len(mask)]
            out[w] = scores.softmax(-1) @ v[w]
        expected = torch.roll(window_reverse(attn.project(out), window, 2, (16, 16)), (4, 4), (1, 2))
    torch.testing.assert_close(got, expected)


def test_the_packed_model_runs_every_attention_kernel_to_the_same_loss_and_gradients():
    losses, grads = [], []
    mask = draw(UniformMaskGenerator(128, 32, 4, 0.8125), 2)
    images = torch.randn(2, 3, 128, 128)
    for kernel in KERNELS:  # plain first: the reference; the others run one SDPA call per block
        model = packed_model()
        model.encoder.set_attention_kernel(kernel)
        loss = model(images, mask)[0]
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert KERNELS[0] == "plain"
    for loss, grad in zip(losses[1:], grads[1:]):
        torch.testing.assert_close(loss, losses[0])
        torch.testing.assert_close(grad, grads[0], rtol=1e-4, atol=1e-6)
