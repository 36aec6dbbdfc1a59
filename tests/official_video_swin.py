"""Test reference: the official Video Swin Transformer (V1) backbone, head and 2D->3D inflation.

Written from the project's reference sheet on the official Video Swin code (official-video-swin.md, sections 1, 2, 6 and 9), not
copied from any repository. It is "what the official code computes" for other tests: parameter and buffer
names follow the official `SwinTransformer3D` / `I3DHead`, so ``model.state_dict()`` has the layout of a
released checkpoint (see ``official_checkpoint``), and the numerics keep the official quirks:

* ``get_window_size`` clips a window to the feature size when feature <= window and then zeroes that shift;
* zero padding at the end of each axis only; d-major (t, h, w) windows and d-major bias index;
* the bias is read as ``table[index[:N, :N]]`` with N the (possibly clipped) window volume;
* the shift mask (-100.0 between regions) is built once per stage on the padded size and only used by
  shifted blocks, so padded tokens are *not* masked in unshifted blocks;
* patch merging is spatial only and sits at the end of stages 1..3 (``layers.i.downsample``).

Only eval-mode behaviour matters (dropout and stochastic depth off).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_

__all__ = [
    "get_window_size", "window_partition", "window_reverse", "compute_mask", "relative_position_index",
    "WindowAttention3D", "SwinTransformerBlock3D", "PatchMerging", "BasicLayer", "PatchEmbed3D",
    "OfficialSwinTransformer3D", "OfficialI3DHead", "official_checkpoint", "official_inflate",
]


def get_window_size(x_size, window_size, shift_size=None):
    """Per axis: if feature <= window, the window becomes the feature size and the shift becomes 0."""
    window, shift = list(window_size), None if shift_size is None else list(shift_size)
    for i, size in enumerate(x_size):
        if size <= window_size[i]:
            window[i] = size
            if shift is not None:
                shift[i] = 0
    return tuple(window) if shift is None else (tuple(window), tuple(shift))


def window_partition(x, window_size):
    """(B, D, H, W, C) -> (B * nW, Wd * Wh * Ww, C); windows ordered (b, d, h, w), tokens d-major inside."""
    b, d, h, w, c = x.shape
    wd, wh, ww = window_size
    x = x.view(b, d // wd, wd, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wd * wh * ww, c)


def window_reverse(windows, window_size, b, d, h, w):
    """Exact inverse of ``window_partition``."""
    wd, wh, ww = window_size
    x = windows.view(b, d // wd, h // wh, w // ww, wd, wh, ww, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)


def compute_mask(d, h, w, window_size, shift_size, device=None):
    """Shift mask (nW, N, N) on the padded size: 0 within a region, -100.0 across regions.

    Each axis is cut into [0, -window), [-window, -shift), [-shift, end) with python slices, labelled in
    nested (d, h, w) order; with shift 0 the last slice is the whole axis and overwrites the others.
    """
    labels = torch.zeros((1, d, h, w, 1), device=device)
    cuts = [(slice(None, -win), slice(-win, -s), slice(-s, None)) for win, s in zip(window_size, shift_size)]
    count = 0
    for sd in cuts[0]:
        for sh in cuts[1]:
            for sw in cuts[2]:
                labels[:, sd, sh, sw, :] = count
                count += 1
    windows = window_partition(labels, window_size).squeeze(-1)  # (nW, N)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def relative_position_index(window_size):
    """(N, N) index of the pair offset (dt, dh, dw), temporal offset as the most significant digit."""
    wd, wh, ww = window_size
    grid = torch.stack(torch.meshgrid(torch.arange(wd), torch.arange(wh), torch.arange(ww), indexing="ij"))
    flat = grid.flatten(1)  # (3, N), d-major
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0)  # (N, N, 3): offset of token i minus token j
    rel = rel + torch.tensor([wd - 1, wh - 1, ww - 1])
    return rel[..., 0] * (2 * wh - 1) * (2 * ww - 1) + rel[..., 1] * (2 * ww - 1) + rel[..., 2]


class WindowAttention3D(nn.Module):
    def __init__(self, dim, window_size, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, tuple(window_size), num_heads
        self.scale = (dim // num_heads) ** -0.5
        wd, wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1), num_heads))
        self.register_buffer("relative_position_index", relative_position_index(self.window_size))  # persistent
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x, mask=None):
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        # Official quirk: slice the full-window index to the run-time window volume N.
        bias = self.relative_position_bias_table[self.relative_position_index[:n, :n].reshape(-1)]
        attn = attn + bias.reshape(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    def __init__(self, dim, hidden, drop=0.0):
        super().__init__()
        self.fc1, self.act, self.fc2, self.drop = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SwinTransformerBlock3D(nn.Module):
    """Pre-norm V1 block on (B, D, H, W, C)."""

    def __init__(self, dim, num_heads, window_size, shift_size=(0, 0, 0), mlp_ratio=4.0, drop_path=0.0):
        super().__init__()
        self.window_size, self.shift_size = tuple(window_size), tuple(shift_size)
        assert all(0 <= s < w for s, w in zip(self.shift_size, self.window_size))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, self.window_size, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def attention_branch(self, x, mask_matrix):
        b, d, h, w, c = x.shape
        window, shift = get_window_size((d, h, w), self.window_size, self.shift_size)
        x = self.norm1(x)
        pd, ph, pw = [(-size) % win for size, win in zip((d, h, w), window)]
        x = F.pad(x, (0, 0, 0, pw, 0, ph, 0, pd))  # zeros at the end of W, H, D (after the norm)
        _, dp, hp, wp, _ = x.shape
        shifted = any(s > 0 for s in shift)
        if shifted:
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        windows = self.attn(window_partition(x, window), mask=mask_matrix if shifted else None)
        x = window_reverse(windows.view(-1, *window, c), window, b, dp, hp, wp)
        if shifted:
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return x[:, :d, :h, :w, :].contiguous()

    def forward(self, x, mask_matrix):
        x = x + self.drop_path(self.attention_branch(x, mask_matrix))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Spatial-only 2x2 merging on (B, D, H, W, C): LayerNorm(4C) then Linear(4C -> 2C, no bias)."""

    def __init__(self, dim):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x):
        h, w = x.shape[2], x.shape[3]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x0, x1 = x[:, :, 0::2, 0::2, :], x[:, :, 1::2, 0::2, :]  # (h, w) offsets (0, 0), (1, 0)
        x2, x3 = x[:, :, 0::2, 1::2, :], x[:, :, 1::2, 1::2, :]  # (0, 1), (1, 1)
        return self.reduction(self.norm(torch.cat([x0, x1, x2, x3], dim=-1)))


class BasicLayer(nn.Module):
    """One stage on (B, C, D, H, W): blocks alternate shift 0 / window//2, then optional merging."""

    def __init__(self, dim, depth, num_heads, window_size, mlp_ratio=4.0, drop_path=(), downsample=False):
        super().__init__()
        self.window_size = tuple(window_size)
        self.shift_size = tuple(w // 2 for w in window_size)
        drop_path = list(drop_path) or [0.0] * depth
        self.blocks = nn.ModuleList([
            SwinTransformerBlock3D(dim, num_heads, self.window_size, (0, 0, 0) if i % 2 == 0 else self.shift_size,
                                   mlp_ratio, drop_path[i]) for i in range(depth)])
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x):
        b, c, d, h, w = x.shape
        window, shift = get_window_size((d, h, w), self.window_size, self.shift_size)
        x = x.permute(0, 2, 3, 4, 1)
        dp, hp, wp = [-(-size // win) * win for size, win in zip((d, h, w), window)]
        mask = compute_mask(dp, hp, wp, window, shift, x.device)  # handed to every block, used only when shifted
        for block in self.blocks:
            x = block(x, mask)
        x = x.reshape(b, d, h, w, -1)
        if self.downsample is not None:
            x = self.downsample(x)
        return x.permute(0, 4, 1, 2, 3)


class PatchEmbed3D(nn.Module):
    def __init__(self, patch_size=(2, 4, 4), in_chans=3, embed_dim=96, patch_norm=True):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else None

    def forward(self, x):
        _, _, d, h, w = x.shape
        pd, ph, pw = [(-size) % p for size, p in zip((d, h, w), self.patch_size)]
        x = self.proj(F.pad(x, (0, pw, 0, ph, 0, pd)))  # zeros at the end of W, H, T
        if self.norm is not None:
            x = self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        return x


class OfficialSwinTransformer3D(nn.Module):
    """Backbone: (B, 3, T, H, W) -> (B, 8C, T/2, H/32, W/32), final-LayerNorm'd, channels first."""

    def __init__(self, patch_size=(2, 4, 4), embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                 window_size=(8, 7, 7), mlp_ratio=4.0, drop_path_rate=0.0, in_chans=3, patch_norm=True):
        super().__init__()
        self.patch_size, self.window_size = tuple(patch_size), tuple(window_size)
        self.num_layers = len(depths)
        self.patch_embed = PatchEmbed3D(patch_size, in_chans, embed_dim, patch_norm)
        self.pos_drop = nn.Dropout(0.0)
        dpr = [r.item() for r in torch.linspace(0, drop_path_rate, sum(depths))]
        self.layers = nn.ModuleList([
            BasicLayer(embed_dim * 2 ** i, depths[i], num_heads[i], window_size, mlp_ratio,
                       dpr[sum(depths[:i]):sum(depths[:i + 1])], downsample=i < self.num_layers - 1)
            for i in range(self.num_layers)])
        self.num_features = embed_dim * 2 ** (self.num_layers - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            x = layer(x.contiguous())
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class OfficialI3DHead(nn.Module):
    """mmaction I3DHead: AdaptiveAvgPool3d(1) -> Dropout -> Linear ``fc_cls``."""

    def __init__(self, num_classes, in_channels, dropout=0.5):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc_cls = nn.Linear(in_channels, num_classes)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.zeros_(self.fc_cls.bias)

    def forward(self, x):
        return self.fc_cls(self.dropout(self.avg_pool(x)).flatten(1))


def official_checkpoint(backbone, head):
    """mmcv layout of a released Video Swin checkpoint: {"state_dict": {"backbone.*", "cls_head.*"}, "meta": {}}."""
    state = {"backbone." + k: v.detach().clone() for k, v in backbone.state_dict().items()}
    state.update({"cls_head." + k: v.detach().clone() for k, v in head.state_dict().items()})
    return {"state_dict": state, "meta": {}}


def official_inflate(state_2d, backbone3d):
    """Official 2D -> 3D inflation of a Microsoft-format Swin V1 ``model`` dict into ``backbone3d`` (in place).

    Drops index/mask buffers, repeats the patch kernel over time divided by the temporal patch size,
    bicubic-resizes each bias table to (2M-1)^2 rows if needed and tiles it 2P-1 times, loads strict=False.
    """
    state = {k: v for k, v in state_2d.items() if "relative_position_index" not in k and "attn_mask" not in k}
    pt = backbone3d.patch_size[0]
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"].unsqueeze(2).repeat(1, 1, pt, 1, 1) / pt
    wd, wh, ww = backbone3d.window_size
    current = backbone3d.state_dict()
    for key in [k for k in state if "relative_position_bias_table" in k]:
        table = state[key]
        l1, nh1 = table.shape
        nh2, l2 = current[key].shape[1], (2 * wh - 1) * (2 * ww - 1)
        # A head-count mismatch only warns officially: the table is still tiled and the load then fails.
        if nh1 == nh2 and l1 != l2:
            s1 = int(l1 ** 0.5)
            resized = F.interpolate(table.permute(1, 0).reshape(1, nh1, s1, s1), size=(2 * wh - 1, 2 * ww - 1),
                                    mode="bicubic")
            table = resized.reshape(nh2, l2).permute(1, 0)
        state[key] = table.repeat(2 * wd - 1, 1)
    backbone3d.load_state_dict(state, strict=False)
