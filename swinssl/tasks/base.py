"""What every swinssl training task shares: the batch-scaled schedule, clipping, skip counts, checkpoint metadata."""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn

from swinssl.models.registry import EncoderSpec
from swinssl.tasks.optim import OptimConfig, build_optimizer, build_scheduler, plan_steps
from swinssl.weights import Checkpoint, encoder_from_spec, load_checkpoint, swinssl_metadata

log = logging.getLogger("swinssl.tasks")


def samples_in(batch: dict[str, Any]) -> int:
    """Samples in one of our batches: dicts with an ``image`` or a ``video`` tensor, or none (a batch that
    only reports skipped samples at the end of a pass)."""
    for key in ("image", "video"):
        if key in batch:
            return len(batch[key])
    return 0


def per_device_batch_size(trainer: Trainer) -> int:
    """The batch one device sees per step, from the datamodule (our pipelines batch in the workers)."""
    batch_size = getattr(trainer.datamodule, "batch_size", None)
    if batch_size is None:
        batch_size = getattr(trainer.train_dataloader, "batch_size", None)
    if not batch_size:
        raise ValueError("cannot tell the per-device batch size: train with a datamodule that has `batch_size`")
    return int(batch_size)


def batches_per_epoch(trainer: Trainer) -> int:
    """Loader batches per epoch on one rank. Our datamodules know it without building the loader, which
    then is built after a resumed run has restored its step (so its stream continues rather than replays)."""
    batches = getattr(trainer.datamodule, "batches_per_rank", None)
    if batches is None:
        if trainer.train_dataloader is None:
            trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
        if math.isinf(batches):
            raise ValueError("the train loader has no length; give it an epoch length (data.epoch_size)")
        return batches
    limit = trainer.limit_train_batches
    return min(batches, limit) if isinstance(limit, int) else max(1, int(batches * limit))


class SwinTask(LightningModule):
    """Base of the tasks. Subclasses set ``default_encoder``, ``optim_config`` and ``model``, and implement
    ``encoder`` (and ``optimized_module`` where it is not ``model``).

    Every task takes its encoder as an :class:`~swinssl.models.registry.EncoderSpec`, a mapping of its
    settings (``encoder=``), or its settings as keywords (``arch=``, ``img_size=``, ``attn_kernel=``, ...), laid
    over the task's ``default_encoder``. The runtime settings change how the model runs, not what it
    computes: ``attn_kernel`` (``fused`` SDPA, ``plain`` reference, ``chunked`` for bounded memory;
    :mod:`swinssl.models.attention`), ``grad_checkpointing`` (recompute each block in backward) and ``compile``
    (``torch.compile`` of the optimized module when training starts; parameter names are unchanged).
    """

    default_encoder: EncoderSpec = EncoderSpec()
    optim_config: OptimConfig
    encoder_spec: EncoderSpec

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path | Checkpoint, trust_checkpoint: bool = False, **overrides: Any) -> SwinTask:
        """This task from any supported checkpoint (a file, or a run folder); explicit ``overrides`` win.

        A swinssl checkpoint brings back its own arguments (a fine-tuned model evaluates as it was
        trained unless, e.g., ``img_size``/``window_size`` say otherwise); other formats give the family
        and sizes read off the weights (:meth:`arguments_from_weights`).
        """
        source = load_checkpoint(checkpoint, trust_checkpoint)
        saved, inferred = dict(source.hparams or {}), cls.arguments_from_weights(source)
        names = EncoderSpec.names()

        def settings(values: Mapping[str, Any]) -> dict[str, Any]:
            return {key: value for key, value in values.items() if key in names}

        # saved["encoder"]: the whole spec (this version), or the size overrides (flat hyper-parameters before it)
        encoder = cls.default_encoder.updated(settings(inferred), saved.get("encoder"), settings(saved),
                                              settings(overrides))
        accepted = {name for name, parameter in inspect.signature(cls.__init__).parameters.items()
                    if parameter.kind is parameter.POSITIONAL_OR_KEYWORD or parameter.kind is parameter.KEYWORD_ONLY
                    } - {"self", "encoder", "checkpoint", "trust_checkpoint"}
        arguments = {key: value for values in (inferred, saved, overrides) for key, value in values.items()
                     if key in accepted and key not in names}
        return cls(encoder=encoder, checkpoint=source, **arguments)

    def setup_encoder_and_arguments(self, encoder: EncoderSpec | Mapping[str, Any] | None, settings: dict[str, Any],
                                    checkpoint: str | Path | Checkpoint | None, trust_checkpoint: bool,
                                    **arguments: Any) -> Checkpoint | None:
        """Resolve the encoder spec, and record it and the task's ``arguments`` as hyper-parameters (plain
        containers; ``checkpoint`` as the path it was read from, never the weights). Returns the checkpoint."""
        self.encoder_spec = self.default_encoder.updated(encoder, settings)
        source = load_checkpoint(checkpoint, trust_checkpoint) if checkpoint is not None else None
        self.save_hyperparameters({"encoder": self.encoder_spec.to_dict(), **arguments,
                                   "checkpoint": source.origin if source is not None else None,
                                   **({"checkpoint_sha256": source.sha256} if source is not None and source.sha256 else {}),
                                   "trust_checkpoint": trust_checkpoint})
        return source

    @classmethod
    def arguments_from_weights(cls, source: Checkpoint) -> dict[str, Any]:
        return {"arch": source.family}

    @property
    def encoder(self) -> nn.Module:
        raise NotImplementedError

    def optimized_module(self) -> nn.Module:
        """The module whose parameter names define the weight-decay and layer-decay groups."""
        return self.model

    def configure_model(self) -> None:
        if self.encoder_spec.compile:
            self.optimized_module().compile()  # in place: state-dict keys stay as they are

    def optimizer_parameters(self) -> nn.Module | list[dict[str, Any]]:
        """What the optimizer is built over: the module (timm groups it) or ready-made parameter groups."""
        return self.optimized_module()

    def optimizer_kwargs(self) -> dict[str, Any]:
        """Extra arguments for timm's optimizer factory: ``layer_decay`` when the task has one (by the module's
        ``group_matcher`` layer ids)."""
        layer_decay = self.hparams.get("layer_decay")
        return {"layer_decay": layer_decay} if layer_decay else {}

    def log_training(self, loss: torch.Tensor) -> None:
        """Loss and peak learning rate (skipped samples: :class:`swinssl.training.skipped_samples.SkippedSamples`)."""
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", max(group["lr"] for group in self.optimizers().param_groups))

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW + per-step schedule, rates per 512 samples scaled by the real global batch."""
        trainer = self.trainer
        accumulation = trainer.accumulate_grad_batches
        global_batch = per_device_batch_size(trainer) * trainer.world_size * accumulation
        plan = plan_steps(batches_per_epoch(trainer), accumulation, trainer.max_epochs, trainer.max_steps)
        config = self.optim_config
        rates = config.scaled(global_batch)
        log.info("lr %.3g = %.3g per %d samples x global batch %d (%s)",
                 rates["lr"], config.base_lr, config.reference_batch, global_batch, plan.describe())
        optimizer = build_optimizer(self.optimizer_parameters(), config, lr=rates["lr"], **self.optimizer_kwargs())
        scheduler = build_scheduler(optimizer, config, global_batch=global_batch,
                                    steps_per_epoch=plan.schedule_steps_per_epoch, total_steps=plan.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip by global norm (the official 5.0) and log the pre-clip norm."""
        max_norm = float(gradient_clip_val) if gradient_clip_val else math.inf
        wrapped = self.trainer.strategy.model
        if hasattr(wrapped, "clip_grad_norm_"):  # FSDP: the norm over every rank's shards
            norm = wrapped.clip_grad_norm_(max_norm)
        else:
            norm = torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm)
        self.log("train/grad_norm", norm)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["swinssl"] = swinssl_metadata(self.encoder)


class FineTuningTask(SwinTask):
    """Base of the tasks that fine-tune an encoder to tell ``num_classes`` classes apart (of images, clips or pixels).

    It checks the classes, records the encoder spec and checkpoint with the task's arguments, sets the optimizer
    settings over the task's ``schedule`` and builds ``model`` with :meth:`build_model` (the encoder with a
    ``num_classes`` head unless a task says otherwise). Each task keeps its own explicit signature, which is what
    a checkpoint records and :meth:`~SwinTask.from_checkpoint` matches, and hands its arguments on whole.
    """

    schedule = "cosine"
    evaluation_views: tuple[str, ...] = ()  # the keys of `evaluation_data` that change how data is read

    def __init__(self, encoder: EncoderSpec | Mapping[str, Any] | None, settings: dict[str, Any],
                 checkpoint: str | Path | Checkpoint | None, trust_checkpoint: bool, *, num_classes: int,
                 class_names: list[str] | None, optim: dict[str, Any] | None, **arguments: Any) -> None:
        if num_classes < 2:
            raise ValueError(f"{type(self).__name__} needs num_classes >= 2, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        super().__init__()
        source = self.setup_encoder_and_arguments(encoder, settings, checkpoint, trust_checkpoint,
                                                  num_classes=num_classes, class_names=class_names, optim=optim,
                                                  **arguments)
        self.optim_config = OptimConfig(**{"schedule": self.schedule, **(optim or {})})
        self.model = self.build_model(source)

    @classmethod
    def recipe_arguments(cls, recipe: Mapping[str, Any], data, checkpoint: str | Path | None) -> dict[str, Any]:
        """What every fine-tuning task takes from a recipe (plain values) and its training ``data``: the classes (the
        shards' unless ``model.num_classes`` says), the starting checkpoint (``checkpoint``, a resumed run's own,
        replaces it) and the optimizer settings."""
        if data.num_classes is None:
            raise ValueError("cannot tell the number of classes: the shards record no class names; set "
                             "model.num_classes, or write the shards with python -m swinssl.make_shards from class "
                             "folders")
        return dict(num_classes=data.num_classes, class_names=data.class_names,
                    checkpoint=checkpoint or recipe["checkpoint"], trust_checkpoint=recipe["trust_checkpoint"],
                    optim=recipe["optim"])

    def build_model(self, source: Checkpoint | None) -> nn.Module:
        return encoder_from_spec(self.encoder_spec, num_classes=self.hparams.num_classes, checkpoint=source)

    @property
    def encoder(self) -> nn.Module:
        return self.model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)
