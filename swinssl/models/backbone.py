"""Encoders as backbones for dense tasks: timm's ``features_only`` for the image and the video encoders, and an
adapter through which HF transformers' segmentation model (``UperNetForSemanticSegmentation``) runs them.

The encoders take any input size the patch divides (each block pads its map to whole windows), so a detection
or segmentation model can feed them its own crops. transformers is imported only by the HF adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.models._features import FeatureGetterNet
from torch import nn

from swinssl.models.video_swin import VideoSwinEncoder


class VideoFeatureGetterNet(FeatureGetterNet):
    """timm's ``FeatureGetterNet`` for a Video Swin encoder: its forward gives (B, C, T, H, W) stage maps."""

    def forward(self, video: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(video, indices=self.out_indices, norm=self.norm, output_fmt="NCTHW",
                                                intermediates_only=True)


def features_only(model: nn.Module, out_indices: int | Sequence[int] | None = None, norm: bool = False
                  ) -> FeatureGetterNet:
    """``model`` as ``timm.create_model(..., features_only=True)`` makes a timm Swin: a module whose forward returns
    the maps of the stages ``out_indices`` (None: every stage; an int n: the last n; negative indices count from
    the end) as a list of NCHW (image) or NCTHW (video) tensors, with timm's ``feature_info`` (``channels()``,
    ``reduction()``, ``module_name()``, and a dict per stage). Stages after the last one taken are dropped, with the
    head; ``norm`` puts the final norm on the last stage's map (timm's default leaves it off).
    """
    stages = len(model.layers)
    indices = list(range(stages)) if out_indices is None else out_indices
    if isinstance(indices, int):
        valid = 0 < indices <= stages
    else:
        indices = [int(index) for index in indices]
        valid = bool(indices) and all(-stages <= index < stages for index in indices)
    if not valid:
        raise ValueError(f"out_indices {out_indices!r} do not name stages of this {stages}-stage encoder; use indices "
                         f"0..{stages - 1} (negative from the end) or a count 1..{stages}")
    getter = VideoFeatureGetterNet if isinstance(model, VideoSwinEncoder) else FeatureGetterNet
    return getter(model, out_indices=indices if isinstance(indices, int) else tuple(indices), norm=norm)


class HFBackbone(nn.Module):
    """A ``features_only`` image encoder as HF transformers' task models call their backbone: ``channels`` per map and
    ``forward(pixel_values, ...)`` returning ``BackboneOutput(feature_maps=...)``."""

    def __init__(self, features: FeatureGetterNet) -> None:
        super().__init__()
        self.features = features
        self.channels = list(features.feature_info.channels())

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                output_attentions: bool | None = None, return_dict: bool | None = None) -> Any:
        from transformers.modeling_outputs import BackboneOutput

        if output_attentions:
            raise ValueError("a swinssl backbone returns no attention maps; call it with output_attentions=False")
        return BackboneOutput(feature_maps=tuple(self.features(pixel_values)))

    def forward_with_filtered_kwargs(self, *args: Any, **kwargs: Any) -> Any:
        """The entry HF task models call (their backbones drop the arguments they do not take)."""
        return self(*args, **kwargs)


def hf_upernet(features: FeatureGetterNet, num_labels: int, **config: Any) -> nn.Module:
    """HF ``UperNetForSemanticSegmentation`` on a ``features_only`` image encoder: UperNet's decode (and auxiliary)
    heads sized for the encoder's maps, its backbone the encoder. ``config``: more ``UperNetConfig`` fields
    (``hidden_size``, ``pool_scales``, ``use_auxiliary_head``, ``auxiliary_in_channels``...).

    UperNet builds its backbone from its config; it is built on a tiny stand-in backbone that is then replaced,
    so save the result with ``torch.save(model.state_dict())``; its ``save_pretrained`` refuses (the config names
    the stand-in). For a model HF saves and reloads on its own, build UperNet on an ``export --to hf`` folder.
    """
    try:
        from transformers import ResNetConfig, UperNetConfig, UperNetForSemanticSegmentation
        from transformers.models.upernet.modeling_upernet import UperNetFCNHead, UperNetHead
    except ImportError as error:
        raise ImportError(f"the HF UperNet head needs transformers: pip install 'swinssl[interop]' ({error})"
                          ) from error
    backbone = HFBackbone(features)
    stages = ["stage1", "stage2", "stage3"]  # three maps, as UperNet's auxiliary head reads the third
    stand_in = ResNetConfig(embedding_size=8, hidden_sizes=[8] * 3, depths=[1] * 3, out_features=stages)
    model = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=stand_in, num_labels=num_labels, **config))
    model.backbone = backbone
    model.decode_head = UperNetHead(model.config, in_channels=backbone.channels)
    if model.config.use_auxiliary_head:
        model.auxiliary_head = UperNetFCNHead(model.config, in_channels=backbone.channels)
    for head in (model.decode_head, model.auxiliary_head):
        if head is not None:
            head.apply(model._init_weights)
    model.save_pretrained = _refuse_save_pretrained  # its config would reload the stand-in, silently
    return model


def _refuse_save_pretrained(*args: Any, **kwargs: Any) -> None:
    raise ValueError("this UperNet's config names the stand-in backbone it was built on, so from_pretrained would "
                     "not rebuild the swinssl one: save it with torch.save(model.state_dict()), or build a pure HF "
                     "UperNet on the `python -m swinssl.export ... --to hf` folder (README: Backbone)")
