"""The notebooks run top to bottom in a fresh kernel, show real figures and print sane numbers.

They are stored without outputs, so each test executes one with nbclient in a temporary folder, with
``SWINSSL_NOTEBOOK_OUT`` pointing at the folder its figures are saved to, the demo data built once
for all four in a temporary cache, and ``SWINSSL_NOTEBOOK_QUICK=1``: every cell runs, each training for a
few steps (``make figures`` runs the full ones).
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import FIGURES, check_figure

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
CELL_TIMEOUT = 900  # seconds; a hung cell fails the test instead of blocking the suite
NUMBER = r"([-+]?\d*\.?\d+(?:e[-+]?\d+)?)"


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("swinssl-cache")


def execute(name: str, workdir: Path, monkeypatch) -> str:
    """Run the notebook; return everything it printed or displayed as text."""
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    monkeypatch.setenv("SWINSSL_NOTEBOOK_OUT", str(workdir / "out"))  # the kernel inherits the environment
    monkeypatch.setenv("SWINSSL_NOTEBOOK_QUICK", "1")
    NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir)}}).execute()
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts.extend(output.get("data", {}).get(kind, "") for kind in ("text/plain", "text/markdown"))
    return "\n".join(texts)


def numbers(pattern: str, text: str) -> tuple[float, ...]:
    match = re.search(pattern.replace("{n}", NUMBER), text)
    assert match, f"the notebook did not print {pattern!r}"
    return tuple(float(group) for group in match.groups())


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_and_shows_its_figures(name, tmp_path, demo_cache, monkeypatch):
    monkeypatch.setenv("SWINSSL_CACHE", str(demo_cache))
    printed = execute(name, tmp_path, monkeypatch)
    for figure in FIGURES[name]:
        check_figure(tmp_path / "out" / name / f"{figure}.png")
    CHECKS[name](printed)


def check_quickstart(printed: str) -> None:
    before, after = numbers(r"reconstruction loss on the fixed batch: {n} before, {n} after", printed)
    assert after < before
    (difference,) = numbers(r"reloaded model: loss [\d.]+, difference {n}", printed)
    assert difference < 1e-5
    assert "position bias: coordinates normalized by windows [8, 8, 8, 4]" in printed


def check_resolution_transfer(printed: str) -> None:
    for window in (16, 24):
        moved, kept = numbers(rf"window {window}: the moved model's own bias vs the 192 px MLP: max difference {{n}}; "
                              r"at the trained offsets vs window 12: {n}", printed)
        assert moved < 1e-5 and kept < 1e-5
    table = next(line for line in printed.splitlines() if line.startswith("| Swin V2, log-CPB, coords / training"))
    accuracies = [float(cell.split("±")[0]) for cell in table.strip("|").split("|")[1:]]
    assert len(accuracies) == 3 and all(0 <= value <= 1 for value in accuracies)


def check_video_inflation(printed: str) -> None:
    (error,) = numbers(r"static-video max abs error: {n}", printed)
    assert error < 1e-4
    (top1,) = numbers(r"top-1 on the 16 training clips .* after \d+ steps: {n}", printed)
    assert 0 <= top1 <= 1


def check_official_weights(printed: str) -> None:
    assert "Microsoft official Swin classification checkpoint" in printed
    assert "Microsoft official SimMIM checkpoint" in printed
    (difference,) = numbers(r"timm vs swinssl logits on \d+ photos: max abs difference {n}", printed)
    assert difference < 1e-4


def check_segmentation(printed: str) -> None:
    assert "position bias trained at windows [8, 8, 8, 4]" in printed and "192 px / window 12" in printed
    for mode in ("whole", "slide"):
        miou, macc, aacc = numbers(rf"{mode}: mIoU {{n}}, mAcc {{n}}, aAcc {{n}} on 16 scenes", printed)
        assert 0 <= miou <= 1 and 0 <= macc <= 1 and 0 < aacc <= 1


CHECKS = {"01_quickstart": check_quickstart, "02_resolution_transfer": check_resolution_transfer,
          "03_video_inflation": check_video_inflation, "04_from_official_weights": check_official_weights,
          "05_segmentation": check_segmentation}


def test_every_notebook_is_tested_and_stored_without_outputs():
    stored = sorted(path.stem for path in NOTEBOOKS.glob("*.ipynb"))
    assert stored == sorted(FIGURES)
    for name in stored:
        notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(notebook)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert code and all(not cell.outputs and cell.execution_count is None for cell in code), name
