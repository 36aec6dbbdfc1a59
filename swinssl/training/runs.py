"""Runs: their directories and ids, what they resume from, and the training loop around ``Trainer.fit``.

A run lives in ``runs/<recipe>/<run id>/`` (or ``out_dir=``): ``config.yaml`` (the composed, resolved
recipe), TensorBoard events, ``checkpoints/last.ckpt`` and periodic checkpoints. The run id is the
same for every rank and survives a requeue: the SLURM job id under SLURM, torchrun's rendezvous id under
``torchrun --standalone`` (or ``--rdzv-id``), otherwise a time stamp fixed once by the launching process and
handed to the ranks it starts through ``SWINSSL_RUN_ID``.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from swinssl.models import describe_encoder
from swinssl.training import slurm
from swinssl.training.cli import recipe_name, user_errors
from swinssl.training.nonfinite import NonFiniteGuard, NonFiniteLossError
from swinssl.training.preemption import StopOnPreemption
from swinssl.training.random_states import RandomStates
from swinssl.training.skipped_samples import SkippedSamples
from swinssl.training.threads import ThreadTuning, thread_candidates
from swinssl.training.trainer import (CheckpointWriteError, build_trainer, optimizer_tensors, remove_partial_writes,
                                     resolve_strategy)
from swinssl.training.validation import ValidationSchedule

log = logging.getLogger(__name__)
RUN_ID_ENV = "SWINSSL_RUN_ID"
FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no space, over quota, over a file-size limit


def run_id() -> str:
    """SLURM job (array task) id, else torchrun's rendezvous id, else the id the launching process fixed,
    else a new time stamp."""
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    if "SLURM_JOB_ID" in os.environ:
        return os.environ["SLURM_JOB_ID"]
    if os.environ.get("TORCHELASTIC_RUN_ID", "none") != "none":  # torchrun --standalone or --rdzv-id: shared by ranks
        return os.environ["TORCHELASTIC_RUN_ID"]
    os.environ.setdefault(RUN_ID_ENV, time.strftime("%Y%m%d-%H%M%S"))
    return os.environ[RUN_ID_ENV]


def checkpoints_newest_first(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("*.ckpt"), key=lambda path: path.stat().st_mtime, reverse=True)


def newest_checkpoint(run_dir: Path, move_aside: bool = False) -> Path | None:
    """The most recently written checkpoint of the run that can be resumed from; an unreadable one (a write
    cut short by a crash on a filesystem without atomic renames, a damaged copy) is skipped with a warning, and
    with ``move_aside`` renamed to ``<name>.unreadable``."""
    for path in checkpoints_newest_first(run_dir):
        problem = resume_problem(path)
        if problem is None:
            return path
        log.warning("skipping %s: %s", path, problem)
        if move_aside:
            aside = path.with_name(path.name + UNREADABLE_SUFFIX)
            for copy in range(1, 1000):
                if not aside.exists():
                    break
                aside = path.with_name(f"{path.name}{UNREADABLE_SUFFIX}.{copy}")
            try:
                path.rename(aside)
                log.warning("moved %s aside to %s", path, aside.name)
            except FileNotFoundError:  # another rank moved it
                pass
    return None


def resume_problem(path: Path) -> str | None:
    """Why a run cannot resume from ``path`` (unreadable, not a training checkpoint, NaN/inf weights), or None."""
    from swinssl.weights.checkpoint import CheckpointError
    from swinssl.weights.io import PickledCheckpointError, non_finite_tensors, read_checkpoint

    try:
        saved = read_checkpoint(path, mmap=True)
    except PickledCheckpointError as error:  # trust_checkpoint does not reach a resume: say what does
        return (f"{path} holds {error.what}, which a weights-only load refuses, and a run resumes only from files that "
                f"load weights-only; if you trust the file, start a new run from its weights with checkpoint={path} "
                "trust_checkpoint=true")
    except CheckpointError as error:
        return str(error)
    if "state_dict" not in saved or "loops" not in saved:
        return (f"{path} is not a Lightning training checkpoint (no training state); start from its weights with "
                f"checkpoint={path} instead")
    bad = non_finite_tensors(saved["state_dict"])
    if bad:
        return f"{path} holds NaN or inf values in {len(bad)} tensors (e.g. {bad[0]})"
    bad = non_finite_tensors(optimizer_tensors(saved))
    if bad:
        return (f"{path} holds NaN or inf values in its optimizer state ({len(bad)} tensors, e.g. {bad[0]}), which "
                f"would turn the weights NaN at the first step; start from its weights with checkpoint={path} instead")
    return None


def last_good_checkpoint(run_dir: Path, diverged_at: int | None) -> Path | None:
    """The newest resumable checkpoint whose weights then gave a step with a finite loss and gradients: one written
    before step ``diverged_at - 1`` (the weights at step ``diverged_at - 1`` gave the first bad step). Without a
    divergence, the newest resumable checkpoint."""
    from swinssl.weights.io import read_checkpoint

    for path in checkpoints_newest_first(run_dir):
        if resume_problem(path) is None and (
                diverged_at is None or read_checkpoint(path, mmap=True)["global_step"] < diverged_at - 1):
            return path
    return None


def check_same_optimizer(optim: dict[str, Any], path: Path) -> None:
    """A resumed run continues the AdamW moments and the learning-rate schedule its checkpoint saved, so other
    ``optim.*`` values cannot take effect; they are refused rather than printed and ignored. (Applying them would
    mix moments and a schedule position reached under the old rates with new rates: that is a new run, which
    ``checkpoint=`` starts from the same weights.)"""
    from swinssl.weights.io import read_checkpoint

    saved = (read_checkpoint(path, mmap=True).get("hyper_parameters") or {}).get("optim") or {}

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    changed = [f"optim.{key}={optim[key]} (saved: {saved[key]})" for key in sorted(optim.keys() & saved.keys())
               if plain(optim[key]) != plain(saved[key])]
    if changed:
        raise ValueError(f"cannot resume {path} with other optimizer settings: {', '.join(changed)}; a resumed run "
                         "continues the optimizer state and learning-rate schedule it saved. Drop the change to resume, "
                         f"or start a new run from its weights with checkpoint={path}")


@dataclass
class Run:
    dir: Path
    resume_from: Path | None


def prepare_run(recipe: str, out_dir: str | None, resume: str | None, runs_root: str = "runs") -> Run:
    """Pick the run directory and the checkpoint to resume from.

    ``resume=auto`` continues the newest checkpoint of this run; when the run id is a fresh local time
    stamp (no ``out_dir``, no SLURM, no inherited id), "this run" is the latest run of the recipe that
    has a checkpoint, so a plain rerun with ``resume=auto`` picks up where the last one stopped.
    """
    fresh_local_id = out_dir is None and RUN_ID_ENV not in os.environ and "SLURM_JOB_ID" not in os.environ
    run_dir = Path(out_dir) if out_dir else Path(runs_root) / recipe / run_id()
    if resume is None:
        return Run(run_dir, None)
    if resume != "auto":
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"resume checkpoint {path} does not exist; pass resume=auto or an existing .ckpt")
        if (problem := resume_problem(path)) is not None:
            raise ValueError(f"cannot resume: {problem}")
        return Run(run_dir, path)
    if fresh_local_id:
        earlier = [d for d in (Path(runs_root) / recipe).glob("*") if checkpoints_newest_first(d)]
        if earlier:
            run_dir = max(earlier, key=lambda d: checkpoints_newest_first(d)[0].stat().st_mtime)
            os.environ[RUN_ID_ENV] = run_dir.name
    return Run(run_dir, resumable_checkpoint(run_dir))


UNREADABLE_SUFFIX = ".unreadable"


def resumable_checkpoint(run_dir: Path) -> Path | None:
    """``resume=auto``'s checkpoint: the newest of the run that can be resumed from. One that cannot (a write cut
    short, a damaged copy, NaN values) is moved aside to ``<name>.unreadable``, kept for a look, never overwritten.
    When the run had checkpoints and none can be resumed from, starting over is the user's decision: an error says
    so, rather than a fresh start that overwrites them."""
    checkpoint = newest_checkpoint(run_dir, move_aside=True)
    if checkpoint is not None:
        return checkpoint
    aside = sorted((run_dir / "checkpoints").glob(f"*{UNREADABLE_SUFFIX}*"))
    if aside:
        raise ValueError(f"resume=auto: no checkpoint of {run_dir} can be resumed from; moved aside: "
                         f"{', '.join(path.name for path in aside)}. Resume from another file with resume=<.ckpt>, "
                         "or start the run over without resume=auto (resume=null)")
    log.info("resume=auto: no checkpoint in %s yet, starting fresh", run_dir)
    return None


@rank_zero_only
def save_config(cfg: DictConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def train(cfg: DictConfig, run: Run, model: LightningModule, datamodule: LightningDataModule,
          callbacks: list[Callback] = ()) -> None:
    """Fit in the run directory, resuming when the run has a checkpoint; save a final last.ckpt.

    A preemption signal saves and stops (under SLURM it also requeues the job; :mod:`swinssl.training.slurm`). Too many
    NaN/inf steps in a row end the program with an ``error:`` line and leave the last good checkpoint in place.
    """
    log.info("run directory: %s%s", run.dir, f" (resuming {run.resume_from})" if run.resume_from else "")
    log.info("model: %s %s", cfg.model.arch, describe_encoder(model.encoder))
    save_config(cfg, run.dir)
    remove_partial_writes(run.dir)
    last = run.dir / "checkpoints" / "last.ckpt"
    preemption = StopOnPreemption(last, requeue=slurm.is_slurm_task() and cfg.cluster.requeue)
    tuning = ThreadTuning()
    guard = NonFiniteGuard(cfg.max_nonfinite_steps)
    callbacks = [guard, SkippedSamples(), preemption, tuning, ValidationSchedule(), RandomStates(), *callbacks]
    environment = slurm.environment() if slurm.is_slurm_task() else None
    trainer = build_trainer(cfg.trainer, run.dir, cfg.checkpointing, callbacks=callbacks, environment=environment)
    candidates = thread_candidates(cfg.threads, cfg.data.num_workers, trainer.num_devices)
    tuning.candidates = candidates
    torch.set_num_threads(candidates[0])
    log.info("%s torch thread(s) per training process, %d loader worker(s) per process",
             " or ".join(map(str, candidates)) + (" (the faster, measured)" if len(candidates) > 1 else ""),
             cfg.data.num_workers)
    threading.excepthook = quiet_full_disk(threading.excepthook)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=run.resume_from)
    except (CheckpointWriteError, OSError) as error:
        if not isinstance(error, CheckpointWriteError) and error.errno not in FULL_DISK:
            raise
        if not isinstance(error, CheckpointWriteError):  # e.g. TensorBoard's events, written in a thread of their own
            error = f"cannot write in the run directory {run.dir} ({error.strerror})"
        kept = newest_checkpoint(run.dir)
        print(f"error: {error}. Last good checkpoint: {kept or 'none saved yet'}"
              + (" (resume=auto continues from it)" if kept else ""), file=sys.stderr)
        if isinstance(error, str):  # the event writer would raise its error again at exit, as a traceback
            sys.stdout.flush()
            os._exit(2)
        raise SystemExit(2) from None
    except NonFiniteLossError as error:
        kept = last_good_checkpoint(run.dir, guard.diverged_at)
        rule = (f"from before step {guard.diverged_at - 1}, whose weights gave the first NaN/inf step "
                f"{guard.diverged_at}")
        where = (f"{kept} (the newest {rule}; after fixing the cause continue with resume={kept}, or with other "
                 f"optim.* rates start a new run from its weights with checkpoint={kept})") if kept else (
            f"none (no checkpoint is {rule})")
        print(f"error: {error}. Last good checkpoint: {where}", file=sys.stderr)
        raise SystemExit(2) from None
    if preemption.stopped:
        return
    try:
        trainer.save_checkpoint(last, weights_only=False)  # resumable
    except CheckpointWriteError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("done: %s", run.dir)


def quiet_full_disk(hook: Callable) -> Callable:
    """A thread excepthook that leaves a full disk to the training thread, where a writer thread's error (TensorBoard's)
    is raised again and reported in one line."""

    def excepthook(args) -> None:
        if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in FULL_DISK):
            hook(args)

    return excepthook


def run_training(cfg: DictConfig, task: str, build: Callable[[DictConfig, Path | None], tuple[LightningModule, Any]],
                 callbacks: list[Callback] = (),
                 data_callbacks: Callable[[DictConfig], list[Callback]] | None = None) -> None:
    """What ``pretrain`` and ``finetune`` do with a checked recipe: under ``cluster=slurm`` on a login node,
    submit the job; otherwise seed, pick the run directory, ``build(cfg, resume_from)`` the model and data and
    ``data_callbacks(cfg)`` the callbacks that read data of their own (bad data, sizes or checkpoints fail here,
    in one line, before the run directory exists), and :func:`train`."""
    from hydra.core.hydra_config import HydraConfig
    from lightning.pytorch import seed_everything

    recipe = recipe_name()
    with user_errors():
        if slurm.submitted_to_slurm(cfg, task, recipe, list(HydraConfig.get().overrides.task)):
            return
        resolve_strategy(cfg.trainer.strategy)
        seed_everything(cfg.seed, workers=True)
        run = prepare_run(recipe, cfg.out_dir, cfg.resume)
        if run.resume_from is not None:
            check_same_optimizer(OmegaConf.to_container(cfg.optim, resolve=True), run.resume_from)
        model, datamodule = build(cfg, run.resume_from)
        callbacks = [*callbacks, *(data_callbacks(cfg) if data_callbacks else [])]
    train(cfg, run, model, datamodule, callbacks=callbacks)
