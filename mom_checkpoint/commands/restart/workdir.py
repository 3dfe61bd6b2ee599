"""A restart's own work folder: root's, with the restorer's subfolder handed over as a descriptor."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec

from mom_checkpoint.platform.safefs import remove_tree
from mom_checkpoint.processes.identity import JobUser
from mom_checkpoint.spool.storage import RESTORER_DIR, Spool

WORKDIR_CLEANUP_S = 10.0  # the longest a restart spends removing work folders (its own, or ended ones')


class Work(msgspec.Struct, frozen=True):
    root: Path  # root's own folder (0711): the staged image lives in its 0700 "pinned" subfolder
    restorer: Path  # where the restorer writes its log: the job user's when it runs as them


@contextlib.contextmanager
def workdir(spool: Spool, user: JobUser | None, deadline: float) -> Iterator[Work]:
    """Where the restorer writes its log (and CRIU its stats): under the spool when root (a restart
    killed with -9 leaves it there for the next one to clean), a private temporary folder otherwise.
    Root's 0700 folder, with the restorer's own subfolder the job user's when the restorer runs as
    them, which their restorer is handed as a descriptor: no process of the user reaches any of it
    by path, so nobody can fill it for the next restart to clear, or add to the restorer's log. Even
    so, nothing in it is ever authority for root (no pid file is read; logs are read through safefs),
    and every removal has a deadline."""
    if os.geteuid() == 0:  # ended restarts' leftovers: removed within WORKDIR_CLEANUP_S at most
        path = spool.restart_workdir(deadline=min(deadline, time.monotonic() + WORKDIR_CLEANUP_S))
    else:  # a user's own restart (tests, or an unprivileged mode): not pbs_mom's, which runs as root
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="mom-restart-"))
    try:
        restorer = path / RESTORER_DIR
        restorer.mkdir(mode=0o700)
        if user is not None and os.geteuid() == 0:
            os.chown(restorer, user.uid, user.gid)
        yield Work(path, restorer)
    finally:
        remove_tree(path, deadline=time.monotonic() + WORKDIR_CLEANUP_S)
