"""Every command the README shows runs, in README order, in one scratch folder.

A command is a line of a ```bash block (continuation lines joined, comments dropped, ``&&`` split), a
``$ `` line of a ```console block, or an inline code span that starts with ``python -m``, ``.venv/bin/``,
``make`` or ``tensorboard`` and has arguments. Each runs as the README writes it, with these changes,
which keep the suite fast and offline:

- placeholder data (``/data/...``, ``<folder>``, ``photos``) is tiny generated images, masks and videos;
- training keeps its recipe, but on a ~30k-parameter model of the recipe's family at a small size,
  for two steps (``caps``); benchmarks add ``--quick``; ``trainer.devices=8`` becomes 2 CPU processes;
- ``sbatch`` is a stand-in on PATH, and ``tensorboard`` adds ``--inspect`` instead of serving;
- ``python -m pytest -m gpu ...`` needs CUDA: its tests are collected (the marker and paths are right), not run;
- a hub name given as ``checkpoint=`` is served offline (``HF_HUB_OFFLINE=1``) from the huggingface_hub cache, which
  the workspace fills with a tiny stand-in in the repo's layout (a timm repo with its ``config.json``), so the name
  resolves as it would after a download (URLs: tests/weights/test_weights_hub.py, with a local server);
- a command followed by a ``# error: ...`` line must fail with exactly that line, its numbers masked
  (the checkpoints here are tiny, so sizes in messages differ from the README's);
- a ``$ command`` of a ```console transcript must print the lines shown under it.

``make demo`` runs the Makefile's demo lines with the same caps; ``make test`` is what ``.ci/run`` runs;
``make figures`` runs the notebooks, which test_notebooks executes.
A README command that no rule here knows fails the test, so a new command cannot go unexercised.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import fake_command, hub_cache, trained_like, write_mask_pairs
from conftest import FIGURES, check_figure
from swinssl import make_shards
from swinssl.demo_videos import write_demo_videos
from swinssl.checkpoint_names import is_remote

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# ```bash blocks, ```console transcripts ("$ command", then its output), other fenced blocks (skipped), and
# inline spans that are commands, in document order.
PIECES = re.compile(
    r"```bash\n(?P<block>.*?)```|```console\n(?P<console>.*?)```|```.*?```"
    r"|`(?P<inline>(?:\.venv/bin/)?(?:python -m [^\s`]+|make|tensorboard) [^`|]+)`",
    re.S,
)

RUN = {"data.batch_size": "2", "data.num_workers": "0", "data.epoch_size": "2", "data.shuffle_buffer": "4",
       "trainer.max_steps": "2", "trainer.limit_val_batches": "1", "trainer.log_every_n_steps": "1",
       "trainer.enable_model_summary": "false"}
TINY_ENCODER = {"model.encoder.embed_dim": "16", "model.encoder.depths": "[1,1,1,1]",
                "model.encoder.num_heads": "[1,2,2,4]"}
SIZE = {
    "pretrain": {"model.img_size": "64", "model.window_size": "2", "simmim.mask_patch_size": "16"},
    "finetune": {"model.img_size": "96", "model.window_size": "3"},  # a larger size and window than pretraining
    "segmentation": {"model.img_size": "96", "model.window_size": "3", "data.crop_size": "[96,96]",
                     "data.scale": "[128,96]", "data.eval_scale": "[128,96]", "segmentation.upernet.channels": "16",
                     "segmentation.upernet.auxiliary_channels": "8", "segmentation.inference.stride": "64"},
    "video": {"model.num_frames": "8", "model.img_size": "64", "model.window_size": "[2,4,4]",
              "data.short_side": "64", "data.frame_interval": "1", "data.test_clips": "1", "data.test_crops": "3"},
}
EVALUATE = {"batch_size": "4", "num_workers": "0"}
# Values the README uses that do not fit the tiny models or a 2-core machine -> what runs instead.
SCALED = {("img_size", "256"): "128", ("window_size", "16"): "4", ("trainer.devices", "8"): "2"}
BUILT_IN = ("demo", "demo_ft", "video_demo", "video_pretrain_demo", "seg_demo")  # small already: step caps only


@dataclass
class Command:
    argv: list[str]
    error: str | None = None  # the `# error:` line the README prints under it
    output: list[str] = field(default_factory=list)  # lines a ```console transcript shows it printing
    key: str = field(init=False)

    def __post_init__(self):  # `.venv/bin/python` and `python` are the same command
        self.key = shlex.join([Path(self.argv[0]).name, *self.argv[1:]])


def readme_commands(text: str) -> list[Command]:
    commands: list[Command] = []
    for piece in PIECES.finditer(text):
        if piece["console"]:
            for line in piece["console"].splitlines():
                if line.startswith("$ "):
                    commands.append(Command(shlex.split(line[2:])))
                elif line.strip():
                    commands[-1].output.append(line)
        elif piece["inline"]:
            commands += [Command(argv) for argv in split_and(shlex.split(piece["inline"]))]
        elif piece["block"] and not piece["block"].lstrip().startswith("#!"):  # a batch script: see the last test
            for line in piece["block"].replace("\\\n", " ").splitlines():
                if line.strip().startswith("# error:") and commands:
                    commands[-1].error = line.strip().removeprefix("# ")
                elif argv := shlex.split(line, comments=True):
                    commands += [Command(part) for part in split_and(argv)]
    unique: dict[str, Command] = {}
    for command in commands:
        first = unique.setdefault(command.key, command)
        first.error = first.error or command.error
    return list(unique.values())


def split_and(argv: list[str]) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    for arg in argv:
        if arg == "&&":
            parts.append([])
        else:
            parts[-1].append(arg)
    return [part for part in parts if part]


COMMANDS = readme_commands(README.read_text())


def overrides(argv: list[str], caps: dict[str, str]) -> list[str]:
    """Hydra ``key=value`` arguments with ``caps`` replacing or joining them, and the ``SCALED`` values swapped."""
    out, seen = [], set()
    for arg in argv:
        key, sep, value = arg.partition("=")
        bare = key.lstrip("+")
        if sep and bare in caps:
            arg = f"{key}={caps[bare]}"
            seen.add(bare)
        elif sep and (bare, value) in SCALED:
            arg = f"{key}={SCALED[bare, value]}"
        out.append(arg)
    flags = next((i for i, arg in enumerate(out) if arg.startswith("--")), len(out))  # Hydra's own, e.g. --cfg job
    added = [f"++{key}={value}" for key, value in caps.items() if key not in seen]  # ++: set, present or not
    return out[:flags] + added + out[flags:]


def caps(module: str, argv: list[str]) -> dict[str, str]:
    """The caps for one training or evaluation command (module ``swinssl.<task>``)."""
    if module == "swinssl.evaluate":
        return EVALUATE
    task = module.removeprefix("swinssl.")
    recipe = next((arg.split("=", 1)[1] for arg in argv if arg.startswith("recipe=")),
                  "demo" if task == "pretrain" else "demo_ft")
    if recipe in BUILT_IN:
        return RUN
    if recipe.startswith("seg_"):
        return {**RUN, **TINY_ENCODER, **SIZE["segmentation"]}
    # uniform packing: units of the tiny model's stride (32 px), one 2x2 group at 64 px, so nothing hidden beyond it
    packed = {"simmim.mask_patch_size": "32", "simmim.mask_ratio": "0.75"} if "uniform" in recipe else {}
    if "video" not in recipe:
        return {**RUN, **TINY_ENCODER, **SIZE[task], **packed}
    if task == "finetune":
        return {**RUN, **TINY_ENCODER, **SIZE["video"]}
    clips = {key: value for key, value in SIZE["video"].items() if not key.startswith("data.test_")}  # no test views
    return {**RUN, **TINY_ENCODER, **clips, "simmim.mask_patch_size": SIZE["pretrain"]["simmim.mask_patch_size"],
            **packed}


class Workspace:
    """The scratch folder every README command runs in: placeholder data, a stand-in sbatch, a cache."""

    def __init__(self, root: Path):
        self.root = root
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "SWINSSL_CACHE": str(root / "cache")}
        self.env.pop("SWINSSL_RUN_ID", None)
        bin_dir = fake_command(root / "bin", "sbatch", "4242")
        self.sbatch_log = bin_dir / "sbatch.log"
        self.env["PATH"] = f"{bin_dir}{os.pathsep}{self.env['PATH']}"
        for split in ("train", "val"):
            write_images(root / "data" / "imagenet" / split)
            write_demo_videos(root / "data" / "kinetics400" / split, videos_per_class=2)
        write_images(root / "data" / "imagenet" / "val-synsets", classes=("n02085620", "n02123045"))
        write_images(root / "data" / "unlabeled", classes=(".",))
        make_shards.main([str(root / "data" / "imagenet" / "train"), str(root / "data" / "in1k"), "--maxcount", "4"])
        write_images(root / "photos", per_class=5)  # the make_shards transcripts: 10 photos and a broken file,
        (root / "photos" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
        (root / "photos" / "notes.txt").write_text("where the photos come from\n")  # no image: left out, named
        write_images(root / "photos-val", per_class=2)  # then 4 more as a second set
        self.env.update(HF_HOME=str(root / "hf"), HF_HUB_OFFLINE="1", TORCH_HOME=str(root / "torch"))
        for name in {arg.split("=", 1)[1] for command in COMMANDS for arg in command.argv
                     if arg.startswith("checkpoint=") and is_remote(arg.split("=", 1)[1])}:
            self.cache_stand_in(name)
        ade = root / "data" / "ADEChallengeData2016"  # ADE20K's layout: labels 0..3, 0 the "other" of 3 classes
        for split, count in (("training", 8), ("validation", 4)):
            write_mask_pairs(ade / "images" / split, [f"ADE_{split}_{i:08d}" for i in range(count)], size=(96, 128),
                             labels=4, mask_folder=ade / "annotations" / split)
        (root / "data" / "ade20k-classes.txt").write_text("wall\nbuilding\nsky\n")

    def cache_stand_in(self, name: str) -> None:
        """A tiny Swin V2 of the capped recipes' sizes where the cache would hold ``name`` after a download."""
        from safetensors.torch import save_file

        import swinssl

        sizes = {key.rpartition(".")[2]: json.loads(value) for key, value in TINY_ENCODER.items()}
        model = trained_like(swinssl.create_encoder("swinv2", img_size=64, window_size=2, num_classes=10, **sizes))
        if not name.startswith("hf-hub:"):
            pytest.fail(f"no stand-in for {name}: add the layout of its source here")
        repo = name.removeprefix("hf-hub:").partition("@")[0]
        weights = self.root / "stand-in.safetensors"
        save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(weights))
        config = {"architecture": repo.split("/")[1].split(".")[0], "num_classes": 10}
        hub_cache(self.root / "hf" / "hub", repo, {"model.safetensors": weights.read_bytes(),
                                                   "config.json": json.dumps(config).encode()})

    def data(self, arg: str) -> str:
        return re.sub(r"(^|=)/data/", rf"\g<1>{self.root}/data/", arg).replace("<folder>", "data/in1k")

    def run(self, argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=600)


def write_images(folder: Path, per_class: int = 4, classes: tuple[str, ...] = ("cat", "dog")) -> None:
    """``per_class`` random JPEGs in each class folder (``.``: straight into ``folder``, unlabeled)."""
    rng = np.random.default_rng(0)
    for cls in classes:
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(folder / cls / f"{index}.jpg")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("readme"))


def executable(name: str) -> str:
    """``python`` / ``.venv/bin/python`` -> this interpreter; ``.venv/bin/<tool>`` -> the tool beside it."""
    name = Path(name).name
    return sys.executable if name == "python" else str(Path(sys.executable).with_name(name))


def plan(argv: list[str], workspace: Workspace, capped: bool = True) -> list[list[str]]:
    """The processes that exercise one README command (empty when a static check covers it).

    ``capped=False`` runs training commands at their real sizes: for commands that must fail before any compute.
    """
    argv = [workspace.data(arg) for arg in argv]
    match argv:
        case ["make", "demo"]:
            return [plan(line, workspace)[0] for line in makefile_commands("demo")]
        case ["make", "test"]:
            assert "make test" in (ROOT / ".ci" / "run").read_text()  # CI runs it on every change
            assert "-m pytest" in "\n".join(makefile_recipe("test"))
            return []
        case ["make", "figures"]:  # the notebooks, which test_notebooks executes and checks figure by figure
            line = makefile_recipe("figures")[0]
            assert "SWINSSL_NOTEBOOK_OUT=$(CURDIR)/notebooks/figures" in line
            assert "jupyter execute notebooks/0*.ipynb" in line
            assert sorted(path.stem for path in (ROOT / "notebooks").glob("0*.ipynb")) == sorted(FIGURES)
            return []
        case ["pip", "install", "-e", spec]:
            extra = re.fullmatch(r"\.\[(\w+)\]", spec)[1]
            packages = optional_dependencies(extra)
            # The dev extra installs them, but for the video decoders that `bench video` skips with a note
            # (decord, torchcodec: FFmpeg builds that CI does not need).
            peers = set(importlib.import_module("swinssl.bench.video").DECODERS) - {"swinssl"}
            assert packages and all(importlib.util.find_spec(name) for name in set(packages) - peers), packages
            return []
        case [tool, "--logdir", *rest] if tool.endswith("tensorboard"):
            return [[executable(tool), "--logdir", *rest, "--inspect"]]
        case [python, "-m", "swinssl.bench", *rest]:
            return [[executable(python), "-m", "swinssl.bench", *rest, "--quick"]]
        case [python, "-m", "pytest", "-m", "gpu", *paths]:  # needs CUDA: here its tests are collected, not run
            return [[executable(python), "-m", "pytest", "--collect-only", "-q", "-n", "0", "-p", "no:cacheprovider", "-m", "gpu",
                     *(str(ROOT / path) for path in paths)]]
        case [python, "-m", ("swinssl.pretrain" | "swinssl.finetune" | "swinssl.evaluate") as module, *rest]:
            return [[executable(python), "-m", module, *overrides(rest, caps(module, rest) if capped else {})]]
        case [python, "-m", ("swinssl.make_shards" | "swinssl.export" | "swinssl.recipes_table"
                             | "swinssl.demo_segmentation") as module, *rest]:
            return [[executable(python), "-m", module, *rest]]
    pytest.fail(f"no rule in tests/docs/test_readme.py runs this README command: {shlex.join(argv)}")


def makefile_recipe(target: str) -> list[str]:
    text = (ROOT / "Makefile").read_text()
    body = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", text, re.M)[1]
    return [line.strip() for line in body.splitlines()]


def makefile_commands(target: str) -> list[list[str]]:
    """The target's recipe lines as argv, ``$(PY)`` as ``python`` and make's ``$$`` unescaped."""
    return [shlex.split(line.replace("$(PY)", "python").replace("$$", "$")) for line in makefile_recipe(target)]


def optional_dependencies(extra: str) -> list[str]:
    """Names of the packages an extra adds, from the installed swinssl's metadata."""
    requirements = importlib.metadata.metadata("swinssl").get_all("Requires-Dist")
    return [re.match(r"[\w.-]+", req)[0] for req in requirements if req.endswith(f'extra == "{extra}"')]


def masked(line: str) -> str:
    return re.sub(r"\d+", "N", line)


@pytest.mark.parametrize("command", COMMANDS, ids=[command.key[:90] for command in COMMANDS])
def test_readme_command_runs(command, workspace):
    sbatch_calls = workspace.sbatch_log.read_text() if workspace.sbatch_log.exists() else ""
    for argv in plan(command.argv, workspace, capped=command.error is None):
        done = workspace.run(argv)
        if command.error:
            assert done.returncode != 0, f"{shlex.join(argv)} should fail"
            assert masked(done.stderr.strip().splitlines()[-1]) == masked(command.error)
            continue
        assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stderr[-3000:]}"
        printed = done.stdout.splitlines()
        assert [line for line in command.output if line not in printed] == [], done.stdout
        if "--json" in argv:
            assert (workspace.root / argv[argv.index("--json") + 1]).is_file()
        if "--inspect" in argv:
            assert "train/loss" in done.stdout
        if "cluster=slurm" in argv and "cluster.dry_run=true" not in argv:
            assert workspace.sbatch_log.read_text() != sbatch_calls, "sbatch was not called"


def test_commands_are_read_as_a_shell_would_in_document_order():
    text = """Run `make demo`, then see `python -m swinssl.evaluate` and `python -m swinssl.bench train | data`.
```bash
# a comment
python -m swinssl.pretrain recipe=x \\
    'cluster.setup=[source a b]'   # trailing comment
python -m swinssl.pretrain recipe=bad
# error: window 3 does not fit
```
```python
print("`python -m swinssl.export a b`")
```
```console
$ python -m swinssl.make_shards a b
wrote 2 samples
```
| figure | `python -m swinssl.finetune recipe=y && .venv/bin/python -m swinssl.evaluate checkpoint=z` |
Again: `.venv/bin/python -m swinssl.pretrain recipe=x 'cluster.setup=[source a b]'`.
"""
    commands = readme_commands(text)
    assert [command.key for command in commands] == [
        "make demo",
        "python -m swinssl.pretrain recipe=x 'cluster.setup=[source a b]'",
        "python -m swinssl.pretrain recipe=bad",
        "python -m swinssl.make_shards a b",
        "python -m swinssl.finetune recipe=y",
        "python -m swinssl.evaluate checkpoint=z",
    ]
    assert [command.error for command in commands] == [None, None, "error: window 3 does not fit", None, None, None]
    assert [command.output for command in commands][3] == ["wrote 2 samples"]


def test_the_minimal_batch_script_asks_what_the_dry_run_asks(workspace):
    """The README's hand-written sbatch script: its options are the dry run's, and its srun line composes."""
    script = next(block for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
                  if block.lstrip().startswith("#!"))
    options = {option for line in script.splitlines() if line.strip().startswith("#SBATCH")
               for option in line.split()[1:]}
    srun = shlex.split(script.replace("\\\n", " ").split("srun ", 1)[1].splitlines()[0])
    request = [f"cluster.{key.replace('-', '_')}={value}" for key, value in
               (option[2:].split("=", 1) for option in options if option.split("=")[0] in
                ("--nodes", "--cpus-per-task", "--partition", "--time"))]
    dry = workspace.run([sys.executable, "-m", "swinssl.pretrain", "recipe=simmim_v2_b", "cluster=slurm",
                         "cluster.dry_run=true", "data.shards=/data/in1k", *request])
    assert dry.returncode == 0, dry.stderr[-2000:]
    asked = {option for line in dry.stdout.splitlines() if line.startswith("#SBATCH") for option in line.split()[1:]}
    assert options <= asked, options - asked
    module = srun.index("-m")
    composed = workspace.run([sys.executable, *srun[module:], "--cfg", "job"])
    assert composed.returncode == 0, composed.stderr[-2000:]
    assert "num_nodes: 4" in composed.stdout and "devices: 8" in composed.stdout


def test_readme_pictures_are_notebook_figures_and_small():
    """Each picture is a figure a notebook draws (test_notebooks checks it is drawn; `make figures` redraws it)."""
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README.read_text())
    assert len(pictures) >= 5
    for picture in pictures:
        path = ROOT / picture
        assert path.parent.parent == ROOT / "notebooks" / "figures", picture
        assert path.stem in FIGURES[path.parent.name], picture
        check_figure(path)
        assert path.stat().st_size < 250_000, f"{picture} is {path.stat().st_size} bytes"


# The presets the README's Python snippets name, at the tiny sizes that stand in for them here.
SNIPPET_PRESETS = ("swinv2_tiny", "swinv2_base", "video_swinv2_base", "video_swin_tiny")
TINY_SIZES = {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 2, 4)}


# Sizes in the snippets that cost minutes even on tiny models -> what runs instead (windows clip to smaller inputs).
SNIPPET_SCALED = {
    "torch.randn(2, 3, 512, 640)": "torch.randn(2, 3, 128, 160)",
    "img_size=512, window_size=16, num_classes=150": "img_size=128, window_size=4, num_classes=150",
    "torch.randn(2, 3, 512, 512), torch.randint(0, 150, (2, 512, 512))":
        "torch.randn(2, 3, 128, 128), torch.randint(0, 150, (2, 128, 128))",
    "torch.randn(2, 3, 192, 192), torch.randint(0, 150, (2, 192, 192))":
        "torch.randn(2, 3, 64, 64), torch.randint(0, 150, (2, 64, 64))",
    "hidden_size=512": "hidden_size=32",
    "num_frames=32, img_size=224": "num_frames=8, img_size=112",
    "torch.randn(1, 3, 32, 224, 224)": "torch.randn(1, 3, 8, 112, 112)",
    'VideoClassifier(arch="video_swin_tiny",': 'VideoClassifier(arch="video_swin_tiny", num_frames=8, img_size=112,',
    "VideoMaskGenerator(num_frames=16, input_size=192": "VideoMaskGenerator(num_frames=8, input_size=128",
    "num_frames=16, img_size=192": "num_frames=8, img_size=128",
    "torch.randn(1, 3, 16, 192, 192)": "torch.randn(1, 3, 8, 128, 128)",
}


def readme_python() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def snippet_files(root: Path) -> None:
    """The files the snippets name, each made the way its source makes it (a run's checkpoint, an official
    release's layout, an HF export), from tiny models."""
    import torch
    from lightning.pytorch import Trainer

    from official_video_swin import OfficialI3DHead, OfficialSwinTransformer3D, official_checkpoint
    from swinssl import ImageClassifier, SimMIM
    from swinssl.export import export
    from conftest import official_simmim_checkpoint

    def save_run(task, folder: str) -> None:
        trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
        trainer.strategy.connect(task)
        trainer.save_checkpoint(root / folder / "checkpoints" / "last.ckpt")

    torch.manual_seed(0)
    pretrained = SimMIM(arch="swinv2_base", img_size=192, window_size=12)
    save_run(pretrained, "runs/simmim_v2_b/20261121-203015")
    torch.save(official_simmim_checkpoint(pretrained.model), root / "simmim_swinv2_base_img192_window12_800ep.pth")
    save_run(ImageClassifier(encoder={"arch": "swinv2_base", "img_size": 224, "window_size": 14}, num_classes=3,
                             mixup=None), "runs/ft_v2_b_192to224/20261201-101500")
    export(root / "runs" / "simmim_v2_b", root / "exported", to="hf")
    backbone = OfficialSwinTransformer3D(window_size=(8, 7, 7), **TINY_SIZES)
    torch.save(official_checkpoint(backbone, OfficialI3DHead(400, backbone.num_features)),
               root / "swin_tiny_patch244_window877_kinetics400_1k.pth")


def test_readme_python_snippets_run_in_order(tmp_path, monkeypatch):
    """Every ```python block runs as printed, in README order in one namespace (a section's snippets continue one
    another), in a folder holding the files they name; the presets they name are tiny here, and the inputs that
    would cost minutes smaller (``SNIPPET_SCALED``), as the commands' sizes are."""
    from swinssl.models import registry

    for name in SNIPPET_PRESETS:
        monkeypatch.setitem(registry.PRESETS, name, {**registry.PRESETS[name], **TINY_SIZES})
    monkeypatch.chdir(tmp_path)
    snippet_files(tmp_path)
    snippets = "\n".join(readme_python())
    assert [text for text in SNIPPET_SCALED if text not in snippets] == []  # every rule still finds its text
    for text, scaled in SNIPPET_SCALED.items():
        snippets = snippets.replace(text, scaled)
    namespace: dict = {}
    exec(compile(snippets, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    assert namespace["logits"].shape == (1, 400) and namespace["out"].logits.shape == (2, 150, 64, 64)
