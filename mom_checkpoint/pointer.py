"""TORQUE's CHECKPOINT_DIR/CHECKPOINT_NAME: where pbs_mom expects the image.

pbs_mom deletes the whole CHECKPOINT_DIR after any failed checkpoint, and copies what is at
CHECKPOINT_DIR/CHECKPOINT_NAME to the server as the job's user. So the images stay in the spool and a
small pointer file, the user's and readable by them, names the generation.

CHECKPOINT_DIR is untrusted (users can steer it with ``qsub -c dir=...``): it must lie inside one of
``torque_checkpoint_roots`` and is opened component by component without following symlinks; the pointer
is written through that directory descriptor, so a symlink planted by the user is never followed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from mom_checkpoint.errors import NoSuchProcess, Refused, StorageIOError
from mom_checkpoint.records import RecordError, build
from mom_checkpoint.storage import storage_error

POINTER_KIND = "mom-checkpoint pointer"
POINTER_SCHEMA = 1


@dataclass(frozen=True)
class Pointer:
    kind: str
    schema: int
    job_id: str
    host: str
    generation: str  # absolute path of the generation folder in the spool
    number: int
    created: str


def open_checkpoint_dir(path: str, roots: Sequence[str], key: str = "torque_checkpoint_roots") -> int:
    """A directory fd for CHECKPOINT_DIR after checking it lies strictly inside an allowed root."""
    clean = path.rstrip("/") or "/"
    if os.path.normpath(clean) != clean:
        raise Refused(f"CHECKPOINT_DIR {path!r} is not a plain absolute path ('..', '.' or '//'): refusing")
    for root in roots:
        root_clean = os.path.normpath(root)
        if clean.startswith(root_clean.rstrip("/") + "/"):
            relative = clean[len(root_clean) :].strip("/")
            return _walk(root_clean, relative, path)
    raise Refused(
        f"CHECKPOINT_DIR {path} is outside the allowed roots ({', '.join(roots)}): refusing. Users: "
        f"submit without -c dir=, or with a folder inside them; administrators: add the folder to {key}"
    )


def _walk(root: str, relative: str, shown: str) -> int:
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise NoSuchProcess(f"checkpoint root {root} cannot be opened: {exc.strerror}") from None
    for part in relative.split("/"):
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
        fd = next_fd
    return fd


def write_pointer(dir_fd: int, name: str, pointer: Pointer, uid: int, gid: int) -> None:
    """Atomically put the pointer at NAME inside the open directory, owned by the job's user, 0600."""
    data = (json.dumps(asdict(pointer), indent=2) + "\n").encode()
    tmp = f".{name}.tmp-{os.getpid()}"
    try:
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
        )
        try:
            os.write(fd, data)
            os.fsync(fd)
            os.fchown(fd, uid, gid)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
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
