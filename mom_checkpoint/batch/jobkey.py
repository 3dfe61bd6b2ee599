"""What identifies a checkpointed job beyond its id: the batch system it came from and its owner.

A job id is only unique within one batch server's life: TORQUE and OpenPBS on one node (the README
allows it), a server whose job database was re-created, or two clusters sharing a spool can each
give out ``5492.vm``. So everything that acts on a job's checkpoints (its lock, the session record
of its restart, pruning, picking the generation to restore, cleaning what a killed run left) works
on the job's key: system, owner uid and job id. A generation's key is read from its manifest
(``Manifest.key``), which root wrote, so the generation layout on disk did not change and older
spools keep working.
"""

from __future__ import annotations

import msgspec

SYSTEMS = {"torque": "torque", "seed": "torque", "openpbs": "openpbs"}  # calling convention -> system


def system_of(convention: str) -> str:
    """The seed's two-argument calls come from TORQUE set-ups; OpenPBS has its own $action calls."""
    return SYSTEMS.get(convention, convention)


class JobKey(msgspec.Struct, frozen=True):
    system: str  # "torque" or "openpbs"
    uid: int
    job_id: str

    @property
    def token(self) -> str:
        """For file names (locks, session records): <system>.<uid>.<job id> (the job id is a checked
        path part)."""
        return f"{self.system}.{self.uid}.{self.job_id}"

    @classmethod
    def from_token(cls, token: str) -> JobKey | None:
        """The key a file name made by ``token`` stands for (None for a name that is not one)."""
        system, _, rest = token.partition(".")
        uid, _, job_id = rest.partition(".")
        return cls(system, int(uid), job_id) if system and uid.isdigit() and job_id else None
