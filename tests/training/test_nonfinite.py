"""NaN/inf steps: the update is skipped (weights and AdamW state untouched) and counted; too many in a row stop
the run with the last good checkpoint kept."""

import copy

import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer

from conftest import TINY, random_image_shards, run_cli
from swinssl import SimMIM
from swinssl.training.nonfinite import NonFiniteGuard, NonFiniteLossError


class PoisonBatches(Callback):
    """Makes the loss (``"loss"``) or a gradient (``"grad"``) non-finite at the given optimizer steps and keeps a
    copy of the weights and optimizer state after every step."""

    def __init__(self, steps: set[int], kind: str) -> None:
        self.steps, self.kind = steps, kind
        self.weights, self.optimizer_states = {}, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step in self.steps and self.kind == "loss":
            batch["image"][0, 0, 0, 0] = float("nan")

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step in self.steps and self.kind == "grad":
            next(p for p in pl_module.parameters() if p.grad is not None).grad[0] = float("inf")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights[trainer.global_step] = copy.deepcopy(pl_module.state_dict())
        self.optimizer_states[trainer.global_step] = copy.deepcopy(trainer.optimizers[0].state_dict()["state"])


def tiny_simmim() -> SimMIM:
    return SimMIM(arch="swinv2", img_size=32, window_size=2, patch_size=4, norm_target_window=None,
                  encoder=dict(embed_dim=16, depths=[1, 1], num_heads=[1, 2]),
                  optim=dict(base_lr=1e-2, warmup_epochs=0, schedule="cosine"))


def batches(count: int):
    generator = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(2, 3, 32, 32, generator=generator),
             "mask": (torch.rand(2, 8, 8, generator=generator) < 0.5).to(torch.uint8)} for _ in range(count)]


class Batches(LightningDataModule):
    batch_size = 2  # what the learning-rate scaling reads

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count

    def train_dataloader(self):
        return torch.utils.data.DataLoader(batches(self.count), batch_size=None)


def fit(callbacks, steps: int = 6, max_in_row: int = 3) -> tuple[SimMIM, NonFiniteGuard]:
    torch.manual_seed(0)
    model, guard = tiny_simmim(), NonFiniteGuard(max_in_row)
    trainer = Trainer(accelerator="cpu", max_steps=steps, callbacks=[guard, *callbacks], logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      gradient_clip_val=5.0)
    trainer.fit(model, datamodule=Batches(steps))
    return model, guard


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_bad_steps_leave_weights_and_adamw_state_untouched(kind):
    poison = PoisonBatches({2, 3}, kind)  # the 3rd and 4th optimizer steps
    model, guard = fit([poison])
    assert guard.skipped == 2 and guard.in_row == 0
    for name, value in poison.weights[2].items():
        assert torch.equal(poison.weights[4][name], value), name  # steps 3 and 4 changed nothing
    for index, state in poison.optimizer_states[2].items():
        for key, value in state.items():
            assert torch.equal(poison.optimizer_states[4][index][key], value), (index, key)
    assert any(not torch.equal(poison.weights[5][name], value) for name, value in poison.weights[4].items())
    assert all(torch.isfinite(param).all() for param in model.parameters())


def test_good_run_skips_nothing():
    _, guard = fit([])
    assert guard.skipped == 0


def test_too_many_bad_steps_in_a_row_raise():
    with pytest.raises(NonFiniteLossError, match="3 optimizer steps in a row had a NaN/inf loss or gradient"):
        fit([PoisonBatches({1, 2, 3, 4}, "loss")])


class PoisonOptimizerState(Callback):
    """A NaN in AdamW's first moment after the first step: the next update turns weights NaN although its loss and
    gradients are finite."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 1:
            next(iter(trainer.optimizers[0].state.values()))["exp_avg"].view(-1)[0] = float("nan")


def test_weights_made_non_finite_by_the_optimizer_state_stop_the_run_before_any_save(tmp_path):
    """Today's main applied and saved that update (last.ckpt with NaN weights) and said "none saved yet"."""
    from swinssl.training.trainer import AtomicCheckpointIO, CheckpointWriteError

    with pytest.raises(NonFiniteLossError, match="the weights became NaN/inf at step 2 although its loss and gradients"):
        fit([PoisonOptimizerState()])
    model = tiny_simmim()
    state = {"state_dict": model.state_dict()}
    next(iter(state["state_dict"].values())).view(-1)[0] = float("inf")
    target = tmp_path / "last.ckpt"
    with pytest.raises(CheckpointWriteError, match="it holds NaN or inf values"):
        AtomicCheckpointIO().save_checkpoint(state, target)  # whatever asks for it
    assert not list(tmp_path.iterdir())


def test_cli_stops_with_the_last_good_checkpoint_kept(tmp_path):
    """A learning rate of 1e30 blows the weights up after the first update; every later loss is NaN. Today's main
    named last.ckpt, written after that update, as the last good checkpoint."""
    shards = random_image_shards(tmp_path, maxcount=1000)
    run_dir = tmp_path / "run"
    done = run_cli("swinssl.pretrain", *TINY, f"data.shards={shards}", f"out_dir={run_dir}",
                   "optim.base_lr=1e30", "optim.warmup_lr=1e30", "optim.warmup_epochs=0", "max_nonfinite_steps=3",
                   "trainer.max_steps=50", "checkpointing.last_every_n_steps=1")
    assert done.returncode != 0
    last = run_dir / "checkpoints" / "last.ckpt"
    assert done.stderr.strip().splitlines()[-1] == (
        "error: 3 optimizer steps in a row had a NaN/inf loss or gradient (step 4); the run stopped. Lower "
        "optim.base_lr, keep trainer.gradient_clip_val, or use bf16-mixed/32-true precision instead of 16-mixed. "
        "Last good checkpoint: none (no checkpoint is from before step 1, whose weights gave the first NaN/inf step 2)")
    assert torch.load(last, weights_only=True)["global_step"] == 1  # none written during the bad steps
