"""Run directories, resuming and the Lightning Trainer, shared by the training entry points.

A run lives in ``runs/<recipe>/<run id>/`` (or ``out_dir=``): ``config.yaml`` (the composed, resolved
recipe), TensorBoard events, ``checkpoints/last.ckpt`` and periodic checkpoints. The run id is the
same for every rank and survives a requeue: the SLURM job id under SLURM, torchrun's rendezvous id under
``torchrun --standalone`` (or ``--rdzv-id``), otherwise a time stamp fixed once by the launching process and
handed to the ranks it starts through ``SWINSSL_RUN_ID``.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, ThroughputMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.environments import ClusterEnvironment
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import FSDPStrategy, Strategy, StrategyRegistry
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from swinssl import slurm
from swinssl.models import describe_encoder
from swinssl.tasks.base import samples_in
from swinssl.tasks.callbacks import SkippedSamples, StopOnPreemption, ThreadTuning
from swinssl.tasks.nonfinite import NonFiniteGuard, NonFiniteLossError
from swinssl.tasks.optim import plan_steps

log = logging.getLogger(__name__)
RUN_ID_ENV = "SWINSSL_RUN_ID"
# Expected on every run and not actionable: no val shards (an empty val loader), and no FLOP count for MFU.
warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")  # inside Lightning
warnings.filterwarnings("ignore", message=r"When using the `ThroughputMonitor`, you need to define a `flops_per_batch`")


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


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The most recently written checkpoint of the run that can be resumed from; an unreadable one (a write
    cut short by a crash on a filesystem without atomic renames, a damaged copy) is skipped with a warning."""
    for path in checkpoints_newest_first(run_dir):
        problem = resume_problem(path)
        if problem is None:
            return path
        log.warning("skipping %s: %s", path, problem)
    return None


def resume_problem(path: Path) -> str | None:
    """Why a run cannot resume from ``path`` (unreadable, not a training checkpoint, NaN/inf weights), or None."""
    from swinssl.weights.io import CheckpointError, non_finite_tensors, read_checkpoint

    try:
        saved = read_checkpoint(path, mmap=True)
    except CheckpointError as error:
        return str(error)
    if "state_dict" not in saved or "loops" not in saved:
        return (f"{path} is not a Lightning training checkpoint (no training state); start from its weights with "
                f"checkpoint={path} instead")
    bad = non_finite_tensors(saved["state_dict"])
    if bad:
        return f"{path} holds NaN or inf values in {len(bad)} tensors (e.g. {bad[0]})"
    return None


PARTIAL_SUFFIX = ".partial"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (full disk, quota, permissions); the previous one is unchanged."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written beside their target and renamed into place: one atomic step on every filesystem.

    Lightning's own write goes through a temporary file in ``$TMPDIR``. When that is another filesystem than
    the run's (the usual cluster layout: local ``/tmp``, shared ``out_dir``), its final move is a copy, so a
    kill or a preemption in the middle leaves a truncated checkpoint, and the temporary file stays behind.
    Here a write that fails (a full disk, a kill) leaves the previous checkpoint as it was; the partial
    file is removed, or, when the process was killed, at the next start of the run (:func:`remove_partial_writes`).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own way
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
        data = io.BytesIO()  # serialized first, so that a failed write says why (torch's writer does not)
        torch.save(checkpoint, data)
        try:
            with open(partial, "wb") as file:
                file.write(data.getbuffer())
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        except BaseException as error:
            partial.unlink(missing_ok=True)
            if isinstance(error, OSError):
                raise CheckpointWriteError(f"cannot write the checkpoint {path} ({error.strerror or error}); the "
                                           "checkpoints already written are unchanged") from error
            raise


def remove_partial_writes(run_dir: Path) -> None:
    """Remove what checkpoint writes of killed processes left (no process of this run is writing yet)."""
    for partial in (run_dir / "checkpoints").glob(f".*{PARTIAL_SUFFIX}"):
        partial.unlink(missing_ok=True)
        log.info("removed %s, a checkpoint write that a killed process left unfinished", partial)


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
    checkpoint = newest_checkpoint(run_dir)
    if checkpoint is None:
        log.info("resume=auto: no checkpoint in %s yet, starting fresh", run_dir)
    return Run(run_dir, checkpoint)


def select_precision(precision: Any) -> Any:
    """``null`` means bf16 mixed precision on a GPU and full fp32 on the CPU."""
    if precision is not None:
        return precision
    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


@rank_zero_only
def save_config(cfg: DictConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def resolve_strategy(name: str | Strategy) -> str | Strategy:
    """``trainer.strategy`` checked before anything starts: a known name, and its package installed.

    ``fsdp`` shards each transformer block (timm's Swin blocks, our Video Swin block) as one unit; the
    other names go to Lightning as they are.
    """
    if not isinstance(name, str):
        return name
    known = ["auto", *StrategyRegistry.available_strategies()]
    if name not in known:
        raise ValueError(f"unknown trainer.strategy {name!r}; choose one of: {', '.join(known)}")
    if name.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        raise ImportError(f"trainer.strategy={name} needs DeepSpeed, which is not installed: pip install deepspeed "
                          "(or use trainer.strategy=ddp)")
    if name == "fsdp":
        from timm.models.swin_transformer import SwinTransformerBlock
        from timm.models.swin_transformer_v2 import SwinTransformerV2Block

        from swinssl.models.video_swin import VideoSwinBlock

        return FSDPStrategy(auto_wrap_policy={SwinTransformerV2Block, SwinTransformerBlock, VideoSwinBlock})
    return name


class RunProgressBar(RichProgressBar):
    """Lightning's progress bar, counting the epochs and batches that really run when ``trainer.max_steps``
    ends the run before ``max_epochs`` (Lightning's own bar counts to ``max_epochs`` and whole epochs)."""

    @property
    def total_train_batches(self) -> int | float:
        total = self.trainer.num_training_batches
        if self.trainer.max_steps is None or self.trainer.max_steps < 0 or math.isinf(total):
            return total
        remaining = (self.trainer.max_steps - self.trainer.global_step) * self.trainer.accumulate_grad_batches
        return min(total, remaining)

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if math.isinf(trainer.num_training_batches):
            return super()._get_train_description(current_epoch)
        plan = plan_steps(trainer.num_training_batches, trainer.accumulate_grad_batches, trainer.max_epochs,
                          trainer.max_steps)
        description = f"Epoch {current_epoch}/{plan.epochs - 1}"
        return f"{description:{len(self.validation_description)}}"


def build_trainer(trainer_cfg: DictConfig, run_dir: Path, checkpointing: DictConfig,
                  callbacks: list[Callback], environment: ClusterEnvironment | None = None) -> Trainer:
    """Lightning Trainer writing into ``run_dir``; every ``trainer.*`` key passes through as is."""
    kwargs = OmegaConf.to_container(trainer_cfg, resolve=True)
    kwargs["precision"] = select_precision(kwargs.get("precision"))
    kwargs["strategy"] = resolve_strategy(kwargs.get("strategy", "auto"))
    kwargs["plugins"] = [*kwargs.get("plugins", []), AtomicCheckpointIO(),
                         *([environment] if environment is not None else [])]
    checkpoint_dir = run_dir / "checkpoints"
    periodic = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="epoch{epoch:04d}-step{step:08d}",
        auto_insert_metric_name=False,
        every_n_epochs=checkpointing.every_n_epochs,
        save_top_k=-1,
    )
    last = ModelCheckpoint(
        dirpath=checkpoint_dir, every_n_train_steps=checkpointing.last_every_n_steps, save_top_k=0, save_last=True
    )
    # samples (images or clips)/s over a sliding window as long as the logging interval
    throughput = ThroughputMonitor(batch_size_fn=samples_in, window_size=max(2, kwargs.get("log_every_n_steps") or 50))
    logger = TensorBoardLogger(save_dir=str(run_dir), name="", version="", default_hp_metric=False)
    progress = [RunProgressBar()] if kwargs.get("enable_progress_bar", True) else []
    return Trainer(
        default_root_dir=str(run_dir),
        logger=logger,
        callbacks=[periodic, last, throughput, *progress, *callbacks],
        **kwargs,
    )


def thread_candidates(threads: int | None, num_workers: int, processes: int) -> list[int]:
    """Torch thread counts for one training process, safest first: ``[threads]`` when given; else the cores this
    process may use (its CPU affinity, shared by the node's ``processes``) less one per loader worker, and,
    when that differs, all of its cores (:class:`swinssl.tasks.callbacks.ThreadTuning` keeps the faster).

    Loader workers decode with one thread each (torch's default in workers; OpenCV is set so in the decode
    stage). Threads that compete with the workers, or with other jobs, for the cores can make a step many
    times slower; threads beside idle workers make it faster. Which holds depends on the data and the
    machine, so it is measured (``python -m swinssl.bench threads``).
    """
    if threads is not None:
        return [threads]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = max(1, cores // max(1, processes))
    return sorted({max(1, share - num_workers), share})


def train(cfg: DictConfig, run: Run, model: LightningModule, datamodule: LightningDataModule,
          callbacks: list[Callback] = ()) -> None:
    """Fit in the run directory, resuming when the run has a checkpoint; save a final last.ckpt.

    A preemption signal saves and stops (under SLURM it also requeues the job; :mod:`swinssl.slurm`). Too many
    NaN/inf steps in a row end the program with an ``error:`` line and leave the last good checkpoint in place.
    """
    log.info("run directory: %s%s", run.dir, f" (resuming {run.resume_from})" if run.resume_from else "")
    log.info("model: %s %s", cfg.model.arch, describe_encoder(model.encoder))
    save_config(cfg, run.dir)
    remove_partial_writes(run.dir)
    last = run.dir / "checkpoints" / "last.ckpt"
    preemption = StopOnPreemption(last, requeue=slurm.is_slurm_task() and cfg.cluster.requeue)
    tuning = ThreadTuning()
    callbacks = [NonFiniteGuard(cfg.max_nonfinite_steps), SkippedSamples(), preemption, tuning, *callbacks]
    environment = slurm.environment() if slurm.is_slurm_task() else None
    trainer = build_trainer(cfg.trainer, run.dir, cfg.checkpointing, callbacks=callbacks, environment=environment)
    candidates = thread_candidates(cfg.threads, cfg.data.num_workers, trainer.num_devices)
    tuning.candidates = candidates
    torch.set_num_threads(candidates[0])
    log.info("%s torch thread(s) per training process, %d loader worker(s) per process",
             " or ".join(map(str, candidates)) + (" (the faster, measured)" if len(candidates) > 1 else ""),
             cfg.data.num_workers)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=run.resume_from)
    except (NonFiniteLossError, CheckpointWriteError) as error:
        kept = newest_checkpoint(run.dir)
        print(f"error: {error}. Last good checkpoint: {kept or 'none saved yet'}"
              + (" (resume=auto continues from it)" if kept else ""), file=sys.stderr)
        raise SystemExit(2) from None
    if preemption.stopped:
        return
    try:
        trainer.save_checkpoint(last, weights_only=False)  # resumable
    except CheckpointWriteError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("done: %s", run.dir)


def run_training(cfg: DictConfig, task: str, build: Callable[[DictConfig, bool], tuple[LightningModule, Any]],
                 callbacks: list[Callback] = ()) -> None:
    """What ``pretrain`` and ``finetune`` do with a checked recipe: under ``cluster=slurm`` on a login node,
    submit the job; otherwise seed, pick the run directory, ``build(cfg, resuming)`` the model and data (bad
    data, sizes or checkpoints fail here, before the run directory exists), and :func:`train`."""
    from hydra.core.hydra_config import HydraConfig
    from lightning.pytorch import seed_everything

    from swinssl.cli import recipe_name, user_errors

    recipe = recipe_name()
    with user_errors():
        if slurm.submitted_to_slurm(cfg, task, recipe, list(HydraConfig.get().overrides.task)):
            return
        seed_everything(cfg.seed, workers=True)
        run = prepare_run(recipe, cfg.out_dir, cfg.resume)
        model, datamodule = build(cfg, run.resume_from is not None)
    train(cfg, run, model, datamodule, callbacks=callbacks)
