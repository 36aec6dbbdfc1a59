"""What a new user meets first, through the real CLIs: a short run validates, a demo recipe's data settings do not
follow the user's own shards, bad paths are one line before anything heavy, each log line prints once, and the
CLIs stay quiet when their reader goes away (``| head -1``)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY, class_folders, run_cli

SIZES = ["model.encoder.embed_dim=16", "model.encoder.depths=[1,1,1,1]", "model.encoder.num_heads=[1,2,2,4]"]


@pytest.fixture(scope="module")
def own_images(tmp_path_factory) -> Path:
    """A user's folder: two classes of four images each, and a note that is no image."""
    root = class_folders(tmp_path_factory.mktemp("mine"), ("boats", "trees"), per_class=4)
    (root / "readme.txt").write_text("where these come from\n")
    return root


@pytest.fixture(scope="module")
def own_shards(own_images, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("shards")
    done = run_cli("swinssl.make_shards", str(own_images), str(out), "--maxcount", "4")
    assert done.returncode == 0, done.stderr
    return out, done.stdout


def test_make_shards_names_the_files_it_leaves_out(own_shards):
    """Today's main: readme.txt is dropped without a word ("skipped 0 unreadable")."""
    _, printed = own_shards
    assert "wrote 8 samples in 2 shards; skipped 0 unreadable; left out 1 other file(s) (not images:" in printed
    assert "  not an image: readme.txt" in printed.splitlines()


def test_a_run_shorter_than_an_epoch_validates_at_its_end(own_shards, tmp_path):
    """Today's main: trainer.max_steps=3 ends inside the second epoch, which is not a validation epoch (every 2), so
    nothing validates; the demo's epoch size (200 steps) is used on the user's 8 images; the summary says 0 FLOPs
    and Lightning's lines print twice."""
    shards, _ = own_shards
    done = run_cli("swinssl.finetune", "recipe=demo_ft", "checkpoint=null", *SIZES, "model.img_size=64",
                   "model.window_size=2", f"data.shards={shards}", f"data.val_shards={shards}", "data.batch_size=4",
                   "data.num_workers=0", "trainer.max_steps=3", "trainer.check_val_every_n_epoch=2",
                   "trainer.enable_model_summary=true", f"out_dir={tmp_path}", timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "2 steps/epoch, 3 steps in all" in log  # the 8 images of the manifest, not the demo's data.epoch_size
    assert "validation: every 2 epoch(s) (4 steps) and after the last step (step 3)" in log
    validation = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["validation"]
    assert validation["step"] == 3 and {"val/loss", "val/top1"} <= validation.keys()
    assert "Total params" in log and "FLOPs" not in log and "Flops" not in log
    assert log.count("Seed set to 0") == 1 and "INFO: " not in log


def test_a_short_pretraining_validates_at_its_end(own_shards, tmp_path):
    shards, _ = own_shards
    done = run_cli("swinssl.pretrain", *TINY, f"data.shards={shards}", f"data.val_shards={shards}",
                   "trainer.max_steps=2", f"out_dir={tmp_path}", timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "validation: every 1 epoch(s) (4 steps) and after the last step (step 2)" in done.stdout
    validation = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["validation"]
    assert validation["step"] == 2 and "val/loss" in validation


def test_a_demo_recipe_on_own_data_reports_the_missing_checkpoint_first(own_shards, tmp_path):
    """Today's main: the demo photos stay the validation set, and their classes (not the user's) are the first
    error, ahead of the checkpoint that does not exist; after Lightning's lines, with exit code 2."""
    shards, _ = own_shards
    missing = tmp_path / "nowhere" / "model.ckpt"
    done = run_cli("swinssl.finetune", "recipe=demo_ft", f"data.shards={shards}", f"checkpoint={missing}",
                   f"out_dir={tmp_path / 'run'}", timeout=120)
    assert done.returncode == 2
    assert done.stderr == f"error: checkpoint not found: {missing}\n"
    assert "recipe=demo_ft's demo validation set is dropped (give data.val_shards=... to validate)" in done.stdout
    assert "recipe=demo_ft's data.epoch_size=800 (sized for the demo set) is dropped" in done.stdout
    assert "Seed set" not in done.stdout and not (tmp_path / "run").exists()  # before Lightning, before the run


def test_export_refuses_a_missing_checkpoint_with_exit_code_2(tmp_path):
    """Today's main: exit code 1 (other refusals exit 2)."""
    done = run_cli("swinssl.export", str(tmp_path / "missing.ckpt"), str(tmp_path / "out"), "--to", "hf")
    assert done.returncode == 2 and done.stderr == f"error: checkpoint not found: {tmp_path / 'missing.ckpt'}\n"


def test_evaluate_help_lists_only_its_own_keys():
    """Today's main: the training recipes and cluster groups, which evaluate does not take."""
    done = run_cli("swinssl.evaluate", "--help")
    assert done.returncode == 0
    assert "checkpoint: ???" in done.stdout and "data: ???" in done.stdout
    assert "recipe" not in done.stdout and "cluster" not in done.stdout


# stdout as ``| head -1`` leaves it: the first line is read, every later write fails (BrokenPipeError, errno 32).
HEAD_ONE = """
import runpy, sys

class HeadOne:
    def __init__(self):
        self.lines = 0
    def write(self, text):
        if self.lines:
            raise BrokenPipeError(32, "Broken pipe")
        self.lines += text.count("\\n")
        return len(text)
    def flush(self):
        if self.lines > 1:
            raise BrokenPipeError(32, "Broken pipe")
    def fileno(self):
        return 1
    def isatty(self):
        return False

sys.stdout = HeadOne()
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def test_a_cli_piped_into_head_ends_quietly(own_images, tmp_path):
    """``python -m swinssl.make_shards ... | head -1``: today's main ends in a BrokenPipeError traceback."""
    done = subprocess.run([sys.executable, "-c", HEAD_ONE, "swinssl.make_shards", str(own_images),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == 1 and (tmp_path / "out" / "train-000000.tar").exists()


def test_a_hydra_cli_whose_reader_is_gone_ends_quietly():
    """The reader closed before the first line (Hydra's help, then a BrokenPipeError traceback on today's main)."""
    read, write = os.pipe()
    os.close(read)
    done = subprocess.run([sys.executable, "-m", "swinssl.evaluate", "--help"], stdout=write, stderr=subprocess.PIPE,
                          text=True, timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    os.close(write)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == 1


@pytest.mark.parametrize("task, recipe", [("pretrain", "demo"), ("finetune", "video_demo"), ("finetune", "seg_demo")])
def test_a_config_error_in_a_demo_recipe_answers_before_torch_is_imported(task, recipe, tmp_path):
    """The demo data's resolver imported the shard writer, and with it webdataset and torch (~8 s), before the
    recipe check could reject a typo; then, with the demo shards cached, still the builders (PIL, PyAV, OpenCV:
    0.2 s of the 0.5 s a config error may take)."""
    from swinssl.demo_data import DEMO_FOLDERS

    for folder in DEMO_FOLDERS.values():  # the demo shards as a previous run left them
        (tmp_path / folder).mkdir()
    code = f"""if True:
        import runpy, sys
        sys.argv = ["swinssl.{task}", "recipe={recipe}", "model.arch=swinv2_medium"]
        try:
            runpy.run_module("swinssl.{task}", run_name="__main__")
        except SystemExit as exit:
            print(exit.code, sorted(m for m in ("torch", "lightning", "timm", "PIL", "av", "cv2") if m in sys.modules))
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SWINSSL_CACHE": str(tmp_path)})
    assert done.stdout.strip() == "2 []", done.stdout + done.stderr[-2000:]
    assert "unknown arch 'swinv2_medium'" in done.stderr
