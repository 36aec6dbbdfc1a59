"""Runs ``python -m swinssl.pretrain ARGS`` as a SLURM preemption would interrupt it: SIGUSR1 is sent to the
process itself when the optimizer step named in ``SIGNAL_AT_STEPS`` (comma-separated) ends, so a test can stop a run
at exactly the steps it chooses; SIGKILL, as a crash, when a step of ``KILL_AT_STEPS`` ends. Used by
tests/training/test_resume.py."""

import os
import runpy
import signal
import sys

from swinssl.training import skipped_samples

steps = {int(step) for step in os.environ.get("SIGNAL_AT_STEPS", "").split(",") if step}
kills = {int(step) for step in os.environ.get("KILL_AT_STEPS", "").split(",") if step}
batch_end = skipped_samples.SkippedSamples.on_train_batch_end


def signalling_batch_end(self, trainer, *args, **kwargs):
    batch_end(self, trainer, *args, **kwargs)
    if trainer.global_step in steps:
        os.kill(os.getpid(), signal.SIGUSR1)
    if trainer.global_step in kills:
        os.kill(os.getpid(), signal.SIGKILL)


skipped_samples.SkippedSamples.on_train_batch_end = signalling_batch_end
sys.argv = ["swinssl.pretrain", *sys.argv[1:]]
runpy.run_module("swinssl.pretrain", run_name="__main__", alter_sys=True)
