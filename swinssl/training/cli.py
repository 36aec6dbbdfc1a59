"""The skeleton every ``python -m swinssl.<task>`` Hydra entry point shares.

Before anything heavy is imported: the command line is checked (recipe, override keys), Hydra composes the
recipe, and every value is checked (:mod:`swinssl.training.recipe_checks`). Only then does the task run, importing
Lightning, timm and PyAV as it needs them, so ``--help``, ``--cfg job`` and every config error answer at
once. A bad input ends the program with one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from omegaconf import DictConfig, OmegaConf

from swinssl.pipes import quiet_broken_pipe
from swinssl.training.recipe_checks import RECIPES, check_arguments, check_config, own_data

log = logging.getLogger(__name__)


def main(task: str, run: Callable[[DictConfig], None]) -> None:
    """Check the command line, compose the ``task`` recipe, check it, and ``run`` it."""
    if task in ("pretrain", "finetune"):
        from swinssl.training.slurm import catch_preemption_signal

        catch_preemption_signal()  # before Hydra, torch and Lightning load: a signal while they do is not lost
    import hydra

    register_resolvers()
    with user_errors():
        check_arguments(sys.argv[1:], task)

    @hydra.main(config_path=f"pkg://{RECIPES}", config_name=task, version_base="1.3")
    def checked_run(cfg: DictConfig) -> None:
        with user_errors():
            if task != "evaluate":
                for note in own_data(cfg, _command_line_keys(), recipe_name()):
                    log.info(note)
            check_config(cfg)
        one_handler_for_lightning()
        run(cfg)

    with quiet_broken_pipe():
        checked_run()


def _command_line_keys() -> set[str]:
    from hydra.core.hydra_config import HydraConfig

    return {line.partition("=")[0].lstrip("+~") for line in HydraConfig.get().overrides.task}


def one_handler_for_lightning() -> None:
    """Lightning gives its ``lightning`` logger a console handler of its own and lets its records reach the root
    logger too, where Hydra's handler prints them again: with a root handler, Lightning's own one goes."""
    import lightning  # noqa: F401 - adds the handler

    if logging.getLogger().handlers:
        for handler in list(logging.getLogger("lightning").handlers):
            logging.getLogger("lightning").removeHandler(handler)


def register_resolvers() -> None:
    """The demo recipes name their data as ``${swinssl_demo_shards:}`` / ``${swinssl_demo_video_shards:}`` /
    ``${swinssl_demo_seg_shards:train}`` (or ``:val``, a set of the segmentation demo): built (once) only when
    a run reads them."""

    def demo_shards() -> str:
        from swinssl.demo_data import demo_set

        return demo_set("image")

    def demo_video_shards() -> str:
        from swinssl.demo_data import demo_set

        return demo_set("video")

    def demo_seg_shards(split: str) -> str:
        from swinssl.demo_data import demo_set

        return f"{demo_set('segmentation')}:{split}"

    OmegaConf.register_new_resolver("swinssl_demo_shards", demo_shards, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("swinssl_demo_seg_shards", demo_seg_shards, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("swinssl_demo_video_shards", demo_video_shards, use_cache=True, replace=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad paths, sizes and checkpoints end the program with one ``error:`` line (exit code 2), not a traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def recipe_name() -> str:
    """The recipe Hydra composed (``recipe=...``, or the root config's default)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices["recipe"]


def plain(cfg: DictConfig, *keys: str) -> dict[str, Any]:
    """The recipe's ``keys`` (groups or single values) as plain values, interpolations resolved: what the tasks'
    and datamodules' ``from_config`` read."""
    return {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
            for key in keys}


def encoder_spec(cfg: DictConfig):
    """The recipe's ``model`` group as the :class:`~swinssl.models.registry.EncoderSpec` the tasks take."""
    from swinssl.models.registry import EncoderSpec

    return EncoderSpec.from_config(OmegaConf.to_container(cfg.model, resolve=True))
