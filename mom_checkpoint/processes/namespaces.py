"""A restored job's own PID and mount namespaces (issue 28), made by root and recognised by root.

Every CRIU restore puts the job's tree into a fresh PID namespace, as CRIU's own ``criu-ns`` does, so
it gets back the PIDs it had whatever runs on the node (no "Can't fork for N: File exists", no PID a
user can squat), and a fresh mount namespace whose /proc is that PID namespace's (``ps`` in the job
shows its own processes). The namespace's PID 1 is a holder, a child of mom-restart that does nothing
but wait: when mom-restart ends (the job's end, or pbs_mom's SIGKILL) the holder's pipe closes, it
exits, and the kernel kills everything left in the namespace.

The hook dumps such a job from inside: CRIU runs in the job's PID and mount namespaces (it refuses a
task whose session or parent namespace it cannot see) and names the tasks by the PIDs the job sees.
Root enters only namespaces it made itself: the restart records their identities (the inodes of
``/proc/PID/ns/pid`` and ``ns/mnt``), and the hook opens the job's namespace files, checks them against
that record and enters through those very descriptors (nothing a user can swap in between).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import msgspec

from mom_checkpoint.platform.errors import NoSuchProcess, Refused
from mom_checkpoint.platform.programs import find_program

CLONE_FS = 0x00000200
CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_SLAVE = 2, 4, 8, 16384, 1 << 19
KINDS = ("pid", "mnt")


class Namespaces(msgspec.Struct, frozen=True):
    """A process's PID and mount namespaces, by the inodes of their /proc/PID/ns files."""

    pid: int
    mnt: int


class Inside(msgspec.Struct, frozen=True):
    """A process as its own PID namespace sees it (the innermost of /proc/PID/status's NSpid, NSsid)."""

    pid: int
    session: int


def of(pid: int | str) -> Namespaces:
    """The namespaces of a process (``"self"`` for this one)."""
    return Namespaces(*(os.stat(f"/proc/{pid}/ns/{kind}").st_ino for kind in KINDS))


@functools.cache
def own() -> Namespaces:
    return of("self")


def inside(pid: int) -> Inside:
    """A process's PID and session ID in its own PID namespace (0: its session leader is outside)."""
    fields: dict[str, list[int]] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, values = line.partition(":")
            if name in ("NSpid", "NSsid"):
                fields[name] = [int(value) for value in values.split()]
    return Inside(fields["NSpid"][-1], fields["NSsid"][-1])


@contextlib.contextmanager
def entered(pid: int, expected: Namespaces) -> Iterator[tuple[int, int]]:
    """The namespace files of a process, opened and checked to be exactly ``expected`` (root's record
    of what it made): yields (pid namespace fd, mount namespace fd); NamespaceMismatch otherwise."""
    fds: list[int] = []
    try:
        for kind in KINDS:
            try:
                fds.append(os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC))
            except FileNotFoundError:
                raise NoSuchProcess(f"process {pid} has ended") from None
        found = Namespaces(*(os.fstat(fd).st_ino for fd in fds))
        if found != expected:
            raise Refused(
                f"process {pid} runs in namespaces pid:[{found.pid}] mnt:[{found.mnt}], not the ones its "
                f"restart made (pid:[{expected.pid}] mnt:[{expected.mnt}]): refusing to enter them"
            )
        yield fds[0], fds[1]
    finally:
        for fd in fds:
            os.close(fd)


@contextlib.contextmanager
def children_in(pid_ns_fd: int) -> Iterator[None]:
    """The processes this thread starts meanwhile are born in that PID namespace (setns affects only
    the children of the calling thread); back to this process's own afterwards."""
    back = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(pid_ns_fd, CLONE_NEWPID)
        try:
            yield
        finally:
            _setns(back, CLONE_NEWPID)
    finally:
        os.close(back)


class Holder:
    """PID 1 of a fresh PID namespace, in a fresh mount namespace whose /proc is that PID namespace's:
    a child of this process that ignores every signal it can (pbs_mom's SIGTERM goes to the job,
    forwarded by mom-restart; its SIGKILL ends the holder and so the namespace), reaps whatever is
    orphaned inside, and exits when this process closes its pipe or ends.

    Start the namespace's other processes inside ``spawning()`` and ``enter_mounts()``'s command;
    open the files the job is handed with ``open()``: a file opened outside would sit on a mount the
    job's mount namespace does not have, and its next dump from inside would fail on it."""

    def __init__(self) -> None:
        self._pipe = self.ns_fd = self.mnt_fd = -1
        self._mounts: Any = None
        back = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _unshare(CLONE_NEWPID)  # this thread's next child is PID 1 of a new namespace
            try:
                read_end, self._pipe = os.pipe2(os.O_CLOEXEC)
                ready, told = os.pipe2(os.O_CLOEXEC)
                self.pid = os.fork()
                if self.pid == 0:
                    _hold(read_end, told)
                os.close(read_end)
                os.close(told)
                answer = os.read(ready, 64)
                os.close(ready)
            finally:
                _setns(back, CLONE_NEWPID)  # nothing else of this process lands inside by chance
        finally:
            os.close(back)
        if answer != b"+":
            self.close()
            raise OSError(f"the namespace's holder could not make its mount namespace: {answer.decode()}")
        self.ns_fd = os.open(f"/proc/{self.pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.mnt_fd = os.open(f"/proc/{self.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        from concurrent.futures import ThreadPoolExecutor

        # the thread that opens the job's files joins its mount namespace now, as root (the opens
        # themselves may run with the owner's rights, which could not join it)
        self._mounts = ThreadPoolExecutor(1, initializer=_enter_mounts, initargs=(self.mnt_fd,))
        try:
            self._mounts.submit(int).result()
        except Exception as exc:
            self.close()
            raise OSError(f"cannot join the namespace's mounts: {exc}") from None

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        with children_in(self.ns_fd):
            yield

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        """``os.open`` in the namespace's mount namespace (a thread of this process that joined it;
        the process's credentials, e.g. acting_as, apply)."""
        if self._mounts is None:
            raise OSError("the namespace has ended")
        fd: int = self._mounts.submit(os.open, path, flags, mode).result()
        return fd

    def close(self) -> None:
        """End the namespace: the holder exits, and the kernel kills whatever is left inside. The
        holder is not waited for here: its exit waits until every process of the namespace has been
        reaped, and the restored tree's root is this process's own child (reaped by its waiter)."""
        if self._mounts is not None:
            self._mounts.shutdown()
            self._mounts = None
        for fd in (self._pipe, self.ns_fd, self.mnt_fd):
            if fd >= 0:
                os.close(fd)
        self._pipe = self.ns_fd = self.mnt_fd = -1

    def reaped(self, timeout_s: float) -> bool:
        """Whether the holder has ended (and been reaped) within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if os.waitpid(self.pid, os.WNOHANG)[0] == self.pid:
                    return True
            except ChildProcessError:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


def _enter_mounts(mnt_fd: int) -> None:
    """A thread of its own fs (root, cwd) joins a mount namespace; the process's others stay."""
    _unshare(CLONE_FS)
    _setns(mnt_fd, CLONE_NEWNS)


def _hold(read_end: int, told: int) -> None:  # pragma: no cover - runs in the forked holder
    """The holder's whole life, in the forked child: nothing but os calls (another thread of the
    parent may have held a lock at the fork)."""
    try:
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        keep = sorted((read_end, told))
        os.closerange(3, keep[0])
        os.closerange(keep[0] + 1, keep[1])
        os.closerange(keep[1] + 1, 1 << 16)  # no lock, log or job file of mom-restart's kept open
        for number in range(1, signal.NSIG):
            if number not in (signal.SIGKILL, signal.SIGSTOP):
                with contextlib.suppress(OSError, ValueError):
                    signal.signal(number, signal.SIG_IGN)  # SIGCHLD ignored: orphans reaped at once
        try:
            _unshare(CLONE_NEWNS)
            _mount(None, b"/", None, MS_REC | MS_SLAVE)  # the node's later mounts still reach the job
            _mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError as exc:
            os.write(told, f"{exc.strerror}".encode()[:64])
            raise
        os.write(told, b"+")
        os.close(told)
        while os.read(read_end, 1):
            pass
    finally:
        os._exit(0)


def nsenter() -> str:
    """util-linux's nsenter; ProgramMissing where it is not installed."""
    return find_program("nsenter", "nsenter (util-linux)")


def in_mounts(mnt_fd: int, argv: list[str]) -> list[str]:
    """``argv`` run in the mount namespace behind ``mnt_fd`` (a descriptor of this process's, handed
    to the command: nsenter opens it as /proc/self/fd/N before it has left the node's /proc)."""
    return [nsenter(), f"--mount=/proc/self/fd/{mnt_fd}", "--", *argv]


def available() -> str | None:
    """Why this node cannot restore into a fresh PID namespace, or None when it can (the kernel and
    the privileges allow it: a child unshares one and ends)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the probing child
        try:
            _unshare(CLONE_NEWPID | CLONE_NEWNS)
        except OSError as exc:
            os._exit(100 + min(exc.errno or 0, 150))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return None
    return f"unshare(CLONE_NEWPID|CLONE_NEWNS) failed: {os.strerror(code - 100) if code > 100 else code}"


@functools.cache
def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _check(result: int) -> None:
    if result != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _unshare(flags: int) -> None:
    _check(_libc().unshare(flags))


def _setns(fd: int, kind: int) -> None:
    _check(_libc().setns(fd, kind))


def _mount(source: bytes | None, target: bytes, kind: bytes | None, flags: int) -> None:
    _check(_libc().mount(source, target, kind, flags, None))
