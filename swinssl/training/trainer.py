"""The Lightning Trainer of a run: strategy, precision, checkpoint writing, progress bar, threads.

Every ``trainer.*`` key of a recipe passes to ``lightning.Trainer`` as it is; what is added here is what a
run needs that Lightning does not do by default: checkpoints written atomically on every filesystem, a
progress bar that counts what really runs, named strategies checked before anything starts, and thread
counts that fit small machines.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary, RichProgressBar, ThroughputMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.environments import ClusterEnvironment
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import FSDPStrategy, Strategy, StrategyRegistry
from lightning.pytorch.trainer.states import RunningStage
from omegaconf import DictConfig, OmegaConf

from swinssl.tasks.base import samples_in
from swinssl.tasks.optim import plan_steps
from swinssl.weights.io import non_finite_tensors

log = logging.getLogger(__name__)
# Expected on every run and not actionable: no val shards (an empty val loader), and no FLOP count for MFU.
warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")  # inside Lightning
warnings.filterwarnings("ignore", message=r"When using the `ThroughputMonitor`, you need to define a `flops_per_batch`")


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
        bad = non_finite_tensors(checkpoint.get("state_dict", {})) or non_finite_tensors(optimizer_tensors(checkpoint))
        if bad:  # never saved, whatever asks for it
            raise CheckpointWriteError(f"not writing the checkpoint {path}: it holds NaN or inf values (e.g. {bad[0]}); "
                                       "the checkpoints already written are unchanged")
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


def optimizer_tensors(saved: dict[str, Any]) -> dict[str, Any]:
    """The optimizer states of a Lightning checkpoint as one flat {name: tensor} mapping."""
    flat = {}
    for index, optimizer in enumerate(saved.get("optimizer_states") or ()):
        for param, state in (optimizer.get("state") or {}).items():
            for key, value in state.items():
                flat[f"optimizer {index} param {param} {key}"] = value
    return flat


def remove_partial_writes(run_dir: Path) -> None:
    """Remove what checkpoint writes of killed processes left (no process of this run is writing yet)."""
    for partial in (run_dir / "checkpoints").glob(f".*{PARTIAL_SUFFIX}"):
        partial.unlink(missing_ok=True)
        log.info("removed %s, a checkpoint write that a killed process left unfinished", partial)


def select_precision(precision: Any) -> Any:
    """``null`` means bf16 mixed precision on a GPU and full fp32 on the CPU."""
    if precision is not None:
        return precision
    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


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


class RunModelSummary(ModelSummary):
    """Lightning's model summary without its FLOP column and total: FLOPs are counted only on a forward of an
    ``example_input_array``, which the tasks do not define (a forward of the whole model at start), so they read 0."""

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes, total_flops,
                  **summarize_kwargs: Any) -> None:
        from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

        columns = [column for column in summary_data if column[0] != "FLOPs"]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes,
                                      total_flops, *columns)
        log.info("\n" + "\n".join(line for line in table.splitlines() if not line.endswith("Total Flops")))


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
    # last.ckpt is the run's one resumable state: replaced, never versioned (a last-v1.ckpt beside a last.ckpt that
    # a preemption wrote would be the newest file, and resume=auto would take it)
    last = ModelCheckpoint(dirpath=checkpoint_dir, every_n_train_steps=checkpointing.last_every_n_steps, save_top_k=0,
                           save_last=True, enable_version_counter=False)
    # samples (images or clips)/s over a sliding window as long as the logging interval
    throughput = ResumedThroughput(batch_size_fn=samples_in, window_size=max(2, kwargs.get("log_every_n_steps") or 50))
    logger = TensorBoardLogger(save_dir=str(run_dir), name="", version="", default_hp_metric=False)
    progress = [RunProgressBar()] if kwargs.get("enable_progress_bar", True) else []
    summary = [RunModelSummary()] if kwargs.pop("enable_model_summary", True) else []  # instead of Lightning's
    return Trainer(
        default_root_dir=str(run_dir),
        logger=logger,
        callbacks=[periodic, last, throughput, *progress, *summary, *callbacks], enable_model_summary=False,
        **kwargs,
    )


class ResumedThroughput(ThroughputMonitor):
    """Lightning's throughput monitor whose ``train/samples`` and ``train/batches`` continue after a resume (they
    restarted at 0); rates and ``train/time`` are this process's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resumed: dict[str, int] = {}

    def _start(self, trainer: Trainer) -> None:
        super()._start(trainer)
        if trainer.state.stage == RunningStage.TRAINING and self.resumed:
            self._samples[RunningStage.TRAINING] = self.resumed.get("samples", 0)
            self._batches[RunningStage.TRAINING] = self.resumed.get("batches", 0)
            self.resumed = {}

    def state_dict(self) -> dict[str, int]:
        return {"samples": self._samples.get(RunningStage.TRAINING, 0),
                "batches": self._batches.get(RunningStage.TRAINING, 0)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.resumed = dict(state_dict)
