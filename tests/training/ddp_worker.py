"""One rank of the two-process DDP pretraining test, started by ``torch.distributed.run`` (see test_ddp.py).

Trains a tiny SimMIM with Lightning's DDP over gloo on CPU and writes ``rank<r>.json``: the shard of every
image it trained on (each shard's images have their own grey level), its number of batches, and a hash of
its final weights.
"""

import hashlib
import json
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.strategies import DDPStrategy

from swinssl import SimMIM
from swinssl.datamodules import IMAGENET_MEAN, IMAGENET_STD, ImageShardDataModule


class Record(Callback):
    def __init__(self) -> None:
        self.levels: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        red = batch["image"][:, 0].flatten(1).mean(1)  # uniform images: every pixel has the shard's level
        self.levels.append([round(float((value * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255)) for value in red])


def weights_hash(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(shards: str, out: Path) -> None:
    torch.manual_seed(0)  # the same initial weights on both ranks, as seed_everything gives the CLI
    model = SimMIM(arch="swinv2", img_size=32, window_size=2, patch_size=4, norm_target_window=None,
                   encoder=dict(embed_dim=16, depths=[1, 1], num_heads=[1, 2]),
                   optim=dict(base_lr=1e-2, warmup_epochs=0, schedule="cosine"))
    initial = weights_hash(model)
    data = ImageShardDataModule(shards, batch_size=4, num_workers=1, epoch_size=32, shuffle_buffer=8, img_size=32,
                                mask_patch_size=8, model_patch_size=4)
    record = Record()
    trainer = Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo"), max_epochs=2,
                      callbacks=[record], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    result = {"rank": trainer.global_rank, "world_size": trainer.world_size, "levels": record.levels,
              "initial": initial, "final": weights_hash(model), "global_step": trainer.global_step}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
