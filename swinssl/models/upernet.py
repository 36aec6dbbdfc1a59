"""UperNet on a ``features_only`` encoder: the semantic segmentation model of the official Swin ADE20K configs.

A decode head (pyramid pooling over the last stage, a top-down feature pyramid over all of them, fused at stride
4) and an auxiliary FCN head on one stage (the third by default), both 1x1-classified and upsampled to the input.
Parameter names and the function are those of HF transformers' ``UperNetForSemanticSegmentation`` (its
``decode_head.*`` / ``auxiliary_head.*``), so a trained model exports to it exactly without transformers being
needed here; mmsegmentation's dropout before the classifiers (0.1) acts in training only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.models._features import FeatureGetterNet
from torch import nn

from swinssl.models.swin import swin_layer_id


@dataclass(frozen=True)
class UperNetSpec:
    """The heads' sizes (mmsegmentation's UperNet + FCN defaults) and the auxiliary loss weight."""

    channels: int = 512
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    auxiliary_channels: int = 256
    auxiliary_index: int = 2
    auxiliary_num_convs: int = 1
    auxiliary_weight: float = 0.4  # 0: no auxiliary head
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> UperNetSpec:
        """The spec from :meth:`to_dict`'s plain values (or a recipe's), lists back to tuples."""
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in (values or {}).items()})


class ConvNormReLU(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU, named as HF's ``UperNetConvModule``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.batch_norm = nn.BatchNorm2d(out_channels)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.batch_norm(self.conv(x)))


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class UperNetHead(nn.Module):
    """Pyramid pooling on the last map, lateral 1x1 convs on the others, top-down sums, 3x3 convs, all maps
    upsampled to the first and fused by a 3x3 conv, then dropout and a 1x1 classifier."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, spec: UperNetSpec) -> None:
        super().__init__()
        channels, last = spec.channels, in_channels[-1]
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvNormReLU(last, channels, 1)) for scale in spec.pool_scales)
        self.bottleneck = ConvNormReLU(last + len(spec.pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvNormReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvNormReLU(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvNormReLU(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(spec.dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        top = maps[-1]
        pooled = [_resize(module(top), top.shape[2:]) for module in self.psp_modules]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, maps, strict=False)]
        laterals.append(self.bottleneck(torch.cat([top, *pooled], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=False)] + [laterals[-1]]
        size = outs[0].shape[2:]
        fused = self.fpn_bottleneck(torch.cat([outs[0], *(_resize(x, size) for x in outs[1:])], dim=1))
        return self.classifier(self.dropout(fused))


class FCNHead(nn.Module):
    """The auxiliary head: 3x3 conv(s) on one stage's map, dropout, a 1x1 classifier (HF ``UperNetFCNHead``)."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, spec: UperNetSpec) -> None:
        super().__init__()
        self.in_index = spec.auxiliary_index
        widths = [in_channels[self.in_index]] + [spec.auxiliary_channels] * spec.auxiliary_num_convs
        self.convs = nn.Sequential(*(ConvNormReLU(a, b, 3) for a, b in zip(widths, widths[1:]))) \
            if spec.auxiliary_num_convs else nn.Identity()
        self.dropout = nn.Dropout2d(spec.dropout)
        self.classifier = nn.Conv2d(widths[-1], num_classes, 1)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.dropout(self.convs(maps[self.in_index])))


class UperNet(nn.Module):
    """``backbone`` (a ``features_only`` encoder over every stage) + :class:`UperNetHead` (+ :class:`FCNHead`).

    ``forward(images)`` gives the logits (B, classes, H, W) at the input size; :meth:`forward_train` also the
    auxiliary logits (None without an auxiliary head).
    """

    def __init__(self, backbone: FeatureGetterNet, num_classes: int, spec: UperNetSpec = UperNetSpec()) -> None:
        super().__init__()
        channels = list(backbone.feature_info.channels())
        if len(channels) < 2 or (spec.auxiliary_weight and not -len(channels) <= spec.auxiliary_index < len(channels)):
            raise ValueError(f"UperNet needs at least two stage maps and its auxiliary stage among them; the backbone "
                             f"gives {len(channels)}")
        self.backbone = backbone
        self.decode_head = UperNetHead(channels, num_classes, spec)
        self.auxiliary_head = FCNHead(channels, num_classes, spec) if spec.auxiliary_weight else None
        self.spec = spec
        for head in (self.decode_head, self.auxiliary_head):
            if head is not None:
                head.apply(_init_head)
                nn.init.normal_(head.classifier.weight, std=0.01)  # mmsegmentation's conv_seg init
                nn.init.zeros_(head.classifier.bias)

    def forward_train(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        maps = self.backbone(images)
        size = images.shape[2:]
        auxiliary = self.auxiliary_head(maps) if self.auxiliary_head is not None else None
        return _resize(self.decode_head(maps), size), None if auxiliary is None else _resize(auxiliary, size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _resize(self.decode_head(self.backbone(images)), images.shape[2:])

    @property
    def encoder(self) -> nn.Module:
        return self.backbone.model

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"backbone.model.{name}" for name in self.encoder.no_weight_decay()}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        """Layer ids for timm's layer decay: the encoder's official ids, the heads after its last layer."""
        depths = [len(stage.blocks) for stage in self.encoder.layers]
        prefix = re.compile(r"^backbone\.model\.")

        def layer_id(name: str) -> int:
            inner = prefix.sub("", name)
            return swin_layer_id(inner, depths) if inner != name else sum(depths) + 1

        return layer_id


def _init_head(module: nn.Module) -> None:
    """mmcv's ConvModule init: Kaiming-normal convs (fan out, ReLU), unit BatchNorm."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
