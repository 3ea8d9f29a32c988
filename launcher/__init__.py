"""Submitit launcher for higgs-ds training on SLURM, with requeue on preemption and time-out."""
