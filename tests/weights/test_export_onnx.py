"""``python -m swinssl.export ... --to onnx``: image and video classifiers, encoders and stage maps of tiny models,
run by onnxruntime at batches other than the traced one and compared with PyTorch; metadata read back from the
file; what ONNX cannot express (or a graph that computes something else) refused without writing a file."""

from __future__ import annotations

import json

import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from conftest import official_layout, relative_error, run_cli, trained_like

from swinssl import ImageClassifier, VideoClassifier, create_encoder
from swinssl.export import export, main
from swinssl.weights import CheckpointError
from swinssl.weights.onnx import to_onnx

# ~30k parameters; a chunked attention kernel, which the export swaps for the plain one
IMAGE = dict(arch="swinv2", img_size=32, window_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
             attn_kernel="chunked", attn_chunk_windows=2)
VIDEO = dict(arch="video_swinv2", num_frames=4, img_size=32, window_size=[2, 4, 4], patch_size=[2, 4, 4],
             embed_dim=8, depths=[1, 1], num_heads=[1, 2])
CLASSES = ["cat", "dog", "fox"]


def saved(task, path):
    from lightning.pytorch import Trainer

    trained_like(task.model)
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(task)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    return saved(ImageClassifier(encoder=IMAGE, num_classes=3, class_names=CLASSES, mixup=None),
                 tmp_path_factory.mktemp("run") / "last.ckpt")


def run_onnx(path, inputs):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(out) for out in session.run(None, {session.get_inputs()[0].name: inputs.numpy()})]


def test_image_classifier_cli_export_runs_in_onnxruntime_with_metadata(image_run, tmp_path):
    out = tmp_path / "model.onnx"
    done = run_cli("swinssl.export", str(image_run), str(out), "--to", "onnx")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "onnxruntime matches PyTorch" in done.stdout
    meta = {entry.key: entry.value for entry in onnx.load(str(out)).metadata_props}
    assert meta["opset"] == "17" and json.loads(meta["class_names"]) == CLASSES
    preprocessing = json.loads(meta["preprocessing"])
    assert preprocessing["input_size"] == [3, 32, 32] and preprocessing["mean"] == [0.485, 0.456, 0.406]
    assert preprocessing["crop_pct"] == 0.875 and preprocessing["crop_mode"] == "center"
    reference = ImageClassifier.from_checkpoint(image_run, attn_kernel="plain").model.eval()
    images = torch.randn(5, 3, 32, 32)
    (logits,) = run_onnx(out, images)
    assert relative_error(logits, reference(images).detach()) <= 1e-4


def test_encoder_at_a_new_size_and_stage_maps(image_run, tmp_path):
    export(image_run, tmp_path / "enc.onnx", to="onnx", encoder_only=True, img_size=64, window_size=8)
    encoder = create_encoder("swinv2", img_size=64, window_size=8, checkpoint=image_run).eval()
    images = torch.randn(3, 3, 64, 64)
    (features,) = run_onnx(tmp_path / "enc.onnx", images)
    assert features.shape == (3, 32)
    assert relative_error(features, encoder(images).detach()) <= 1e-4

    export(image_run, tmp_path / "maps.onnx", to="onnx", features_only=True)
    backbone = create_encoder("swinv2", img_size=32, window_size=4, checkpoint=image_run, features_only=True).eval()
    images = torch.randn(1, 3, 32, 32)
    maps = run_onnx(tmp_path / "maps.onnx", images)
    assert [tuple(m.shape) for m in maps] == [(1, 16, 8, 8), (1, 32, 4, 4)]
    for ours, theirs in zip(maps, backbone(images)):
        assert relative_error(ours, theirs.detach()) <= 1e-4


def test_video_classifier(tmp_path):
    run = saved(VideoClassifier(encoder=VIDEO, num_classes=3, class_names=CLASSES), tmp_path / "video.ckpt")
    meta = export(run, tmp_path / "video.onnx", to="onnx")
    assert meta["num_frames"] == 4 and meta["class_names"] == CLASSES
    model = VideoClassifier.from_checkpoint(run).model.eval()
    clips = torch.randn(3, 3, 4, 32, 32)
    (logits,) = run_onnx(tmp_path / "video.onnx", clips)
    assert logits.shape == (3, 3) and relative_error(logits, model(clips).detach()) <= 1e-4


def test_refusals_are_one_line_and_write_nothing(tmp_path, image_run, capsys):
    encoder = trained_like(create_encoder("swinv2", **{k: v for k, v in IMAGE.items() if k != "arch"}))
    simmim = {"model": {**{f"encoder.{k}": v for k, v in official_layout(encoder).items()},
                        "decoder.0.weight": torch.randn(48, 32, 1, 1), "decoder.0.bias": torch.zeros(48)}}
    torch.save(simmim, tmp_path / "simmim.pth")
    out = tmp_path / "x.onnx"
    cases = [
        ([str(tmp_path / "simmim.pth")], "is a SimMIM pretraining checkpoint: its decoder serves only training; export "
                                         "the encoder with --encoder-only (pooled features) or --features-only"),
        ([str(tmp_path / "simmim.pth"), "--encoder-only"], "does not record its img_size, window_size; pass --img-size "
                                                           "--window-size"),
        ([str(image_run), "--img-size", "36"], "img_size 36x36 must be a multiple of 8"),
    ]
    for args, message in cases:  # the CLI's main in this process (run_cli above runs it as a program)
        with pytest.raises(SystemExit) as stop:
            main([args[0], str(out), "--to", "onnx", *args[1:]])
        lines = capsys.readouterr().err.splitlines()
        assert stop.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
        assert not out.exists()
    export(tmp_path / "simmim.pth", out, to="onnx", encoder_only=True, img_size=32, window_size=4)
    assert out.is_file()


class BatchTwoOnly(nn.Module):
    """Traced at batch 2, its Python branch bakes into the graph: ONNX would compute x * 2 for every batch."""

    def forward(self, x):
        return x * 2 if x.shape[0] == 2 else x


def test_a_graph_that_computes_something_else_is_refused(tmp_path):
    out = tmp_path / "wrong.onnx"
    with pytest.raises(CheckpointError, match=r"computes something else than the model .* no file written"):
        to_onnx(BatchTwoOnly(), torch.randn(2, 3), out, "x", ["y"], {})
    assert list(tmp_path.iterdir()) == []
