"""Checkpoints by name without network: URLs served by a local HTTP server (plain http on 127.0.0.1, the code path
https takes too: huggingface_hub's client), hub names read from a cache written here in the hub's layout."""

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import swinssl
from swinssl.weights import CheckpointError, load_checkpoint
from conftest import hub_cache, official_layout, relative_error, run_cli, trained_like

TINY = dict(img_size=32, window_size=4, patch_size=4, embed_dim=8, depths=(1, 1), num_heads=(1, 2), num_classes=3)


@pytest.fixture(scope="module")
def tiny():
    return trained_like(swinssl.create_encoder("swinv2", **TINY))


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local web server over ``tmp_path/www``; the torch hub cache in ``tmp_path/torch``."""
    root = tmp_path / "www"
    root.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_url_downloads_once_records_sha256_and_serves_offline(tiny, server, tmp_path, monkeypatch):
    root, base = server
    torch.save({"model": official_layout(tiny)}, root / "swinv2_tiny_release.pth")
    url = f"{base}/swinv2_tiny_release.pth"
    model = swinssl.create_encoder("swinv2", checkpoint=url, **{**TINY, "img_size": 64, "window_size": 8}).eval()
    assert model.load_report.source == url and model.load_report.format == "official"
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "swinv2_tiny_release.pth"
    digest = hashlib.sha256(cached.read_bytes()).hexdigest()
    assert digest == hashlib.sha256((root / "swinv2_tiny_release.pth").read_bytes()).hexdigest()
    assert cached.with_name("swinv2_tiny_release.pth.sha256").read_text().split()[0] == digest
    assert load_checkpoint(url).sha256 == digest

    (root / "swinv2_tiny_release.pth").unlink()  # the server no longer has it; offline too: the cache serves
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    again = swinssl.create_encoder("swinv2", checkpoint=url, **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again(x), tiny(x))

    task = swinssl.ImageClassifier(checkpoint=url, arch="swinv2", num_classes=3, img_size=32, window_size=4)
    assert task.hparams["checkpoint"] == url and task.hparams["checkpoint_sha256"] == digest

    cached.write_bytes(cached.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(CheckpointError, match=r"^http://.*swinv2_tiny_release.pth: the cached .* is damaged"):
        load_checkpoint(url)


def test_url_offline_miss_404_web_page_and_not_a_checkpoint(server, monkeypatch):
    root, base = server
    (root / "page.pth").write_text("<!DOCTYPE html><html><body>Sign in to download</body></html>")
    (root / "notes.pth").write_bytes(b"\x00\x01 plain bytes, not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"answered HTTP 404, not a checkpoint$"):
        load_checkpoint(f"{base}/missing.pth")
    with pytest.raises(CheckpointError, match=r"sent a web page, not a checkpoint file"):
        load_checkpoint(f"{base}/page.pth")
    with pytest.raises(CheckpointError, match=r"notes.pth: cannot read the checkpoint"):
        load_checkpoint(f"{base}/notes.pth")
    with pytest.raises(CheckpointError, match=r"^http://127.0.0.1:1/x.pth: download failed \(.*refused\); run again"):
        load_checkpoint("http://127.0.0.1:1/x.pth")  # nothing listens on port 1
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match=r"missing2.pth is not in the torch hub cache .*checkpoints and downloads "
                                              r"are off .*curl -L -o "):
        load_checkpoint(f"{base}/missing2.pth")


def timm_repo_files(model, tmp_path: Path) -> dict[str, bytes]:
    weights = tmp_path / "w.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(weights))
    config = {"architecture": "swinv2_tiny_window4_32", "num_classes": 3, "pretrained_cfg": {"input_size": [3, 32, 32]}}
    return {"model.safetensors": weights.read_bytes(), "config.json": json.dumps(config).encode()}


def test_hub_name_from_the_cache_offline(tiny, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    commit = hub_cache(cache, "org/tiny-swinv2", timm_repo_files(tiny, tmp_path), refs=("main", "v1"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    x = torch.randn(2, 3, 32, 32)
    for name in ("hf-hub:org/tiny-swinv2", "hf-hub:org/tiny-swinv2@v1", f"hf-hub:org/tiny-swinv2@{commit}"):
        model = swinssl.create_encoder("swinv2", checkpoint=name, **TINY).eval()
        assert model.load_report.source == name and model.load_report.format == "timm"
        torch.testing.assert_close(model(x), tiny(x))
    weights = next((cache / "models--org--tiny-swinv2" / "blobs").glob("?" * 64))
    loaded = load_checkpoint("hf-hub:org/tiny-swinv2")
    assert loaded.sha256 == weights.name
    assert loaded.pretrained_window_sizes == [4, 4]  # from timm's model name: window 4 at 32 px (grids 8, 4)
    assert loaded.hparams == {"img_size": 32, "window_size": 4}

    with pytest.raises(CheckpointError, match=r"^hf-hub:org/other is not in the HF cache .*hub and the hub cannot be "
                                              r"reached \(offline\); fill the cache .*: hf download org/other "):
        load_checkpoint("hf-hub:org/other")
    with pytest.raises(CheckpointError, match=r"hf download org/tiny-swinv2 --revision v2 "):
        load_checkpoint("hf-hub:org/tiny-swinv2@v2")
    with pytest.raises(CheckpointError, match=r"a hub name is hf-hub:ORG/NAME"):
        load_checkpoint("hf-hub:tiny-swinv2")

    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    with pytest.raises(CheckpointError, match=r"the cached model.safetensors is damaged .*delete .* and load again"):
        load_checkpoint("hf-hub:org/tiny-swinv2")


def test_cli_offline_hub_miss_is_one_line(tmp_path):
    done = run_cli("swinssl.export", "hf-hub:org/absent", str(tmp_path / "out.pth"),
                   env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert done.returncode != 0 and not (tmp_path / "out.pth").exists()
    assert done.stderr.strip().splitlines() == [
        f"error: hf-hub:org/absent is not in the HF cache {tmp_path / 'hf' / 'hub'} and the hub cannot be reached "
        "(offline); fill the cache where there is network: hf download org/absent model.safetensors config.json"]


def test_timm_hub_config_gives_the_windows_timm_built_with():
    """timm's ``*to*`` models (``swinv2_base_window12to16_192to256``) normalize position coordinates by the windows of
    their pretraining: read from the name in config.json, the load computes timm's function. A tiny model named in
    timm's pattern: window 4 at 32 px moved to window 8 at 64 px."""
    from timm.models.swin_transformer_v2 import SwinTransformerV2

    from swinssl.weights import parse_checkpoint
    from swinssl.weights.io import HF_CONFIG

    reference = trained_like(SwinTransformerV2(img_size=64, window_size=8, embed_dim=8, depths=(1, 1), num_heads=(1, 2),
                                               num_classes=3, pretrained_window_sizes=(4, 4)))
    config = {"architecture": "swinv2_tiny_window4to8_32to64", "num_classes": 3}
    parsed = parse_checkpoint({**reference.state_dict(), HF_CONFIG: config})
    assert parsed.pretrained_window_sizes == [4, 4] and parsed.hparams == {"img_size": 64, "window_size": 8}
    model = swinssl.create_encoder("swinv2", img_size=64, window_size=8, num_classes=3, checkpoint=parsed)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert relative_error(model.eval()(x), reference(x)) < 1e-5


def test_evaluate_writes_the_result_of_a_named_checkpoint_in_the_working_folder():
    from omegaconf import OmegaConf

    from swinssl.evaluate import result_path

    cfg = OmegaConf.create({"out": None, "overwrite": False})
    assert str(result_path(cfg, "hf-hub:timm/swinv2_tiny_window8_256.ms_in1k", "val", 256)) == \
        "hf-hub_timm_swinv2_tiny_window8_256_ms_in1k.eval-val-256px.json"
    assert str(result_path(cfg, "https://host/v2.0.0/swinv2_tiny_patch4_window8_256.pth", "val", 256)) == \
        "host_v2_0_0_swinv2_tiny_patch4_window8_256_pth.eval-val-256px.json"
