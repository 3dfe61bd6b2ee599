"""What a restored job must pass before any of it runs: its memory's digests, and its identity."""

from __future__ import annotations

import contextlib
import os
import signal

from mom_checkpoint.backends.base import Restored
from mom_checkpoint.commands.restart.signals import Forwarder
from mom_checkpoint.image.hashing import ImageFile
from mom_checkpoint.image.manifest import Manifest
from mom_checkpoint.image.staging import StagedImage
from mom_checkpoint.image.verification import (
    InBackground,
)
from mom_checkpoint.platform.errors import (
    Refused,
)
from mom_checkpoint.platform.log import Logger
from mom_checkpoint.processes import access
from mom_checkpoint.processes.identity import JobUser, tree_problems
from mom_checkpoint.processes.termination import kill_tree, tree_pids


def checked_while_restoring(manifest: Manifest, staged: StagedImage) -> list[ImageFile]:
    """The image files whose check can overlap the restore: the job's memory, linked into the staged
    image (root's copies of the small files, which CRIU takes decisions from, are checked first)."""
    return [f for f in manifest.files if f.path.rpartition("/")[2] not in staged.contents]


def pages_checked(pages: InBackground, restored: Restored, forwarder: Forwarder, log: Logger) -> None:
    """Wait for the check of the pages; on any failure the restored tree, still stopped, is killed. A
    job ended meanwhile (SIGTERM from pbs_mom) is not waited for: it will never be let go."""
    while not pages.done(timeout=0.1):
        if forwarder.ending is not None:
            pages.cancel()
            return
    try:
        pages.result()
    except BaseException as exc:
        kill_tree(restored.pid)
        log.error("restart.verification_failed", error=str(exc), killed=restored.pid)
        raise
    log.info("restart.verified")


def admit(
    restored: Restored, user: JobUser, keep_stopped: frozenset[int], log: Logger, *, held_files: bool
) -> None:
    """The identity gate: every thread of the restored tree has exactly the owner's uids, gids and
    groups and no capability, or the whole tree is killed before any of it ran. Only a backend that
    restores stopped (CRIU, --leave-stopped) can be held at the gate; the others' restorers
    (resume, cr_restart) are the restored process themselves, root's until they have restored it:
    their images are root's own in root mode, and in job-user mode they run with the owner's identity
    and no capability, so the kernel bounds what they can give back (docs/SECURITY.md)."""
    if not restored.stopped:
        return
    pids = tree_pids(restored.pid)
    problems = tree_problems(pids, user)
    if held_files and not problems:  # root's CRIU reopened the job's files by their paths
        problems = access.problems(pids, user)
    if problems:
        kill_tree(restored.pid)
        log.error("restart.identity_refused", problems=problems[:20], pids=pids)
        raise Refused(
            f"the restored job would not run as {user.name} alone: {problems[0]}; killed it before any "
            f"of it ran"
        )
    for pid in pids:
        if restored.pid_inside(pid) not in keep_stopped:  # stopped when checkpointed: stays stopped
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
