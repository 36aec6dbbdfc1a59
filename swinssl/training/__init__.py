"""Running the training tasks: the command-line skeleton and its recipe checks, run directories, the
Lightning Trainer, SLURM, the callbacks a run uses, and non-finite step handling."""
