"""Checkpoint formats and transfer to a larger image size and window.

Official-layout checkpoints are built here from random weights (no downloads), following the key layout
of Microsoft's releases; the reference for "what the official code computes" is the official loading
rule written out plainly in each test (drop the rebuilt buffers, move the merges, resize V1 tables
bicubically, build with pretrained windows 12,12,12,6) applied to timm's identical modules.
"""

from __future__ import annotations

import logging
import re
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer
from timm.models.swin_transformer_v2 import SwinTransformerV2
from timm.models.swin_transformer_v2 import checkpoint_filter_fn as timm_v2_filter

from conftest import official_layout, trained_like

from swinssl import create_encoder
from swinssl.models import build_encoder
from swinssl.weights import CheckpointError, load_checkpoint, parse_checkpoint, resize_bias_table, to_timm

TINY = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))
BUFFERS = ("relative_position_index", "relative_coords_table", "attn_mask")


def official_simmim_layout(model: torch.nn.Module, decoder: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released SimMIM V2 files: ``encoder.`` prefix, ``rpe_mlp`` for ``cpb_mlp``, mask token, decoder."""
    state = {f"encoder.{key.replace('.cpb_mlp.', '.rpe_mlp.')}": value for key, value in official_layout(model).items()}
    state.update({f"decoder.{key}": value for key, value in decoder.items()})
    return state


def official_v2_reference(state: dict[str, torch.Tensor], img_size: int, window: int, num_classes: int):
    """The official fine-tune loader: strip ``encoder.``, rename ``rpe_mlp``, drop buffers, load non-strict."""
    if any(key.startswith("encoder.") for key in state):
        state = {key[len("encoder."):]: value for key, value in state.items() if key.startswith("encoder.")}
    state = {key.replace("rpe_mlp", "cpb_mlp"): value for key, value in state.items()
             if not any(name in key for name in BUFFERS)}
    model = SwinTransformerV2(img_size=img_size, window_size=window, num_classes=num_classes,
                              pretrained_window_sizes=(12, 12, 12, 6), **TINY)
    state.pop("mask_token", None)
    missing, unexpected = model.load_state_dict(timm_v2_filter(state, model), strict=False)
    assert not unexpected and set(missing) <= {"head.fc.weight", "head.fc.bias"}
    return model.eval()


def save(tmp_path, obj, name="model.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))


def test_official_v2_192_w12_checkpoint_at_256_w16_matches_the_official_loading_path(tmp_path, images):
    source = trained_like(build_encoder("swinv2", img_size=192, window_size=12, num_classes=7, **TINY))
    path = save(tmp_path, {"model": official_layout(source), "epoch": 3})
    ours = create_encoder("swinv2", img_size=256, window_size=16, num_classes=7, checkpoint=path).eval()
    reference = official_v2_reference(torch.load(path)["model"], 256, 16, num_classes=7)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), reference(images), rtol=0, atol=1e-6)
        # the pretrained windows matter: normalizing by the new windows computes another function
        reference_without = SwinTransformerV2(img_size=256, window_size=16, num_classes=7, **TINY).eval()
        reference_without.load_state_dict(reference.state_dict())
        assert (reference_without(images) - reference(images)).abs().max() > 1e-3
    report = str(ours.load_report)
    assert "Microsoft official Swin classification" in report and "[12, 12, 12, 6]" in report


def test_official_simmim_checkpoint_at_256_w16_matches_the_official_fine_tune_loader(tmp_path, images):
    source = trained_like(build_encoder("swinv2", img_size=192, window_size=12, mask_token=True, **TINY))
    decoder = {"0.weight": torch.randn(32 * 32 * 3, 128, 1, 1), "0.bias": torch.randn(32 * 32 * 3)}
    path = save(tmp_path, {"model": official_simmim_layout(source, decoder)})
    ours = create_encoder("swinv2", img_size=256, window_size=16, num_classes=5, checkpoint=path).eval()
    reference = official_v2_reference(torch.load(path)["model"], 256, 16, num_classes=5)
    reference.head.fc.load_state_dict(ours.head.fc.state_dict())  # both heads are freshly initialized
    with torch.no_grad():
        torch.testing.assert_close(ours(images), reference(images), rtol=0, atol=1e-6)
    report = str(ours.load_report)
    assert "rpe_mlp -> cpb_mlp" in report and "mask token" in report and "new 5-class head" in report


def test_simmim_task_continues_from_an_official_simmim_checkpoint_with_its_decoder(tmp_path):
    from swinssl import SimMIM

    source = trained_like(build_encoder("swinv2", img_size=192, window_size=12, mask_token=True, **TINY))
    decoder = {"0.weight": torch.randn(32 * 32 * 3, 128, 1, 1), "0.bias": torch.randn(32 * 32 * 3)}
    path = save(tmp_path, {"model": official_simmim_layout(source, decoder)})
    task = SimMIM(arch="swinv2", img_size=192, window_size=12, checkpoint=str(path)).eval()
    torch.testing.assert_close(task.model.decoder[0].weight, decoder["0.weight"], rtol=0, atol=0)
    torch.testing.assert_close(task.encoder.mask_token, source.mask_token, rtol=0, atol=0)
    mask = torch.zeros(1, 48, 48)
    mask[:, :24] = 1
    image = torch.randn(1, 3, 192, 192)
    with torch.no_grad():
        torch.testing.assert_close(task.encoder.forward_features(image, mask), source.forward_features(image, mask))
    assert task.hparams["checkpoint"] == str(path)


def test_swin_v1_checkpoint_moves_to_a_larger_window_with_bicubic_tables(tmp_path):
    source = trained_like(build_encoder("swin", img_size=192, window_size=6, num_classes=4, **TINY))
    state = official_layout(source)
    path = save(tmp_path, {"model": state})
    # the plain kernel is timm's attention bit for bit; the reference below runs timm's
    ours = create_encoder("swin", img_size=224, window_size=7, num_classes=4, checkpoint=path,
                          attn_kernel="plain").eval()

    # official supervised loader: drop buffers, bicubic (L, nH) -> (1, nH, S, S) -> (S', S') -> (L', nH)
    reference = SwinTransformer(img_size=224, window_size=7, num_classes=4, **TINY).eval()
    converted = {}
    for key, value in state.items():
        if any(name in key for name in BUFFERS):
            continue
        if key.endswith("relative_position_bias_table"):
            heads = value.shape[1]
            grid = value.permute(1, 0).reshape(1, heads, 11, 11)
            value = F.interpolate(grid, size=(13, 13), mode="bicubic").reshape(heads, 169).permute(1, 0)
        if match := re.match(r"layers\.(\d+)\.downsample\.(.*)", key):
            key = f"layers.{int(match[1]) + 1}.downsample.{match[2]}"
        converted[key.replace("head.", "head.fc.")] = value
    reference.load_state_dict(converted, strict=True)
    image = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(image), reference(image), rtol=0, atol=1e-6)
    assert "(bicubic)" in str(ours.load_report)


def test_bias_table_resize_keeps_the_table_at_the_same_window():
    table = torch.randn(11 * 11, 3)
    torch.testing.assert_close(resize_bias_table(table, 6), table)
    assert resize_bias_table(table, 12).shape == (23 * 23, 3)


@pytest.mark.parametrize("img_size, window, pretrained, expected", [
    (192, 12, None, [12, 12, 12, 6]),           # a pretraining file: the clipped windows
    (256, 16, (12, 12, 12, 6), [12, 12, 12, 6]),  # a 192->256 fine-tuned file keeps the pretraining windows
])
def test_windows_are_read_from_official_coordinate_tables(img_size, window, pretrained, expected):
    model = build_encoder("swinv2", img_size=img_size, window_size=window, pretrained_window_sizes=pretrained, **TINY)
    assert parse_checkpoint({"model": official_layout(model)}).pretrained_window_sizes == expected


def test_our_lightning_checkpoint_records_windows_and_continues_the_transfer(tmp_path):
    from lightning.pytorch import Trainer

    from swinssl import SimMIM

    task = SimMIM(arch="swinv2", img_size=192, window_size=12, encoder=TINY, norm_target_window=None)
    trained_like(task.encoder)
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(task)
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    source = load_checkpoint(path)
    assert (source.format, source.pretrained_window_sizes, source.encoder_settings["img_size"]) == ("swinssl", [12, 12, 12, 6], 192)
    assert set(source.decoder) == {"0.weight", "0.bias"}
    at_256 = create_encoder("swinv2", img_size=256, window_size=16, checkpoint=path)
    assert [stage.blocks[0].attn.pretrained_window_size[0] for stage in at_256.layers] == [12, 12, 12, 6]

    older = torch.load(path, weights_only=True)  # written before the key was renamed
    older["swinssl"] = {"position_bias_windows": older["swinssl"].pop("pretrained_window_sizes")}
    torch.save(older, tmp_path / "older.ckpt")
    assert load_checkpoint(tmp_path / "older.ckpt").pretrained_window_sizes == [12, 12, 12, 6]


def test_timm_state_dict_loads_as_is_and_export_round_trips(tmp_path, images, caplog):
    model = trained_like(build_encoder("swinv2", img_size=256, window_size=16, num_classes=3,
                                       pretrained_window_sizes=(12, 12, 12, 6), **TINY))
    with caplog.at_level(logging.WARNING, logger="swinssl.weights"):
        plain = create_encoder("swinv2", img_size=256, window_size=16, num_classes=3,
                               pretrained_window_sizes=(12, 12, 12, 6), checkpoint=model.state_dict()).eval()
    assert not caplog.records  # windows were given explicitly
    state, kwargs = to_timm(load_checkpoint({"model": official_layout(model)}))
    assert kwargs["pretrained_window_sizes"] == (12, 12, 12, 6)
    timm_model = SwinTransformerV2(img_size=256, window_size=16, **kwargs).eval()
    timm_model.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(timm_model(images), model(images), rtol=0, atol=1e-6)
        torch.testing.assert_close(plain(images), model(images), rtol=0, atol=1e-6)


def test_timm_state_dict_without_windows_warns(caplog):
    model = build_encoder("swinv2", img_size=64, window_size=4, **TINY)
    with caplog.at_level(logging.WARNING, logger="swinssl.weights"):
        create_encoder("swinv2", img_size=128, window_size=8, checkpoint=model.state_dict())
    # the command line's key as well as the API's (today's main named only the API's)
    assert "model.encoder.pretrained_window_sizes=[12,12,12,6] on the command line" in caplog.text
    assert "pretrained_window_sizes=[12, 12, 12, 6] in the API" in caplog.text


def test_head_of_another_size_is_reinitialized_with_a_warning(caplog):
    model = build_encoder("swinv2", img_size=64, window_size=4, num_classes=10, **TINY)
    with caplog.at_level(logging.WARNING, logger="swinssl.weights"):
        loaded = create_encoder("swinv2", img_size=64, window_size=4, num_classes=3, checkpoint=model.state_dict())
    assert "10-class head does not fit 3 classes" in caplog.text
    assert "re-initialized" in str(loaded.load_report)


# -- bad input: one clear error each ------------------------------------------------------------------


def test_unknown_format_is_named(tmp_path):
    path = save(tmp_path, {"weights": {"fc.weight": torch.zeros(2, 2)}})
    with pytest.raises(CheckpointError, match="unrecognized checkpoint format.*found keys: weights"):
        create_encoder("swinv2", checkpoint=path)


def test_truncated_file_is_named(tmp_path):
    path = save(tmp_path, build_encoder("swinv2", img_size=64, window_size=4, **TINY).state_dict())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a PyTorch checkpoint"):
        load_checkpoint(path)


def test_architecture_mismatch_names_both_sides(tmp_path):
    path = save(tmp_path, build_encoder("swinv2", img_size=64, window_size=4, **TINY).state_dict())
    with pytest.raises(CheckpointError, match=r"embed_dim 16, depths \(1, 1, 2, 1\).*expects embed_dim 96"):
        create_encoder("swinv2_tiny", img_size=64, window_size=4, checkpoint=path)
    with pytest.raises(CheckpointError, match="is a Swin V2 checkpoint; arch 'swin' is Swin V1"):
        create_encoder("swin", img_size=64, window_size=4, checkpoint=path)


class Untrusted:
    def __init__(self):
        self.value = 1


def test_pickled_objects_need_the_explicit_opt_in(tmp_path):
    state = build_encoder("swinv2", img_size=64, window_size=4, **TINY).state_dict()
    path = save(tmp_path, {"model": state, "extra": Untrusted()})
    with pytest.raises(CheckpointError, match=r"Untrusted.*trust_checkpoint=True"):
        load_checkpoint(path)
    assert load_checkpoint(path, trust_checkpoint=True).sizes["embed_dim"] == 16


def test_official_yacs_config_is_read_as_plain_data(tmp_path, monkeypatch):
    """Official training files pickle a yacs CfgNode next to the weights; yacs need not be installed."""
    yacs, config = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):
        pass

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    config.CfgNode, yacs.config = CfgNode, config
    monkeypatch.setitem(sys.modules, "yacs", yacs)
    monkeypatch.setitem(sys.modules, "yacs.config", config)
    model = build_encoder("swinv2", img_size=64, window_size=4, **TINY)
    path = save(tmp_path, {"model": official_layout(model), "config": CfgNode(MODEL=CfgNode(TYPE="swinv2"))})
    monkeypatch.delitem(sys.modules, "yacs.config")
    monkeypatch.delitem(sys.modules, "yacs")
    source = load_checkpoint(path)
    assert source.format == "official" and "config" in source.conversions[0]
