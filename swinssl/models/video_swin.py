"""Video Swin encoders: shifted 3D windows over (time, height, width), in Swin V2 or Swin V1 attention style.

Parameter names mirror timm's image Swin (``patch_embed.proj``, ``layers.N.downsample``,
``layers.N.blocks.M.attn.{qkv,cpb_mlp,relative_position_bias_table,proj}``, ``norm``, ``head.fc``), so
inflating an image checkpoint (:mod:`swinssl.weights.inflate`) changes tensor shapes, never names.

Geometry follows the official Video Swin code: patches of (2, 4, 4) with the input zero-padded at the end
of each axis; windows (P, M, M) flattened time-major; every other block shifted by half a window on each
axis; on an axis whose feature size is at most the window, the window is clipped to that size and that
axis is not shifted; patch merging is spatial only, so time keeps T/2 tokens through every stage.
Two rules for windows that are clipped or padded, both the same at the official sizes (tokens a multiple
of the window, no spatial clipping): ``window_rule="official"`` computes the official code's function (a
clipped window reads ``relative_position_index[:N, :N]`` of the full window, which is the geometric bias
only when time is the clipped axis; real tokens attend to padding); ``"geometric"`` reads the bias of the
clipped window's own offsets and masks padding out of attention. Official is the default of the official
architecture (V1 style, joint attention), so official weights give mmaction2's function at every size;
geometric is the default otherwise, and the only rule of Swin V2 style, which has no official video code.

``attention="factorized"`` replaces joint attention by spatial (1, M, M) then temporal (P, 1, 1) window
attention in each block, the Video Swin paper's ablation; the temporal part starts at zero, so it is an
identity until trained.

Backbone use follows timm: ``feature_info`` per stage, ``forward_intermediates`` giving (B, C, T, H, W) maps,
``prune_intermediate_layers``; :func:`swinssl.models.backbone.features_only` wraps it as timm's ``features_only``.

``attn_kernel`` picks how window attention is computed (``plain``, ``fused``, ``chunked``;
:mod:`swinssl.models.attention`, shared with the image models); every kernel computes the same function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import swin_transformer, swin_transformer_v2
from timm.models._features import feature_take_indices  # timm's own models import it from here
from torch import nn
from torch.utils.checkpoint import checkpoint

from swinssl.masking import apply_mask_token
from swinssl.models.attention import KernelAttention, check_kernel
from swinssl.models.packing import positioned_attention
from swinssl.models.registry import (
    ATTENTION_MODES,
    EncoderSpec,
    Triple,
    check_video_geometry,
    check_window_rule,
    family,
    family_for,
    last_stage_stride,
    resolve_arch,
    video_pretrained_windows,
)
from swinssl.models.windows import (
    clip_window,
    cosine_query_key,
    gather_bias,
    relative_position_index,
    window_log_cpb_bias,
    windowed_attention,
)

INTERMEDIATE_FORMATS = ("NCTHW", "NTHWC")


class WindowAttention3D(KernelAttention, nn.Module):
    """Multi-head self-attention inside 3D windows with a relative position bias; the V2 and V1 styles below
    say how q, k, v and the bias are made, and the chosen kernel (:mod:`swinssl.models.attention`) runs it.

    ``window_size`` is the window the module is built for; ``forward`` takes the (possibly clipped) window of
    the current input. ``window_rule`` says how clipped and padded windows are treated (module docstring).
    """

    window_rule: str = "geometric"

    def __init__(self, num_heads: int, window_size: Triple) -> None:
        super().__init__()
        self.num_heads, self.window_size = num_heads, window_size
        self.attn_drop, self.proj_drop = nn.Dropout(0.0), nn.Dropout(0.0)  # no parameters: names stay official

    def forward(self, x: torch.Tensor, window: Triple, mask: torch.Tensor | None) -> torch.Tensor:
        """(B * windows, N, C) -> same; ``mask`` (windows, N, N) is added before the softmax."""
        q, k, v, bias, scale = self.attention_inputs(x, window)
        return self.attend(q, k, v, bias, mask, scale)

    def split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch_windows, tokens, _ = qkv.shape
        return qkv.reshape(batch_windows, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


class WindowAttention3DV2(WindowAttention3D):
    """Swin V2 style: scaled cosine attention with a learned, clamped logit scale, q/v biases, and a log-spaced
    continuous position bias from ``cpb_mlp`` over (dt, dh, dw), each axis normalized by its
    ``pretrained_window_size`` entry (or the current window where that is 0)."""

    def __init__(self, dim: int, num_heads: int, window_size: Triple, pretrained_window_size: Triple = (0, 0, 0)) -> None:
        super().__init__(num_heads, window_size)
        self.pretrained_window_size = pretrained_window_size
        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        self.cpb_mlp = nn.Sequential(nn.Linear(3, 512), nn.ReLU(inplace=True), nn.Linear(512, num_heads, bias=False))
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def attention_inputs(self, x: torch.Tensor, window: Triple):
        qkv = F.linear(x, self.qkv.weight, torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias)))
        q, k, v = self.split_heads(qkv)
        q, k, scale = cosine_query_key(q, k, self.logit_scale)
        return q, k, v, self.position_bias(window), scale

    def position_bias(self, window: Triple) -> torch.Tensor:
        """(heads, N, N) bias for a (possibly clipped) ``window``."""
        pretrained = tuple(p if p > 0 else n for p, n in zip(self.pretrained_window_size, window))
        return window_log_cpb_bias(self.cpb_mlp, self.num_heads, window, pretrained)


class WindowAttention3DV1(WindowAttention3D):
    """Swin V1 style (official Video Swin): scaled dot product and a learned table of (2P-1)(2M-1)(2M-1) rows for
    the window the module was built with; a clipped window of N tokens reads ``index[:N, :N]`` of the full window
    (official rule) or the rows of its own offsets (geometric rule)."""

    def __init__(self, dim: int, num_heads: int, window_size: Triple) -> None:
        super().__init__(num_heads, window_size)
        self.qkv = nn.Linear(dim, dim * 3)
        rows = math.prod(2 * n - 1 for n in window_size)
        self.relative_position_bias_table = nn.Parameter(trunc_normal_(torch.zeros(rows, num_heads), std=0.02))
        self.scale = (dim // num_heads) ** -0.5
        self.proj = nn.Linear(dim, dim)

    def attention_inputs(self, x: torch.Tensor, window: Triple):
        q, k, v = self.split_heads(self.qkv(x))
        return q * self.scale, k, v, self.position_bias(window), None

    def position_bias(self, window: Triple) -> torch.Tensor:
        device = self.proj.weight.device
        if self.window_rule == "official":
            tokens = math.prod(window)
            index = relative_position_index(self.window_size, self.window_size, device)[:tokens, :tokens]
        else:
            index = relative_position_index(window, self.window_size, device)
        return gather_bias(self.relative_position_bias_table, index)


def window_attention_module(dim: int, num_heads: int, window_size: Triple, style: str,
                            pretrained_window_size: Triple) -> WindowAttention3D:
    if style == "v2":
        return WindowAttention3DV2(dim, num_heads, window_size, pretrained_window_size)
    return WindowAttention3DV1(dim, num_heads, window_size)


def clipped_window_attention(attn: WindowAttention3D, x: torch.Tensor, window: Triple, shift: Triple) -> torch.Tensor:
    """Apply ``attn`` in (shifted) windows to (B, D, H, W, C), the windows clipped to the feature size first."""
    window, shift = clip_window(tuple(x.shape[1:4]), window, shift)
    return windowed_attention(lambda windows, mask: attn(windows, window, mask), x, window, shift,
                              mask_padding=attn.window_rule == "geometric")


class VideoSwinBlock(nn.Module):
    """One transformer block; V2 normalizes each branch's output (res-post-norm), V1 its input (pre-norm)."""

    def __init__(self, dim: int, num_heads: int, window_size: Triple, shifted: bool, style: str, attention: str,
                 mlp_ratio: float, drop_path: float, pretrained_window_size: Triple) -> None:
        super().__init__()
        self.style = style
        half = tuple(n // 2 if shifted else 0 for n in window_size)
        if attention == "joint":
            self.window, self.shift = window_size, half
        else:  # factorized: spatial windows here, temporal ones in temporal_attn
            self.window, self.shift = (1, *window_size[1:]), (0, *half[1:])
            self.temporal_window, self.temporal_shift = (window_size[0], 1, 1), (half[0], 0, 0)
            self.temporal_norm = nn.LayerNorm(dim)
            self.temporal_attn = window_attention_module(
                dim, num_heads, self.temporal_window, style, (pretrained_window_size[0], 1, 1)
            )
        self.norm1 = nn.LayerNorm(dim)
        pretrained = pretrained_window_size if attention == "joint" else (1, *pretrained_window_size[1:])
        self.attn = window_attention_module(dim, num_heads, self.window, style, pretrained)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def branches(self) -> list[tuple[nn.LayerNorm, WindowAttention3D, Triple, Triple]]:
        joint = [(self.norm1, self.attn, self.window, self.shift)]
        if hasattr(self, "temporal_attn"):
            joint.append((self.temporal_norm, self.temporal_attn, self.temporal_window, self.temporal_shift))
        return joint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for norm, attn, window, shift in self.branches():
            if self.style == "v2":
                x = x + self.drop_path(norm(self.window_attention(attn, x, window, shift)))
            else:
                x = x + self.drop_path(self.window_attention(attn, norm(x), window, shift))
        if self.style == "v2":
            return x + self.drop_path(self.norm2(self.mlp(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


    def window_attention(self, attn: WindowAttention3D, x: torch.Tensor, window: Triple, shift: Triple) -> torch.Tensor:
        positions = getattr(self, "token_positions", None)
        if positions is None:
            return clipped_window_attention(attn, x, window, shift)
        # packed masked pretraining: offsets of the tokens' positions (swinssl.models.packing)
        return positioned_attention(attn, x, *positions, window, shift, attn.attention_inputs)


class _SpatialMerging:
    """timm's 2x2 patch merging applied to every time step: (B, D, H, W, C) -> (B, D, H/2, W/2, 2C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w, c = x.shape
        merged = super().forward(x.reshape(b * d, h, w, c))
        return merged.view(b, d, *merged.shape[1:])


class PatchMergingV2(_SpatialMerging, swin_transformer_v2.PatchMerging):
    """Swin V2 merging: reduce 4C -> 2C, then LayerNorm."""


class PatchMergingV1(_SpatialMerging, swin_transformer.PatchMerging):
    """Swin V1 merging: LayerNorm over 4C, then reduce (the official Video Swin order of neighbours)."""


class VideoSwinStage(nn.Module):
    """Spatial merging (stages after the first, timm's placement) and ``depth`` blocks, alternately shifted."""

    def __init__(self, dim: int, out_dim: int, depth: int, downsample: bool, drop_path: list[float],
                 **block: Any) -> None:
        super().__init__()
        merging = PatchMergingV2 if block["style"] == "v2" else PatchMergingV1
        self.downsample = merging(dim=dim, out_dim=out_dim) if downsample else nn.Identity()
        self.blocks = nn.ModuleList(
            VideoSwinBlock(out_dim, shifted=i % 2 == 1, drop_path=drop_path[i], **block) for i in range(depth)
        )
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class PatchEmbed3D(nn.Module):
    """Non-overlapping (t, p, p) patches -> tokens (B, D, H, W, C), input zero-padded at the end of each axis."""

    def __init__(self, patch_size: Triple, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        t, h, w = video.shape[-3:]
        pads = [(-size) % p for size, p in zip((t, h, w), self.patch_size)]
        video = F.pad(video, (0, pads[2], 0, pads[1], 0, pads[0]))
        return self.norm(self.proj(video).permute(0, 2, 3, 4, 1))


class VideoHead(nn.Module):
    """Average over time and space, dropout, linear (the official I3D head); ``num_classes=0``: features only."""

    def __init__(self, in_features: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x.mean(dim=(1, 2, 3)))
        return x if pre_logits else self.fc(x)


class VideoSwinEncoder(nn.Module):
    """Video Swin over (B, 3, T, H, W) clips; ``forward_features`` gives final-normed (B, T', H', W', C) tokens."""

    def __init__(self, spec: EncoderSpec, num_classes: int = 0, mask_token: bool = False) -> None:
        """The model ``spec`` describes (sizes, clip, window and patch, attention, window rule, position-bias
        windows, drop-path rate, head dropout, attention kernel, activation checkpointing), checked before anything
        is built; ``num_classes`` outputs (0: features) and SimMIM's mask token when ``mask_token``."""
        record = family(spec.arch, video=True)
        sizes = resolve_arch(spec.arch, spec.sizes())
        if "extra_norm_period" in sizes:
            raise ValueError("extra_norm_period is a Swin V2 image option; Video Swin has none")
        if spec.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {spec.attention!r}")
        window_size, patch_size = record.window(spec.window_size), record.patch(spec.patch_size)
        embed_dim, depths, num_heads = sizes["embed_dim"], sizes["depths"], sizes["num_heads"]
        stages = len(depths)
        pretrained = sizes.get("pretrained_window_sizes")
        pretrained = video_pretrained_windows(pretrained, stages) if pretrained is not None else [(0, 0, 0)] * stages
        check_video_geometry(spec.num_frames, spec.img_size, patch_size, window_size, depths, embed_dim, num_heads)
        check_kernel(spec.attn_kernel, spec.attn_chunk_windows)
        style, attention = record.style, spec.attention
        window_rule = spec.window_rule or record.window_rule(attention)
        check_window_rule(window_rule, style)
        super().__init__()
        self.num_frames, self.img_size, self.style, self.attention = spec.num_frames, spec.img_size, style, attention
        self.window_size, self.num_classes = window_size, num_classes
        self._requested_pretrained_windows = pretrained = tuple(pretrained)
        rates = torch.linspace(0, spec.drop_path_rate, sum(depths)).tolist()
        self.patch_embed = PatchEmbed3D(patch_size, embed_dim)
        self.layers = nn.Sequential(*(
            VideoSwinStage(
                dim=embed_dim * 2 ** max(s - 1, 0), out_dim=embed_dim * 2**s, depth=depths[s], downsample=s > 0,
                drop_path=rates[sum(depths[:s]): sum(depths[: s + 1])], num_heads=num_heads[s],
                window_size=window_size, style=style, attention=attention, mlp_ratio=4.0,  # as every Swin
                pretrained_window_size=pretrained[s],
            )
            for s in range(stages)
        ))
        self.num_features = embed_dim * 2 ** (stages - 1)
        self.feature_info = [dict(num_chs=embed_dim * 2**s, reduction=patch_size[1] * 2**s, module=f"layers.{s}")
                             for s in range(stages)]
        self.norm = nn.LayerNorm(self.num_features)
        self.head = VideoHead(self.num_features, num_classes, spec.head_dropout)
        # SimMIM's mask token, shaped as the image model's so inflation copies it unchanged
        self.mask_token = nn.Parameter(trunc_normal_(torch.zeros(1, 1, embed_dim), std=0.02)) if mask_token else None
        self.apply(_init_weights)
        for module in self.modules():
            if isinstance(module, VideoSwinBlock):
                if style == "v2":  # res-post-norm starts at zero, as timm and the official V2 do
                    for norm in (module.norm1, module.norm2, getattr(module, "temporal_norm", None)):
                        if norm is not None:
                            nn.init.zeros_(norm.weight)
                if hasattr(module, "temporal_attn"):  # the factorized temporal branch starts as an identity
                    nn.init.zeros_(module.temporal_attn.proj.weight)
        self.set_grad_checkpointing(spec.grad_checkpointing)
        self.set_attention_kernel(spec.attn_kernel, spec.attn_chunk_windows)
        self.window_rule = window_rule
        for module in self.modules():
            if isinstance(module, WindowAttention3D):
                module.window_rule = window_rule

    @property
    def family(self) -> str:
        return family_for(video=True, v2=self.style == "v2").name

    def set_attention_kernel(self, kernel: str = "fused", chunk_windows: int | None = None) -> None:
        """Run every window attention (joint, spatial and temporal) with ``kernel``; switchable at any time."""
        check_kernel(kernel, chunk_windows)
        for module in self.modules():
            if isinstance(module, WindowAttention3D):
                module.kernel, module.chunk_windows = kernel, chunk_windows
        self.attn_kernel, self.attn_chunk_windows = kernel, chunk_windows

    def stage_sizes(self, num_frames: int | None = None, img_size: int | None = None) -> list[Triple]:
        """Token grid (time, height, width) of each stage for a clip of this many frames and pixels."""
        t, p, _ = self.patch_embed.patch_size
        frames, size = num_frames or self.num_frames, img_size or self.img_size
        return [(math.ceil(frames / t), math.ceil(size / p / 2**s), math.ceil(size / p / 2**s))
                for s in range(len(self.layers))]

    def pretrained_window_sizes(self) -> list[list[int]]:
        """Per stage, the (t, h, w) window the position bias is laid out for. V2: what its coordinates are
        normalized by (the pretrained window, else the window clipped at the built size); V1: the table's."""
        if self.style == "v1":
            return [list(self.window_size) for _ in self.layers]
        windows = []
        for pretrained, size in zip(self._requested_pretrained_windows, self.stage_sizes()):
            clipped, _ = clip_window(size, self.window_size, (0, 0, 0))
            windows.append([p if p > 0 else n for p, n in zip(pretrained, clipped)])
        return windows

    @property
    def stride(self) -> Triple:
        """Input (frames, pixels, pixels) per output token: patch merging is spatial only."""
        return last_stage_stride(tuple(self.patch_embed.patch_size), len(self.layers))

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.layers:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        keywords = ("cpb_mlp", "logit_scale", "relative_position_bias_table", "mask_token")
        return {name for name, _ in self.named_parameters() if any(word in name for word in keywords)}

    def embed(self, video: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Patch embedding (B, T', H', W', C); tokens where ``mask`` (B, T', H', W') is 1 become the mask token."""
        self._check_input(video)
        tokens = self.patch_embed(video)
        return tokens if mask is None else apply_mask_token(tokens, mask, self.mask_token)

    def forward_features(self, video: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, T, H, W) -> final-normed (B, T', H', W', C) tokens; ``mask``: see :meth:`embed`."""
        return self.norm(self.layers(self.embed(video, mask)))

    def forward_intermediates(
        self,
        video: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCTHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's ``forward_intermediates`` for clips: the outputs of the stages ``indices`` (None: all, an int: the
        last n, or a list) as (B, C, T, H, W) maps (``output_fmt="NTHWC"``: channels last); ``norm`` applies the final
        norm to the last stage's map. Returns the maps, or the final-normed features and the maps."""
        if output_fmt not in INTERMEDIATE_FORMATS:
            raise ValueError(f"output_fmt must be one of {INTERMEDIATE_FORMATS}, got {output_fmt!r}")
        take, last = feature_take_indices(len(self.layers), indices)
        x, intermediates = self.embed(video), []
        stages = self.layers[: last + 1] if stop_early else self.layers
        for index, stage in enumerate(stages):
            x = stage(x)
            if index in take:
                kept = self.norm(x) if norm and index == len(self.layers) - 1 else x
                intermediates.append(kept.permute(0, 4, 1, 2, 3).contiguous() if output_fmt == "NCTHW" else kept)
        if intermediates_only:
            return intermediates
        return (self.norm(x) if len(stages) == len(self.layers) else x), intermediates

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last of ``indices`` (and the final norm and head where they no longer fit), as
        timm's models do for ``features_only``; returns the absolute indices."""
        take, last = feature_take_indices(len(self.layers), indices)
        pruned = last < len(self.layers) - 1
        self.layers = self.layers[: last + 1]
        if prune_norm or pruned:
            self.norm = nn.Identity()
        if pruned:
            self.num_features = self.feature_info[last]["num_chs"]
        if prune_head or pruned:
            self.head = VideoHead(self.num_features, 0, 0.0)
            self.num_classes = 0
        return take

    def _check_input(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected a video batch (B, 3, T, H, W), got shape {tuple(video.shape)}")

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(video))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_video_encoder(spec: EncoderSpec | str = "video_swinv2_base", num_classes: int = 0, mask_token: bool = False,
                        **settings: Any) -> VideoSwinEncoder:
    """A freshly initialized Video Swin (``video_swinv2_*`` V2 style, ``video_swin_*`` V1 style) as ``spec``
    describes it, no I/O: sizes, clip (``num_frames``, ``img_size``), window and patch (None: the family's,
    :class:`swinssl.models.registry.Family`: the official Video Swin window and patch), ``attention``,
    ``window_rule`` (``official`` or ``geometric`` bias and padding of clipped windows, module docstring; None is
    official for ``video_swin`` with joint attention, geometric otherwise), ``pretrained_window_sizes`` (per stage
    (t, h, w)), drop-path rate, head dropout, attention kernel and activation checkpointing.

    ``spec`` may be an arch name (then 224 px and the family's window), with ``settings``
    (:class:`~swinssl.models.registry.EncoderSpec` fields) laid over it, as :func:`swinssl.models.build_encoder`.
    """
    if not isinstance(spec, EncoderSpec):
        spec = EncoderSpec(arch=spec, img_size=224, window_size=None)
    return VideoSwinEncoder(spec.updated(settings), num_classes=num_classes, mask_token=mask_token)
