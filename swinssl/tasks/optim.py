"""Optimizer and learning-rate schedule shared by the training tasks.

Learning rates are given per ``reference_batch`` (512) samples and scaled by the real global batch
(per-device batch x devices x nodes x accumulation), warmup and minimum too, as every official
SimMIM/Swin script does. The schedule is stepped per optimizer step: linear warmup from ``warmup_lr``
to the peak, then cosine down to ``min_lr``, a multistep decay by ``gamma`` at ``milestones`` (epochs, counted
from the start of training as in the official multistep scheduler), or a poly decay to ``min_lr`` (power ``power``,
over the whole run as mmsegmentation counts it). ``warmup_steps`` gives the warmup in steps instead of epochs.

The schedule spans the steps that really run (:class:`StepPlan`): a recipe describes its run in epochs,
and when ``trainer.max_steps`` ends the run earlier, warmup, milestones and decay are compressed into
those steps, so a short run still warms up, decays and ends at the minimum rate.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from timm.optim import create_optimizer_v2
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

log = logging.getLogger("swinssl.tasks")


@dataclass
class OptimConfig:
    base_lr: float = 1e-4
    warmup_lr: float = 5e-7
    min_lr: float = 5e-6
    reference_batch: int = 512
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_epochs: float = 10
    schedule: Literal["cosine", "multistep", "poly"] = "multistep"
    milestones: list[float] = field(default_factory=lambda: [700])
    gamma: float = 0.1
    power: float = 1.0
    warmup_steps: int | None = None

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "multistep", "poly"):
            raise ValueError(f"unknown schedule {self.schedule!r}; use 'cosine', 'multistep' or 'poly'")
        self.betas = tuple(self.betas)
        self.milestones = list(self.milestones)

    def scaled(self, global_batch: int) -> dict[str, float]:
        """Absolute rates for this global batch."""
        factor = global_batch / self.reference_batch
        return dict(lr=self.base_lr * factor, warmup_lr=self.warmup_lr * factor, min_lr=self.min_lr * factor)


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps a run takes, and how its epochs map onto them.

    ``scheduled_steps`` is the run the recipe describes (``max_epochs`` epochs, or ``max_steps`` when no
    epoch count is set); ``total_steps`` what really runs (``max_steps`` may end it earlier).
    """

    steps_per_epoch: int
    total_steps: int
    scheduled_steps: int

    @property
    def schedule_steps_per_epoch(self) -> float:
        """Steps per recipe epoch on the schedule: the epoch length, compressed when the run is cut short."""
        return self.steps_per_epoch * self.total_steps / self.scheduled_steps

    @property
    def epochs(self) -> int:
        """Epochs started before the run ends (the last one possibly cut short)."""
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def describe(self) -> str:
        text = f"{self.steps_per_epoch} steps/epoch, {self.total_steps} steps in all"
        if self.total_steps < self.scheduled_steps:
            text += (f"; trainer.max_steps ends the run before the recipe's {self.scheduled_steps} steps, so warmup "
                     f"and decay are compressed into {self.total_steps}")
        return text


def plan_steps(batches_per_epoch: int, accumulation: int, max_epochs: int | None, max_steps: int | None) -> StepPlan:
    """The :class:`StepPlan` of a run: ``batches_per_epoch`` loader batches per epoch on one rank, each optimizer
    step taking ``accumulation`` of them; ``max_epochs``/``max_steps`` as Lightning takes them (-1 or None: unset)."""
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / accumulation))
    bounded_by_steps = max_steps is not None and max_steps > 0
    if max_epochs is not None and max_epochs > 0:
        scheduled = steps_per_epoch * max_epochs
    elif bounded_by_steps:
        scheduled = max_steps
    else:
        raise ValueError("the run has no end: set trainer.max_epochs or trainer.max_steps")
    total = min(scheduled, max_steps) if bounded_by_steps else scheduled
    return StepPlan(steps_per_epoch, total, scheduled)


def build_optimizer(model: nn.Module | list[dict[str, Any]], config: OptimConfig, lr: float,
                    **kwargs: Any) -> torch.optim.Optimizer:
    """AdamW over timm's decay / no-decay groups (or ready-made groups); ``kwargs`` reach timm (``layer_decay``).

    Not decayed: every 1-D parameter and bias, plus the names ``model.no_weight_decay()`` lists
    (``cpb_mlp``, ``logit_scale``, ``mask_token`` for our encoders): the official no-decay set.
    """
    if isinstance(model, nn.Module) and any(WRAPPER_PREFIX.search(name) for name, _ in model.named_parameters()):
        model = UnwrappedNames(model)
    return create_optimizer_v2(
        model,
        "adamw",
        lr=lr,
        weight_decay=config.weight_decay,
        betas=config.betas,
        eps=config.eps,
        **kwargs,
    )


# What FSDP auto-wrapping and activation-checkpoint wrappers insert into parameter names.
WRAPPER_PREFIX = re.compile(r"(_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\.")


class UnwrappedNames(nn.Module):
    """A module's parameters under the names they had before wrapping.

    FSDP (Lightning wraps before ``configure_optimizers``) renames ``layers.0.blocks.0.attn.logit_scale``
    to ``layers.0.blocks.0._fsdp_wrapped_module.attn.logit_scale``, which would silently break the
    name-based no-decay list and layer-decay ids.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.wrapped = module

    def named_parameters(self, *args: Any, **kwargs: Any):
        for name, param in self.wrapped.named_parameters(*args, **kwargs):
            yield WRAPPER_PREFIX.sub("", name), param

    def no_weight_decay(self) -> set[str]:
        return {WRAPPER_PREFIX.sub("", name) for name in getattr(self.wrapped, "no_weight_decay", set)()}

    def group_matcher(self, coarse: bool = False):
        return self.wrapped.group_matcher(coarse)


def backbone_and_head_groups(model: nn.Module, weight_decay: float, backbone_lr_scale: float,
                             head_prefix: str = "head.") -> list[dict[str, Any]]:
    """AdamW groups for a backbone that learns at ``backbone_lr_scale`` x the head's rate.

    Every backbone parameter is scaled, position-bias parameters included (mmaction2's grouping; the
    original Video Swin code left its bias tables at the head's rate by a quirk of key matching). Not
    decayed: 1-D parameters, biases and ``model.no_weight_decay()``.
    """
    skip = UnwrappedNames(model).no_weight_decay()
    groups: dict[tuple[bool, bool], dict[str, Any]] = {}
    for name, param in UnwrappedNames(model).named_parameters():
        if not param.requires_grad:
            continue
        head, decay = name.startswith(head_prefix), not (param.ndim <= 1 or name.endswith(".bias") or name in skip)
        group = groups.setdefault((head, decay), {
            "params": [], "weight_decay": weight_decay if decay else 0.0, "lr_scale": 1.0 if head else backbone_lr_scale,
        })
        group["params"].append(param)
    return list(groups.values())


def lr_at(step: int, *, lr: float, warmup_lr: float, min_lr: float, warmup_steps: int, total_steps: int,
          config: OptimConfig, steps_per_epoch: float) -> float:
    """The absolute learning rate after ``step`` optimizer steps (the plain formula the tests pin)."""
    if step < warmup_steps:
        return warmup_lr + (lr - warmup_lr) * step / warmup_steps
    if config.schedule == "multistep":
        passed = sum(step >= round(m * steps_per_epoch) for m in config.milestones)
        return lr * config.gamma**passed
    if config.schedule == "poly":
        return min_lr + (lr - min_lr) * (1.0 - min(step / max(total_steps, 1), 1.0)) ** config.power
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, *, global_batch: int,
                    steps_per_epoch: float, total_steps: int) -> LambdaLR:
    """Per-step LambdaLR over ``total_steps``, with ``steps_per_epoch`` steps per recipe epoch (warmup and
    milestones are in epochs); each group's ``lr_scale`` (timm layer decay) multiplies its rate."""
    rates = config.scaled(global_batch)
    warmup_steps = config.warmup_steps
    if warmup_steps is None:
        warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    if warmup_steps >= total_steps and warmup_steps > 0:
        log.warning("the warmup (%d steps) lasts the whole run of %d steps: the learning rate only warms up and never "
                    "decays; shorten optim.warmup_epochs / optim.warmup_steps or lengthen the run", warmup_steps,
                    total_steps)

    def factor(step: int) -> float:
        return lr_at(step, **rates, warmup_steps=warmup_steps, total_steps=total_steps, config=config,
                     steps_per_epoch=steps_per_epoch) / rates["lr"]

    lambdas = [lambda step, scale=group.get("lr_scale", 1.0): factor(step) * scale for group in optimizer.param_groups]
    return LambdaLR(optimizer, lambdas)
