"""``python -m swinssl.pretrain recipe=<name> key=value ...``: SimMIM pretraining on WebDataset shards.

With no arguments it runs ``recipe=demo``: a small Swin V2 on the photos scikit-image ships.
``--cfg job`` prints the composed recipe without running it.
"""

from __future__ import annotations

import logging
import sys
from importlib.resources import files

import hydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch import seed_everything
from omegaconf import DictConfig, OmegaConf

from swinssl.datamodules import ImageShardDataModule
from swinssl.demo_data import demo_shards
from swinssl.runs import build_trainer, prepare_run, save_config
from swinssl.tasks import SimMIM
from swinssl.tasks.callbacks import ReconstructionImages

log = logging.getLogger("swinssl.pretrain")
RECIPES = "swinssl.recipes"
# The demo recipe names its data as ${swinssl_demo_shards:}: built (once) only when a run reads it.
OmegaConf.register_new_resolver("swinssl_demo_shards", lambda: demo_shards(), use_cache=True, replace=True)


def available_recipes() -> list[str]:
    return sorted(entry.name[: -len(".yaml")] for entry in (files(RECIPES) / "recipe").iterdir()
                  if entry.name.endswith(".yaml"))


def check_recipe_argument(argv: list[str]) -> None:
    """Fail in one line on an unknown ``recipe=`` before Hydra composes anything."""
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") == "recipe" and value and value not in available_recipes():
            raise SystemExit(f"error: unknown recipe {value!r}; choose one of: {', '.join(available_recipes())}")


def build(cfg: DictConfig) -> tuple[SimMIM, ImageShardDataModule]:
    """The model and data a config describes; bad sizes and missing shards raise here, before any compute."""
    model = SimMIM(
        arch=cfg.model.arch,
        img_size=cfg.model.img_size,
        window_size=cfg.model.window_size,
        patch_size=cfg.model.patch_size,
        drop_path_rate=cfg.model.drop_path_rate,
        encoder=OmegaConf.to_container(cfg.model.encoder, resolve=True),
        norm_target_window=cfg.simmim.norm_target_window,
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
    )
    datamodule = ImageShardDataModule(
        shards=cfg.data.shards,
        val_shards=cfg.data.val_shards,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        epoch_size=cfg.data.epoch_size,
        shuffle_buffer=cfg.data.shuffle_buffer,
        img_size=cfg.model.img_size,
        mask_patch_size=cfg.simmim.mask_patch_size,
        model_patch_size=cfg.model.patch_size,
        mask_ratio=cfg.simmim.mask_ratio,
        seed=cfg.seed,
    )
    return model, datamodule


def pretrain(cfg: DictConfig, recipe: str) -> None:
    seed_everything(cfg.seed, workers=True)
    try:
        model, datamodule = build(cfg)
        run = prepare_run(recipe, cfg.out_dir, cfg.resume)
    except (ValueError, FileNotFoundError, ImportError) as error:
        raise SystemExit(f"error: {error}") from None
    log.info("run directory: %s%s", run.dir, f" (resuming {run.resume_from})" if run.resume_from else "")
    save_config(cfg, run.dir)
    trainer = build_trainer(cfg.trainer, run.dir, cfg.checkpointing,
                            callbacks=[ReconstructionImages(every_n_steps=cfg.images_every_n_steps)])
    trainer.fit(model, datamodule=datamodule, ckpt_path=run.resume_from)
    trainer.save_checkpoint(run.dir / "checkpoints" / "last.ckpt", weights_only=False)  # resumable
    log.info("done: %s", run.dir)


@hydra.main(config_path=f"pkg://{RECIPES}", config_name="pretrain", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    pretrain(cfg, recipe=HydraConfig.get().runtime.choices["recipe"])


def main() -> None:
    check_recipe_argument(sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
