"""Exports other libraries load as their own: ``--to hf`` (transformers' Swinv2Model / ForImageClassification /
Backbone from the written folder) and ``--to timm`` with timm's ``pretrained_cfg``; both world-readable, both read
back by swinssl with the windows they record, computing exactly what was exported."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import timm
import torch
import transformers
from timm.data import resolve_data_config

from conftest import relative_error, run_cli, trained_like

from swinssl import ImageClassifier, create_encoder
from swinssl.export import export
from swinssl.models import build_encoder
from swinssl.weights import CheckpointError, load_checkpoint

ENCODER = dict(arch="swinv2", img_size=128, window_size=8, pretrained_window_sizes=[4, 4, 4, 2], embed_dim=16,
               depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4])
CLASSES = ["cat", "dog", "fox"]
EVALUATION = {"eval_crop_pct": 0.9, "eval_crop_mode": "squash", "interpolation": "bilinear"}


@pytest.fixture(scope="module")
def classifier_checkpoint(tmp_path_factory):
    """A swinssl classifier checkpoint at 128 px / window 8 whose position bias was trained at windows 4,4,4,2."""
    from lightning.pytorch import Trainer

    task = ImageClassifier(encoder=ENCODER, num_classes=3, class_names=CLASSES, evaluation=EVALUATION, mixup=None)
    trained_like(task.model)
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(task)
    path = tmp_path_factory.mktemp("run") / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))


def test_hf_export_loads_in_transformers_as_model_classifier_and_backbone(classifier_checkpoint, tmp_path, images):
    out = tmp_path / "hf"
    done = run_cli("swinssl.export", str(classifier_checkpoint), str(out), "--to", "hf")
    assert done.returncode == 0, done.stderr[-3000:]
    assert {path.name: path.stat().st_mode & 0o777 for path in out.iterdir()} == {
        "config.json": 0o644, "preprocessor_config.json": 0o644, "model.safetensors": 0o644}
    ours = create_encoder("swinv2", img_size=128, window_size=8, num_classes=3, checkpoint=classifier_checkpoint).eval()
    classifier = transformers.Swinv2ForImageClassification.from_pretrained(out).eval()
    assert classifier.config.id2label == dict(enumerate(CLASSES))
    assert classifier.config.pretrained_window_sizes == [4, 4, 4, 2]
    model = transformers.Swinv2Model.from_pretrained(out).eval()
    backbone = transformers.Swinv2Backbone.from_pretrained(out, out_features=["stage1", "stage2", "stage3", "stage4"])
    with torch.no_grad():
        assert relative_error(classifier(images).logits, ours(images)) <= 1e-5
        features = ours.forward_features(images)
        assert relative_error(model(images).pooler_output, ours.forward_head(features, pre_logits=True)) <= 1e-5
        stages = ours.forward_intermediates(images, intermediates_only=True)
        for theirs, mine in zip(backbone.eval()(images).feature_maps, stages, strict=True):
            assert relative_error(theirs, mine) <= 1e-5
        # read back by swinssl: the windows and classes come from config.json, the function is the same
        again = create_encoder("swinv2", img_size=128, window_size=8, num_classes=3, checkpoint=out).eval()
        torch.testing.assert_close(again(images), ours(images), rtol=0, atol=0)
    assert load_checkpoint(out).hparams["class_names"] == CLASSES


def test_hf_export_is_the_backbone_of_a_pure_hf_upernet(classifier_checkpoint, tmp_path, images):
    """The HF-native dense-task path: the exported folder's config is UperNet's backbone config and its weights
    are the backbone's; the model trains, saves with save_pretrained and reloads to the same function."""
    out = tmp_path / "hf"
    done = run_cli("swinssl.export", str(classifier_checkpoint), str(out), "--to", "hf")
    assert done.returncode == 0, done.stderr[-3000:]
    stages = ["stage1", "stage2", "stage3", "stage4"]
    config = transformers.UperNetConfig(
        backbone_config=transformers.Swinv2Config.from_pretrained(out, out_features=stages), num_labels=5,
        hidden_size=32, auxiliary_channels=16)
    model = transformers.UperNetForSemanticSegmentation(config)
    backbone = transformers.Swinv2Backbone.from_pretrained(out, out_features=stages)
    model.backbone.load_state_dict(backbone.state_dict())
    ours = create_encoder("swinv2", img_size=128, window_size=8, checkpoint=classifier_checkpoint).eval()
    with torch.no_grad():
        for theirs, mine in zip(model.backbone.eval()(images).feature_maps,
                                ours.forward_intermediates(images, intermediates_only=True), strict=True):
            assert relative_error(theirs, mine) <= 1e-5
    model.train()
    labels = torch.randint(0, 5, (2, 128, 128), generator=torch.Generator().manual_seed(0))
    output = model(pixel_values=images, labels=labels)
    assert output.logits.shape == (2, 5, 128, 128) and torch.isfinite(output.loss)
    output.loss.backward()
    assert model.backbone.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    model.save_pretrained(tmp_path / "upernet")
    again = transformers.UperNetForSemanticSegmentation.from_pretrained(tmp_path / "upernet").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(pixel_values=images).logits, model.eval()(pixel_values=images).logits)


@pytest.mark.parametrize("name", ["model.safetensors", "model.pth"])
def test_timm_export_carries_pretrained_cfg_and_reads_back_with_its_windows(classifier_checkpoint, tmp_path, images,
                                                                             caplog, name):
    out = tmp_path / name
    meta = export(classifier_checkpoint, out)
    assert out.stat().st_mode & 0o777 == 0o644 and out.with_suffix(".json").stat().st_mode & 0o777 == 0o644
    record = json.loads(out.with_suffix(".json").read_text())  # what a timm user reads
    assert record == json.loads(json.dumps(meta))
    cfg = record["pretrained_cfg"]
    model = timm.create_model("swinv2_tiny_window8_256", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(out), **cfg), **record["kwargs"]).eval()
    data = {key: tuple(value) if isinstance(value, list) else value
            for key, value in resolve_data_config({}, model=model).items()}
    assert data == {"input_size": (3, 128, 128), "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406),
                    "std": (0.229, 0.224, 0.225), "crop_pct": 0.9, "crop_mode": "squash"}
    assert cfg["label_names"] == CLASSES and cfg["num_classes"] == 3
    ours = create_encoder("swinv2", img_size=128, window_size=8, num_classes=3, checkpoint=classifier_checkpoint).eval()
    caplog.clear()  # the load above may be logged at INFO (a CLI test run in-process earlier can leave INFO on)
    with caplog.at_level(logging.WARNING, logger="swinssl.weights"):
        again = create_encoder("swinv2", img_size=128, window_size=8, num_classes=3, checkpoint=out).eval()
    assert not caplog.records  # the windows come from the export record
    assert [stage.blocks[0].attn.pretrained_window_size[0] for stage in again.layers] == [4, 4, 4, 2]
    with torch.no_grad():
        torch.testing.assert_close(model(images), ours(images), rtol=0, atol=1e-6)
        torch.testing.assert_close(again(images), ours(images), rtol=0, atol=0)


def test_hf_export_refuses_extra_norms(tmp_path):
    model = build_encoder("swinv2", img_size=64, window_size=4, extra_norm_period=1, embed_dim=16, depths=(1, 1, 2, 1),
                          num_heads=(1, 2, 2, 4))
    with pytest.raises(CheckpointError, match=r"extra LayerNorms \(H/G models\) have no place in HF transformers"):
        export(model.state_dict(), tmp_path / "hf", to="hf")


def test_hf_export_without_transformers_names_the_extra(classifier_checkpoint, tmp_path):
    code = ("import sys; sys.modules['transformers'] = None\n"
            "from swinssl.export import main\n"
            f"main([{str(classifier_checkpoint)!r}, {str(tmp_path / 'hf')!r}, '--to', 'hf'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --to hf writes an HF transformers config, which needs transformers: pip install 'swinssl[interop]'")


def test_hf_export_of_swin_v1_loads_in_transformers(tmp_path):
    """Swin V1 goes out too; here from an HF V1 folder (its config.json gives size and window), back to HF."""
    torch.manual_seed(0)
    config = transformers.SwinConfig(image_size=64, window_size=2, embed_dim=16, depths=[1, 1, 2, 1],
                                     num_heads=[1, 2, 2, 4], num_labels=3)
    source = trained_like(transformers.SwinForImageClassification(config))
    source.save_pretrained(tmp_path / "source")
    export(tmp_path / "source", tmp_path / "out", to="hf")
    again = transformers.SwinForImageClassification.from_pretrained(tmp_path / "out").eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert relative_error(again(images).logits, source(images).logits) <= 1e-5


def test_hf_export_needs_the_image_size_and_window(tmp_path):
    model = build_encoder("swinv2", img_size=64, window_size=4, embed_dim=16, depths=(1, 1, 2, 1),
                          num_heads=(1, 2, 2, 4))
    with pytest.raises(CheckpointError, match="records no image size and window, which an HF config needs"):
        export(model.state_dict(), tmp_path / "hf", to="hf")


@pytest.fixture(scope="module")
def center_crop_run(tmp_path_factory):
    """A classifier run that trained with drop path 0.05 and evaluated with a bicubic centre crop of 0.875."""
    from lightning.pytorch import Trainer

    evaluation = {"eval_crop_pct": 0.875, "eval_crop_mode": "center", "interpolation": "bicubic"}
    task = ImageClassifier(encoder={**ENCODER, "drop_path_rate": 0.05}, num_classes=3, class_names=CLASSES,
                           evaluation=evaluation, mixup=None)
    trained_like(task.model, seed=3)
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(task)
    path = tmp_path_factory.mktemp("run") / "last.ckpt"
    trainer.save_checkpoint(path)
    out = tmp_path_factory.mktemp("export") / "hf"
    export(path, out, to="hf")
    return path, out, evaluation


def test_hf_export_config_is_the_runs(center_crop_run):
    """Today's main: HF's default drop_path_rate 0.1 where the run used 0.05."""
    _, out, _ = center_crop_run
    config = json.loads((out / "config.json").read_text())
    expected = {"image_size": 128, "patch_size": 4, "num_channels": 3, "embed_dim": 16, "depths": [1, 1, 2, 1],
                "num_heads": [1, 2, 2, 4], "window_size": 8, "pretrained_window_sizes": [4, 4, 4, 2], "mlp_ratio": 4.0,
                "qkv_bias": True, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                "drop_path_rate": 0.05, "hidden_act": "gelu", "use_absolute_embeddings": False, "layer_norm_eps": 1e-5,
                "encoder_stride": 32}
    assert {key: config[key] for key in expected} == expected
    # the same modules: stochastic depth per block, LayerNorm eps, MLP width
    hf = transformers.Swinv2ForImageClassification.from_pretrained(out).swinv2
    ours = ImageClassifier.from_checkpoint(center_crop_run[0]).model
    theirs_blocks = [block for stage in hf.encoder.layers for block in stage.blocks]
    our_blocks = [block for stage in ours.layers for block in stage.blocks]
    assert [getattr(b.drop_path, "drop_prob", 0.0) for b in theirs_blocks] == pytest.approx(
        [getattr(b.drop_path1, "drop_prob", 0.0) for b in our_blocks])
    assert hf.layernorm.eps == ours.norm.eps
    assert theirs_blocks[0].intermediate.dense.out_features == our_blocks[0].mlp.fc1.out_features


def test_hf_export_works_with_transformers_pipeline_and_auto_image_processor(center_crop_run, tmp_path):
    """Today's main: no preprocessor_config.json, so pipeline() and AutoImageProcessor fail on the folder."""
    from PIL import Image
    from skimage import data

    from swinssl.datamodules import ClassificationShardDataModule

    checkpoint, out, evaluation = center_crop_run
    image = Image.fromarray(data.astronaut()).resize((200, 150))  # not square: the crop matters
    processor = transformers.AutoImageProcessor.from_pretrained(out)
    ours = ClassificationShardDataModule(img_size=128, **evaluation).eval_transform(image)
    theirs = processor(image, return_tensors="pt").pixel_values[0]
    assert theirs.shape == ours.shape == (3, 128, 128)
    assert (theirs - ours).abs().mean() < 0.02  # PIL vs torchvision resampling of the same geometry
    model = ImageClassifier.from_checkpoint(checkpoint).eval()
    with torch.no_grad():
        scores = model(ours[None]).softmax(-1)[0]
    classify = transformers.pipeline("image-classification", model=str(out))
    result = classify(image, top_k=3)
    assert result[0]["label"] == CLASSES[int(scores.argmax())]
    assert {item["label"]: item["score"] for item in result} == pytest.approx(
        {name: float(score) for name, score in zip(CLASSES, scores, strict=True)}, abs=0.02)
