"""What a recipe may say, checked before any compute and before a run directory exists.

Two passes, each failing with one ``error:`` line (exit code 2):

- :func:`check_arguments`, on the command line before Hydra composes it: the recipe name, and every
  ``key=value`` override (with ``+``/``++`` or without) must name a key of the recipe. A typo names the
  closest valid key. ``trainer.*`` may add any argument of ``lightning.Trainer`` (with ``+``), and the free
  maps (``cluster.additional``, ``finetune.mixup``, ``data.rand_augment``) take what their consumer takes.
- :func:`check_config`, on the composed recipe: the type and range of every key (:data:`RULES`), the model
  geometry where the sizes are known, the devices this machine has, and the paths a run reads and writes.

Checks that need the data or a checkpoint (shard sets, classes, checkpoint sizes) run when the data and
model are built, which also happens before the run directory is made.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from swinssl.checkpoint_names import is_remote
from swinssl.datamodules.views import EVAL_CROP_MODES, SAMPLINGS, TEST_CROPS
from swinssl.masking import MASK_MODES, PACKINGS
from swinssl.models.registry import ATTENTION_KERNELS, ATTENTION_MODES, PATCH_INITS, WINDOW_RULES
from swinssl.training import slurm

RECIPES = "swinssl.recipes"
DEMO_DATA = "${swinssl_demo"  # the demo recipes' data: interpolations built on first use (training/cli.py)
GROUPS = ("recipe", "cluster")  # config groups: their overrides choose a file, not a value
# Maps whose keys are their consumer's, not the recipe's; the names they accept.
FREE_MAPS: dict[str, Callable[[], Iterable[str]]] = {
    "cluster.additional": lambda: (),  # any sbatch option: no fixed names
    "finetune.mixup": lambda: _parameters("timm.data", "Mixup", exclude=("label_smoothing", "num_classes")),
    "data.rand_augment": lambda: ("num_ops", "magnitude"),
    "trainer": lambda: _parameters("lightning", "Trainer", exclude=("logger", "callbacks", "default_root_dir")),
}


def recipe_task(name: str) -> str:
    """The entry point a recipe belongs to (its ``task:`` key)."""
    return OmegaConf.load(files(RECIPES) / "recipe" / f"{name}.yaml").get("task", "pretrain")


def available_recipes(task: str | None = None) -> list[str]:
    names = sorted(entry.name[: -len(".yaml")] for entry in (files(RECIPES) / "recipe").iterdir()
                   if entry.name.endswith(".yaml"))
    return [name for name in names if task is None or recipe_task(name) == task]


# ------------------------------------------------------------------------------------------ arguments


def check_arguments(argv: list[str], task: str) -> None:
    """The recipe and every override key of ``argv`` exist, before Hydra composes anything."""
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    candidates = [arg for arg in argv if "=" in arg and not arg.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except HydraException as error:
        raise ValueError(f"cannot read the overrides: {str(error).splitlines()[0]}") from None
    groups = [o for o in overrides if o.key_or_group.lstrip("/") in GROUPS]
    for override in groups:
        if override.key_or_group == "recipe":
            _check_recipe(str(override.value()), task)
    with initialize_config_module(config_module=RECIPES, version_base="1.3"):
        base = compose(config_name=task, overrides=[o.input_line for o in groups])
    for override in overrides:
        key = override.key_or_group
        if override.is_hydra_override() or key.lstrip("/") in GROUPS or override.is_delete():
            continue
        _check_key(base, key, adding=override.is_add() or override.is_force_add())


def _check_recipe(name: str, task: str) -> None:
    if name not in available_recipes():
        raise ValueError(f"unknown recipe {name!r}; choose one of: {', '.join(available_recipes(task))}")
    if (other := recipe_task(name)) != task:
        raise ValueError(f"{name!r} is a {other} recipe; run it with python -m swinssl.{other} recipe={name}")


def _check_key(base: DictConfig, key: str, adding: bool) -> None:
    if _exists(base, key):
        return
    for prefix, accepted in FREE_MAPS.items():
        if key.startswith(prefix + "."):
            name, names = key[len(prefix) + 1:], list(accepted())
            if names and name not in names:
                close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
                raise ValueError(f"unknown key {key}" + (f"; did you mean {prefix}.{close[0]}?" if close
                                                         else f"; {prefix} takes: {', '.join(sorted(names))}"))
            if not adding:
                raise ValueError(f"{key} is not in the recipe; add it with +{key}=...")
            return
    keys = list(_leaf_keys(base))
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not close:  # a typo in the last part: the closest key of the same group
        group = key.rpartition(".")[0]
        close = difflib.get_close_matches(key, [k for k in keys if k.rpartition(".")[0] == group], n=1, cutoff=0.0)
    raise ValueError(f"unknown key {key}" + (f"; did you mean {close[0]}?" if close else ""))


def _exists(cfg: DictConfig, key: str) -> bool:
    node: Any = cfg
    for part in key.split("."):
        if isinstance(node, DictConfig) and part in node.keys():  # `in node` is False for a missing (???) value
            node = node._get_node(part)
        elif isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node._get_node(int(part))
        else:
            return False
    return True


def _leaf_keys(cfg: DictConfig, prefix: str = "") -> Iterable[str]:
    for key in cfg:
        path = f"{prefix}{key}"
        value = cfg._get_node(key)
        if isinstance(value, DictConfig) and len(value):
            yield from _leaf_keys(value, path + ".")
        else:
            yield path


def _parameters(module: str, name: str, exclude: tuple[str, ...]) -> list[str]:
    import importlib
    import inspect

    cls = getattr(importlib.import_module(module), name)
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", *exclude)]


# ------------------------------------------------------------------------------------------ values


@dataclass(frozen=True)
class Rule:
    """``test`` says whether a value is allowed; ``what`` names what is, for the message."""

    what: str
    test: Callable[[Any], bool]
    nullable: bool = False

    def check(self, key: str, value: Any) -> None:
        if value is None and self.nullable:
            return
        try:
            ok = self.test(value)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{key} must be {self.what}{' or null' if self.nullable else ''}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(low: int, nullable: bool = False) -> Rule:
    return Rule(f"an integer >= {low}", lambda v: _is_int(v) and v >= low, nullable)


def number(low: float, high: float = math.inf, open_low: bool = False, open_high: bool = False,
           nullable: bool = False) -> Rule:
    left, right = "(" if open_low else "[", ")" if open_high or high == math.inf else "]"
    what = f"a number > {low:g}" if high == math.inf and open_low else (
        f"a number >= {low:g}" if high == math.inf else f"a number in {left}{low:g}, {high:g}{right}")

    def test(v: Any) -> bool:
        return (_is_number(v) and (v > low if open_low else v >= low)
                and (v < high if open_high else v <= high))

    return Rule(what, test, nullable)


def choice(*options: Any, nullable: bool = False) -> Rule:
    shown = dict.fromkeys(map(str, options))  # 16 and "16" read the same
    return Rule(f"one of {', '.join(shown)}", lambda v: v in options, nullable)


def boolean() -> Rule:
    return Rule("true or false", lambda v: isinstance(v, bool))


def pair(low: float, high: float, open_low: bool = True) -> Rule:
    """Two numbers (lowest, highest) within [low, high] (or (low, high] with ``open_low``)."""
    inner = number(low, high, open_low=open_low)
    return Rule(f"[lowest, highest] with both in {'(' if open_low else '['}{low:g}, {high:g}]",
                lambda v: len(v) == 2 and all(inner.test(x) for x in v) and v[0] <= v[1])


def integers(low: int, count: int | None = None, nullable: bool = False) -> Rule:
    """A list of integers >= ``low`` (``count`` of them when given)."""
    what = f"a list of {count or ''} integers >= {low}".replace("  ", " ")
    return Rule(what, lambda v: isinstance(v, (list, ListConfig)) and all(_is_int(x) and x >= low for x in v)
                and (count is None or len(v) == count) and len(v) > 0, nullable)


def integer_or_triple(low: int, nullable: bool = False) -> Rule:
    """An int, or [time, height, width] ints (video windows and patches)."""
    triple = integers(low, count=3)
    return Rule(f"an integer >= {low} or [time, height, width] integers >= {low}",
                lambda v: (_is_int(v) and v >= low) or triple.test(v), nullable)


def odd_window() -> Rule:
    return Rule("an odd integer >= 3", lambda v: _is_int(v) and v >= 3 and v % 2 == 1, nullable=True)


def run_length(key: str) -> Rule:
    """``trainer.max_epochs``/``max_steps``: -1 (unbounded by this key) or a positive count; 0 trains nothing."""
    return Rule("-1 (no limit) or an integer >= 1", lambda v: _is_int(v) and (v == -1 or v >= 1), nullable=True)


def betas() -> Rule:
    inner = number(0, 1, open_high=True)
    return Rule("two numbers in [0, 1)", lambda v: len(v) == 2 and all(inner.test(x) for x in v))


def scales(nullable: bool = False) -> Rule:
    return Rule("a list of numbers > 0", lambda v: len(v) > 0 and all(_is_number(x) and x > 0 for x in v), nullable)


def milestones() -> Rule:
    inner = number(0)
    return Rule("a list of epochs >= 0", lambda v: isinstance(v, (list, ListConfig)) and all(inner.test(x) for x in v))


def devices() -> Rule:
    def test(v: Any) -> bool:
        if v == "auto" or v == -1 or (_is_int(v) and v >= 1):
            return True
        if isinstance(v, str):
            return all(part.strip().isdigit() for part in v.split(","))
        return isinstance(v, (list, ListConfig)) and len(v) > 0 and all(_is_int(x) and x >= 0 for x in v)

    return Rule("auto, -1 (all), a count >= 1 or a list of device indices", test)


PRECISIONS = ("bf16-mixed", "16-mixed", "32-true", "bf16-true", "16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "bf16", "16", "32", "64", 16, 32, 64)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos", "random")

RULES: dict[str, Rule] = {
    # data
    "data.batch_size": integer(1),
    "data.num_workers": integer(0),
    "data.epoch_size": integer(1, nullable=True),  # null: one pass over the training set (its manifest count)
    "data.shuffle_buffer": integer(0),
    "data.crop_scale": pair(0, 1),
    "data.crop_ratio": pair(0, math.inf),
    "data.hflip": number(0, 1),
    "data.re_prob": number(0, 1),
    "data.color_jitter": number(0, nullable=True),
    "data.interpolation": choice(*INTERPOLATIONS),
    "data.eval_crop_pct": number(0, 1, open_low=True),
    "data.eval_crop_mode": choice(*EVAL_CROP_MODES),
    "data.sampling": choice(*SAMPLINGS),
    "data.frame_interval": integer(1),
    "data.short_side": integer(1),
    "data.eval_short_side": integer(1, nullable=True),
    "data.test_clips": integer(1),
    "data.test_crops": choice(*TEST_CROPS),
    # model
    "model.img_size": integer(1),
    "model.window_size": integer_or_triple(1),
    "model.patch_size": integer_or_triple(1, nullable=True),
    "model.drop_path_rate": number(0, 1, open_high=True),
    "model.num_classes": integer(2, nullable=True),
    "model.num_frames": integer(1),
    "model.head_dropout": number(0, 1, open_high=True),
    "model.attention": choice(*ATTENTION_MODES),
    "model.patch_init": choice(*PATCH_INITS),
    "model.window_rule": choice(*WINDOW_RULES, nullable=True),
    "model.attn_kernel": choice(*ATTENTION_KERNELS),
    "model.attn_chunk_windows": integer(1, nullable=True),
    "model.grad_checkpointing": boolean(),
    "model.compile": boolean(),
    "model.encoder.embed_dim": integer(1, nullable=True),
    "model.encoder.depths": integers(1, nullable=True),
    "model.encoder.num_heads": integers(1, nullable=True),
    "model.encoder.extra_norm_period": integer(0, nullable=True),
    # masked image modeling
    "simmim.mask_patch_size": integer(1),
    "simmim.mask_ratio": number(0, 1, open_low=True, open_high=True),
    "simmim.norm_target_window": odd_window(),
    "simmim.mask_mode": choice(*MASK_MODES),
    "simmim.packing": choice(*PACKINGS, nullable=True),
    "simmim.true_offsets": boolean(),
    "simmim.mask_frames": integer(1),
    "probe.every_n_steps": integer(1),
    "probe.k": integer(1),
    "probe.temperature": number(0, open_low=True),
    "probe.batch_size": integer(1),
    "probe.num_workers": integer(0),
    # optimization
    "optim.base_lr": number(0, open_low=True),
    "optim.warmup_lr": number(0),
    "optim.min_lr": number(0),
    "optim.weight_decay": number(0),
    "optim.betas": betas(),
    "optim.eps": number(0, open_low=True),
    "optim.warmup_epochs": number(0),
    "optim.schedule": choice("cosine", "multistep", "poly"),
    "optim.power": number(0, open_low=True),
    "optim.warmup_steps": integer(0, nullable=True),
    "optim.milestones": milestones(),
    "optim.gamma": number(0, open_low=True),
    "finetune.layer_decay": number(0, 1, open_low=True, nullable=True),
    "finetune.label_smoothing": number(0, 1, open_high=True),
    "finetune.ema_decay": number(0, 1, open_low=True, open_high=True, nullable=True),
    "finetune.head_lr_ratio": number(0, open_low=True),
    # segmentation
    "segmentation.upernet.channels": integer(1),
    "segmentation.upernet.pool_scales": integers(1),
    "segmentation.upernet.auxiliary_channels": integer(1),
    "segmentation.upernet.auxiliary_index": integer(0),
    "segmentation.upernet.auxiliary_num_convs": integer(0),
    "segmentation.upernet.auxiliary_weight": number(0),
    "segmentation.upernet.dropout": number(0, 1, open_high=True),
    "segmentation.inference.mode": choice("whole", "slide"),
    "segmentation.inference.crop": integer(1),
    "segmentation.inference.stride": integer(1),
    "segmentation.inference.scales": scales(),
    "segmentation.inference.flip": boolean(),
    # the run
    "trainer.max_epochs": run_length("max_epochs"),
    "trainer.max_steps": run_length("max_steps"),
    "trainer.num_nodes": integer(1),
    "trainer.devices": devices(),
    "trainer.accelerator": choice("auto", "cpu", "gpu", "cuda", "mps", "tpu"),
    "trainer.precision": choice(*PRECISIONS, nullable=True),
    "trainer.gradient_clip_val": number(0, nullable=True),
    "trainer.accumulate_grad_batches": integer(1),
    "trainer.log_every_n_steps": integer(1),
    "trainer.check_val_every_n_epoch": integer(1, nullable=True),
    "trainer.val_check_interval": number(0, open_low=True, nullable=True),
    "trainer.limit_train_batches": number(0, open_low=True, nullable=True),
    "trainer.limit_val_batches": number(0, nullable=True),
    "trainer.enable_progress_bar": boolean(),
    "trainer.enable_model_summary": boolean(),
    "checkpointing.every_n_epochs": integer(1, nullable=True),
    "checkpointing.last_every_n_steps": integer(1),
    "max_nonfinite_steps": integer(1),
    "images_every_n_steps": integer(1),
    "seed": integer(0),
    "threads": integer(1, nullable=True),
    "trust_checkpoint": boolean(),
    # evaluate
    "batch_size": integer(1),
    "num_workers": integer(0),
    "img_size": integer(1, nullable=True),
    "window_size": integer_or_triple(1, nullable=True),
    "num_frames": integer(1, nullable=True),
    "test_clips": integer(1, nullable=True),
    "test_crops": choice(*TEST_CROPS, nullable=True),
    "eval_crop_pct": number(0, 1, open_low=True, nullable=True),
    "eval_crop_mode": choice(*EVAL_CROP_MODES, nullable=True),
    "interpolation": choice(*INTERPOLATIONS, nullable=True),
    "accelerator": choice("auto", "cpu", "gpu", "cuda", "mps", "tpu"),
    "precision": choice(*PRECISIONS, nullable=True),
    "overwrite": boolean(),
    "inference": choice("whole", "slide", nullable=True),
    "slide_crop": integer(1, nullable=True),
    "slide_stride": integer(1, nullable=True),
    "scales": scales(nullable=True),
    "flip": Rule("true or false", lambda v: isinstance(v, bool), nullable=True),
}


def check_config(cfg: DictConfig) -> None:
    """Types, ranges, geometry, devices and paths of a composed config (training or evaluation)."""
    submitting = "cluster" in cfg and cfg.cluster.name == "slurm" and not slurm.is_slurm_task()
    if submitting:  # a login node: the job's request first; its devices are on the compute nodes
        slurm.check_request(cfg)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(f"{', '.join(missing)} must be given: add {missing[0]}=... to the command")
    for key, rule in RULES.items():
        if _exists(cfg, key):
            rule.check(key, OmegaConf.select(cfg, key))
    _check_orders(cfg)
    if "model" in cfg and "simmim" in cfg:
        _check_masking(cfg)
    if "model" in cfg:
        _check_geometry(cfg.model)
    if "trainer" in cfg and not submitting:
        _check_devices(cfg.trainer.accelerator, cfg.trainer.devices)
    elif "accelerator" in cfg:  # evaluation: one device
        _check_devices(cfg.accelerator, 1)
    if cfg.get("out_dir"):
        _check_writable(Path(cfg.out_dir), "out_dir")
    if not submitting:  # the shards and checkpoint of a submitted job are read on the compute nodes
        _check_checkpoint(cfg.get("checkpoint"))
        _check_shards(cfg)


def own_data(cfg: DictConfig, command_line: set[str], recipe: str) -> list[str]:
    """A demo recipe run on the user's ``data.shards``: the demo's validation set and epoch size, sized for the
    demo photos or clips, do not follow. ``data.val_shards`` drops to null (the demo's classes are not the user's,
    and validating on them would only fail or mislead) and ``data.epoch_size`` to null (one pass over the user's
    set, from its manifest), unless the command line sets them; returns what changed, to be logged."""
    if "data.shards" not in command_line or "data" not in cfg:
        return []
    written = OmegaConf.to_container(OmegaConf.load(files(RECIPES) / "recipe" / f"{recipe}.yaml"), resolve=False)
    recipe_data = written.get("data") or {}  # as the recipe file writes it: the demo data's interpolations unresolved
    if not str(recipe_data.get("shards", "")).startswith(DEMO_DATA):
        return []
    notes = []
    if "data.val_shards" not in command_line and str(cfg.data._get_node("val_shards")._value()).startswith(DEMO_DATA):
        cfg.data.val_shards = None
        notes.append(f"data.shards is your own data: recipe={recipe}'s demo validation set is dropped "
                     "(give data.val_shards=... to validate)")
    if "data.epoch_size" not in command_line and "epoch_size" in recipe_data:
        notes.append(f"data.shards is your own data: recipe={recipe}'s data.epoch_size={recipe_data['epoch_size']} "
                     "(sized for the demo set) is dropped; an epoch is one pass over your set "
                     "(give data.epoch_size=... to choose)")
        cfg.data.epoch_size = None
    return notes


def _check_checkpoint(value: Any) -> None:
    """A local ``checkpoint=`` exists (what it holds is read when the model is built)."""
    if isinstance(value, str) and not is_remote(value) and not Path(value).exists():
        raise FileNotFoundError(f"checkpoint not found: {value}")


def _check_orders(cfg: DictConfig) -> None:
    """Values that are each in range but not together: rates above the peak, an epoch smaller than a batch, and a
    timm augmentation string timm cannot parse."""
    if _exists(cfg, "optim.base_lr"):
        for key in ("warmup_lr", "min_lr"):
            if _exists(cfg, f"optim.{key}") and cfg.optim[key] > cfg.optim.base_lr:
                raise ValueError(f"optim.{key}={cfg.optim[key]} is above optim.base_lr={cfg.optim.base_lr}, the peak "
                                 f"of the schedule; give optim.{key} <= optim.base_lr")
    if _exists(cfg, "data.epoch_size") and _exists(cfg, "data.batch_size") and cfg.data.epoch_size is not None:
        if cfg.data.epoch_size < cfg.data.batch_size:
            raise ValueError(f"data.epoch_size={cfg.data.epoch_size} is smaller than one batch "
                             f"(data.batch_size={cfg.data.batch_size}); an epoch counts samples of the whole job")
    if _exists(cfg, "data.auto_augment") and cfg.data.auto_augment is not None:
        from timm.data.transforms_factory import transforms_imagenet_train

        try:
            transforms_imagenet_train(img_size=32, auto_augment=str(cfg.data.auto_augment))
        except (AssertionError, ValueError, KeyError, IndexError):
            raise ValueError(f"data.auto_augment={cfg.data.auto_augment!r} is not a timm augmentation string (e.g. "
                             "rand-m9-mstd0.5-inc1, augmix-m5-w3, original, v0, 3a) or null") from None


def _check_masking(cfg: DictConfig) -> None:
    from swinssl.masking import MaskGenerator, UniformMaskGenerator, VideoMaskGenerator
    from swinssl.models.registry import family, is_video

    model, simmim = cfg.model, cfg.simmim
    packing = simmim.get("packing")
    default_patch = family(model.arch).patch_size  # null: the checkpoint's, as the family's without one
    if not is_video(model.arch):
        if packing is None:
            MaskGenerator(model.img_size, simmim.mask_patch_size, model.patch_size, simmim.mask_ratio)
            return
        patch = model.patch_size or default_patch
        stages = _check_packing(model, patch, model.window_size)
        UniformMaskGenerator(model.img_size, simmim.mask_patch_size, model.patch_size, simmim.mask_ratio,
                             patch * 2 ** (stages - 1))
        return
    patch = model.get("patch_size") or default_patch
    patch = (default_patch[0], patch, patch) if isinstance(patch, int) else tuple(patch)
    given = {"mode": simmim.get("mask_mode"), "mask_frames": simmim.get("mask_frames"), "packing": packing}
    if packing is not None:
        window = model.window_size
        stages = _check_packing(model, patch[1], window if isinstance(window, int) else window[1])
        given["merge_unit"] = patch[1] * 2 ** (stages - 1)
    VideoMaskGenerator(model.num_frames, model.img_size, simmim.mask_patch_size, patch, simmim.mask_ratio,
                       **{key: value for key, value in given.items() if value is not None})  # absent: its defaults


def _check_packing(model: DictConfig, patch: int, window: int) -> int:
    """Stages of the recipe's model (4 where a checkpoint brings the sizes: every Swin preset has 4), after the
    packed windows are checked against them."""
    from swinssl.models.registry import SIZE_KEYS, SIZES, check_packed_windows, family_of, resolve_arch

    overrides = {key: value for key, value in OmegaConf.to_container(model.get("encoder") or {}, resolve=True).items()
                 if value is not None}
    if model.arch == family_of(model.arch) and any(key not in overrides for key in SIZE_KEYS):
        stages = max(len(size["depths"]) for size in SIZES.values())  # every preset has as many
    else:
        stages = len(resolve_arch(model.arch, overrides)["depths"])
    check_packed_windows(model.img_size, patch, window, stages)
    return stages


def _check_geometry(model: DictConfig) -> None:
    """The preset's (or the given) sizes against image size, patch and window; skipped when a checkpoint
    brings the sizes (they are checked when it is read). A video window rule fits the attention style."""
    from swinssl.models.registry import check_model_geometry, check_window_rule, family

    if model.get("window_rule") is not None:
        check_window_rule(model.window_rule, family(model.arch).style)

    encoder = OmegaConf.to_container(model.get("encoder") or {}, resolve=True)
    check_model_geometry(model.arch, model.img_size, model.window_size, model.get("patch_size"),
                         model.get("num_frames"), encoder)


def _check_devices(accelerator: str, devices: Any) -> None:
    """No more processes than this machine has cores (CPU) or GPUs; a GPU accelerator needs a GPU."""
    wanted = _device_count(devices)
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and wanted and wanted > 1):
        import torch

        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if accelerator in ("gpu", "cuda") and not available:
            raise ValueError(f"trainer.accelerator={accelerator} but this machine has no GPU that torch can use; "
                             "use trainer.accelerator=auto (or cpu)")
        if available:
            if wanted and wanted > available:
                raise ValueError(f"trainer.devices={devices} but this machine has {available} GPU(s)")
            return
    cores = os.cpu_count() or 1
    if wanted and wanted > cores:
        raise ValueError(f"trainer.devices={devices} asks for {wanted} CPU processes, but this machine has {cores} "
                         f"cores; use at most trainer.devices={cores}")


def _check_shards(cfg: DictConfig) -> None:
    """Every shard spec resolves: paths exist, are tar shards, and name one set of a folder with several."""
    from swinssl.datamodules.shards import resolve_shards

    keys = ("data.shards", "data.val_shards", "probe.shards", "probe.val_shards")
    specs = [OmegaConf.select(cfg, key) for key in keys if _exists(cfg, key)]
    if "data" in cfg and not isinstance(cfg.data, DictConfig):  # evaluate: data= is the spec itself
        specs.append(cfg.data)
    resolved = [resolve_shards(OmegaConf.to_container(spec) if isinstance(spec, ListConfig) else spec)
                for spec in specs if spec is not None]
    if _exists(cfg, "data.epoch_size") and cfg.data.epoch_size is None and cfg.data.get("shards") is not None:
        if resolved[0].samples is None:  # data.shards comes first
            raise ValueError(f"data.epoch_size=null means one pass over the training set, but {resolved[0].name} does "
                             "not record how many samples it holds (no manifest, or part of a set): give "
                             "data.epoch_size")


def _device_count(devices: Any) -> int | None:
    """How many processes per node ``trainer.devices`` asks for (None: auto or all)."""
    if devices in ("auto", -1):
        return None
    if isinstance(devices, int):
        return devices
    return len(devices.split(",")) if isinstance(devices, str) else len(devices)


def _check_writable(path: Path, key: str) -> None:
    """``path`` is a folder or can become one: its nearest existing ancestor is a writable folder."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{key}={path} cannot be a folder: {existing} is a file")
    if not os.access(existing, os.W_OK):
        raise ValueError(f"{key}={path} cannot be written: {existing} is not writable")
