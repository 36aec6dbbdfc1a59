"""The README's recipe table is generated from the composed recipes and never drifts from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from swinssl import recipes_table
from swinssl.training.recipe_checks import available_recipes

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def table() -> str:
    return recipes_table.markdown_table()


def test_readme_block_is_the_generated_table(table):
    assert recipes_table.readme_block(README.read_text()) == table, (
        "README.md's recipe table is stale: run python -m swinssl.recipes_table --readme README.md")


def test_every_recipe_has_one_row_with_a_source(table):
    rows = table.splitlines()[2:]
    assert [row.split(" | ")[0].strip("| `") for row in rows] == available_recipes()
    assert all(row.split(" | ")[-1].strip(" |") for row in rows)


def test_rows_show_composed_values_including_inherited_ones(table):
    rows = {row.split(" | ")[0].strip("| `"): row.strip("| ").split(" | ") for row in table.splitlines()[2:]}
    # its own values: the official SwinV2-B SimMIM config
    assert rows["simmim_v2_b"][1:6] == ["pretrain", "`swinv2_base`", "192 / 12", "800 (10)", "1e-4"]
    # only the model changes; image size, window, epochs and rate come from ft_v2_b_192to256
    assert rows["ft_v2_t_192to256"][1:] == [
        "finetune", "`swinv2_tiny`", "256 / 16", "30 (5)", "2e-5",
        "`swinv2_base_patch4_window12to16_192to256_22kto1k_ft.yaml` via `ft_v2_b_192to256`"]
    assert rows["video_v2_b_ssv2"][3:6] == ["32x224 / 16x7x7", "60 (2.5)", "3e-4"]
    assert rows["demo"][2] == "`swinv2` C=32, depths 1,1,2,1, heads 1,2,4,8"


def test_a_recipe_without_a_source_is_an_error_that_names_it(monkeypatch):
    monkeypatch.setattr(recipes_table, "header_comment", lambda name: "A recipe that says where nothing came from.")
    monkeypatch.setattr(recipes_table, "parent_recipes", lambda name: [])
    with pytest.raises(ValueError, match="'simmim_v2_b' does not name its source"):
        recipes_table.recipe_source("simmim_v2_b")


@pytest.mark.parametrize("value, text", [(1.25e-3, "1.25e-3"), (1e-4, "1e-4"), (2e-5, "2e-5"), (0.04, "4e-2")])
def test_rates_are_written_compactly(value, text):
    assert recipes_table._rate(value) == text


def test_readme_rewrite_replaces_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{recipes_table.BEGIN}\nold\n{recipes_table.END}\nrest\n")
    recipes_table.write_readme(readme, "| new |")
    assert readme.read_text() == f"intro\n{recipes_table.BEGIN}\n| new |\n{recipes_table.END}\nrest\n"
