"""Command-line front ends: they know argv and printing, nothing else."""
