"""``cluster=slurm``: submit a training recipe as a SLURM batch job, and requeue it when it is preempted.

On a login node, ``python -m swinssl.pretrain recipe=... cluster=slurm cluster.partition=P cluster.time=T``
checks the request and writes a batch script: ``cluster.nodes`` nodes and one task per GPU. The script
runs the same command under ``srun`` with ``resume=auto``, and the CLI submits it with ``sbatch``.
``cluster.dry_run=true`` prints the script and the ``sbatch`` command instead. Inside the job, each srun
task is one rank: Lightning's ``SLURMEnvironment`` reads the ranks from SLURM's variables, and the run
directory is ``runs/<recipe>/<job id>``.

Preemption has one owner, :class:`swinssl.training.preemption.StopOnPreemption`. SLURM sends SIGUSR1 ``cluster.signal_delay_s``
seconds before the time limit (``--signal=USR1@...``), and a scheduler that preempts the job sends it
too. The handler, installed when the training program starts (:func:`catch_preemption_signal`), only sets
a flag. At the next batch end all ranks save ``checkpoints/last.ckpt`` together, rank 0 runs ``scontrol
requeue <job id>``, and the job comes back as the same job id. It then resumes from that checkpoint. A
signal that comes before the first step requeues without saving (there is nothing new to save); outside
SLURM the run saves, says that nothing will requeue it, and ends cleanly. Saving inside the signal
handler, which Lightning's own auto-requeue does, can hang (Lightning #21406), so Lightning's requeue is
switched off.

The batch script is plain ``sbatch``: submitit is not needed.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, MissingMandatoryValue

log = logging.getLogger("swinssl")
# SLURM's --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S; and UNLIMITED.
TIME_FORMAT = re.compile(r"^(\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}|UNLIMITED|INFINITE)$", re.IGNORECASE)
# Overrides that concern the submission only, not the training command the job runs.
SUBMISSION_KEYS = ("cluster.dry_run",)


def is_slurm_task() -> bool:
    """Running as an ``srun`` task of a SLURM job (a rank), as opposed to on a login node."""
    return "SLURM_JOB_ID" in os.environ and "SLURM_PROCID" in os.environ


def check_request(cfg: DictConfig) -> None:
    """One-line errors for what the scheduler would reject or that would hang the job."""
    cluster = cfg.cluster
    missing = [key for key in ("partition", "time") if _missing(cluster, key)]
    if missing:
        raise ValueError(
            "cluster=slurm needs " + " and ".join(f"cluster.{key}=..." for key in missing)
            + " (e.g. cluster.partition=gpu cluster.time=2-00:00:00)"
        )
    if not TIME_FORMAT.match(str(cluster.time)):
        raise ValueError(f"cluster.time={cluster.time!r} is not a SLURM time: use minutes, H:M:S or D-H:M:S")
    gpus, nodes = int(cluster.gpus_per_node), int(cluster.nodes)
    if gpus < 1 or nodes < 1:
        raise ValueError(f"cluster.nodes and cluster.gpus_per_node must be >= 1, got {nodes} and {gpus}")
    devices = cfg.trainer.devices
    if devices not in (gpus, "auto"):
        raise ValueError(
            f"trainer.devices={devices} but cluster.gpus_per_node={gpus}: one task runs per GPU, so a node "
            f"can use at most the {gpus} GPUs the job asks for; set cluster.gpus_per_node={devices} if the nodes "
            "have them"
        )
    if int(cfg.trainer.num_nodes) != nodes:
        raise ValueError(f"trainer.num_nodes={cfg.trainer.num_nodes} but cluster.nodes={nodes}; leave "
                         "trainer.num_nodes to the cluster config")


def _missing(cluster: DictConfig, key: str) -> bool:
    try:
        return cluster[key] in (None, "")
    except MissingMandatoryValue:
        return True


def log_dir(cfg: DictConfig, recipe: str) -> Path:
    """Where the job's stdout/stderr go: next to the runs of the recipe (SLURM does not create folders)."""
    return (Path(cfg.out_dir) if cfg.out_dir else Path("runs") / recipe) / "slurm"


def batch_script(cfg: DictConfig, task: str, recipe: str, overrides: list[str]) -> str:
    """The sbatch script: resources, the preemption signal, setup lines, then ``srun`` of this same command."""
    cluster = cfg.cluster
    workdir = Path.cwd()
    directives = {
        "job-name": f"swinssl-{recipe}",
        "partition": cluster.partition,
        "time": cluster.time,
        "nodes": cluster.nodes,
        "ntasks-per-node": cluster.gpus_per_node,
        "gres": f"gpu:{cluster.gpus_per_node}",
        "cpus-per-task": cluster.cpus_per_task,
        "mem": cluster.mem,
        "account": cluster.account,
        "qos": cluster.qos,
        "constraint": cluster.constraint,
        "signal": f"USR1@{cluster.signal_delay_s}" if cluster.requeue else None,
        "requeue": True if cluster.requeue else None,
        "open-mode": "append",  # a requeued job appends to the same log
        "chdir": str(workdir),
        "output": str(workdir / log_dir(cfg, recipe) / "%j.out"),
        **dict(cluster.additional or {}),
    }
    lines = ["#!/bin/bash"]
    for key, value in directives.items():
        if value is None or value is False:
            continue
        lines.append(f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={value}")
    lines += ["", *list(cluster.setup or [])]
    command = [sys.executable, "-u", "-m", f"swinssl.{task}", *training_overrides(overrides)]
    lines += ["", "srun " + " ".join([*list(cluster.srun_args or []), shlex.join(command)]).strip(), ""]
    return "\n".join(lines)


def training_overrides(overrides: list[str]) -> list[str]:
    """The command-line overrides the job reruns: submission-only keys dropped, ``resume=auto`` ensured."""
    kept = [item for item in overrides if item.split("=", 1)[0].lstrip("+~") not in SUBMISSION_KEYS]
    if not any(item.split("=", 1)[0].lstrip("+~") == "resume" for item in kept):
        kept.append("resume=auto")
    return kept


def submit(cfg: DictConfig, task: str, recipe: str, overrides: list[str]) -> str | None:
    """Check, write and submit (or with ``cluster.dry_run`` print) the batch script; returns the job id."""
    check_request(cfg)
    script = batch_script(cfg, task, recipe, overrides)
    folder = log_dir(cfg, recipe)
    path = folder / f"submit-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
    if cfg.cluster.dry_run:
        print(f"# dry run: would write {path} and run: sbatch --parsable {path}\n{script}")
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    try:
        done = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True)
    except FileNotFoundError:
        raise FileNotFoundError("sbatch not found: submit from a SLURM login node, or print the script with "
                                f"cluster.dry_run=true (written to {path})") from None
    if done.returncode != 0:
        raise ValueError(f"sbatch refused {path}: {done.stderr.strip() or done.stdout.strip()}")
    job_id = done.stdout.strip().split(";")[0]
    print(f"submitted job {job_id}: runs in {log_dir(cfg, recipe).parent / job_id}, log {folder / (job_id + '.out')}")
    return job_id


def environment():
    """Ranks from SLURM's variables; requeueing is :class:`swinssl.training.preemption.StopOnPreemption`'s job, not
    Lightning's."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return SLURMEnvironment(auto_requeue=False)


PREEMPTION_SIGNAL = signal.SIGUSR1
_signal_received = False


def catch_preemption_signal() -> None:
    """From now on, SIGUSR1 only sets a flag that the training callback acts on, instead of killing the process."""
    signal.signal(PREEMPTION_SIGNAL, _on_signal)


def catching_preemption_signal() -> bool:
    return signal.getsignal(PREEMPTION_SIGNAL) is _on_signal


def _on_signal(signum, frame) -> None:
    global _signal_received
    _signal_received = True


def preemption_signal_received() -> bool:
    return _signal_received


def requeue_job() -> None:
    """``scontrol requeue`` this job (array task); a failure is logged, not raised: the checkpoint is saved."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ["SLURM_JOB_ID"])
    if "SLURM_ARRAY_TASK_ID" in os.environ:
        job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if done.returncode != 0:
        log.error("scontrol requeue %s failed: %s; resubmit with resume=auto", job, done.stderr.strip())


def submitted_to_slurm(cfg: DictConfig, task: str, recipe: str, overrides: list[str]) -> bool:
    """``cluster=slurm`` on a login node: check the request and submit (or print) the job instead of training."""
    if cfg.cluster.name != "slurm" or is_slurm_task():
        return False
    from swinssl.training.trainer import resolve_strategy

    resolve_strategy(cfg.trainer.strategy)
    submit(cfg, task, recipe, overrides)
    return True
