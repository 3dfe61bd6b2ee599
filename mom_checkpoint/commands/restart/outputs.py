"""The files a restored job gets back: its output files, opened with its owner's rights, and copies of
the files it was reading; and what it printed before its hold, put back."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from mom_checkpoint.backends.base import InheritedFile
from mom_checkpoint.image.manifest import KeptFile, Manifest
from mom_checkpoint.platform import safefs
from mom_checkpoint.platform.errors import (
    Error,
    Refused,
)
from mom_checkpoint.platform.files import copy_all
from mom_checkpoint.platform.log import Logger
from mom_checkpoint.processes.access import acting_as
from mom_checkpoint.processes.identity import JobUser

# Files the application wrote to (O_WRONLY or O_RDWR) are handed back; devices are left to CRIU.
Opener = Callable[[str, int, int], int]  # os.open, or one in the job's own mount namespace
_WRITE_MODES = os.O_WRONLY | os.O_RDWR
_OUTPUT_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC


@contextlib.contextmanager
def output_files(
    manifest: Manifest,
    user: JobUser,
    generation: Path,
    work: Path,
    *,
    own_streams: bool,
    opener: Opener = os.open,
) -> Iterator[list[InheritedFile]]:
    """The descriptors handed to the restored job with --inherit-fd, in place of paths CRIU would open.

    - The files the application was writing, in append mode and with the owner's rights: pbs_mom
      re-creates the job's .OU/.ER files before a restart (empty: what a SIGNAL 15 checkpoint kept of
      them is put back first), and a job checkpointed with --leave-running wrote on after the
      checkpoint, so CRIU would refuse the changed sizes. With ``own_streams`` (the seed's flow: a
      new job resumes an old one) where its stdout and stderr went is this program's own stdout and
      stderr instead: the new job's output, and nothing is created for the old job.
    - The files it was reading that were kept with the generation (its job script, which pbs_mom
      deletes when a job ends): a copy of root's copy, the owner's and already unlinked (so the job's
      own checkpointer can dump it again, as a deleted file), at the offset the job was at.

    Every file is opened by ``opener``: in the job's own mount namespace when it is restored into
    one (processes.namespaces), so that each sits on a mount the job has; a stream of this program's
    that is a regular file is opened again there by its path.
    """
    written = sorted(
        {
            fd.target
            for process in manifest.processes
            for fd in process.fds
            if fd.kind == "file"
            and fd.flags is not None
            and fd.flags & _WRITE_MODES
            and not fd.target.startswith(("/dev/", "/proc/", "/sys/"))
            and not fd.target.endswith(" (deleted)")
        }
    )
    streams = _streams(manifest) if own_streams else {}
    outputs = {k.path: k for k in manifest.kept if k.role == "output"}
    opened: list[InheritedFile] = []
    try:
        for kept in manifest.kept:
            if kept.role == "held" and kept.external:  # dumped as external: given back under that name
                opened.append(InheritedFile(_held_copy(generation, kept, work, user, opener), kept.external))
            elif kept.role == "held" and kept.path not in written:  # schema 2: dumped by its path
                opened.append(InheritedFile(_held_copy(generation, kept, work, user, opener), kept.path))
        for path in written:
            if path in streams:
                opened.append(InheritedFile(_stream(streams[path], user, opener), path))
                continue
            with acting_as(user):
                fd = opener(path, _OUTPUT_FLAGS, 0o600)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)  # a FIFO or device at the path now: CRIU deals with it (or refuses)
                continue
            os.set_blocking(fd, True)
            opened.append(InheritedFile(fd, path))
            if path in outputs and os.fstat(fd).st_size == 0:  # re-created empty by pbs_mom
                _put_back(generation, outputs[path], fd)
        yield opened
    except PermissionError as exc:
        raise Refused(f"cannot open {exc.filename} as {user.name}: {exc.strerror}") from None
    finally:
        for inherited in opened:
            os.close(inherited.fd)


def rescue_outputs(
    manifest: Manifest, generation: Path, user: JobUser, *, own_streams: bool, log: Logger
) -> None:
    """A restart that failed puts back what the job printed before its SIGNAL 15 checkpoint into
    its output files, where pbs_mom re-created them empty (never into a file that has anything in
    it, nor for the seed's flow, whose output is the new job's). Best effort: each file on its own,
    opened with the owner's rights, and nothing of it changes the restart's own failure."""
    if own_streams:
        return
    for kept in manifest.kept:
        if kept.role != "output":
            continue
        try:
            with acting_as(user):
                fd = os.open(kept.path, _OUTPUT_FLAGS, 0o600)
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode) and os.fstat(fd).st_size == 0:
                    os.set_blocking(fd, True)
                    _put_back(generation, kept, fd)
                    log.info("restart.output_put_back", path=kept.path, bytes=kept.size)
            finally:
                os.close(fd)
        except (OSError, Error) as exc:
            log.warning("restart.output_not_put_back", path=kept.path, error=str(exc))


def _streams(manifest: Manifest) -> dict[str, int]:
    """Where the application's stdout and stderr went -> this program's 1 and 2."""
    found: dict[str, int] = {}
    for process in manifest.processes:
        for fd in process.fds:
            if fd.fd in (1, 2) and fd.kind == "file":
                found.setdefault(fd.target, fd.fd)
    return found


def _kept_copy(generation: Path, kept: KeptFile) -> int:
    """Root's copy of a file the job held, open read-only at the job's offset."""
    folder = safefs.open_dir(generation)
    try:
        fd, _st = safefs.open_regular(kept.copy, dir_fd=folder)
    finally:
        os.close(folder)
    os.lseek(fd, kept.pos, os.SEEK_SET)
    return fd


def _stream(fd: int, user: JobUser, opener: Opener) -> int:
    """This program's stdout or stderr for the job: the same description, or, where the job gets its
    files in a mount namespace of its own, the same regular file opened there (as its owner)."""
    if opener is os.open or not stat.S_ISREG(os.fstat(fd).st_mode):
        return os.dup(fd)
    try:
        with acting_as(user):
            again = opener(os.readlink(f"/proc/self/fd/{fd}"), _OUTPUT_FLAGS & ~os.O_CREAT, 0)
    except OSError:
        return os.dup(fd)  # (a file without a name now): the job runs; a dump from inside may refuse it
    if (os.fstat(again).st_dev, os.fstat(again).st_ino) != (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
        os.close(again)
        raise Refused(f"the job's output file changed while the restart reopened it (fd {fd})")
    os.set_blocking(again, True)
    return again


def _held_copy(generation: Path, kept: KeptFile, work: Path, user: JobUser, opener: Opener = os.open) -> int:
    """A file the job reads, given back: the owner's copy of root's copy, without a name from the
    start, open read-only at the job's offset.

    It is the owner's (CRIU checks its mode against the image's, and their next dump reads it back
    through /proc), so they may make it writable and grow it: it is made in the node's shared
    memory (``/dev/shm``, ``O_TMPFILE``), where what they write is their own memory, never on the
    spool's file system, where it would take space nobody counts (review of issue 25 #2). Where the
    node has no such file system, it goes to the restart's work folder as before."""
    source = _kept_copy(generation, kept)
    copy = _unnamed_file(work, opener)
    try:
        if os.geteuid() == 0:
            os.fchown(copy, user.uid, user.gid)
        if kept.mode:  # CRIU checks an external file's mode against the image's
            os.fchmod(copy, kept.mode & 0o777)
        os.lseek(source, 0, os.SEEK_SET)
        copy_all(source, copy)
        reading = os.open(f"/proc/self/fd/{copy}", os.O_RDONLY | os.O_CLOEXEC)  # a read-only description
    finally:
        os.close(copy)
        os.close(source)
    os.lseek(reading, kept.pos, os.SEEK_SET)
    return reading


# where a held file's copy is made (tmpfs: what its writer adds is their memory); O_TMPFILE gives it
# no name at any moment, so the shared folder's other users never see it
HELD_COPIES = "/dev/shm"  # noqa: S108


def _unnamed_file(work: Path, opener: Opener = os.open) -> int:
    """A new file of root's, 0400, with no name (in HELD_COPIES when it is a tmpfs, else in ``work``)."""
    try:
        if os.path.ismount(HELD_COPIES):
            return opener(HELD_COPIES, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o400)
    except OSError:
        pass
    path = work / f"held-{os.urandom(8).hex()}"
    fd = opener(str(path), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400)
    os.unlink(path)
    return fd


def _put_back(generation: Path, kept: KeptFile, fd: int) -> None:
    """What the job had printed before its SIGNAL 15 checkpoint, into its re-created output file."""
    source = _kept_copy(generation, kept)
    try:
        os.lseek(source, 0, os.SEEK_SET)
        copy_all(source, fd)
    finally:
        os.close(source)
