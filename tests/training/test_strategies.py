"""How a model runs: strategy names, FSDP wrapping, wrapper-proof optimizer groups, gradient checkpointing, compile."""

import importlib.util

import pytest
import torch
from lightning.pytorch.strategies import FSDPStrategy
from timm.models.swin_transformer_v2 import SwinTransformerV2Block
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from swinssl import SimMIM, VideoClassifier
from swinssl.models.video_swin import VideoSwinBlock
from swinssl.training.trainer import resolve_strategy
from swinssl.tasks.optim import OptimConfig, backbone_and_head_groups, build_optimizer

TINY = dict(arch="swinv2", img_size=32, window_size=2, patch_size=4, norm_target_window=None,
            encoder=dict(embed_dim=16, depths=[1, 1], num_heads=[1, 2]))


def test_strategy_names_are_checked():
    assert resolve_strategy("ddp") == "ddp" and resolve_strategy("auto") == "auto"
    with pytest.raises(ValueError, match="unknown trainer.strategy 'dpp'; choose one of: auto, ddp, "):
        resolve_strategy("dpp")


def test_fsdp_shards_each_swin_block():
    strategy = resolve_strategy("fsdp")
    assert isinstance(strategy, FSDPStrategy)
    assert {SwinTransformerV2Block, VideoSwinBlock} <= strategy.kwargs["auto_wrap_policy"]._module_classes


def test_deepspeed_without_the_package_is_a_clear_error():
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(ImportError, match="needs DeepSpeed, which is not installed: pip install deepspeed"):
            resolve_strategy("deepspeed_stage_1")
    else:
        assert resolve_strategy("deepspeed_stage_1") == "deepspeed_stage_1"


def groups_by_name(module: torch.nn.Module, groups: list[dict]) -> list[tuple[frozenset, float, float]]:
    """Each optimizer group as (parameter names, weight decay, lr scale), names without wrapper prefixes."""
    names = {id(param): name.replace("_checkpoint_wrapped_module.", "") for name, param in module.named_parameters()}
    return sorted((frozenset(names[id(p)] for p in group["params"]), group["weight_decay"], group.get("lr_scale", 1.0))
                  for group in groups)


def wrap_blocks(encoder: torch.nn.Module) -> None:
    """Wrap every block as FSDP / activation checkpointing does, which inserts a prefix into parameter names."""
    for stage in encoder.layers:
        for index, block in enumerate(stage.blocks):
            stage.blocks[index] = checkpoint_wrapper(block)


@pytest.mark.parametrize("layer_decay", [None, 0.75])
def test_optimizer_groups_survive_block_wrappers(layer_decay):
    """No-decay names (logit_scale, cpb_mlp) and layer-decay ids are read from names, which wrappers change."""
    kwargs = dict(layer_decay=layer_decay) if layer_decay else {}
    plain, wrapped = SimMIM(**TINY).model, SimMIM(**TINY).model
    wrap_blocks(wrapped.encoder)
    if layer_decay:  # the classifiers' case: layer decay over the encoder alone
        plain, wrapped = plain.encoder, wrapped.encoder
    assert any("_checkpoint_wrapped_module." in name for name, _ in wrapped.named_parameters())
    config = OptimConfig()
    expected = groups_by_name(plain, build_optimizer(plain, config, lr=1.0, **kwargs).param_groups)
    assert groups_by_name(wrapped, build_optimizer(wrapped, config, lr=1.0, **kwargs).param_groups) == expected
    no_decay = set().union(*(names for names, decay, _ in expected if decay == 0))
    assert {name for name, _ in plain.named_parameters() if name.endswith("logit_scale")} <= no_decay


def test_backbone_and_head_groups_survive_block_wrappers():
    def groups(wrap: bool):
        model = VideoClassifier(arch="video_swinv2", num_classes=3, num_frames=4, img_size=32, window_size=[2, 2, 2],
                                encoder=dict(embed_dim=16, depths=[1, 1], num_heads=[1, 2])).model
        if wrap:
            wrap_blocks(model)
        return groups_by_name(model, backbone_and_head_groups(model, 0.05, 0.1))

    assert groups(wrap=True) == groups(wrap=False)


def loss_and_grads(**kwargs):
    torch.manual_seed(0)
    model = SimMIM(**TINY, **kwargs)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    mask = (torch.rand(2, 8, 8, generator=generator) < 0.5).to(torch.uint8)
    model.configure_model()
    loss, _ = model(images, mask)
    loss.backward()
    return loss.detach(), {name: param.grad for name, param in model.named_parameters() if param.grad is not None}


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    loss, grads = loss_and_grads()
    checkpointed_loss, checkpointed_grads = loss_and_grads(grad_checkpointing=True)
    torch.testing.assert_close(checkpointed_loss, loss, rtol=1e-6, atol=0)
    assert checkpointed_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.slow
def test_compile_gives_the_same_loss_and_gradients():
    """torch.compile on the CPU needs a C++ compiler and a few minutes: opt in with -m slow."""
    loss, grads = loss_and_grads()
    compiled_loss, compiled_grads = loss_and_grads(compile=True)
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
