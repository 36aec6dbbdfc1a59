"""Running the training tasks: the command-line skeleton and its recipe checks, run directories, the
Lightning Trainer, SLURM, and the callbacks a run uses, a module each: when validation runs, what preemption
does, the random states and skip counts a resumed run continues, the torch thread count, reconstruction pictures,
non-finite steps."""
