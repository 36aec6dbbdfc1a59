"""The model families, their presets and the geometry a model must have, image and video alike, defined once.

No torch and no timm here: the recipe checks ask these questions before anything heavy is imported.

Families: ``swinv2`` and ``swin`` (image Swin V2 and V1), ``video_swinv2`` and ``video_swin`` (Video Swin in
V2 or V1 attention style). A preset is ``<family>_<size>``; the bare family takes explicit sizes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Triple = tuple[int, int, int]

SIZE_KEYS = ("embed_dim", "depths", "num_heads")  # what a bare family needs to be a model
# How window attention runs (swinssl.models.attention); every kernel computes the same function.
ATTENTION_KERNELS = ("plain", "fused", "chunked", "triton")
# Video attention (swinssl.models.video_swin): joint (P, M, M) windows, or spatial (1, M, M) then temporal (P, 1, 1).
ATTENTION_MODES = ("joint", "factorized")
# A video patch kernel from an image one (swinssl.weights.inflate): repeated over time / T, or on the centre frame.
PATCH_INITS = ("inflate", "center")

# Widths, depths and heads: T/S/B/L as timm and the official Swin and Video Swin releases have them; H/G
# from the Swin V2 paper (sec. 3.6, head dim 32, an extra LayerNorm every 6 blocks), which gives G four
# blocks in its last stage (2, 2, 42, 4).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "large": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
    "huge": dict(embed_dim=352, depths=(2, 2, 18, 2), num_heads=(11, 22, 44, 88), extra_norm_period=6),
    "giant": dict(embed_dim=512, depths=(2, 2, 42, 4), num_heads=(16, 32, 64, 128), extra_norm_period=6),
}


@dataclass(frozen=True)
class Family:
    """What an arch's family says before any size: image or video, Swin V1 or V2 attention, the sizes it comes in,
    and the geometry a model of it gets when none is given."""

    name: str
    title: str
    video: bool
    v2: bool
    sizes: tuple[str, ...]
    patch_size: int | Triple  # without a checkpoint to read it from
    window_size: Triple | None = None  # video: the window when none is given (image models are always given one)

    @property
    def style(self) -> str:
        """The attention style: ``v2`` (cosine attention, log-CPB) or ``v1`` (dot product, bias table)."""
        return "v2" if self.v2 else "v1"

    @property
    def image(self) -> Family:
        """The image family of the same style: what a video family inflates from."""
        return family_for(video=False, v2=self.v2)

    def patch(self, given: int | Sequence[int] | None = None) -> int | Triple:
        """A model's patch: ``given``, else this family's (video: as (time, height, width))."""
        patch = given or self.patch_size
        return triple(patch, "patch_size") if self.video else patch

    def inflated_patch(self, image_patch: int) -> Triple:
        """The patch of this (video) family over an image checkpoint's square ``image_patch``: its frames x that."""
        return self.patch_size[0], image_patch, image_patch

    def window(self, given: int | Sequence[int] | None = None) -> int | Triple:
        """A model's window: ``given``, else (video) this family's, as (time, height, width)."""
        return triple(given or self.window_size, "window_size") if self.video else given

    def window_rule(self, attention: str) -> str:
        """How clipped windows read the bias when no rule is given: the official Video Swin (V1) function for
        joint attention, the geometric rule otherwise (swinssl.models.video_swin)."""
        return "official" if (self.style, attention) == ("v1", "joint") else "geometric"


_PAPER_SIZES = ("tiny", "small", "base", "large")  # what timm and the official releases have for all but Swin V2
_VIDEO = dict(patch_size=(2, 4, 4), window_size=(8, 7, 7))  # the official Video Swin releases: 2 frames x 4 px, 8x7x7
FAMILIES: dict[str, Family] = {family.name: family for family in (
    Family("swinv2", "Swin V2", video=False, v2=True, sizes=tuple(SIZES), patch_size=4),
    Family("swin", "Swin V1", video=False, v2=False, sizes=_PAPER_SIZES, patch_size=4),
    Family("video_swinv2", "Video Swin V2", video=True, v2=True, sizes=_PAPER_SIZES, **_VIDEO),
    Family("video_swin", "Video Swin (V1)", video=True, v2=False, sizes=_PAPER_SIZES, **_VIDEO),
)}
PRESETS: dict[str, dict[str, Any]] = {
    f"{family.name}_{size}": dict(SIZES[size]) for family in FAMILIES.values() for size in family.sizes
}


def family(arch: str, video: bool | None = None) -> Family:
    """The family record of a preset or family name (``video_swinv2_base`` -> Video Swin V2); with ``video``, an
    error unless the arch is video (True) or image (False)."""
    record = FAMILIES[family_of(arch)]
    if video is True and not record.video:
        raise ValueError(f"{arch!r} is an image arch; video encoders are video_swinv2_* or video_swin_*")
    if video is False and record.video:
        raise ValueError(f"{arch!r} is a video arch; build it with build_video_encoder / create_video_encoder")
    return record


def family_for(video: bool, v2: bool) -> Family:
    return next(family for family in FAMILIES.values() if (family.video, family.v2) == (video, v2))


def is_video(arch: str) -> bool:
    return family(arch).video


def family_of(arch: str) -> str:
    """``swinv2_base`` -> ``swinv2``; ``video_swin_tiny`` or ``video_swin`` -> ``video_swin``."""
    family = arch if arch in FAMILIES else arch.rpartition("_")[0]
    if family not in FAMILIES or (arch not in PRESETS and arch != family):
        video = arch.startswith("video_")  # an unknown name has no record: its prefix picks the names to offer
        names = [name for name in [*PRESETS, *FAMILIES] if is_video(name) == video]
        raise ValueError(f"unknown {'video ' if video else ''}arch {arch!r}; choose one of: {', '.join(names)}")
    return family


def resolve_arch(arch: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """A preset's sizes, then the non-None ``overrides``; a bare family has no sizes but the ones given.

    No library default stands in for missing sizes: a model silently built at another size would make
    every comparison with it wrong.
    """
    family = family_of(arch)
    given = {key: value for key, value in overrides.items() if value is not None}
    if arch in PRESETS:
        return {**PRESETS[arch], **given}
    missing = [key for key in SIZE_KEYS if key not in given]
    if missing:
        choices = ", ".join(name for name in PRESETS if family_of(name) == family)
        raise ValueError(
            f"arch {arch!r} names a family, not a size: give {', '.join(missing)} (on the command line "
            f"model.encoder.{missing[0]}=...), start from a checkpoint to read them from, or use a preset ({choices})"
        )
    return given


def triple(value: int | Sequence[int], name: str) -> Triple:
    """An int (the same on every axis) or three ints (time, height, width) as a tuple."""
    values = (value,) * 3 if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"{name} must be a positive int or three positive ints (time, height, width), got {value!r}")
    return values


def video_pretrained_windows(windows: Sequence[int | Sequence[int]], stages: int) -> list[Triple]:
    """Per stage (t, h, w), 0 meaning "the current window"; an int is a spatial window (time: current)."""
    triples = [(0, w, w) if isinstance(w, int) else tuple(int(v) for v in w) for w in windows]
    if len(triples) != stages or any(len(w) != 3 or min(w) < 0 for w in triples):
        raise ValueError(f"pretrained_window_sizes needs one window (an int or (t, h, w)) per stage ({stages}), "
                         f"got {windows!r}")
    return triples


def _check_widths(embed_dim: int, depths: Sequence[int], num_heads: Sequence[int]) -> None:
    if len(num_heads) != len(depths):
        raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} must have one entry per stage")
    for stage, heads in enumerate(num_heads):
        width = embed_dim * 2**stage
        if width % heads:
            raise ValueError(f"stage {stage + 1} width {width} is not divisible by its {heads} heads")


def last_stage_stride(patch: int | Triple, stages: int) -> int | Triple:
    """Input per last-stage token: the patch times two per merge (video: merging is spatial, time keeps its patch)."""
    if isinstance(patch, int):
        return patch * 2 ** (stages - 1)
    frames, height, width = patch
    return frames, height * 2 ** (stages - 1), width * 2 ** (stages - 1)


def stage_grids(img_size: tuple[int, int], patch_size: int, stages: int) -> list[tuple[int, int]]:
    return [(img_size[0] // patch_size // 2**s, img_size[1] // patch_size // 2**s) for s in range(stages)]


def _window_tiles(img_size: tuple[int, int], patch_size: int, window: int, stages: int) -> bool:
    """A window larger than a stage's grid is clipped to it, so only smaller ones must divide it."""
    return all(side % min(window, side) == 0 for grid in stage_grids(img_size, patch_size, stages) for side in grid)


def check_image_geometry(img_size: tuple[int, int], patch_size: int, window_size: int, depths: Sequence[int],
                         embed_dim: int, num_heads: Sequence[int]) -> None:
    """Widths the heads divide, an image size the patches and merges divide, a window that tiles every stage."""
    _check_widths(embed_dim, depths, num_heads)
    stages = len(depths)
    stride = last_stage_stride(patch_size, stages)
    if img_size[0] % stride or img_size[1] % stride:
        raise ValueError(
            f"img_size {img_size[0]}x{img_size[1]} must be a multiple of {stride} "
            f"(patch {patch_size} x 2^{stages - 1} merges); e.g. {max(1, img_size[0] // stride) * stride}"
        )
    if not _window_tiles(img_size, patch_size, window_size, stages):
        grid = img_size[0] // patch_size
        fits = [w for w in range(2, grid + 1) if _window_tiles(img_size, patch_size, w, stages)]
        raise ValueError(
            f"window {window_size} does not tile every stage at img_size {img_size[0]}x{img_size[1]} "
            f"(stage grids {stage_grids(img_size, patch_size, stages)}); windows that fit: {fits}"
        )


def _packed_tiles(img_size: int, patch_size: int, window: int, stages: int) -> bool:
    return all(full <= window or (full // 2) % window == 0
               for full, _ in stage_grids((img_size, img_size), patch_size, stages))


def check_packed_windows(img_size: int, patch_size: int, window: int, stages: int) -> None:
    """Uniform packing halves every stage's grid (192 px, patch 4: 48/24/12/6 tokens become 24/12/6/3).

    A stage that the full-size model splits into several windows must split into whole windows of the same size
    at half size (so its windows and shifts stay the full-size model's); a stage that is one window at full size
    is one window packed (clipped to the stage, no shift, as Swin clips). At 192 px, windows 12 and 6 fit
    (packed stages 24/12/6/3: windows 12/12/6/3 and 6/6/6/3).
    """
    for stage, (full, _) in enumerate(stage_grids((img_size, img_size), patch_size, stages)):
        if full > window and (full // 2) % window:
            grid = img_size // patch_size
            fits = [w for w in range(2, grid + 1)
                    if _window_tiles((img_size, img_size), patch_size, w, stages) and _packed_tiles(img_size, patch_size, w, stages)]
            raise ValueError(
                f"window {window} does not tile packed stage {stage + 1}: uniform packing halves its {full}x{full} "
                f"tokens to {full // 2}x{full // 2}; windows that fit at {img_size} px: {fits}")


def check_video_geometry(num_frames: int, img_size: int, patch: Triple, window: Triple, depths: Sequence[int],
                         embed_dim: int, num_heads: Sequence[int]) -> None:
    """Widths the heads divide, and a clip of at least one patch. A window larger than the clip's token grid is
    clipped to it on every axis, time included (as the official code and torchvision do), so a checkpoint's window
    and position-bias table serve shorter clips."""
    _check_widths(embed_dim, depths, num_heads)
    if num_frames < 1 or img_size < patch[1]:
        raise ValueError(f"a clip needs at least 1 frame and {patch[1]} px, got {num_frames} frames at {img_size} px")


def check_model_geometry(arch: str, img_size: int, window_size: int | Sequence[int], patch_size: Any,
                         num_frames: int | None, overrides: dict[str, Any]) -> None:
    """The geometry checks of :func:`check_image_geometry` / :func:`check_video_geometry` for a recipe's model,
    before it is built. A bare family without sizes is skipped: its checkpoint brings them, checked on load."""
    if arch == family_of(arch) and any(overrides.get(key) is None for key in SIZE_KEYS):
        return
    sizes = resolve_arch(arch, overrides)
    defaults = family(arch)
    if defaults.video:
        check_video_geometry(num_frames or 1, img_size, defaults.patch(patch_size), defaults.window(window_size),
                             sizes["depths"], sizes["embed_dim"], sizes["num_heads"])
        return
    if not isinstance(window_size, int):
        raise ValueError(f"window_size of an image model is one int, got {window_size!r}")
    check_image_geometry((img_size, img_size), defaults.patch(patch_size), window_size, sizes["depths"], sizes["embed_dim"],
                         sizes["num_heads"])


@dataclass(frozen=True)
class EncoderSpec:
    """The encoder a task builds, as it crosses the layers (recipe -> task -> factory) and as a checkpoint's
    hyper-parameters keep it: architecture and sizes (a bare family needs them, unless a checkpoint brings
    them), input and windows, the windows the position bias was trained at (``pretrained_window_sizes``; by
    default those the checkpoint records), the video options, and how the model runs (attention kernel,
    activation checkpointing, compilation), which changes nothing it computes.
    """

    arch: str = "swinv2_base"
    img_size: int = 192
    window_size: int | tuple[int, ...] | None = 12  # video None: the family's
    patch_size: int | tuple[int, ...] | None = None  # None: the checkpoint's, else the family's
    drop_path_rate: float = 0.1
    embed_dim: int | None = None
    depths: tuple[int, ...] | None = None
    num_heads: tuple[int, ...] | None = None
    extra_norm_period: int | None = None
    pretrained_window_sizes: tuple | None = None
    num_frames: int = 32  # video: frames per clip
    attention: str = "joint"  # video: joint | factorized
    patch_init: str = "inflate"  # video from an image checkpoint: inflate | center
    head_dropout: float = 0.5  # video: dropout before the head
    window_rule: str | None = None  # video: official | geometric clipped windows (None: official for video_swin joint)
    attn_kernel: str = "fused"
    attn_chunk_windows: int | None = None
    grad_checkpointing: bool = False
    compile: bool = False

    @classmethod
    def names(cls) -> set[str]:
        return {spec_field.name for spec_field in dataclasses.fields(cls)}

    def updated(self, *parts: Mapping[str, Any] | EncoderSpec | None, **fields: Any) -> EncoderSpec:
        """This spec with the values of ``parts`` (specs, or mappings such as a recipe's ``model`` group or a
        checkpoint's hyper-parameters) and ``fields`` laid over it in order; unknown names are an error."""
        values: dict[str, Any] = {}
        for part in (*parts, fields):
            if isinstance(part, EncoderSpec):
                part = dataclasses.asdict(part)
            values.update(part or {})
        unknown = sorted(set(values) - self.names())
        if unknown:
            raise ValueError(f"unknown encoder setting(s) {', '.join(unknown)}; the settings are: "
                             f"{', '.join(sorted(self.names()))}")
        return dataclasses.replace(self, **{key: _frozen(value) for key, value in values.items()})

    @classmethod
    def from_config(cls, model: Mapping[str, Any], base: EncoderSpec | None = None) -> EncoderSpec:
        """From a recipe's ``model`` group: its encoder keys, with the ``model.encoder`` sizes among them."""
        model = dict(model)
        sizes = model.pop("encoder", None) or {}
        return (base or cls()).updated({key: value for key, value in model.items() if key in cls.names()}, sizes)

    @property
    def family(self) -> str:
        return family_of(self.arch)

    def sizes(self) -> dict[str, Any]:
        """The size settings given (a preset's are left to the preset), for the model factories."""
        keys = (*SIZE_KEYS, "extra_norm_period", "pretrained_window_sizes")
        return {key: getattr(self, key) for key in keys if getattr(self, key) is not None}

    def to_dict(self) -> dict[str, Any]:
        """Plain containers, as checkpoints keep hyper-parameters (weights-only loadable)."""
        return {key: _plain(value) for key, value in dataclasses.asdict(self).items()}


def _frozen(value: Any) -> Any:
    return tuple(_frozen(item) for item in value) if isinstance(value, (list, tuple)) else value


def _plain(value: Any) -> Any:
    return [_plain(item) for item in value] if isinstance(value, (list, tuple)) else value


WINDOW_RULES = ("official", "geometric")


def check_window_rule(rule: str, style: str) -> None:
    if rule not in WINDOW_RULES:
        raise ValueError(f"window_rule must be one of {WINDOW_RULES}, got {rule!r}")
    if rule == "official" and style == "v2":
        raise ValueError("window_rule='official' is the official Video Swin (V1) rule; Video Swin V2 has no official "
                         "code, use window_rule='geometric' or a video_swin_* arch")
