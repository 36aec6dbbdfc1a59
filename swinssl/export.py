"""``python -m swinssl.export CHECKPOINT OUT --to timm``: weights that timm loads strictly, so results leave our tool.

timm state dicts do not record image size, window or pretrained windows; they are printed as the timm
constructor call and written next to OUT as JSON. OUT ending in ``.safetensors`` writes safetensors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from swinssl.weights import CheckpointError, load_checkpoint, to_timm

TIMM_CLASSES = {"swinv2": "timm.models.swin_transformer_v2.SwinTransformerV2",
                "swin": "timm.models.swin_transformer.SwinTransformer"}


def export(checkpoint: str, out: str, trust_checkpoint: bool = False) -> dict:
    source = load_checkpoint(checkpoint, trust_checkpoint)
    state, kwargs = to_timm(source)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({key: value.contiguous() for key, value in state.items()}, str(out_path))
    else:
        torch.save(state, out_path)
    meta = {"class": TIMM_CLASSES[source.family], "kwargs": kwargs}
    out_path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m swinssl.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="any supported checkpoint, or a run folder (its newest last.ckpt)")
    parser.add_argument("out", help="output file (.pth, or .safetensors)")
    parser.add_argument("--to", choices=["timm"], default="timm", help="target format")
    parser.add_argument("--trust-checkpoint", action="store_true", help="allow pickled objects (trusted files only)")
    args = parser.parse_args(argv)
    try:
        meta = export(args.checkpoint, args.out, args.trust_checkpoint)
    except (CheckpointError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    arguments = ", ".join(f"{key}={value!r}" for key, value in meta["kwargs"].items())
    print(f"wrote {args.out} (+ {Path(args.out).with_suffix('.json')})\n"
          f"load in timm: model = {meta['class']}({arguments}); model.load_state_dict(<the weights>)")


if __name__ == "__main__":
    main()
