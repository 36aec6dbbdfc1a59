"""Learning-rate scaling, the per-step schedules, and the official no-weight-decay set."""

import io
import math

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from swinssl import SimMIM
from swinssl.datamodules import ImageShardDataModule
from swinssl.make_shards import ShardItem, write_shards
from swinssl.tasks.optim import OptimConfig, build_optimizer, build_scheduler, plan_steps

TINY = dict(arch="swinv2", img_size=64, window_size=2,
            encoder=dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4]))


def noise_photos(folder, epoch_size: int) -> ImageShardDataModule:
    """8 random 64 px PNGs as one shard set, batches of 4."""
    def photo(seed):
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
        return ShardItem(f"{seed}.png", buffer.getvalue(), "png")

    write_shards([photo(i) for i in range(8)], folder)
    return ImageShardDataModule(str(folder), batch_size=4, num_workers=0, epoch_size=epoch_size, img_size=64,
                                mask_patch_size=16, shuffle_buffer=4)


def test_learning_rates_are_per_512_samples():
    config = OptimConfig(base_lr=1e-4, warmup_lr=5e-7, min_lr=5e-6)
    assert config.scaled(2048) == pytest.approx(dict(lr=4e-4, warmup_lr=2e-6, min_lr=2e-5))
    assert config.scaled(128)["lr"] == pytest.approx(2.5e-5)


def _lrs(config: OptimConfig, global_batch: int, steps_per_epoch: int, total_steps: int, scale: float = 1.0):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [param], "lr_scale": scale}], lr=config.scaled(global_batch)["lr"])
    scheduler = build_scheduler(optimizer, config, global_batch=global_batch, steps_per_epoch=steps_per_epoch,
                                total_steps=total_steps)
    rates = []
    for _ in range(total_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_official_multistep_schedule_with_linear_warmup():
    # 10 steps per epoch, 2 warmup epochs, x0.1 at epoch 5, batch 1024 (x2 the per-512 rates)
    config = OptimConfig(base_lr=1e-4, warmup_lr=1e-6, warmup_epochs=2, schedule="multistep", milestones=[5],
                         gamma=0.1)
    rates = _lrs(config, global_batch=1024, steps_per_epoch=10, total_steps=80)
    peak, start = 2e-4, 2e-6
    assert rates[0] == pytest.approx(start)
    assert rates[10] == pytest.approx(start + (peak - start) * 10 / 20)
    assert rates[20] == pytest.approx(peak) and rates[49] == pytest.approx(peak)
    assert rates[50] == pytest.approx(peak * 0.1) and rates[79] == pytest.approx(peak * 0.1)


def test_cosine_schedule_after_warmup_ends_at_min_lr():
    config = OptimConfig(base_lr=1e-3, warmup_lr=0.0, min_lr=1e-5, warmup_epochs=1, schedule="cosine")
    rates = _lrs(config, global_batch=512, steps_per_epoch=4, total_steps=24)
    assert rates[2] == pytest.approx(0.5e-3)
    assert rates[4] == pytest.approx(1e-3)
    halfway = 4 + 10
    assert rates[halfway] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 0.5)))
    assert rates[-1] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 19 / 20)))
    assert all(a >= b for a, b in zip(rates[4:], rates[5:]))


def test_group_lr_scale_multiplies_the_schedule():
    config = OptimConfig(base_lr=1e-3, warmup_epochs=0, schedule="cosine", min_lr=0.0)
    plain = _lrs(config, 512, 10, 20)
    scaled = _lrs(config, 512, 10, 20, scale=0.25)
    assert scaled == pytest.approx([0.25 * r for r in plain])


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        OptimConfig(schedule="linear")


def test_official_no_weight_decay_set():
    model = SimMIM(**TINY).model
    optimizer = build_optimizer(model, OptimConfig(weight_decay=0.05), lr=1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    no_decay = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decay | no_decay == set(names.values()) and not decay & no_decay
    assert "encoder.mask_token" in no_decay
    assert "encoder.layers.0.blocks.0.attn.cpb_mlp.0.weight" in no_decay  # 2-D but excluded by name
    assert "encoder.layers.0.blocks.0.attn.cpb_mlp.2.weight" in no_decay
    assert "encoder.layers.0.blocks.0.attn.logit_scale" in no_decay
    assert {"encoder.layers.0.blocks.0.attn.q_bias", "encoder.norm.weight", "decoder.0.bias"} <= no_decay
    assert {"encoder.layers.0.blocks.0.attn.qkv.weight", "encoder.layers.0.blocks.0.mlp.fc1.weight",
            "encoder.patch_embed.proj.weight", "decoder.0.weight"} <= decay
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"] == (0.9, 0.999)


def test_trainer_scales_the_peak_lr_by_the_real_global_batch(tmp_path):
    """Per-device batch 4 x 1 device x accumulation 2 = 8 samples per optimizer step."""
    data = noise_photos(tmp_path, epoch_size=32)
    model = SimMIM(**TINY, optim=dict(base_lr=1e-3, warmup_epochs=0, schedule="cosine"))
    trainer = Trainer(max_steps=1, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    assert trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(1e-3 * 8 / 512)


@pytest.mark.parametrize("family", ["swinv2", "swin"])
def test_layer_decay_follows_the_official_swin_layer_ids(family):
    """Official get_swin_layer: embed 0, block j of stage s sum(depths[:s]) + j + 1, the merge ending stage s
    the id of that stage's last block, final norm and head N + 1; scale = decay^(N + 1 - id)."""
    from swinssl.models import build_encoder

    model = build_encoder(family, img_size=64, window_size=2, num_classes=3, mask_token=True, embed_dim=8,
                          depths=(2, 1, 2, 1), num_heads=(1, 1, 2, 2))
    optimizer = build_optimizer(model, OptimConfig(), lr=1.0, layer_decay=0.5)
    scale = {id(p): group["lr_scale"] for group in optimizer.param_groups for p in group["params"]}
    by_name = {name: scale[id(p)] for name, p in model.named_parameters()}
    top = 7  # N + 1 with N = 6 blocks
    expected_ids = {
        "patch_embed.proj.weight": 0, "mask_token": 0,
        "layers.0.blocks.1.mlp.fc1.weight": 2,
        "layers.1.downsample.reduction.weight": 2,  # timm's merge at the start of stage 1 = end of stage 0
        "layers.1.blocks.0.norm1.weight": 3,
        "layers.2.downsample.norm.weight": 3,
        "layers.2.blocks.1.mlp.fc2.bias": 5,
        "layers.3.blocks.0.attn.qkv.weight": 6,
        "norm.weight": top, "head.fc.weight": top,
    }
    for name, layer in expected_ids.items():
        assert by_name[name] == pytest.approx(0.5 ** (top - layer)), name


def test_video_backbone_learns_at_the_head_lr_ratio_including_position_bias():
    from swinssl.models import build_video_encoder
    from swinssl.tasks.optim import backbone_and_head_groups

    for family in ("video_swinv2", "video_swin"):
        model = build_video_encoder(family, num_frames=4, img_size=32, window_size=(2, 4, 4), num_classes=3,
                                    embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))
        optimizer = build_optimizer(backbone_and_head_groups(model, 0.05, 0.1), OptimConfig(), lr=1e-3)
        names = {id(p): name for name, p in model.named_parameters()}
        for group in optimizer.param_groups:
            for param in group["params"]:
                name = names[id(param)]
                assert group["lr_scale"] == (1.0 if name.startswith("head.") else 0.1), name
                no_decay = param.ndim <= 1 or any(k in name for k in ("cpb_mlp", "logit_scale", "bias_table"))
                assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
        assert sum(len(g["params"]) for g in optimizer.param_groups) == len(names)


def test_plan_counts_accumulation_and_ends_where_the_run_ends():
    plan = plan_steps(batches_per_epoch=100, accumulation=2, max_epochs=6, max_steps=-1)
    assert (plan.steps_per_epoch, plan.total_steps, plan.scheduled_steps, plan.epochs) == (50, 300, 300, 6)
    short = plan_steps(batches_per_epoch=100, accumulation=1, max_epochs=6, max_steps=50)
    assert (short.total_steps, short.scheduled_steps, short.epochs) == (50, 600, 1)
    assert short.schedule_steps_per_epoch == pytest.approx(100 * 50 / 600)
    assert plan_steps(100, 1, -1, 250).total_steps == 250
    with pytest.raises(ValueError, match="the run has no end"):
        plan_steps(100, 1, -1, -1)


@pytest.mark.parametrize("schedule", ["cosine", "multistep"])
def test_a_run_cut_short_by_max_steps_warms_up_and_decays_within_it(schedule):
    """Today's main laid the schedule over max_epochs: 50 of 600 steps never left the 100-step warmup."""
    config = OptimConfig(base_lr=1e-3, warmup_lr=1e-6, min_lr=1e-5, warmup_epochs=1, schedule=schedule,
                         milestones=[3], gamma=0.1)
    plan = plan_steps(batches_per_epoch=100, accumulation=1, max_epochs=6, max_steps=50)
    rates = _lrs(config, 512, plan.schedule_steps_per_epoch, plan.total_steps)
    warmup = round(100 * 50 / 600)  # one of six epochs
    assert rates[warmup] == pytest.approx(1e-3) and max(rates) == pytest.approx(1e-3)
    assert rates[-1] < 2e-4  # decayed: cosine towards 1e-5, or multistep at epoch 3 of 6 (step 25)


def test_a_short_trainer_run_ends_at_the_minimum_rate(tmp_path):
    data = noise_photos(tmp_path, epoch_size=40)
    model = SimMIM(**TINY, optim=dict(base_lr=1e-3, warmup_lr=0.0, min_lr=1e-5, warmup_epochs=1, schedule="cosine"))
    trainer = Trainer(max_epochs=10, max_steps=6, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 6
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-5 * 8 / 512)


def test_the_progress_bar_counts_what_really_runs():
    from types import SimpleNamespace

    from swinssl.training.trainer import RunProgressBar

    bar = RunProgressBar()
    trainer = SimpleNamespace(num_training_batches=100, max_steps=50, global_step=0, accumulate_grad_batches=1,
                              max_epochs=6)
    bar._trainer = trainer
    assert bar.total_train_batches == 50 and bar._get_train_description(0).strip() == "Epoch 0/0"
    trainer.max_steps = -1
    assert bar.total_train_batches == 100 and bar._get_train_description(2).strip() == "Epoch 2/5"
