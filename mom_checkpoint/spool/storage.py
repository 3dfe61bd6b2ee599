"""The spool: one folder per job run, one folder per generation, published by rename.

    <spool>/<exec_pid>.<job_id>/                 a job run (root's 0700 in both run_as modes)
        <number>-<UTC time>/                     a complete generation
            image/                               the checkpointer's output (0700; the user's in job-user mode,
                                                 reached by their checkpointer through a descriptor only)
            manifest.json                        present in every published generation
        .incoming-<random>/                      a generation being written; never read by restart

A generation is complete exactly when its folder has a generation name: the name is given by a rename done
only after the image and the manifest are fsync'd. Nothing here follows a symlink inside the spool.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from mom_checkpoint.image.layout import GENERATION_NAME, IMAGE, MANIFEST, Generation
from mom_checkpoint.platform.errors import DiskFull, Refused, SpoolError
from mom_checkpoint.platform.files import (
    check_private_dir,
    close_private_dir,
    fsync_dir,
    root_folder_problem,
    storage_error,
    write_all,
    write_private,
)
from mom_checkpoint.platform.safefs import remove_tree
from mom_checkpoint.platform.waiting import poll
from mom_checkpoint.processes.procfs import start_ticks, start_token

if TYPE_CHECKING:
    from mom_checkpoint.processes.discovery import JobProcesses

INCOMING_PREFIX = ".incoming-"
PRUNING_PREFIX = ".pruning-"
UNPUBLISHED_PREFIX = ".unpublished-"
CHECKPOINTER_RECORD = "checkpointer.json"
KEY_FILE = "key"  # in an incoming folder: the job key (jobkey.py) of the run that writes it
RESTARTS = ".restarts"  # mom-restart's work folders: <host>.<pid>.<start time>
RESTORER_DIR = (
    "restorer"  # in a restart's work folder: where the restorer writes (the job user's in job-user mode)
)
LOGS = ".logs"  # logs of failed restores, root's: <uid>.<job id>.<UTC time>.<pid>.<kind>.log
KEPT_LOGS = 50  # kept per owner in LOGS
RUN_NAME = re.compile(r"(\d+)\.(.+)")


def run_name(exec_pid: int, job_id: str) -> str:
    return f"{exec_pid}.{job_id}"


class Owner(msgspec.Struct, frozen=True):
    """Who owns the image folder: root, or the job's user when the checkpointer runs as that user."""

    uid: int
    gid: int

    @property
    def is_root(self) -> bool:
        return self.uid == 0


class Spool:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- the spool root ------------------------------------------------------------------------------
    def ensure_root(self) -> None:
        """Create the spool (root's, 0711) or check that the existing one is safe."""
        try:
            self.root.mkdir(mode=0o711, parents=True, exist_ok=True)
            st = os.lstat(self.root)
        except OSError as exc:
            raise SpoolError(f"cannot create the spool {self.root}: {exc.strerror}") from None
        if problem := root_folder_problem(st, 0o755):  # nobody else may write it
            raise Refused(f"spool {self.root} {problem}: refusing")
        if st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
            os.chmod(self.root, 0o711)  # others may pass through to their folder, never list it

    def free_bytes(self) -> int:
        path = self.root
        while not path.exists() and path != path.parent:
            path = path.parent
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    # -- job runs ------------------------------------------------------------------------------------
    def runs_of(self, job_id: str) -> list[Path]:
        """Every run folder of a job id (one per exec PID it was checkpointed under)."""
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        except PermissionError:
            raise Refused(
                f"the spool {self.root} can only be listed by root (users: through sudo, see the README)"
            ) from None
        runs = []
        for entry in entries:
            match = RUN_NAME.fullmatch(entry.name)
            if match and match.group(2) == job_id and entry.is_dir(follow_symlinks=False):
                runs.append(Path(entry.path))
        return sorted(runs)

    def open_run(self, exec_pid: int, job_id: str) -> Path:
        """The run folder, root's 0700 in both run_as modes, created if needed, refused if anyone could
        have tampered with it. Nobody but root ever reaches a generation by path: in job-user mode the
        checkpointer is handed its image folder as a descriptor (backends.base). A run folder an older
        version made 0711 (for the job user's checkpointer to pass) is closed here."""
        path = self.root / run_name(exec_pid, job_id)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise SpoolError(f"cannot create {path}: {exc.strerror}") from None
        check_private_dir(path, 0o711)
        close_private_dir(path)
        return path

    def remove_if_empty(self, run_dir: Path) -> None:
        with contextlib.suppress(OSError):  # not empty: it holds earlier generations
            os.rmdir(run_dir)

    # -- generations ---------------------------------------------------------------------------------
    def generations(self, run_dir: Path) -> list[Generation]:
        """Complete generations of one run, oldest first."""
        result = []
        try:
            entries = list(os.scandir(run_dir))
        except FileNotFoundError:
            return []
        for entry in entries:
            match = GENERATION_NAME.fullmatch(entry.name)
            if match and entry.is_dir(follow_symlinks=False):
                result.append(Generation(Path(entry.path), int(match.group(1)), match.group(2)))
        return sorted(result, key=lambda g: g.number)

    def job_generations(self, job_id: str) -> list[Generation]:
        return sorted(
            (g for run in self.runs_of(job_id) for g in self.generations(run)), key=lambda g: g.number
        )

    def newest(self, job_id: str) -> Generation | None:
        generations = self.job_generations(job_id)
        return generations[-1] if generations else None

    def next_number(self, job_id: str) -> int:
        numbers = [g.number for g in self.job_generations(job_id)]
        for run in self.runs_of(job_id):
            numbers += [n for n in _unpublished_numbers(run)]
        return max(numbers, default=0) + 1

    def clean_stale(self, job_id: str, key: str, deadline: float | None = None) -> list[Path]:
        """Remove the incoming folders of the job key ``key`` and interrupted prunes of the job id.
        Call only while holding that key's lock: then none of its incoming folders is live. Another
        key's (the same job id from another batch system or owner) are left to their own runs; one
        without a key (an older version's) only when the checkpointer it records is gone.

        A hook killed with -9 may have left its checkpointer running (it has its own process group):
        that one is killed first, so it cannot collide with the next dump of the job.
        """
        removed = []
        for run in self.runs_of(job_id):
            for entry in os.scandir(run):
                path = Path(entry.path)
                if entry.name.startswith(INCOMING_PREFIX):
                    owner = incoming_key(path)
                    if owner != key and (owner is not None or checkpointer_alive(path)):
                        continue
                    stop_orphan_checkpointer(path)
                elif not entry.name.startswith(PRUNING_PREFIX):
                    continue
                remove_tree(path, deadline=deadline)  # what is left: the next call's
                removed.append(path)
        return removed

    def drop(self, generation: Generation, deadline: float | None = None) -> None:
        """Remove a generation: first out of the generation names (one rename), then from the disk,
        so that a crash half way through never leaves a partial folder that looks complete."""
        remove_tree(self.retire(generation), deadline=deadline)

    def pruned_leftovers(self, job_id: str) -> list[Path]:
        """The job id's pruned generations whose files are still being removed (``.pruning-*``)."""
        found = []
        for run in self.runs_of(job_id):
            with contextlib.suppress(OSError):
                found += [Path(e.path) for e in os.scandir(run) if e.name.startswith(PRUNING_PREFIX)]
        return sorted(found)

    def retire(self, generation: Generation) -> Path:
        """Take a generation out of the generation names (one rename to ``.pruning-<name>``): from then
        on it is never listed, restored or counted, and what is left of it is removed by whoever comes
        next (the remover started after the hook, the next call's clean_stale). Returns its new path."""
        doomed = generation.run_dir / f"{PRUNING_PREFIX}{generation.path.name}"
        os.rename(generation.path, doomed)
        return doomed

    # -- mom-restart's work folders ------------------------------------------------------------------
    def restart_workdir(self, deadline: float | None = None) -> Path:
        """Root's 0700 folder for one restart, named after this process, in root's 0700 ``.restarts``:
        a restorer running as the job's user is handed its own subfolder as a descriptor, so no user
        ever reaches any of it by path (whatever the caller's umask: sudo from a job runs with 077).
        Those of this host's restarts that have ended (killed with -9) are removed first, each within
        the deadline (what is left is the next restart's to remove)."""
        parent = self.root / RESTARTS
        try:
            parent.mkdir(mode=0o700, exist_ok=True)
            check_private_dir(parent, 0o711)
            close_private_dir(parent)  # an older version's 0711
            host = os.uname().nodename
            for entry in os.scandir(parent):
                name, pid, start = [*entry.name.rsplit(".", 2), "", ""][:3]
                if name == host and pid.isdigit() and start_token(int(pid)) != start:
                    remove_tree(Path(entry.path), deadline=deadline)
            path = parent / f"{host}.{os.getpid()}.{start_token(os.getpid())}"
            path.mkdir(mode=0o700)
            close_private_dir(path)
        except OSError as exc:
            raise storage_error(exc, f"cannot create a work folder in {parent}") from None
        return path

    def keep_log(self, job_id: str, kind: str, text: str, uid: int) -> Path:
        """Keep a checkpointer's log (the part root read of it) as root's file in the spool, for a
        person to read after the work folder it was in is gone. The newest KEPT_LOGS **of the job's
        owner** stay (``<uid>.<job id>.<time>.<pid>.<kind>.log``): one user's failed restores never
        evict another's logs (issue 25 #9). Logs an older version kept (no uid in the name) are left for
        the administrator: no new ones are made."""
        folder = self.root / LOGS
        folder.mkdir(mode=0o700, exist_ok=True)
        check_private_dir(folder, 0o700)
        when = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = folder / f"{uid}.{job_id}.{when}.{os.getpid()}.{kind}.log"
        write_private(path, text)
        with os.scandir(folder) as listing:
            kept = [entry for entry in listing if entry.name.startswith(f"{uid}.")]
        kept.sort(key=lambda entry: entry.stat(follow_symlinks=False).st_mtime)
        for old in kept[: max(0, len(kept) - KEPT_LOGS)]:
            with contextlib.suppress(OSError):
                os.unlink(old.path)
        return path

    def begin(self, run_dir: Path, owner: Owner, key: str) -> Incoming:
        try:
            path = _new_private_dir(run_dir, INCOMING_PREFIX)
            write_private(path / KEY_FILE, key)
            image = path / IMAGE
            image.mkdir(mode=0o700)
            if not owner.is_root:  # the job user's checkpointer writes here, through a descriptor only
                os.chown(image, owner.uid, owner.gid)
        except OSError as exc:
            raise storage_error(exc, f"cannot create a generation in {run_dir}") from None
        return Incoming(path)


def _new_private_dir(parent: Path, prefix: str) -> Path:
    """A new 0700 folder of an unpredictable name in ``parent``, as tempfile.mkdtemp makes one (which
    costs the hook's call some 4 ms to import, with shutil and random)."""
    for _ in range(100):
        path = parent / f"{prefix}{os.urandom(6).hex()}"
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(errno.EEXIST, "no unused name", str(parent))


class Incoming:
    """A generation being written."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def record_checkpointer(self, pid: int) -> None:
        """Remember which process writes here, for the next run to stop it if this run dies."""
        start = start_ticks(pid)
        with contextlib.suppress(OSError):
            write_private(self.path / CHECKPOINTER_RECORD, json.dumps({"pid": pid, "start_time": start}))

    @property
    def image_dir(self) -> Path:
        return self.path / IMAGE

    def image_files(self, deadline: float | None = None) -> list[str]:
        """Paths of the image's regular files, relative to the image folder, sorted. The folder may be
        the job user's: it is walked through descriptors, and a symlink or special file in it (which
        no checkpointer writes) refuses the whole image."""
        from mom_checkpoint.platform import safefs

        fd = safefs.open_dir(self.image_dir)
        try:
            entries = safefs.walk(fd, deadline=deadline)
        finally:
            os.close(fd)
        for entry in entries:
            if entry.kind in ("symlink", "other"):
                what = "a symlink" if entry.kind == "symlink" else "a special file"
                raise safefs.UnsafePath(f"{self.image_dir}/{entry.path} is {what}: refusing this image")
        return sorted(e.path for e in entries if e.kind == "file")

    def write_manifest(self, text: str) -> None:
        """Root's record of the generation, root's file in root's folder whatever the mode: no user
        can change what root later reads back from it."""
        target = self.path / MANIFEST
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                write_all(fd, text.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(self.image_dir)
            fsync_dir(self.path)
        except OSError as exc:
            raise storage_error(exc, f"cannot write {target}") from None

    def publish(self, name: str) -> Generation:
        """Give the generation its name: from this rename on it is complete."""
        final = self.path.parent / name
        try:
            for record in (CHECKPOINTER_RECORD, KEY_FILE):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path / record)
            os.rename(self.path, final)
            fsync_dir(self.path.parent)
        except OSError as exc:
            raise storage_error(exc, f"cannot publish {final}") from None
        match = GENERATION_NAME.fullmatch(name)
        assert match is not None, name
        return Generation(final, int(match.group(1)), match.group(2))

    def discard(self) -> None:
        remove_tree(self.path)

    def keep_unpublished(self, number: int) -> Path:
        """The job already ended with this image: never delete it, set it aside for a person to look at."""
        target = self.path.parent / f"{UNPUBLISHED_PREFIX}{number:06d}"
        os.rename(self.path, target)
        return target


def _unpublished_numbers(run: Path) -> Iterator[int]:
    for entry in os.scandir(run):
        if entry.name.startswith(UNPUBLISHED_PREFIX) and entry.name[len(UNPUBLISHED_PREFIX) :].isdigit():
            yield int(entry.name[len(UNPUBLISHED_PREFIX) :])


def incoming_key(incoming: Path) -> str | None:
    """The job key of the run that writes an incoming folder (root's file in root's folder)."""
    from mom_checkpoint.platform.safefs import read_text

    return read_text(incoming / KEY_FILE, limit=512).strip() or None


def checkpointer_alive(incoming: Path) -> bool:
    """Whether the checkpointer an incoming folder records still runs."""
    try:
        data = json.loads((incoming / CHECKPOINTER_RECORD).read_text())
        pid, start = int(data["pid"]), float(data["start_time"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return start_ticks(pid) == start


def stop_orphan_checkpointer(incoming: Path) -> None:
    try:
        data = json.loads((incoming / CHECKPOINTER_RECORD).read_text())
        pid, start = int(data["pid"]), float(data["start_time"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if start_ticks(pid) != start:
        return  # gone, or the pid now belongs to another process
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    # wait until it has really gone (up to 10 s): it may still hold the image files
    poll(lambda: start_ticks(pid) != start, bool, 10.0, interval_s=0.1)


RESERVE_BYTES = 16 * 1024 * 1024  # manifest, logs and CRIU's small image files


def check_space(spool: Spool, job: JobProcesses, space_margin: float, job_id: str, deadline: float) -> None:
    """DiskFull unless the spool has room for the job's image: its resident memory times
    ``space_margin`` (0: never checked), and RESERVE_BYTES. What the job's last call pruned and is
    still being removed (detached, after that call) is the job's own space: removed first."""
    if space_margin == 0:
        return
    needed = int(job.resident_bytes * space_margin) + RESERVE_BYTES
    free = spool.free_bytes()
    if free < needed and (leftovers := spool.pruned_leftovers(job_id)):
        for path in leftovers:
            remove_tree(path, deadline=deadline)
        free = spool.free_bytes()
    if free < needed:
        raise DiskFull(
            f"spool {spool.root} has {mib(free)} free, the job needs about {mib(needed)} "
            f"(resident memory x space_margin={space_margin:g}): not starting the checkpoint"
        )


def mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"
