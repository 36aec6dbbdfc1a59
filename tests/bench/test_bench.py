"""``python -m swinssl.bench transfer``: the quick run end to end, and the transfer paths it measures."""

import re

import pytest
import torch
import torch.nn.functional as F

from conftest import quick_bench

pytest.importorskip("skimage")


def test_transfer_quick_prints_the_table_and_writes_per_seed_json(tmp_path):
    printed, record = quick_bench("transfer", tmp_path)
    from swinssl.bench.transfer import VARIANTS

    lines = printed.splitlines()
    header = lines.index("| variant | 32 px / W8 (train) | 64 px / W16 |")
    rows = lines[header + 2 : header + 2 + len(VARIANTS)]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == [label for _, label in VARIANTS]
    for row in rows:
        cells = [float(x) for x in re.findall(r"(\d\.\d{3}) ± \d\.\d{3}", row)]
        assert len(cells) == 2 and all(0.0 <= c <= 1.0 for c in cells)
    assert "command: python -m swinssl.bench transfer --quick --json" in printed

    assert [c["img_size"] for c in record["columns"]] == [32, 64]
    assert [c["window"] for c in record["columns"]] == [8, 16]
    assert list(record["variants"]) == [key for key, _ in VARIANTS]
    for variant in record["variants"].values():
        assert len(variant["per_seed"]) == 1 and len(variant["per_seed"][0]) == 2
        assert all(0.0 <= acc <= 1.0 for acc in variant["per_seed"][0] + variant["mean"])


def _tiny():
    from swinssl.bench.transfer import TransferConfig

    return TransferConfig(embed_dim=8, depths=(1, 2), num_heads=(1, 2), scales=[1.0, 2.0])


def test_v1_tables_reach_the_larger_window_by_plain_bicubic_interpolation():
    """The product's transfer must match the official rule: (L, nH) -> (1, nH, 2W-1, 2W-1) -> bicubic."""
    from swinssl.bench.transfer import build, transfer

    cfg = _tiny()
    torch.manual_seed(0)
    small = build("swin", cfg, 1.0)
    with torch.no_grad():
        for name, param in small.named_parameters():
            if name.endswith("relative_position_bias_table"):
                param.normal_()
    state = small.state_dict()
    big = transfer("swin", "v1_bicubic", cfg, state, small, 2.0, seed=0)
    tables = [n for n in state if n.endswith("relative_position_bias_table")]
    assert tables
    for name in tables:
        table = state[name]
        side, heads = round(table.shape[0] ** 0.5), table.shape[1]
        target = 2 * 2 * ((side + 1) // 2) - 1  # the window doubles
        grid = table.permute(1, 0).reshape(1, heads, side, side)
        reference = F.interpolate(grid, size=(target, target), mode="bicubic").reshape(heads, -1).permute(1, 0)
        torch.testing.assert_close(big.state_dict()[name], reference)


def test_v2_transfer_keeps_the_trained_windows_and_is_exact_at_the_training_size():
    from swinssl.bench.transfer import build, transfer

    cfg = _tiny()
    torch.manual_seed(0)
    small = build("swinv2", cfg, 1.0).eval()
    with torch.no_grad():  # make every block (res-post-norm starts at zero) and the bias matter
        for param in small.parameters():
            param.add_(0.3 * torch.randn_like(param))
    state = small.state_dict()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        same = transfer("swinv2", "v2_logcpb", cfg, state, small, 1.0, seed=0)
        torch.testing.assert_close(same(images), small(images))
        reinit = transfer("swinv2", "v2_cpb_reinit", cfg, state, small, 1.0, seed=0)
        assert not torch.allclose(reinit(images), small(images))
    trained = small.pretrained_window_sizes()
    assert transfer("swinv2", "v2_logcpb", cfg, state, small, 2.0, seed=0).pretrained_window_sizes() == trained
    new_window = transfer("swinv2", "v2_logcpb_new_window", cfg, state, small, 2.0, seed=0)
    assert new_window.pretrained_window_sizes() == [2 * w for w in trained]
