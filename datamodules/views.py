"""Which views of a sample the loaders read, named without importing them (no torch, albumentations or PyAV): the
recipe checks, evaluation and export ask these before anything heavy loads.

- Clip sampling (:class:`.clips.ClipSampler`): ``"stride"`` (Kinetics: frames a fixed interval apart) or
  ``"uniform"`` (Something-Something v2: one frame per equal segment).
- Evaluation crop of an image (:class:`.classification.ClassificationShardDataModule`): ``"center"`` (shorter
  side to size / crop fraction, then the central square) or ``"squash"`` (a plain resize to the size); the crop
  a model gets when its fine-tuning recorded none is the official evaluation's (``TEST.CROP``, 0.875, bicubic).
- Test crops of a clip (:func:`.clip_augment.crop_views`): 1 (the centre) or 3 (start, centre, end of the long side).
"""

from __future__ import annotations

SAMPLINGS = ("stride", "uniform")
EVAL_CROP_MODES = ("center", "squash")
IMAGE_EVALUATION = {"eval_crop_pct": 0.875, "eval_crop_mode": "center", "interpolation": "bicubic"}
TEST_CROPS = (1, 3)
