"""``swinssl.SimMIM``: the LightningModule that pretrains a Swin V2 encoder with masked image modeling, or a
Video Swin encoder with masked video modeling."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from swinssl.models.registry import EncoderSpec, is_video
from swinssl.masking import PACKINGS
from swinssl.models.simmim import (
    NORM_TARGET_WINDOW,
    MaskedImageModel,
    MaskedVideoModel,
    PackedMaskedImageModel,
    PackedMaskedVideoModel,
)
from swinssl.tasks.base import SwinTask, samples_in
from swinssl.tasks.optim import OptimConfig
from swinssl.weights import Checkpoint, CheckpointError, encoder_from_spec, inflate_decoder

log = logging.getLogger("swinssl.tasks")


class SimMIM(SwinTask):
    """SimMIM pretraining of a Swin V2 encoder.

    ``forward(images, mask) -> (loss, reconstruction)``; batches are dicts with ``image`` (B, 3, H, W)
    and the token ``mask`` (B, H / patch, W / patch) made by :class:`swinssl.MaskGenerator`. With a
    ``video_*`` arch it pretrains Video Swin: batches hold ``video`` (B, 3, T, H, W) and a (B, T', H', W')
    ``mask`` from :class:`swinssl.VideoMaskGenerator`; an image checkpoint's encoder, mask token and
    decoder are inflated. The encoder is
    an :class:`~swinssl.models.registry.EncoderSpec` (``encoder=``) or its settings as keywords
    (``arch="swinv2_base", img_size=192, window_size=12``), SwinV2-B at 192 px / window 12 by default.
    ``checkpoint`` starts from any supported checkpoint (e.g. an official SimMIM ``.pth``): the encoder
    with its mask token, and the decoder when the checkpoint has one. ``norm_target_window`` is the local
    target normalization window (None: raw pixels). ``packing="uniform"`` pretrains on uniformly packed
    inputs (:class:`~swinssl.models.simmim.PackedMaskedImageModel`; masks from
    :class:`~swinssl.masking.UniformMaskGenerator`), the position bias at the tokens' offsets in the original image
    when ``true_offsets`` (else in the packed one); both are recorded with the hyper-parameters.
    """

    default_encoder = EncoderSpec(arch="swinv2_base", img_size=192, window_size=12)

    def __init__(
        self,
        encoder: EncoderSpec | Mapping[str, Any] | None = None,
        norm_target_window: int | None = NORM_TARGET_WINDOW,
        optim: dict[str, Any] | None = None,
        checkpoint: str | Checkpoint | None = None,
        trust_checkpoint: bool = False,
        packing: str | None = None,
        true_offsets: bool = True,
        **settings: Any,
    ) -> None:
        super().__init__()
        if packing is not None and packing not in PACKINGS:
            raise ValueError(f"packing must be null or one of {PACKINGS}, got {packing!r}")
        source = self.setup_encoder_and_arguments(encoder, settings, checkpoint, trust_checkpoint,
                                                  norm_target_window=norm_target_window, optim=optim,
                                                  packing=packing, true_offsets=true_offsets)
        if packing is not None and self.encoder_spec.grad_checkpointing:
            raise ValueError("packing does not combine with grad_checkpointing (the recomputed blocks would lose the "
                             "packed tokens' positions); packed inputs already need about half the memory")
        self.optim_config = OptimConfig(**(optim or {}))
        video = is_video(self.encoder_spec.family)
        self.input_key = "video" if video else "image"
        backbone = encoder_from_spec(self.encoder_spec, mask_token=True, checkpoint=source)
        if packing is None:
            self.model = (MaskedVideoModel if video else MaskedImageModel)(backbone, norm_target_window=norm_target_window)
        else:
            self.model = (PackedMaskedVideoModel if video else PackedMaskedImageModel)(
                backbone, norm_target_window=norm_target_window, true_offsets=true_offsets)
        if source is not None and source.decoder:
            decoder = source.decoder
            if video and decoder["0.weight"].ndim == 4:
                decoder = inflate_decoder(decoder, backbone.patch_embed.patch_size[0])
                log.info("inflated the image SimMIM decoder to %d frames per token", backbone.patch_embed.patch_size[0])
            try:
                self.model.decoder.load_state_dict(decoder)
            except RuntimeError as error:
                raise CheckpointError(f"{source.origin}: its SimMIM decoder does not fit this model ({error})") from None
        spread = source.task_tensors("spread") if packing is not None and source is not None else {}
        if spread:
            self.load_spread(spread, source, video)

    def load_spread(self, spread: dict[str, torch.Tensor], source: Checkpoint, video: bool) -> None:
        """A packed run's 3 x 3 layer (``spread``, read from ``source``) goes with the decoder trained behind it (else
        it starts as the identity, right for a SimMIM decoder); an image run's layer becomes a clip model's (1, 3, 3)
        one."""
        if video and spread["weight"].ndim == 4:
            spread["weight"] = spread["weight"].unsqueeze(2)
        try:
            self.model.spread.load_state_dict(spread)
        except RuntimeError as error:
            raise CheckpointError(f"{source.origin}: its packed decoder's 3x3 layer does not fit this model "
                                  f"({error})") from None
        log.info("took the packed decoder's 3x3 layer from %s", source.origin)

    @classmethod
    def from_config(cls, recipe: Mapping[str, Any], checkpoint: str | Path | None = None) -> SimMIM:
        """From a pretraining recipe (plain values: its ``model``, ``simmim`` and ``optim`` groups, ``checkpoint`` and
        ``trust_checkpoint``). ``checkpoint`` (a resumed run's own: the sizes a bare family leaves open, the windows)
        replaces the recipe's starting one."""
        simmim = recipe["simmim"]
        return cls(EncoderSpec.from_config(recipe["model"]), norm_target_window=simmim["norm_target_window"],
                   optim=recipe["optim"], checkpoint=checkpoint or recipe["checkpoint"],
                   trust_checkpoint=recipe["trust_checkpoint"], packing=simmim.get("packing"),
                   true_offsets=simmim.get("true_offsets", True))

    def pretraining_data(self, recipe: Mapping[str, Any]):
        """The image or clip shards of a pretraining recipe, masked to fit this model's patches and merges."""
        return pretraining_data(recipe, self.encoder.patch_embed.patch_size, self.encoder.stride)

    @property
    def encoder(self):
        return self.model.encoder

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(images, mask)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        loss, reconstruction = self(batch[self.input_key], batch["mask"])
        self.log_training(loss)
        return {"loss": loss, "reconstruction": reconstruction.detach()}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor] | None:
        if not samples_in(batch):
            return None
        loss, reconstruction = self(batch[self.input_key], batch["mask"])
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=samples_in(batch))
        return {"loss": loss, "reconstruction": reconstruction}


def pretraining_data(recipe: Mapping[str, Any], patch_size: tuple[int, ...], stride: int | tuple[int, ...]):
    """The image or clip shards of a pretraining recipe (plain values: its ``model``, ``data`` and ``simmim``
    groups, ``seed``), masked for an encoder of ``patch_size`` (image: square; video: time, height, width) that
    merges ``stride`` pixels into its last stage's tokens; missing shards raise here, before any compute."""
    from swinssl.datamodules import ImageShardDataModule, VideoShardDataModule
    from swinssl.masking import UniformMaskGenerator, VideoMaskGenerator

    spec, simmim = EncoderSpec.from_config(recipe["model"]), recipe["simmim"]
    packing = simmim.get("packing")
    if not is_video(spec.family):
        masks = None if packing is None else UniformMaskGenerator(
            spec.img_size, simmim["mask_patch_size"], patch_size[0], simmim["mask_ratio"], stride)
        return ImageShardDataModule.from_config(
            recipe["data"], recipe["seed"], img_size=spec.img_size, mask_patch_size=simmim["mask_patch_size"],
            model_patch_size=patch_size[0], mask_ratio=simmim["mask_ratio"], masks=masks)
    masks = VideoMaskGenerator(spec.num_frames, spec.img_size, simmim["mask_patch_size"], patch_size,
                               simmim["mask_ratio"], simmim["mask_mode"], simmim["mask_frames"], packing, stride[1])
    return VideoShardDataModule.from_config(recipe["data"], recipe["seed"], img_size=spec.img_size,
                                            num_frames=spec.num_frames, masks=masks)
