"""Watching pretraining learn: a k-NN probe on frozen encoder features of a small labeled set.

Every ``every_n_steps`` optimizer steps the encoder (in eval mode, no gradients) embeds the probe's labeled
samples, pooled over every token and L2-normalized, and a weighted k-NN classifier (DINO's: the ``k`` most
similar bank samples vote with weight ``exp(similarity / temperature)``) labels the queries; the top-1 is
logged as ``probe/top1``. Without a query set each bank sample is labeled by the others (leave-one-out).

Masked-modeling features score low on k-NN and linear probes (the SimMIM and MAE papers report far lower
probe than fine-tune accuracy): the trend over a run says whether the representation improves, not the level.

On a tiny set ``k`` is capped at the smallest class's size (less the sample itself, leave-one-out): with more
neighbours than a class has, the vote counts class sizes, and leaving a sample out makes its own class the smallest,
so a balanced set would score below chance. A result below chance on a balanced set is logged as a warning: the
neighbours belong to other classes more often than at random, which says the set pairs samples across classes
(the demo videos pan every photo both ways, and pooled features see the photo, not the direction) or is too small.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)


def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07, exclude_self: bool = False) -> torch.Tensor:
    """Predicted class of each of ``queries`` (Q, C) by weighted vote of its ``k`` most cosine-similar rows of
    ``bank`` (N, C) (both L2-normalized); ``exclude_self``: queries are the bank, a sample does not vote for itself."""
    similarity = queries @ bank.T
    if exclude_self:
        similarity.fill_diagonal_(-torch.inf)
    k = max(1, min(k, neighbours(bank_labels, exclude_self)))
    top, index = similarity.topk(k, dim=1)
    votes = torch.zeros(queries.shape[0], num_classes, dtype=torch.float64)
    votes.scatter_add_(1, bank_labels[index], (top.double() / temperature).exp())
    return votes.argmax(dim=1)


def neighbours(bank_labels: torch.Tensor, exclude_self: bool) -> int:
    """The most neighbours a vote may take: the smallest class of the bank (less the left-out sample)."""
    counts = torch.bincount(bank_labels)
    return int(counts[counts > 0].min()) - int(exclude_self)


def knn_top1(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, labels: torch.Tensor,
             num_classes: int, k: int = 20, temperature: float = 0.07, exclude_self: bool = False) -> float:
    """Top-1 accuracy of :func:`knn_predict` on ``queries``; a warning when it is below chance on a balanced set."""
    predicted = knn_predict(bank, bank_labels, queries, num_classes, k, temperature, exclude_self)
    top1 = float((predicted == labels).double().mean())
    counts = torch.bincount(labels)
    present = counts[counts > 0]
    if len(present) > 1 and bool((present == present[0]).all()) and top1 < 1 / len(present):
        log.warning("probe/top1 %.3f is below chance (%.3f for %d balanced classes): the nearest samples belong to "
                    "other classes more often than at random. The set may pair samples across classes (the demo "
                    "videos pan every photo both ways, and pooled features see the photo, not the direction) or be too "
                    "small; probe with a set whose classes differ in what the features see", top1, 1 / len(present),
                    len(present))
    return top1


def pooled_features(encoder: torch.nn.Module, batches: Iterable[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalized mean-pooled final features and labels of every labeled sample in ``batches``."""
    device = next(encoder.parameters()).device
    features, labels = [], []
    for batch in batches:
        inputs = batch.get("image", batch.get("video"))
        if inputs is None or not len(inputs):
            continue
        tokens = encoder.forward_features(inputs.to(device))
        features.append(F.normalize(tokens.float().flatten(1, -2).mean(1), dim=-1).cpu())
        labels.append(batch["label"])
    if not features:
        raise ValueError("the probe set yielded no labeled samples")
    return torch.cat(features), torch.cat(labels)


class KNNProbe(Callback):
    """Logs ``probe/top1`` every ``every_n_steps`` optimizer steps (and at the end of training) on rank 0.

    ``bank`` and ``queries`` are datamodules whose ``val_dataloader`` reads a labeled set once (images or
    clips, as the pretraining's inputs); ``queries=None`` probes the bank leave-one-out.
    """

    def __init__(self, bank, queries=None, every_n_steps: int = 500, k: int = 20, temperature: float = 0.07) -> None:
        if bank.num_classes is None:
            raise ValueError("the probe shards record no class names; write them with make_shards from class folders")
        self.bank, self.queries = bank, queries
        self.every_n_steps, self.k, self.temperature = every_n_steps, k, temperature
        self.last_step = -1

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 and step != self.last_step:
            self.probe(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step != self.last_step:
            self.probe(trainer, pl_module)

    @rank_zero_only
    def probe(self, trainer: Trainer, pl_module: LightningModule) -> float:
        self.last_step = trainer.global_step
        start, training = time.perf_counter(), pl_module.training
        encoder = pl_module.encoder
        encoder.eval()
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                bank, bank_labels = pooled_features(encoder, self.bank.val_dataloader())
                if self.queries is None:
                    queries, labels = bank, bank_labels
                else:
                    queries, labels = pooled_features(encoder, self.queries.val_dataloader())
        finally:
            encoder.train(training)
        loo = self.queries is None
        top1 = knn_top1(bank, bank_labels, queries, labels, self.bank.num_classes, self.k, self.temperature, loo)
        k = min(self.k, neighbours(bank_labels, loo))
        log.info("probe at step %d: k-NN top-1 %.3f on %d samples (bank %d, k=%d%s, %.1f s)", trainer.global_step, top1,
                 len(labels), len(bank_labels), k, "" if k == self.k else ": the smallest class", time.perf_counter() - start)
        if trainer.logger is not None:  # straight to the logger: a probe step need not be a logging step
            trainer.logger.log_metrics({"probe/top1": top1}, step=trainer.global_step)
        return top1
