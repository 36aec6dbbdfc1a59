"""``python -m swinssl.recipes_table``: the markdown table of every recipe, read from the composed Hydra configs.

The README's "All recipes" block is this output (a test keeps them equal; ``--readme README.md`` rewrites
the block). Values come from composing each recipe with its entry point's root config, so inherited
values are what the table shows. The source column follows the recipes' header comments (the comment
lines at the top of ``recipes/recipe/<name>.yaml``), by this convention:

1. a header line ``Source: <text>`` (a recipe with no official config, combining published values): the text;
2. else the header names the official config file it follows (``*.yaml`` or ``*.py``): that file;
3. else the recipe extends another recipe (Hydra ``defaults``) and changes the model: that recipe's
   source, via it;
4. else the header starts with "The built-in": this project's demo.

A recipe that fits none of these is an error that names it.
"""

from __future__ import annotations

import argparse
import re
from importlib.resources import files
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

from swinssl.models.registry import FAMILIES, is_video
from swinssl.training.recipe_checks import RECIPES, available_recipes, recipe_task

BEGIN, END = "<!-- recipes-table:start -->", "<!-- recipes-table:end -->"
CONFIG_FILE = re.compile(r"[\w*.-]+\.(?:yaml|py)\b")
SOURCE_LINE = re.compile(r"\bSource: (.+)$")
COLUMNS = ["recipe", "task", "model", "img / window", "epochs (warmup)", "lr per 512", "source"]


def header_comment(name: str) -> str:
    """The comment lines at the top of a recipe file (before its first key other than ``task``), joined."""
    lines = []
    for line in (files(RECIPES) / "recipe" / f"{name}.yaml").read_text().splitlines():
        if line.startswith("#"):
            if "@package" not in line:
                lines.append(line.lstrip("# ").rstrip())
        elif line.strip() and not line.startswith("task:"):
            break
    return " ".join(lines)


def parent_recipes(name: str) -> list[str]:
    """The recipes a recipe extends (its Hydra ``defaults`` entries in the recipe group)."""
    defaults = OmegaConf.load(files(RECIPES) / "recipe" / f"{name}.yaml").get("defaults", [])
    return [entry for entry in defaults if isinstance(entry, str) and entry in available_recipes()]


def recipe_source(name: str) -> str:
    """The source column for one recipe, by the convention in the module docstring."""
    header = header_comment(name)
    if stated := SOURCE_LINE.search(header):
        return stated[1].strip()
    if named := CONFIG_FILE.findall(header):
        return f"`{named[0]}`"
    if parents := parent_recipes(name):
        inherited = recipe_source(parents[0])
        return inherited if " via " in inherited else f"{inherited} via `{parents[0]}`"
    if header.startswith("The built-in"):
        return "this project (built-in demo)"
    raise ValueError(f"recipe {name!r} does not name its source: its header comment names no config file, it "
                     "extends no other recipe, and it is not a built-in demo")


def composed(name: str) -> DictConfig:
    """The recipe composed with the root config of its entry point, as the command line would run it."""
    with initialize_config_module(config_module=RECIPES, version_base="1.3"):
        return compose(config_name=recipe_task(name), overrides=[f"recipe={name}"])


def _rate(value: float) -> str:
    """1.25e-3 rather than 0.00125; mantissa and exponent without padding."""
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _model(model: DictConfig) -> str:
    encoder = model.get("encoder") or {}
    if encoder.get("embed_dim") is None:
        sizes = " (sizes from the checkpoint)" if model.arch in FAMILIES else ""
        return f"`{model.arch}`{sizes}"
    join = ",".join
    return (f"`{model.arch}` C={encoder.embed_dim}, depths {join(map(str, encoder.depths))}, "
            f"heads {join(map(str, encoder.num_heads))}")


def _geometry(model: DictConfig) -> str:
    if is_video(model.arch):
        return f"{model.num_frames}x{model.img_size} / {'x'.join(map(str, model.window_size))}"
    return f"{model.img_size} / {model.window_size}"


def recipe_row(name: str) -> list[str]:
    cfg = composed(name)
    epochs = f"{cfg.trainer.max_epochs} ({cfg.optim.warmup_epochs:g})"
    if cfg.trainer.max_epochs in (None, -1):  # a run counted in iterations
        epochs = f"{cfg.trainer.max_steps} steps ({cfg.optim.get('warmup_steps') or 0})"
    return [f"`{name}`", cfg.task, _model(cfg.model), _geometry(cfg.model), epochs, _rate(cfg.optim.base_lr),
            recipe_source(name)]


def markdown_table() -> str:
    rows = [COLUMNS, ["---"] * len(COLUMNS), *(recipe_row(name) for name in available_recipes())]
    return "\n".join(f"| {' | '.join(row)} |" for row in rows)


def readme_block(readme: str) -> str:
    """The text between the README's recipes-table markers (without the markers)."""
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return readme[start:end].strip("\n")


def write_readme(path: Path, table: str) -> None:
    text = path.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    path.write_text(f"{text[:start]}\n{table}\n{text[end:]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m swinssl.recipes_table", description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, help="rewrite the table between the recipes-table markers of this file")
    args = parser.parse_args(argv)
    table = markdown_table()
    if args.readme:
        write_readme(args.readme, table)
        print(f"updated {args.readme}")
    else:
        print(table)


if __name__ == "__main__":
    main()
