"""TORQUE's CHECKPOINT_DIR/CHECKPOINT_NAME: where pbs_mom expects the image.

pbs_mom deletes the whole CHECKPOINT_DIR after any failed checkpoint, and copies what is at
CHECKPOINT_DIR/CHECKPOINT_NAME to the server as the job's user. So the images stay in the spool and a
small pointer file, the user's and readable by them, names the generation.

CHECKPOINT_DIR is untrusted (users can steer it with ``qsub -c dir=...``): it must lie inside one of
``torque_checkpoint_roots`` and is opened component by component without following symlinks; the pointer
is written through that directory descriptor, so a symlink planted by the user is never followed.

TORQUE's checkpoint folders are 1777: any user can create ``<job>.CK`` there before the job exists (a
symlink, a file, a folder of theirs). pbs_mom's own mkdir then fails and it calls the hook anyway, so
for a checkpoint root makes the job's folder itself (``open_checkpoint_dir`` with ``owner``, see
``_open_in_shared``); a restart reads no pointer from such an entry and falls back to the spool.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Sequence

import msgspec
from msgspec.structs import asdict

from mom_checkpoint.platform import safefs
from mom_checkpoint.platform.errors import NoSuchProcess, Refused, StorageIOError
from mom_checkpoint.platform.files import replace_in, storage_error
from mom_checkpoint.platform.log import Logger
from mom_checkpoint.platform.records import RecordError, build

POINTER_KIND = "mom-checkpoint pointer"
POINTER_SCHEMA = 1
TORQUE_ROOTS = "torque_checkpoint_roots"  # the key of the roots whose folders TORQUE makes 1777
JOB_DIR_MODE = 0o755  # what pbs_mom gives the <job>.CK it makes (MOM_CONTRACT.md)
PLANT_ATTEMPTS = 5  # how often an entry put back at once by another user is cleared before refusing


class Pointer(msgspec.Struct, frozen=True):
    kind: str
    schema: int
    job_id: str
    host: str
    generation: str  # absolute path of the generation folder in the spool
    number: int
    created: str

    @classmethod
    def to(cls, job_id: str, generation: str, number: int, created: str) -> Pointer:
        """A pointer of this host to the generation folder at ``generation``."""
        return cls(POINTER_KIND, POINTER_SCHEMA, job_id, os.uname().nodename, generation, number, created)


def open_checkpoint_dir(
    path: str,
    roots: Sequence[str],
    key: str = TORQUE_ROOTS,
    *,
    owner: tuple[int, int] | None = None,
    reader: int | None = None,
    log: Logger | None = None,
) -> int:
    """A directory fd for CHECKPOINT_DIR after checking it lies strictly inside an allowed root.

    Every folder below the root must be root's or the job's owner's (``owner`` for a checkpoint,
    ``reader`` the uid of a restart's stated owner): a job's ``qsub -c dir=`` may name another
    user's folder inside the roots, and that user would then hold the job's pointer, and choose what
    its restart reads (issue 25 #9). A checkpoint refuses such a folder (77); a restart takes it for
    a missing pointer (NoSuchProcess: it falls back to the spool).

    ``owner`` (the job's uid and gid) is for a checkpoint under TORQUE: where the folder holding
    CHECKPOINT_DIR is shared (root's, sticky, writable by others), whatever another user put at its
    name is moved out of the way and the job's folder made anew, and ``log`` says what was found
    (see ``_open_in_shared``). Without it (a restart), such an entry is not the job's folder:
    NoSuchProcess, naming what is there."""
    clean = path.rstrip("/") or "/"
    if os.path.normpath(clean) != clean:
        raise Refused(f"CHECKPOINT_DIR {path!r} is not a plain absolute path ('..', '.' or '//'): refusing")
    for root in roots:
        root_clean = os.path.normpath(root)
        if clean.startswith(root_clean.rstrip("/") + "/"):
            relative = clean[len(root_clean) :].strip("/")
            uid = owner[0] if owner is not None else reader
            return _walk(
                root_clean, relative, path, shared=key == TORQUE_ROOTS, owner=owner, log=log, uid=uid
            )
    raise Refused(
        f"CHECKPOINT_DIR {path} is outside the allowed roots ({', '.join(roots)}): refusing. Users: "
        f"submit without -c dir=, or with a folder inside them; administrators: add the folder to {key}"
    )


def _walk(
    root: str,
    relative: str,
    shown: str,
    *,
    shared: bool,
    owner: tuple[int, int] | None,
    log: Logger | None,
    uid: int | None,
) -> int:
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise NoSuchProcess(f"checkpoint root {root} cannot be opened: {exc.strerror}") from None
    parts = relative.split("/")
    for i, part in enumerate(parts):
        if shared and i == len(parts) - 1 and _everyones(fd):
            try:
                found = _open_in_shared(fd, part, shown, owner, log)
            finally:
                os.close(fd)
            return _whose(found, part, shown, uid, writing=owner is not None)
        try:
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise Refused(
                    f"CHECKPOINT_DIR {shown}: {part!r} is a symlink or not a folder: refusing"
                ) from None
            raise NoSuchProcess(f"CHECKPOINT_DIR {shown} does not exist ({exc.strerror})") from None
        os.close(fd)
        fd = _whose(next_fd, part, shown, uid, writing=owner is not None)
    return fd


def _whose(fd: int, part: str, shown: str, uid: int | None, *, writing: bool) -> int:
    """``fd`` if its folder is root's or ``uid``'s (or no owner is known); closed and refused else."""
    if uid is None:
        return fd
    holder = os.fstat(fd).st_uid
    if holder in (0, uid):
        return fd
    os.close(fd)
    if writing:
        raise Refused(
            f"CHECKPOINT_DIR {shown}: {part!r} is another user's folder (uid {holder}): refusing to "
            f"put the job's pointer there (qsub -c dir= must name a folder of the job's owner)"
        )
    raise NoSuchProcess(f"CHECKPOINT_DIR {shown}: {part!r} is another user's folder (uid {holder})")


def _everyones(fd: int) -> bool:
    """A folder of root's where every user may create entries and none may move another's: TORQUE's
    1777 checkpoint folder. Only there is an entry another user's doing, and only there can root
    make the job's folder knowing no one can move it away again (a folder another user owns, or one
    others may write without the sticky bit, is left as it was: refused as before)."""
    st = os.fstat(fd)
    return st.st_uid == 0 and bool(st.st_mode & stat.S_ISVTX) and bool(st.st_mode & 0o022)


def _open_in_shared(
    parent: int, name: str, shown: str, owner: tuple[int, int] | None, log: Logger | None
) -> int:
    """The job's folder ``name`` in a shared folder (``_everyones``), made right whatever is there.

    A folder of the job's owner or of root is the job's, used as it is (pbs_mom made it). Anything
    else (a symlink, a file, a folder of another user, even of root if it is no folder) was put there
    by someone else, before the job existed: its content is neither followed nor read nor trusted.
    For a checkpoint (``owner`` given) root then makes the job's folder itself, as pbs_mom would have:
    through descriptors, 0755, the job owner's; where nothing is there at all (a plant taken away
    again after pbs_mom's mkdir failed) it makes it too.

    The planted entry is moved aside to ``.<name>.planted-<random>`` in the same folder, not
    deleted: root destroys nothing another user (or an administrator) owns, a folder of theirs keeps
    whatever they had in it, its owner may still remove it (the sticky bit lets them), and the
    administrator has the evidence next to the log line. The fresh folder is swapped in for the
    plant in one step (renameat2 RENAME_EXCHANGE), so no other user can take the name between the
    two; where the file system cannot swap, the plant is renamed away first and the name taken with
    mkdir, which never replaces anything (a user who wins that gap gets moved aside too, a few
    times, then the call is refused). The log names the kind and the owner's uid, never the
    link's target or any content.

    Without ``owner`` (a restart reads a pointer, it makes nothing) any folder is returned as before,
    and anything else is NoSuchProcess naming what is there: the caller falls back to the spool."""
    for _ in range(PLANT_ATTEMPTS):
        try:
            fd = os.open(name, safefs.DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            found = None
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise NoSuchProcess(f"CHECKPOINT_DIR {shown} cannot be opened ({exc.strerror})") from None
            found = safefs.describe(parent, name)  # None: it went away meanwhile
            if found is not None and found[0] == "dir":
                continue  # swapped for a folder meanwhile: look at that one
        else:
            uid = os.fstat(fd).st_uid
            if owner is None or uid in (0, owner[0]):
                return fd
            os.close(fd)
            found = ("dir", uid)
        if owner is None:
            if found is None:
                raise NoSuchProcess(f"CHECKPOINT_DIR {shown} does not exist")
            raise NoSuchProcess(
                f"CHECKPOINT_DIR {shown} is a {found[0]} of uid {found[1]}, not a folder, in a folder every "
                "user can write: not following it"
            )
        made = _make_job_dir(parent, name, shown, owner, found=found, log=log)
        if made is not None:
            return made
    raise Refused(
        f"CHECKPOINT_DIR {shown}: other users keep putting entries at that name in a folder every user "
        "can write: refusing"
    )


def _make_job_dir(
    parent: int,
    name: str,
    shown: str,
    owner: tuple[int, int],
    *,
    found: tuple[str, int] | None,
    log: Logger | None,
) -> int | None:
    """Make the job's folder at ``name`` in place of what was ``found`` there (None: nothing); None
    when the name changed meanwhile (the caller looks again). The folder is root's 0700 until it is
    at ``name``: no other user, the job's owner included, can move it meanwhile."""
    if found is None:
        try:
            os.mkdir(name, 0o700, dir_fd=parent)  # never replaces: whoever came first keeps the name
        except FileExistsError:
            return None
        except OSError as exc:
            raise storage_error(exc, f"cannot make CHECKPOINT_DIR {shown}") from None
        fd = _give(_open_made(parent, name, shown), parent, shown, owner)
        if log is not None:
            log.warning("checkpoint_dir.missing", path=shown, made=True)
        return fd
    aside = f".{name[:200]}.planted-{os.urandom(6).hex()}"
    try:
        os.mkdir(aside, 0o700, dir_fd=parent)
    except OSError as exc:
        raise storage_error(exc, f"cannot make CHECKPOINT_DIR {shown}") from None
    fd = _open_made(parent, aside, shown)
    try:
        safefs.exchange(parent, aside, name)  # the plant is at ``aside`` now, the new folder at ``name``
    except OSError as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.rmdir(aside, dir_fd=parent)
        if exc.errno == errno.ENOENT:
            return None  # the plant went away meanwhile: look again
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise storage_error(exc, f"cannot make CHECKPOINT_DIR {shown}") from None
        moved = _rename_aside(parent, name, shown)  # this file system cannot swap: move, then mkdir
        if moved is not None and log is not None:
            log.warning("checkpoint_dir.planted", path=shown, kind=found[0], uid=found[1], moved_to=moved)
        return None
    fd = _give(fd, parent, shown, owner)
    if log is not None:
        log.warning("checkpoint_dir.planted", path=shown, kind=found[0], uid=found[1], moved_to=aside)
    return fd


def _open_made(parent: int, name: str, shown: str) -> int:
    """The folder root has just made at ``name`` (no other user can move or replace a root entry in
    a sticky folder)."""
    try:
        return os.open(name, safefs.DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        raise storage_error(exc, f"cannot open the CHECKPOINT_DIR {shown} just made") from None


def _give(fd: int, parent: int, shown: str, owner: tuple[int, int]) -> int:
    """Give the open folder to the job's owner, as pbs_mom would have made it, through its descriptor."""
    try:
        os.fchown(fd, *owner)
        os.fchmod(fd, JOB_DIR_MODE)
        os.fsync(parent)
    except OSError as exc:
        os.close(fd)
        raise storage_error(exc, f"cannot give CHECKPOINT_DIR {shown} to the job's owner") from None
    return fd


def _rename_aside(parent: int, name: str, shown: str) -> str | None:
    aside = f".{name[:200]}.planted-{os.urandom(6).hex()}"
    try:
        os.rename(name, aside, src_dir_fd=parent, dst_dir_fd=parent)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise storage_error(exc, f"cannot move aside what is at CHECKPOINT_DIR {shown}") from None
    return aside


def write_pointer(dir_fd: int, name: str, pointer: Pointer, uid: int, gid: int) -> None:
    """Atomically put the pointer at NAME inside the open directory, owned by the job's user, 0600."""
    data = (json.dumps(asdict(pointer), indent=2) + "\n").encode()
    try:  # the temporary's name is not guessable: the folder may be 1777 (a restart's)
        replace_in(dir_fd, name, data, owner=(uid, gid))
    except OSError as exc:
        raise storage_error(exc, f"cannot write the pointer {name}") from None


def remove_pointer(dir_fd: int, name: str) -> None:
    """After a failure nothing may be left at NAME: OpenPBS's MOM takes any file there for a good
    checkpoint (and pbs_mom's TORQUE deletes the folder anyway)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def read_pointer(path: str, dir_fd: int | None = None) -> Pointer:
    """Read a pointer (never through a symlink). It travelled through the user's hands: trust nothing
    in it beyond naming a generation, which the caller checks against the spool."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StorageIOError(f"{path} is not a regular file")
            data = json.loads(fh.read(65536))
    except (OSError, ValueError) as exc:
        raise StorageIOError(f"cannot read the checkpoint pointer {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("kind") != POINTER_KIND:
        raise StorageIOError(f"{path} is not a mom-checkpoint pointer")
    try:
        return build(Pointer, data)
    except RecordError as exc:
        raise StorageIOError(f"{path}: bad pointer: {exc}") from None
