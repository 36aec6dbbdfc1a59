"""``python -m swinssl.bench train`` and ``memory``: the quick runs end to end through the real CLI, and the
pieces whose correctness the numbers rest on (same loss for the contenders, the saved-bytes meter, the
meta-device estimate, the batch search)."""

import importlib.util
import math
import re
import sys
import weakref

import pytest
import torch

from conftest import quick_bench

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


def table_rows(stdout: str, header_start: str) -> list[list[str]]:
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_train_quick_times_every_contender_and_writes_json(tmp_path):
    printed, record = quick_bench("train", tmp_path, "--kernels", "plain", "fused", "chunked", "triton")
    expected = ["swinssl plain", "swinssl fused", "swinssl chunked", "timm eager"] + (["HF"] if HAS_TRANSFORMERS else [])
    rows = table_rows(printed, "| contender | images/s (median) |")
    assert [row[0] for row in rows] == expected
    for row in rows:
        assert float(row[1]) > 0 and float(row[-1]) > 0  # images/s and saved MiB per sample
        assert len(row[2].split()) == 2  # one rate per round
    if HAS_TRANSFORMERS:  # the ratio to each peer is a column; the README holds what it should be
        assert re.search(r"^\| contender \| images/s \(median\) \| per round \| x HF \| x timm eager \|", printed, re.M)
        assert all(row["vs HF"] > 0 for row in record["rows"][:3])
    else:
        assert "HF skipped: transformers is not importable" in printed
    assert re.search(r"^device: .*torch", printed, re.M)
    assert "command: python -m swinssl.bench train --quick --kernels plain fused chunked triton --json" in printed
    assert "swinssl triton skipped: the Triton kernel runs on CUDA; on cpu" in printed  # no row for a fallback
    assert "wall time:" in printed

    assert [row["contender"] for row in record["rows"]] == expected
    for row in record["rows"]:
        rates = row["images_per_s_per_round"]
        assert len(rates) == 2 and all(rate > 0 for rate in rates)
        assert row["images_per_s"] == pytest.approx(sum(rates) / 2, rel=1e-3)  # median of two
        assert row["saved_mib_per_sample"] > 0
        timm_rates = record["rows"][3]["images_per_s_per_round"]
        paired = sorted(ours / theirs for ours, theirs in zip(rates, timm_rates))
        assert row["vs timm eager"] == pytest.approx(sum(paired) / 2, abs=0.01)  # median of per-round ratios
    assert record["config"]["batch_size"] == 2 and record["config"]["precision"] == "fp32"


def test_train_quick_video_row_counts_frames_and_has_no_peer_ratio(tmp_path):
    printed, record = quick_bench("train", tmp_path, "--video-frames", "4", "--video-batch", "2")
    video = next(row for row in record["rows"] if row["contender"] == "swinssl video fused")
    assert video["images_per_s"] == pytest.approx(4 * video["clips_per_s"], rel=1e-3)  # frames/s = clips/s x frames
    assert "vs timm eager" not in video and video["saved_mib_per_sample"] > 0
    assert "swinssl video: 2 clips of 4 frames a step" in printed
    rows = table_rows(printed, "| contender | images/s (median) |")
    row = next(row for row in rows if row[0] == "swinssl video fused")
    assert "—" in row


def test_memory_quick_estimates_every_workload_and_kernel(tmp_path):
    printed, record = quick_bench("memory", tmp_path)
    rows = table_rows(printed, "| workload | kernel |")
    workloads = ["SimMIM swinv2 64/w4", "fine-tune (10 classes) swinv2 128/w8"]
    kernels = ("plain", "fused", "chunked", "triton")  # triton: its shape-only version on the meta device
    assert [(row[0], row[1]) for row in rows] == [(w, k) for w in workloads for k in kernels]
    assert "every batch above is an estimate from saved activations" in printed
    assert sum("(estimate from saved activations)" in line for line in printed.splitlines()) == len(kernels)

    for row in record["rows"]:
        assert row["state_bytes"] >= 16 * row["params"] > 0
        # bf16 activations take fewer bytes, so the bf16 bound admits at least the fp32 bound's batch
        assert 0 < row["saved_bytes_per_sample_bf16"] < row["saved_bytes_per_sample_fp32"]
        assert 0 < row["estimate_fp32"] <= row["estimate_bf16"]
        for precision in ("fp32", "bf16"):  # the largest batch in 80 GiB, and not one more
            used = row["state_bytes"] + row[f"saved_bytes_fixed_{precision}"]
            per_sample = row[f"saved_bytes_per_sample_{precision}"]
            assert used + row[f"estimate_{precision}"] * per_sample <= 80 * 2**30 < used + (row[f"estimate_{precision}"] + 1) * per_sample


def _tiny_config(**overrides):
    from swinssl.bench.train import QUICK, TrainBenchConfig

    return TrainBenchConfig(**{**QUICK, "drop_path_rate": 0.0, "batch_size": 3, **overrides})


@pytest.mark.parametrize("kernel", ["plain", "fused", "chunked"])
def test_timm_eager_and_swinssl_compute_the_same_loss_and_gradients(kernel):
    """Same weights (timm's names are ours), same batch: same reconstruction, loss and gradients. So the
    timm-eager row differs from ours only in how the encoder computes, not in decoder or loss."""
    from swinssl.bench.train import random_batch, swinssl_model, timm_eager_model

    cfg = _tiny_config()
    torch.manual_seed(0)
    ours = swinssl_model(cfg, kernel)
    timm = timm_eager_model(cfg)
    with torch.no_grad():  # non-trivial position bias and mask token, so that both paths matter
        for param in ours.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    assert timm.load_state_dict(ours.state_dict(), strict=True)
    images, mask = random_batch(cfg.batch_size, cfg.img_size)
    assert 0 < mask.float().mean() < 1
    results = []
    for model in (ours, timm):
        loss, reconstruction = model(images, mask)
        loss.backward()
        grads = {name: param.grad for name, param in model.named_parameters()}
        results.append((loss, reconstruction, grads))
    (loss, reconstruction, grads), (ref_loss, ref_reconstruction, ref_grads) = results
    torch.testing.assert_close(reconstruction, ref_reconstruction, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-7)
    assert grads.keys() == ref_grads.keys() and grads["encoder.mask_token"].abs().sum() > 0
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-3, atol=1e-5, msg=name)
    # the mask reaches the loss: unmasking everything changes it
    assert not torch.isclose(timm(images, torch.zeros_like(mask))[0], ref_loss)


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers (the bench extra) is not installed")
def test_hf_step_runs_and_its_loss_is_our_masked_l1():
    from swinssl.bench.train import Contender, hf_loss, hf_model, random_batch
    from swinssl.models import masked_l1_loss

    cfg = _tiny_config()
    torch.manual_seed(0)
    model = hf_model(cfg).train()
    images, mask = random_batch(cfg.batch_size, cfg.img_size)
    out = model(pixel_values=images, bool_masked_pos=mask.flatten(1).bool())
    assert out.reconstruction.shape == images.shape
    torch.testing.assert_close(out.loss, masked_l1_loss(out.reconstruction, images, mask, 4))

    contender = Contender("HF", model, hf_loss(model))
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    loss = contender.step(images, mask, "fp32")
    assert math.isfinite(loss.item()) and loss > 0
    changed = [name for name, param in model.named_parameters() if not torch.equal(param, before[name])]
    assert len(changed) > len(before) // 2  # AdamW moved the weights
    assert all(param.grad is None for param in model.parameters())  # zero_grad(set_to_none)


def test_saved_tensor_meter_counts_each_saved_storage_once_and_skips_excluded():
    from swinssl.bench.report import SavedTensorMeter

    weight = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(4, 8, requires_grad=True)
    with SavedTensorMeter(exclude=[weight]) as meter:
        y = x @ weight  # saves x (128 bytes) and the weight (excluded)
        meter.tag = "exp"
        z = y.exp()  # saves z (128 bytes)
        (z[:2] * z[2:]).sum()  # saves two views of z: nothing new
    assert meter.total == 256 and dict(meter.by_tag) == {None: 128, "exp": 128}
    with SavedTensorMeter() as meter:
        (x @ weight).sum()
    assert meter.total == 128 + 256  # x and now the weight

    with SavedTensorMeter():
        output = x.exp()  # saves its own output
    alive = weakref.ref(output)
    del output
    assert alive() is None  # the meter does not tie the output to its graph in a cycle


@pytest.mark.parametrize("kernel", ["plain", "chunked"])
def test_meta_device_saved_bytes_match_a_real_cpu_forward(kernel):
    """The memory estimate sizes models on the meta device; the bytes it counts are a real forward's."""
    from swinssl.bench.memory import Workload, saved_bytes

    workload = Workload("swinv2", 64, 4, sizes=dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2)))
    counts = []
    for device in ("meta", "cpu"):
        with torch.device(device):
            model = workload.build(kernel).train()
        counts.append(saved_bytes(workload, model, 2, torch.float32, device))
    assert counts[0] == counts[1] > 0


def test_largest_batch_finds_the_threshold_from_any_start():
    from swinssl.bench.memory import largest_batch

    limit = 37
    for threshold in range(0, 45):
        for start in (0, 1, 2, 5, 17, 36, 37, 60):
            tried = []

            def fits(batch):
                tried.append(batch)
                assert 1 <= batch <= limit
                return batch <= threshold

            assert largest_batch(fits, start, limit) == min(threshold, limit), (threshold, start)
            assert len(tried) <= 2 * math.ceil(math.log2(limit)) + 2


def test_without_transformers_the_hf_row_is_skipped_with_a_note(monkeypatch):
    from swinssl.bench.train import build_contenders

    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` raise ImportError
    contenders, notes = build_contenders(_tiny_config(kernels=["plain"]), torch.device("cpu"))
    assert [c.name for c in contenders] == ["swinssl plain", "timm eager"]
    assert len(notes) == 1 and notes[0].startswith("HF skipped: transformers is not importable")
