"""Find a job's processes with psutil (never ``ps | grep | awk``).

The job shell that pbs_mom started is the leader of the job's session (its pid is TORQUE's SESSION_ID and
the seed's JOB_PID). The process to checkpoint, the *exec PID*, is the leader's child in that session: the
job script's shell under TORQUE, the application in the seed's set-up. When the shell has exec'd the
application (no children), the shell itself is the target. Several children are refused unless
``several_children = "oldest"``. Every process of the tree must belong to the job's user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from collections.abc import Callable, Sequence
from typing import Literal

import msgspec
import psutil
from msgspec import field

from mom_checkpoint.platform.errors import NoSuchProcess, Refused, UnknownUser
from mom_checkpoint.processes import namespaces
from mom_checkpoint.processes.identity import name_of
from mom_checkpoint.processes.namespaces import Inside, Namespaces
from mom_checkpoint.processes.procfs import fdinfo


class OpenFile(msgspec.Struct, frozen=True):
    """One open file descriptor: restart hands regular files back to the application (--inherit-fd)."""

    fd: int
    target: str  # a path, or "pipe:[N]", "socket:[N]", "anon_inode:[...]"
    kind: Literal["file", "pipe", "socket", "other"]
    flags: int | None = None  # from /proc/PID/fdinfo (O_APPEND etc.)
    pos: int | None = None


class ProcessRecord(msgspec.Struct, frozen=True):
    pid: int
    ppid: int
    name: str
    exe: str
    cmdline: list[str]
    cwd: str
    uid: int
    gid: int
    rss: int
    start_time: float
    session_id: int
    fds: list[OpenFile] = field(default_factory=list)


class JobProcesses(msgspec.Struct, frozen=True):
    leader_pid: int  # the job shell, leader of the job's session
    exec_pid: int  # the process handed to the checkpointer
    user: str
    uid: int
    gid: int
    tree: list[ProcessRecord]  # the exec PID first, then its descendants
    found_via: Literal["session", "restart-record"] = "session"

    swap_bytes: int = 0  # swapped out: CRIU dumps it too
    # the PID and mount namespaces its restart made for it (processes.namespaces); None: the node's
    namespaces: Namespaces | None = None
    inside: dict[int, Inside] = field(default_factory=dict)  # there: each process as the job sees it

    @property
    def resident_bytes(self) -> int:
        return sum(p.rss for p in self.tree)

    @property
    def session(self) -> int:
        """The job's session as the node sees it: the job shell's, or, restored into a namespace of
        its own, the one it leads there."""
        return self.tree[0].session_id if self.namespaces is not None else self.leader_pid

    def seen_inside(self) -> list[ProcessRecord]:
        """The tree as the job sees it, by the PIDs its image has (pid, parent, session): the node's
        PIDs, unless it runs in a namespace of its own."""
        if self.namespaces is None:
            return list(self.tree)
        inside = self.inside
        return [
            msgspec.structs.replace(
                record,
                pid=inside[record.pid].pid,
                ppid=inside[record.ppid].pid if record.ppid in inside else 0,
                session_id=inside[record.pid].session,
            )
            for record in self.tree
        ]

    @property
    def exec_pid_inside(self) -> int:
        """The exec PID as the job (and its image) knows it."""
        return self.inside[self.exec_pid].pid if self.namespaces is not None else self.exec_pid


class Restarted(msgspec.Struct, frozen=True):
    """Root's record of a job's live restart process, and of the namespaces it restored the job into."""

    pid: int
    namespaces: Namespaces | None = None


_KERNEL_CHILDREN = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")

# Given a job id, the process that restarted it, if one is recorded and still alive.
RestartLookup = Callable[[str], Restarted | None]


def find_job(
    top_pid: int,
    *,
    job_id: str,
    euser: str | None,
    several_children: Literal["fail", "oldest"] = "fail",
    restart_lookup: RestartLookup | None = None,
) -> JobProcesses:
    expected_uid = _uid_of(euser) if euser is not None else None
    found_via: Literal["session", "restart-record"] = "session"
    leader = _process(top_pid)
    restarted = restart_lookup(job_id) if restart_lookup is not None else None
    if leader is not None and restarted is not None and restarted.pid == leader.pid:
        found_via = "restart-record"  # OpenPBS passes the restart process's own (live) session
    if leader is None:
        if restarted is None:
            raise NoSuchProcess(
                f"no process {top_pid}: job {job_id} is not running on this node "
                f"(and no restart of it is recorded)"
            )
        leader, found_via = _process(restarted.pid), "restart-record"
        if leader is None:
            raise NoSuchProcess(f"job {job_id}: its restart process {restarted.pid} has ended")
    try:
        session = os.getsid(leader.pid)
        if session != leader.pid:
            raise NoSuchProcess(
                f"process {leader.pid} is not a session leader (its session is {session}), "
                f"so it is not the job shell of job {job_id}"
            )
        if found_via == "session":
            uid = leader.uids().real
            if expected_uid is not None and uid != expected_uid:
                raise Refused(f"process {leader.pid} belongs to {name_of(uid)}, not to {euser}: refusing")
            target = _exec_process(leader, session, job_id, several_children)
        else:
            # the leader is the restart program (root's); the job is the restored tree under it
            target = _exec_process(leader, session, job_id, several_children, restored=True)
            uid = target.uids().real
            if target.pid == leader.pid or (expected_uid is not None and uid != expected_uid):
                raise NoSuchProcess(
                    f"job {job_id}: its restart process {leader.pid} runs no application of {euser}"
                )
        records = [_record(target)]
        for descendant in descendants(target):
            with contextlib.suppress(psutil.NoSuchProcess):  # a short-lived child may end meanwhile
                if _alive(descendant):
                    records.append(_record(descendant))
    except psutil.NoSuchProcess as exc:
        raise NoSuchProcess(f"job {job_id}: process {exc.pid} ended while it was being examined") from None
    except psutil.AccessDenied as exc:
        raise Refused(f"job {job_id}: access to process {exc.pid} denied") from None
    for record in records:
        if record.uid != uid:
            raise Refused(
                f"job {job_id}: process {record.pid} ({record.name}) belongs to {name_of(record.uid)}, "
                f"not to the job's user {name_of(uid)}: refusing"
            )
    made = restarted.namespaces if restarted is not None and found_via == "restart-record" else None
    job_namespaces = _namespaces_of(records, made, job_id)
    return JobProcesses(
        leader_pid=leader.pid,
        exec_pid=target.pid,
        user=name_of(uid),
        uid=uid,
        gid=records[0].gid,
        tree=records,
        found_via=found_via,
        swap_bytes=sum(_swapped(record.pid) for record in records),
        namespaces=job_namespaces,
        inside=_inside(records, job_id) if job_namespaces is not None else {},
    )


def _inside(records: Sequence[ProcessRecord], job_id: str) -> dict[int, Inside]:
    """Each process as the job sees it, read now: a dump that ends the job leaves nothing to read."""
    try:
        return {record.pid: namespaces.inside(record.pid) for record in records}
    except (FileNotFoundError, ProcessLookupError):
        raise NoSuchProcess(f"job {job_id}: a process ended while it was being examined") from None


def _namespaces_of(
    records: Sequence[ProcessRecord], made: Namespaces | None, job_id: str
) -> Namespaces | None:
    """None for a job among the node's own processes; the namespaces its restart made and recorded,
    for a job restored into them; anything else is refused: root enters no namespace a user made."""
    try:
        found = {namespaces.of(record.pid) for record in records}
    except FileNotFoundError:
        raise NoSuchProcess(f"job {job_id}: a process ended while it was being examined") from None
    if found == {namespaces.own()}:
        return None
    if made is None or found != {made}:
        raise Refused(
            f"job {job_id}: its processes run in PID or mount namespaces that no restart of it made: "
            f"refusing to checkpoint them"
        )
    return made


def _swapped(pid: int) -> int:
    """VmSwap of a process, in bytes (0 when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmSwap:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def process_start_time(pid: int) -> float | None:
    proc = _process(pid)
    try:
        return proc.create_time() if proc is not None else None
    except psutil.NoSuchProcess:
        return None


def children_of(proc: psutil.Process) -> list[psutil.Process]:
    """The process's children from the kernel's own lists (/proc/PID/task/TID/children): psutil's
    children() reads the stat file of every process on the node, 0.3 s on a node with 10,000."""
    if not _KERNEL_CHILDREN:
        return proc.children()  # a kernel without CONFIG_PROC_CHILDREN
    try:
        pids = child_pids(proc.pid)
    except FileNotFoundError:
        raise psutil.NoSuchProcess(proc.pid) from None
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):  # ended meanwhile
            child = psutil.Process(pid)
            if child.ppid() == proc.pid:
                found.append(child)
    return found


def child_pids(pid: int) -> list[int]:
    """The pids of a process's children, from /proc/PID/task/TID/children (FileNotFoundError when
    the process has gone)."""
    found: set[int] = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        # (a thread that has just ended has no children file any more)
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/task/{tid}/children") as fh:
            found.update(int(child) for child in fh.read().split())
    return sorted(found)


def descendants(proc: psutil.Process) -> list[psutil.Process]:
    """Every descendant, parents before their children."""
    found, todo = [], children_of(proc)
    while todo:
        child = todo.pop(0)
        found.append(child)
        with contextlib.suppress(psutil.NoSuchProcess):
            todo += children_of(child)
    return found


def _exec_process(
    leader: psutil.Process,
    session: int,
    job_id: str,
    several_children: Literal["fail", "oldest"],
    restored: bool = False,
) -> psutil.Process:
    # a restored job is the restart program's own child, in its session, or in its own if it was a
    # session leader when it was checkpointed (CRIU gives such a process its session back)
    children = [c for c in children_of(leader) if _alive(c) and (restored or _session_of(c) == session)]
    if restored and leader.uids().real == 0:
        # the root restart program may still run a root restorer beside the application: not the job
        children = [c for c in children if c.uids().real != 0] or children
    if not children:
        return leader
    if len(children) == 1:
        return children[0]
    children.sort(key=lambda c: (c.create_time(), c.pid))
    if several_children == "oldest":
        return children[0]
    listing = ", ".join(f"{c.pid} ({c.name()})" for c in children)
    raise NoSuchProcess(
        f"job {job_id}: the job shell {leader.pid} has {len(children)} children ({listing}); "
        f'not guessing which to checkpoint (set several_children = "oldest" to take the first)'
    )


def _record(proc: psutil.Process) -> ProcessRecord:
    with proc.oneshot():
        uids, gids = proc.uids(), proc.gids()
        return ProcessRecord(
            pid=proc.pid,
            ppid=proc.ppid(),
            name=proc.name(),
            exe=_or_empty(proc.exe),
            cmdline=proc.cmdline(),
            cwd=_or_empty(proc.cwd),
            uid=uids.real,
            gid=gids.real,
            rss=proc.memory_info().rss,
            start_time=proc.create_time(),
            session_id=_session_of(proc),
            fds=open_files(proc.pid),
        )


def open_files(pid: int) -> list[OpenFile]:
    """Every open descriptor of a process, read from /proc (psutil lists regular files only)."""
    base = f"/proc/{pid}/fd"
    result = []
    try:
        names = os.listdir(base)
    except OSError:
        return []
    for name in sorted(names, key=int):
        try:
            target = os.readlink(f"{base}/{name}")
        except OSError:
            continue
        info = fdinfo(pid, name)
        flags, pos = info.get("flags"), info.get("pos")
        result.append(OpenFile(fd=int(name), target=target, kind=_kind(target), flags=flags, pos=pos))
    return result


DELETED = " (deleted)"  # what the kernel appends to the path of a file that has no name left
SHARED_MEMORY = ("/memfd:", "/dev/zero", "/SYSV")  # memfds and shared anonymous memory (shmem inodes)


class Unlinked(msgspec.Struct, frozen=True):
    """A file of the job's that has no name left (no link at all), which CRIU writes into the image:
    a regular file held open or mapped (CRIU's ghost file: its bytes, up to --ghost-limit), or
    shared memory (a memfd, a shared anonymous mapping: its pages)."""

    dev: int
    ino: int
    size: int  # st_size: what a ghost file of it holds
    allocated: int  # st_blocks * 512: the pages shared memory holds
    shared_memory: bool


def unlinked_files(tree: Sequence[ProcessRecord]) -> list[Unlinked]:
    """Every file without a name that the job's processes hold or map, each once (by device and
    inode: CRIU dumps one ghost file per inode, however many descriptors or mappings share it).
    Only descriptors and mappings whose path the kernel marks deleted are looked at, each with one
    ``stat`` of its ``/proc`` link, as root: the inode the process holds, never a path of the user's
    looked up, nothing opened. A file that still has a link (a name elsewhere) is not counted: CRIU
    only links it again, it copies no byte of it."""
    found: dict[tuple[int, int], Unlinked] = {}
    for process in tree:
        links = [
            (f"/proc/{process.pid}/fd/{f.fd}", f.target) for f in process.fds if f.target.endswith(DELETED)
        ]
        links += _deleted_mappings(process.pid)
        for link, target in links:
            try:
                st = os.stat(link)
            except OSError:
                continue  # closed or unmapped meanwhile
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 0:
                continue
            found.setdefault(
                (st.st_dev, st.st_ino),
                Unlinked(
                    st.st_dev, st.st_ino, st.st_size, st.st_blocks * 512, target.startswith(SHARED_MEMORY)
                ),
            )
    return list(found.values())


def _deleted_mappings(pid: int) -> list[tuple[str, str]]:
    """The process's mappings of files marked deleted, one per file (``/proc/PID/map_files`` link,
    path); nothing when /proc/PID/maps holds none (the common case: one read, no parsing)."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as fh:
            data = fh.read()
    except OSError:
        return []
    if DELETED.encode() not in data:
        return []
    found: dict[bytes, tuple[str, str]] = {}
    for line in data.splitlines():
        if not line.endswith(DELETED.encode()):
            continue
        fields = line.split(maxsplit=5)
        if len(fields) < 6:
            continue
        found.setdefault(
            fields[3] + b" " + fields[4],  # device and inode: one stat per file
            (f"/proc/{pid}/map_files/{fields[0].decode()}", fields[5].decode(errors="replace")),
        )
    return list(found.values())


def _kind(target: str) -> Literal["file", "pipe", "socket", "other"]:
    if target.startswith("/"):
        return "file"
    if target.startswith("pipe:"):
        return "pipe"
    if target.startswith("socket:"):
        return "socket"
    return "other"


def _process(pid: int) -> psutil.Process | None:
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
    return proc if _alive(proc) else None


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _session_of(proc: psutil.Process) -> int:
    try:
        return os.getsid(proc.pid)
    except ProcessLookupError:
        raise psutil.NoSuchProcess(proc.pid) from None


def _or_empty(getter: Callable[[], str]) -> str:
    try:
        return getter()
    except (psutil.AccessDenied, psutil.ZombieProcess, FileNotFoundError):
        return ""


def _uid_of(user: str) -> int:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise UnknownUser(f"EUSER {user!r} is not a user on this node") from None
