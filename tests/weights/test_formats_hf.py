"""HF transformers Swin V1/V2 checkpoints in: each source model is built by the installed transformers with random
weights, saved as transformers saves it (a ``save_pretrained`` folder, or one file), loaded through swinssl, and
compared with transformers' own outputs, at the source size and after moving to a larger window (the reference
there is transformers itself, built at the new size with the source windows as ``pretrained_window_sizes``)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch
import transformers
from safetensors.torch import save_file

from conftest import relative_error, trained_like

from swinssl import create_encoder
from swinssl.models.simmim import MaskedImageModel
from swinssl.weights import CheckpointError, load_checkpoint

SIZES = dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], patch_size=4)


def hf_model(name: str, image_size: int = 64, window_size: int = 4, **config):
    """A transformers model of class ``name`` (``Swinv2*`` or V1 ``Swin*``), perturbed away from its init."""
    config_class = transformers.Swinv2Config if name.startswith("Swinv2") else transformers.SwinConfig
    torch.manual_seed(0)
    model = getattr(transformers, name)(config_class(image_size=image_size, window_size=window_size, **SIZES, **config))
    return trained_like(model)


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("saved_as", ["folder", "safetensors", "bin"])
def test_hf_swinv2_classifier_gives_the_hf_logits(tmp_path, images, saved_as):
    source = hf_model("Swinv2ForImageClassification", num_labels=3, id2label={0: "cat", 1: "dog", 2: "fox"})
    if saved_as == "folder":
        source.save_pretrained(tmp_path)
        path = tmp_path
    elif saved_as == "safetensors":
        path = tmp_path / "weights.safetensors"
        save_file(source.state_dict(), str(path), metadata={"format": "pt"})
    else:
        path = tmp_path / "pytorch_model.bin"
        torch.save(source.state_dict(), path)
    ours = create_encoder("swinv2", img_size=64, window_size=4, num_classes=3, checkpoint=path).eval()
    with torch.no_grad():
        assert relative_error(ours(images[:, :, :64, :64]), source(images[:, :, :64, :64]).logits) <= 1e-5
    checkpoint = load_checkpoint(path)
    assert checkpoint.format == "hf" and checkpoint.sizes["depths"] == (1, 1, 2, 1)
    if saved_as == "folder":  # the config tells the windows and the classes
        assert checkpoint.pretrained_window_sizes == [4, 4, 4, 2]
        assert checkpoint.hparams == {"img_size": 64, "window_size": 4, "class_names": ["cat", "dog", "fox"]}


def test_hf_swinv2_model_gives_the_hf_features_and_pooled_output(tmp_path, images):
    source = hf_model("Swinv2Model")
    source.save_pretrained(tmp_path)
    ours = create_encoder("swinv2", img_size=64, window_size=4, checkpoint=tmp_path).eval()
    with torch.no_grad():
        expected = source(images[:, :, :64, :64])
        features = ours.forward_features(images[:, :, :64, :64])
        assert relative_error(features.flatten(1, 2), expected.last_hidden_state) <= 1e-5
        assert relative_error(ours.forward_head(features, pre_logits=True), expected.pooler_output) <= 1e-5


def test_hf_swinv2_backbone_gives_the_hf_stage_maps(tmp_path, images):
    source = hf_model("Swinv2Backbone", out_features=["stage1", "stage2", "stage3", "stage4"])
    source.save_pretrained(tmp_path)
    ours = create_encoder("swinv2", img_size=64, window_size=4, checkpoint=tmp_path).eval()
    assert "final norm (norm): not in the checkpoint (an HF backbone has none)" in str(ours.load_report)
    with torch.no_grad():
        maps = source(images[:, :, :64, :64]).feature_maps
        stages = ours.forward_intermediates(images[:, :, :64, :64], intermediates_only=True)
    assert len(maps) == len(stages) == 4
    for theirs, mine in zip(maps, stages, strict=True):
        assert relative_error(mine, theirs) <= 1e-5


def test_hf_masked_image_model_continues_as_simmim_with_its_decoder(tmp_path, images):
    source = hf_model("Swinv2ForMaskedImageModeling", encoder_stride=32)
    source.save_pretrained(tmp_path)
    checkpoint = load_checkpoint(tmp_path)
    assert set(checkpoint.decoder) == {"0.weight", "0.bias"} and "mask_token" in checkpoint.state
    encoder = create_encoder("swinv2", img_size=64, window_size=4, mask_token=True, checkpoint=checkpoint)
    ours = MaskedImageModel(encoder, norm_target_window=None).eval()
    ours.decoder.load_state_dict(checkpoint.decoder)
    mask = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(2)) < 0.6
    with torch.no_grad():
        expected = source(images[:, :, :64, :64], bool_masked_pos=mask.flatten(1))
        loss, reconstruction = ours(images[:, :, :64, :64], mask.float())
    assert relative_error(reconstruction, expected.reconstruction) <= 1e-5
    assert relative_error(loss, expected.loss) <= 1e-5


def test_hf_swinv2_moves_to_a_larger_window_as_transformers_does(tmp_path, images, caplog):
    source = hf_model("Swinv2ForImageClassification", num_labels=3)
    source.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="swinssl.weights"):
        ours = create_encoder("swinv2", img_size=128, window_size=8, num_classes=3, checkpoint=tmp_path).eval()
    assert not caplog.records  # the windows come from config.json
    reference = transformers.Swinv2ForImageClassification.from_pretrained(
        tmp_path, image_size=128, window_size=8, pretrained_window_sizes=[4, 4, 4, 2]).eval()
    with torch.no_grad():
        assert relative_error(ours(images), reference(images).logits) <= 1e-5
        # the windows matter: normalizing by the new ones computes another function
        plain = transformers.Swinv2ForImageClassification.from_pretrained(tmp_path, image_size=128, window_size=8)
        plain.eval()
        assert relative_error(plain(images).logits, reference(images).logits) > 1e-3


def test_hf_swinv2_file_with_persistent_buffers_records_its_windows(tmp_path):
    """transformers 4 saved the coordinate tables; a fine-tuned file's table gives its pretrained windows."""
    source = hf_model("Swinv2Model", image_size=128, window_size=8, pretrained_window_sizes=[4, 4, 4, 2])
    state = {**source.state_dict(), **dict(source.named_buffers())}
    assert any(key.endswith("relative_coords_table") for key in state)
    assert load_checkpoint(state).pretrained_window_sizes == [4, 4, 4, 2]


def test_hf_swin_v1_classifier_gives_the_hf_logits_and_moves_with_bicubic_tables(tmp_path, images):
    source = hf_model("SwinForImageClassification", window_size=2, num_labels=3)
    source.save_pretrained(tmp_path)
    ours = create_encoder("swin", img_size=64, window_size=2, num_classes=3, checkpoint=tmp_path).eval()
    with torch.no_grad():
        assert relative_error(ours(images[:, :, :64, :64]), source(images[:, :, :64, :64]).logits) <= 1e-5
    # at 128 px / window 4 the official rule resizes each (2w-1)^2 table bicubically; written out plainly here
    reference = hf_model("SwinForImageClassification", image_size=128, window_size=4, num_labels=3).eval()
    moved = {}
    for key, value in source.state_dict().items():
        if key.endswith("relative_position_bias_table"):
            grid = value.T.reshape(1, value.shape[1], 3, 3)
            value = torch.nn.functional.interpolate(grid, size=(7, 7), mode="bicubic").reshape(value.shape[1], 49).T
        moved[key] = value
    reference.load_state_dict(moved)
    at_128 = create_encoder("swin", img_size=128, window_size=4, num_classes=3, checkpoint=tmp_path).eval()
    with torch.no_grad():
        assert relative_error(at_128(images), reference(images).logits) <= 1e-5


def test_reading_hf_folders_needs_no_transformers(tmp_path):
    hf_model("Swinv2ForImageClassification", num_labels=3).save_pretrained(tmp_path)
    code = ("import sys; sys.modules['transformers'] = None\n"
            "from swinssl.weights import load_checkpoint\n"
            f"print(load_checkpoint({str(tmp_path)!r}).format)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "hf", done.stderr[-2000:]


def test_hf_folder_without_weights_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "swinv2"}')
    with pytest.raises(CheckpointError, match="holds config.json but no weights; expected model.safetensors or "
                                              "pytorch_model.bin"):
        load_checkpoint(tmp_path)


def test_classifier_task_from_an_hf_folder_takes_its_size_and_classes(tmp_path, images):
    from swinssl import ImageClassifier

    source = hf_model("Swinv2ForImageClassification", num_labels=3, id2label={0: "cat", 1: "dog", 2: "fox"})
    source.save_pretrained(tmp_path)
    task = ImageClassifier.from_checkpoint(tmp_path).eval()
    assert (task.encoder_spec.img_size, task.encoder_spec.window_size) == (64, 4)
    assert task.hparams.class_names == ["cat", "dog", "fox"]
    with torch.no_grad():
        assert relative_error(task(images[:, :, :64, :64]), source(images[:, :, :64, :64]).logits) <= 1e-5
