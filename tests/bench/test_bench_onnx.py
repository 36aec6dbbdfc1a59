"""``python -m swinssl.bench onnx``: the quick run end to end (a tiny model exported, checked, and timed both ways)."""

import re

from conftest import quick_bench


def test_onnx_quick_prints_both_rows_and_writes_json(tmp_path):
    printed, record = quick_bench("onnx", tmp_path)
    rows = re.findall(r"^\| (eager PyTorch \(fused attention\)|onnxruntime \(CPU\)) \| ([\d.]+) \| ([\d.]+) \|$",
                      printed, flags=re.M)
    assert [row[0] for row in rows] == ["eager PyTorch (fused attention)", "onnxruntime (CPU)"]
    rates = record["images_per_s"]
    assert rates["eager"] > 0 and rates["onnxruntime"] > 0
    assert abs(record["onnx_vs_eager"] - rates["onnxruntime"] / rates["eager"]) < 0.01 * record["onnx_vs_eager"] + 1e-3
    assert abs(float(rows[1][2]) - record["onnx_vs_eager"]) <= 0.006
    assert record["relative_error"] <= 1e-4 and record["batch"] == 2
    assert "command: python -m swinssl.bench onnx --quick --json" in printed
