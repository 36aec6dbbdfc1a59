"""Run directories, resuming and the Lightning Trainer, shared by the training entry points.

A run lives in ``runs/<recipe>/<run id>/`` (or ``out_dir=``): ``config.yaml`` (the composed, resolved
recipe), TensorBoard events, ``checkpoints/last.ckpt`` and periodic checkpoints. The run id is the
same for every rank and survives a requeue: the SLURM job id under SLURM, torchrun's rendezvous id under
``torchrun --standalone`` (or ``--rdzv-id``), otherwise a time stamp fixed once by the launching process and
handed to the ranks it starts through ``SWINSSL_RUN_ID``.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, ThroughputMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.environments import ClusterEnvironment
from lightning.pytorch.strategies import FSDPStrategy, Strategy, StrategyRegistry
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from swinssl.tasks.base import samples_in
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


def newest_checkpoint(run_dir: Path) -> Path | None:
    """``last.ckpt`` if present, else the most recently written checkpoint of the run."""
    folder = run_dir / "checkpoints"
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    found = sorted(folder.glob("*.ckpt"), key=lambda path: path.stat().st_mtime)
    return found[-1] if found else None


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
        return Run(run_dir, path)
    if fresh_local_id:
        earlier = [d for d in (Path(runs_root) / recipe).glob("*") if newest_checkpoint(d)]
        if earlier:
            run_dir = max(earlier, key=lambda d: newest_checkpoint(d).stat().st_mtime)
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
    if environment is not None:
        kwargs["plugins"] = [*kwargs.get("plugins", []), environment]
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
