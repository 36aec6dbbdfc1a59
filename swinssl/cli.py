"""What the Hydra entry points share: recipe lookup, one-line errors for bad input, and the training run."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch import Callback, LightningDataModule, LightningModule
from omegaconf import DictConfig, OmegaConf

from swinssl import slurm
from swinssl.demo_data import demo_shards
from swinssl.demo_videos import demo_video_shards
from swinssl.runs import Run, build_trainer, newest_checkpoint, prepare_run, resolve_strategy, save_config
from swinssl.models import describe_encoder
from swinssl.tasks.callbacks import SkippedSamples
from swinssl.tasks.nonfinite import NonFiniteGuard, NonFiniteLossError

log = logging.getLogger("swinssl")
RECIPES = "swinssl.recipes"
# The demo recipes name their data as ${swinssl_demo_shards:} / ${swinssl_demo_video_shards:}: built (once)
# only when a run reads it.
OmegaConf.register_new_resolver("swinssl_demo_shards", lambda: demo_shards(), use_cache=True, replace=True)
OmegaConf.register_new_resolver("swinssl_demo_video_shards", lambda: demo_video_shards(), use_cache=True, replace=True)


def recipe_task(name: str) -> str:
    """The entry point a recipe belongs to (its ``task:`` key)."""
    return OmegaConf.load(files(RECIPES) / "recipe" / f"{name}.yaml").get("task", "pretrain")


def available_recipes(task: str | None = None) -> list[str]:
    names = sorted(entry.name[: -len(".yaml")] for entry in (files(RECIPES) / "recipe").iterdir()
                   if entry.name.endswith(".yaml"))
    return [name for name in names if task is None or recipe_task(name) == task]


def check_recipe_argument(argv: list[str], task: str) -> None:
    """Fail in one line on an unknown ``recipe=``, or one made for another entry point, before Hydra runs."""
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") != "recipe" or not value:
            continue
        if value not in available_recipes():
            raise SystemExit(f"error: unknown recipe {value!r}; choose one of: {', '.join(available_recipes(task))}")
        if (other := recipe_task(value)) != task:
            raise SystemExit(f"error: {value!r} is a {other} recipe; run it with python -m swinssl.{other} recipe={value}")


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad paths, sizes and checkpoints end the program with one ``error:`` line instead of a traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
        raise SystemExit(f"error: {error}") from None


RUNTIME_KEYS = ("attn_kernel", "attn_chunk_windows", "grad_checkpointing", "compile")


def runtime_arguments(cfg: DictConfig) -> dict:
    """The ``model.*`` keys that change how the model runs, not what it computes (``recipes/run.yaml``)."""
    return {key: cfg.model[key] for key in RUNTIME_KEYS}


def submitted_to_slurm(cfg: DictConfig, task: str, recipe: str) -> bool:
    """``cluster=slurm`` on a login node: check the request and submit (or print) the job instead of training."""
    if cfg.cluster.name != "slurm" or slurm.is_slurm_task():
        return False
    with user_errors():
        resolve_strategy(cfg.trainer.strategy)
        slurm.submit(cfg, task, recipe, list(HydraConfig.get().overrides.task))
    return True


def start_run(cfg: DictConfig, recipe: str) -> Run:
    """The run directory, ``runs/<recipe>/<run id>`` or ``out_dir``, and the checkpoint ``resume`` points at."""
    with user_errors():
        return prepare_run(recipe, cfg.out_dir, cfg.resume)


def train(cfg: DictConfig, run: Run, model: LightningModule, datamodule: LightningDataModule,
          callbacks: list[Callback] = ()) -> None:
    """Fit in the run directory, resuming when the run has a checkpoint; save a final last.ckpt.

    As an srun task, SIGUSR1 saves, requeues the job and returns (:mod:`swinssl.slurm`). Too many NaN/inf
    steps in a row end the program with an ``error:`` line and leave the last good checkpoint in place.
    """
    log.info("run directory: %s%s", run.dir, f" (resuming {run.resume_from})" if run.resume_from else "")
    log.info("model: %s %s", cfg.model.arch, describe_encoder(model.encoder))
    save_config(cfg, run.dir)
    last = run.dir / "checkpoints" / "last.ckpt"
    callbacks = [NonFiniteGuard(cfg.max_nonfinite_steps), SkippedSamples(), *callbacks]
    environment = requeue = None
    if slurm.is_slurm_task():
        environment = slurm.environment()
        if cfg.cluster.requeue:
            requeue = slurm.RequeueOnSignal(last)
            callbacks.append(requeue)
    with user_errors():
        trainer = build_trainer(cfg.trainer, run.dir, cfg.checkpointing, callbacks=callbacks, environment=environment)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=run.resume_from)
    except NonFiniteLossError as error:
        kept = newest_checkpoint(run.dir)
        raise SystemExit(f"error: {error}. Last good checkpoint: {kept or 'none saved yet'}"
                         + (" (resume=auto continues from it)" if kept else "")) from None
    if requeue is not None and requeue.requeued:
        log.info("requeued: the job resumes from %s", last)
        return
    trainer.save_checkpoint(last, weights_only=False)  # resumable
    log.info("done: %s", run.dir)
