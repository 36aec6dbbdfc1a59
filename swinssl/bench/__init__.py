"""Benchmarks anyone can rerun: ``python -m swinssl.bench <name>``, each printing a markdown table, the
command and the wall time, and writing JSON with ``--json``.

One module per benchmark; each has a module docstring (its ``--help``), ``add_arguments(parser)`` and
``run(args, command)``, which takes its settings, times its run and ends it through the shared harness in
:mod:`.report` (``settings``, ``Stopwatch``, ``finish``). :data:`BENCHMARKS` lists them in ``--help`` order.
"""

BENCHMARKS = {
    "data": "SimMIM training images per second per worker core, against torchvision's ImageFolder",
    "train": "SimMIM training step: images/s, memory and MFU against timm eager and HF transformers",
    "memory": "largest batch per GPU per preset and attention kernel; SwinV2-L 384/w24 fine-tuning",
    "transfer": "position-bias transfer to larger windows without training",
    "video": "video clips per second per data-loading worker",
    "threads": "demo training images/s for loader workers x torch threads: where the default lands",
    "onnx": "CPU inference images/s: onnxruntime on the exported file against eager PyTorch, same threads",
}
