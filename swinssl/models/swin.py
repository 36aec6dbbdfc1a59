"""Swin image encoders: timm's ``SwinTransformerV2`` (and V1 ``SwinTransformer``) plus what SimMIM and H/G need.

Parameter names stay timm's, so timm state dicts load as they are. Additions:

- an optional learnable ``mask_token`` (1, 1, C) that replaces masked patch embeddings right after the
  patch LayerNorm, as the official SimMIM encoder does (all tokens still go through every stage);
- the Swin V2 paper's extra LayerNorm on the main branch every ``extra_norm_period`` blocks of a stage,
  used by the H and G presets (named ``norm3`` as in timm's ``swinv2_cr``); the official release lacks it;
- checks that turn an image size or window that cannot work into a one-line error before any compute;
- any input size the patch divides, non-square too (the built size only fixes each stage's window): every
  block zero-pads its map to whole windows, as the official detection code does, and masks the padding out of
  attention; the position bias stays the one of the block's window. At the built size nothing is padded and
  the function is timm's;
- backbone use as in timm (``feature_info``, ``forward_intermediates``; ``features_only`` through
  :func:`swinssl.models.backbone.features_only`);
- a choice of attention kernel (``attn_kernel``: plain, fused SDPA, chunked or triton; :mod:`swinssl.models.attention`)
  for V2 and V1 alike.

V1 (parameterized relative-position tables) is here to load official Swin V1 checkpoints and to compare
against; it shares the mask-token entry so official V1 SimMIM checkpoints continue pretraining too.
This module builds modules only; :func:`swinssl.create_encoder` (in ``swinssl.weights``) adds loading.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models import swin_transformer, swin_transformer_v2
from timm.models.swin_transformer import SwinTransformer
from timm.models.swin_transformer_v2 import SwinTransformerV2, SwinTransformerV2Block
from torch import nn

from swinssl.masking import apply_mask_token
from swinssl.models.attention import KernelAttention, check_kernel
from swinssl.models.packing import positioned_attention
from swinssl.models.registry import EncoderSpec, check_image_geometry, family, last_stage_stride, resolve_arch
from swinssl.models.windows import (
    cosine_query_key,
    log_cpb_bias,
    log_cpb_table,
    log_spaced_coordinates,
    resize_bias_table,
    windowed_attention,
)


class WindowAttentionV2(KernelAttention, swin_transformer_v2.WindowAttention):
    """timm's Swin V2 window attention: q, k, v as timm makes them (the block never sets ``qkv_bias_separate``),
    scaled cosine attention and log-CPB bias from :mod:`swinssl.models.windows`, run by the chosen kernel."""

    def attention_inputs(self, x: torch.Tensor):
        batch_windows, tokens, _ = x.shape
        if self.q_bias is None:
            qkv = self.qkv(x)
        else:
            qkv = F.linear(x, weight=self.qkv.weight, bias=torch.cat((self.q_bias, self.k_bias, self.v_bias)))
        q, k, v = qkv.reshape(batch_windows, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, k, scale = cosine_query_key(q, k, self.logit_scale)
        return q, k, v, self.position_bias(), scale

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v, bias, scale = self.attention_inputs(x)
        return self.attend(q, k, v, bias, mask, scale)

    def position_bias(self) -> torch.Tensor:
        """(heads, N, N) log-CPB bias of this window, from the offset tables timm keeps for its size."""
        return log_cpb_bias(self.cpb_mlp, self.relative_coords_table, self.relative_position_index, self.num_heads)

    def position_bias_table(self, window: int) -> torch.Tensor:
        """((2w-1)^2, heads) bias at every offset of a square ``window``, offsets normalized by the window this
        module's bias is trained for (its pretrained window, else its own): what a copy moved there computes."""
        pretrained = tuple(p if p > 0 else w for p, w in zip(self.pretrained_window_size, self.window_size))
        weight = self.cpb_mlp[0].weight
        coordinates = log_spaced_coordinates((window, window), pretrained, weight.device).to(weight.dtype)
        return log_cpb_table(self.cpb_mlp, coordinates, self.num_heads)


class WindowAttentionV1(KernelAttention, swin_transformer.WindowAttention):
    """timm's Swin V1 window attention (q scaled, then the bias table), run by the chosen kernel; timm's own
    ``fused_attn`` flag is not consulted."""

    def attention_inputs(self, x: torch.Tensor):
        batch_windows, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch_windows, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return q * self.scale, k, v, self._get_rel_pos_bias()[0], None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v, bias, scale = self.attention_inputs(x)
        return self.attend(q, k, v, bias, mask, scale)

    def position_bias_table(self, window: int) -> torch.Tensor:
        """((2w-1)^2, heads) table at a square ``window``: the learned table, bicubic-resized (the transfer rule)."""
        return resize_bias_table(self.relative_position_bias_table, window)


class PaddedWindows:
    """Mixin for timm's Swin blocks: attention in the block's windows over a map of any size, padded to whole
    windows at the end (:func:`swinssl.models.windows.windowed_attention`); at the built size, where the two are
    the same function, timm's path with its precomputed shift mask runs (so compiled graphs stay as timm's)."""

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        positions = getattr(self, "token_positions", None)
        if positions is not None:  # packed masked pretraining: offsets of the tokens' positions (models.packing)
            return positioned_attention(self.attn, x, *positions, self.window_size, self.shift_size,
                                        lambda windows, _window: self.attn.attention_inputs(windows))
        if tuple(x.shape[1:3]) == tuple(self.input_resolution):  # the built size: whole windows, timm's own path
            return super()._attn(x)
        return windowed_attention(self._attend, x, tuple(self.window_size), tuple(self.shift_size))

    def _attend(self, windows: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.attn(windows, mask=mask)


class PaddedBlockV2(PaddedWindows, SwinTransformerV2Block):
    pass


class PaddedBlockV1(PaddedWindows, swin_transformer.SwinTransformerBlock):
    pass


class SwinExtras:
    """Mixin for timm Swin models: the SimMIM mask token at the patch embedding, ``stride``, the official
    layer-decay grouping, and the attention kernel."""

    attention_class: type[KernelAttention]
    block_class: type[PaddedWindows]

    def __init__(self, spec: EncoderSpec, num_classes: int = 0, mask_token: bool = False) -> None:
        """timm's model as ``spec`` describes it (sizes, image size, window, patch, drop-path rate, position-bias
        windows, extra norm, attention kernel, activation checkpointing), checked before anything is built; it
        takes any input size the patch divides, ``num_classes`` outputs (0: features) and SimMIM's mask token
        when ``mask_token``."""
        record = family(spec.arch, video=False)
        sizes = resolve_arch(spec.arch, spec.sizes())
        if not record.v2 and {"pretrained_window_sizes", "extra_norm_period"} & sizes.keys():
            raise ValueError("pretrained_window_sizes and extra_norm_period are Swin V2 options; Swin V1 has neither")
        size = (spec.img_size, spec.img_size) if isinstance(spec.img_size, int) else tuple(map(int, spec.img_size))
        patch = record.patch(spec.patch_size)
        check_image_geometry(size, patch, spec.window_size, sizes["depths"], sizes["embed_dim"], sizes["num_heads"])
        check_kernel(spec.attn_kernel, spec.attn_chunk_windows)
        extra_norm_period = sizes.pop("extra_norm_period", 0)
        super().__init__(img_size=size, patch_size=patch, window_size=spec.window_size, num_classes=num_classes,
                         drop_path_rate=spec.drop_path_rate, **sizes)
        self.patch_embed.strict_img_size = False  # only the patch must divide the input: blocks and merges pad
        if mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
            trunc_normal_(self.mask_token, std=0.02)
        else:
            self.mask_token = None
        self.set_attention_kernel(spec.attn_kernel, spec.attn_chunk_windows)
        self.extra_norm_period = extra_norm_period  # the paper's extra norm (Swin V2 only, checked above)
        if extra_norm_period:
            for stage in self.layers:
                for index, block in enumerate(stage.blocks):
                    if (index + 1) % extra_norm_period == 0:
                        _add_extra_norm(block)
        self.set_grad_checkpointing(spec.grad_checkpointing)

    def set_attention_kernel(self, kernel: str = "fused", chunk_windows: int | None = None) -> None:
        """Run every window attention with ``kernel`` (``plain``, ``fused``, ``chunked``; see
        :mod:`swinssl.models.attention`), ``chunk_windows`` windows at a time for ``chunked``.

        timm builds its ``WindowAttention`` inside each block and has no argument for another class, so
        the built modules are re-classed to our subclass, which replaces ``forward`` only. Parameters and
        buffers (also the non-persistent index and coordinate tables that ``set_input_size`` rebuilds)
        keep timm's names, shapes and initialization, so checkpoints load unchanged; the kernel can be
        switched at any time, e.g. to ``chunked`` for a high-resolution evaluation.
        """
        check_kernel(kernel, chunk_windows)
        for stage in self.layers:
            for block in stage.blocks:
                block.__class__ = self.block_class  # same re-classing, for windows padded at any input size
                block.attn.__class__ = self.attention_class
                block.attn.kernel, block.attn.chunk_windows = kernel, chunk_windows
        self.attn_kernel, self.attn_chunk_windows = kernel, chunk_windows

    @property
    def stride(self) -> int:
        """Input pixels per output token along one axis (32 for the 4-stage, patch-4 models)."""
        return last_stage_stride(self.patch_embed.patch_size[0], len(self.layers))

    def embed(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Patch embedding (NHWC); tokens where ``mask`` is 1 become the mask token."""
        self._check_input(images)
        tokens = self.patch_embed(images)
        return tokens if mask is None else apply_mask_token(tokens, mask, self.mask_token)

    def _check_input(self, images: torch.Tensor) -> None:
        patch = self.patch_embed.patch_size
        if images.ndim != 4 or images.shape[-2] % patch[0] or images.shape[-1] % patch[1]:
            raise ValueError(f"expected images (B, C, H, W) with H and W multiples of the patch size {patch[0]}, got "
                             f"shape {tuple(images.shape)}; pad or crop them")

    def forward_intermediates(self, images: torch.Tensor, *args: Any, **kwargs: Any):
        """timm's ``forward_intermediates`` (NCHW maps of the chosen stages), at any size the patch divides."""
        self._check_input(images)
        return super().forward_intermediates(images, *args, **kwargs)

    def forward_features(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) -> final-normed (B, H/32, W/32, C_out) features, timm's NHWC layout."""
        return self.norm(self.layers(self.embed(images, mask)))

    def pretrained_window_sizes(self) -> list[int]:
        """Per stage, the window a Swin V2 position-bias MLP normalizes its coordinates by (V1: the table's).

        That is the pretrained window when one was set, else the stage's (clipped) window; a model moved
        to a larger size must keep these, so checkpoints record them.
        """
        windows = []
        for stage in self.layers:
            attn = stage.blocks[0].attn
            pretrained = getattr(attn, "pretrained_window_size", (0, 0))[0]
            windows.append(int(pretrained) if pretrained > 0 else int(stage.blocks[0].window_size[0]))
        return windows

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | ({"mask_token"} if self.mask_token is not None else set())

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        """Fine grouping = the official SimMIM fine-tune layer ids (``get_swin_layer``), for timm's layer decay.

        Patch embedding and mask token 0; block j of stage s: sum(depths[:s]) + j + 1; a merge layer (timm
        puts it at the start of stage s) shares the id of the last block before it; final norm and head
        N + 1, so they keep the full rate. timm's own grouping puts merges and the final norm one step off.
        """
        if coarse:
            return super().group_matcher(coarse)
        return partial(swin_layer_id, depths=[len(stage.blocks) for stage in self.layers])


def swin_layer_id(name: str, depths: list[int]) -> int:
    if name.startswith(("patch_embed.", "mask_token", "absolute_pos_embed")):
        return 0
    if match := re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", name):
        return sum(depths[: int(match[1])]) + int(match[2]) + 1
    if match := re.match(r"layers\.(\d+)\.downsample\.", name):
        return sum(depths[: int(match[1])])
    return sum(depths) + 1


class SwinV2Encoder(SwinExtras, SwinTransformerV2):
    """timm Swin V2 with an optional SimMIM mask token, the paper's periodic extra norm and a choice of
    attention kernel."""

    attention_class = WindowAttentionV2
    block_class = PaddedBlockV2
    family = "swinv2"


class SwinEncoder(SwinExtras, SwinTransformer):
    """timm Swin V1 with an optional SimMIM mask token and a choice of attention kernel."""

    attention_class = WindowAttentionV1
    block_class = PaddedBlockV1
    family = "swin"


ENCODERS = {encoder.family: encoder for encoder in (SwinV2Encoder, SwinEncoder)}


def _add_extra_norm(block: SwinTransformerV2Block) -> None:
    block.norm3 = nn.LayerNorm(block.dim)
    block.register_forward_hook(_apply_extra_norm)


def _apply_extra_norm(block: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
    return block.norm3(output)


def build_encoder(spec: EncoderSpec | str = "swinv2_base", num_classes: int = 0, mask_token: bool = False,
                  **settings: Any) -> SwinV2Encoder | SwinEncoder:
    """A freshly initialized image encoder as ``spec`` describes it: a preset (``swinv2_{tiny,...,giant}``,
    ``swin_{tiny,...,large}``) or a family (``swinv2``, ``swin``) with its sizes, at its image size and window
    (both required) and patch (None: the family's), with its drop-path rate, attention kernel (``plain``, ``fused``, ``chunked`` with
    ``attn_chunk_windows`` windows per chunk, ``triton``; :mod:`swinssl.models.attention`; all compute the same
    function) and activation checkpointing. ``num_classes=0`` gives a feature encoder; ``mask_token`` adds
    SimMIM's mask token.

    ``spec`` may be an arch name, with ``settings`` (:class:`~swinssl.models.registry.EncoderSpec` fields) laid
    over it: ``build_encoder("swinv2", img_size=64, window_size=4, embed_dim=16, depths=..., num_heads=...)``.
    """
    spec = (spec if isinstance(spec, EncoderSpec) else EncoderSpec(arch=spec)).updated(settings)
    return ENCODERS[family(spec.arch, video=False).name](spec, num_classes=num_classes, mask_token=mask_token)
