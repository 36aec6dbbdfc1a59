"""``cluster=slurm``: the batch script, submission through a stand-in ``sbatch``, errors before submission,
and a preempted task (SIGUSR1) that saves, requeues through a stand-in ``scontrol``, then resumes."""

import importlib.util
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import TINY, fake_command, random_image_shards, run_cli, slurm_task_env

SLURM = ["recipe=simmim_v2_b", "cluster=slurm", "cluster.partition=gpu", "cluster.time=2-00:00:00", "data.shards=/data"]


def test_dry_run_prints_one_task_per_gpu_with_requeue_and_resume(tmp_path):
    done = run_cli("swinssl.pretrain", *SLURM, "cluster.nodes=4", "cluster.gpus_per_node=8", "cluster.dry_run=true",
                   "cluster.account=vision", "+cluster.additional.exclusive=true",
                   "cluster.setup=[module load cuda]", f"out_dir={tmp_path / 'run'}")
    assert done.returncode == 0, done.stderr[-2000:]
    script = done.stdout
    for directive in ("--nodes=4", "--ntasks-per-node=8", "--gres=gpu:8", "--partition=gpu", "--time=2-00:00:00",
                      "--signal=USR1@120", "--requeue", "--account=vision", "--exclusive",
                      f"--output={tmp_path / 'run' / 'slurm'}/%j.out"):
        assert f"#SBATCH {directive}\n" in script
    assert "\nmodule load cuda\n" in script
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert f"{sys.executable} -u -m swinssl.pretrain recipe=simmim_v2_b cluster=slurm" in srun
    assert srun.endswith("resume=auto") and "cluster.dry_run" not in srun
    assert not (tmp_path / "run").exists()  # nothing written, nothing submitted


def test_submission_writes_the_script_and_calls_sbatch(tmp_path):
    bin_dir = fake_command(tmp_path / "bin", "sbatch", "777")
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = run_cli("swinssl.finetune", "recipe=ft_v2_b_192to256", "cluster=slurm", "cluster.partition=gpu",
                   "cluster.time=60", "checkpoint=x.pth", "data.shards=/shared/in1k", f"out_dir={tmp_path / 'run'}",
                   env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "submitted job 777" in done.stdout
    scripts = list((tmp_path / "run" / "slurm").glob("submit-*.sbatch"))
    assert len(scripts) == 1
    assert (bin_dir / "sbatch.log").read_text().split() == ["--parsable", str(scripts[0])]
    assert "-m swinssl.finetune recipe=ft_v2_b_192to256" in scripts[0].read_text()


@pytest.mark.parametrize("overrides, message", [
    (["cluster=slurm", "recipe=simmim_v2_b"], "cluster=slurm needs cluster.partition=... and cluster.time=..."),
    ([*SLURM[:3], "data.shards=/data"], "cluster=slurm needs cluster.time=..."),
    ([*SLURM, "cluster.time=tomorrow"], "is not a SLURM time"),
    ([*SLURM, "cluster.gpus_per_node=4", "trainer.devices=8"], "trainer.devices=8 but cluster.gpus_per_node=4"),
    ([*SLURM, "trainer.strategy=zero_everything"], "unknown trainer.strategy 'zero_everything'"),
])
def test_bad_requests_fail_in_one_line_before_submission(tmp_path, overrides, message):
    bin_dir = fake_command(tmp_path / "bin", "sbatch", "1")
    done = run_cli("swinssl.pretrain", *overrides, env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in done.stderr
    assert not (bin_dir / "sbatch.log").exists()


def test_deepspeed_strategy_needs_deepspeed_installed():
    done = run_cli("swinssl.pretrain", *SLURM, "trainer.strategy=deepspeed_stage_1", "cluster.dry_run=true")
    if importlib.util.find_spec("deepspeed") is None:
        assert done.returncode != 0
        assert "needs DeepSpeed, which is not installed: pip install deepspeed" in done.stderr
    else:
        assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture()
def shard_dir(tmp_path) -> str:
    return random_image_shards(tmp_path)


def test_sigusr1_saves_requeues_and_the_requeued_job_resumes(shard_dir, tmp_path):
    """One srun task of job 4242 on the CPU: the run directory is the job id, SIGUSR1 leads to a checkpoint
    and ``scontrol requeue 4242``, and the same job id started again continues from that checkpoint."""
    bin_dir = fake_command(tmp_path / "bin", "scontrol", "")
    env = slurm_task_env("4242", bin_dir)
    args = [*TINY, f"data.shards={shard_dir}", "cluster=slurm", "cluster.partition=cpu", "cluster.time=10",
            "cluster.gpus_per_node=1", "trainer.accelerator=cpu", "checkpointing.last_every_n_steps=2"]
    run_dir = tmp_path / "runs" / "demo" / "4242"
    last = run_dir / "checkpoints" / "last.ckpt"
    first = subprocess.Popen([sys.executable, "-m", "swinssl.pretrain", *args, "trainer.max_steps=100000"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline and not last.exists():
        time.sleep(0.2)
    assert last.exists(), "no periodic checkpoint appeared"
    first.send_signal(signal.SIGUSR1)
    output, _ = first.communicate(timeout=120)
    assert first.returncode == 0, output[-3000:]
    assert "requeued: the job resumes from" in output
    assert (bin_dir / "scontrol.log").read_text().split() == ["requeue", "4242"]
    saved = torch.load(last, weights_only=True)["global_step"]
    assert 2 <= saved < 100000

    again = subprocess.run([sys.executable, "-m", "swinssl.pretrain", *args, f"trainer.max_steps={saved + 2}"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    # the newest checkpoint: last.ckpt, or the epoch-end one written after it at the same step
    assert "resuming runs/demo/4242/checkpoints/" in again.stdout + again.stderr
    assert torch.load(last, weights_only=True)["global_step"] == saved + 2
    assert (bin_dir / "scontrol.log").read_text().split() == ["requeue", "4242"]  # no second requeue
