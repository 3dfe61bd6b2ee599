"""mom-checkpoint: the checkpoint and restart hook for TORQUE/PBS pbs_mom."""

__version__ = "0.1.0"
