"""The random states a resumed run continues from, so that it draws as an uninterrupted run."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class RandomStates(Callback):
    """The training process's torch (CPU and CUDA), NumPy and Python random states go into every checkpoint and are
    put back when training starts again (after the sanity check, which may draw), so dropout, drop path and mixing
    continue as in an uninterrupted run. Stored as tensors and numbers: a ``weights_only`` load reads them.
    Every rank resumes rank 0's states (equal when all ranks draw alike, as the same seed and model make them)."""

    def __init__(self) -> None:
        self.loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        name, keys, position, has_gauss, gauss = np.random.get_state()
        return {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
                "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
                "python": random.getstate()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loaded = state_dict

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.loaded is None:
            return
        torch.set_rng_state(self.loaded["torch"])
        if self.loaded["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.loaded["cuda"])
        name, keys, position, has_gauss, gauss = self.loaded["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        version, internal, gauss_next = self.loaded["python"]
        random.setstate((version, tuple(internal), gauss_next))
        self.loaded = None
