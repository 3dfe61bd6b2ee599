"""Whose processes a checkpoint or restore handles: from passwd and group, never from a file.

The owner of a restore is the user the caller names (TORQUE's EUSER, OpenPBS's %login, sudo's
SUDO_UID, or, for root's own ``--job``/``--image``, a manifest only root could have written); uid,
gid and groups then come from the system's user database. The restored tree must end up with exactly
that identity and no capability at all: ``tree_problems`` reads it from /proc, task by task and thread
by thread, for the restorer to refuse anything else before any of it runs.
"""

from __future__ import annotations

import grp
import os
import pwd

import msgspec
from msgspec import field

from mom_checkpoint.platform.errors import Refused, UnknownUser

CAPABILITY_SETS = ("CapInh", "CapPrm", "CapEff", "CapAmb")


class JobUser(msgspec.Struct, frozen=True):
    """A job's owner as the system knows them: the identity its checkpointer and its restore run with."""

    name: str
    uid: int
    gid: int  # the job's group: the owner's primary group or one of their groups (TORQUE's EGROUP)
    groups: tuple[int, ...] = field(default=())  # supplementary groups, from the group database

    @property
    def all_groups(self) -> frozenset[int]:
        return frozenset({self.gid, *self.groups})


def of_name(name: str, group: str | int | None = None) -> JobUser:
    """The user called ``name`` from passwd, with their groups; ``group`` (a name or gid) must be one
    of them and becomes the job's gid, else the primary group does."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise UnknownUser(f"user {name!r} is not a user on this node") from None
    return _with_group(entry, group)


def of_uid(uid: int, group: str | int | None = None) -> JobUser:
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        raise UnknownUser(f"uid {uid} is not a user on this node") from None
    return _with_group(entry, group)


def group_name(egroup: str | None, gid: int) -> str:
    """The job's group: EGROUP as pbs_mom passed it (UnknownUser if the node has no such group), else
    the name of ``gid`` (or the gid as text)."""
    if egroup is not None:
        try:
            grp.getgrnam(egroup)
        except KeyError:
            raise UnknownUser(f"EGROUP {egroup!r} is not a group on this node") from None
        return egroup
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def name_of(uid: int) -> str:
    """The user's name, or the uid as text where passwd has none (for messages and logs)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _with_group(entry: pwd.struct_passwd, group: str | int | None) -> JobUser:
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid))))
    gid = entry.pw_gid
    if group is not None:
        wanted = _gid_of(group)
        if wanted not in groups:
            raise Refused(f"group {group} is not one of {entry.pw_name}'s groups: refusing")
        gid = wanted
    return JobUser(entry.pw_name, entry.pw_uid, gid, groups)


def _gid_of(group: str | int) -> int:
    if isinstance(group, int):
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise UnknownUser(f"group {group!r} is not a group on this node") from None


class Credentials(msgspec.Struct, frozen=True):
    """A thread's identity: of a running one (/proc), or as an image records it."""

    uids: tuple[int, ...]  # real, effective, saved, filesystem
    gids: tuple[int, ...]
    groups: frozenset[int]
    capabilities: dict[str, int]  # CapInh, CapPrm, CapEff, CapAmb: bit sets


class TaskIdentity(msgspec.Struct, frozen=True):
    """What /proc/PID/task/TID/status says of one thread."""

    pid: int
    tid: int
    credentials: Credentials


def read_task(pid: int, tid: int) -> TaskIdentity | None:
    """The identity of one thread, or None when it has gone."""
    fields: dict[str, str] = {}
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return TaskIdentity(
        pid=pid,
        tid=tid,
        credentials=Credentials(
            uids=tuple(int(v) for v in fields["Uid"].split()),
            gids=tuple(int(v) for v in fields["Gid"].split()),
            groups=frozenset(int(v) for v in fields.get("Groups", "").split()),
            capabilities={name: int(fields[name], 16) for name in CAPABILITY_SETS if name in fields},
        ),
    )


def task_problem(task: TaskIdentity, user: JobUser) -> str | None:
    """Why this thread must not run as ``user``'s, or None when its identity is exactly theirs."""
    where = f"process {task.pid}" + (f" (thread {task.tid})" if task.tid != task.pid else "")
    return credentials_problem(where, task.credentials, user)


def credentials_problem(where: str, creds: Credentials, user: JobUser) -> str | None:
    """Why these credentials (of a running thread, or recorded in an image) are not exactly ``user``'s
    without any capability; None when they are."""
    uids, gids, capabilities = creds.uids, creds.gids, creds.capabilities
    if len(uids) != 4 or set(uids) != {user.uid}:
        return f"{where} has uids {'/'.join(map(str, uids))}, not {user.name}'s {user.uid}"
    if len(gids) != 4 or not set(gids) <= user.all_groups:
        return f"{where} has gids {'/'.join(map(str, gids))}, not groups of {user.name}"
    if extra := sorted(creds.groups - user.all_groups):
        return f"{where} has supplementary groups {extra} that {user.name} is not in"
    held = {name: value for name, value in capabilities.items() if value}
    if held and user.uid != 0:  # root's own jobs hold root's capabilities
        shown = ", ".join(f"{name}={value:x}" for name, value in sorted(held.items()))
        return f"{where} holds capabilities ({shown})"
    if set(capabilities) != set(CAPABILITY_SETS):
        return f"{where}: its capability sets cannot all be read"
    return None


def tasks_of(pids: list[int]) -> list[tuple[int, int]]:
    """(pid, tid) of every thread of these processes."""
    found = []
    for pid in pids:
        try:
            tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
        except FileNotFoundError:
            continue
        found += [(pid, tid) for tid in tids]
    return found


def tree_problems(pids: list[int], user: JobUser) -> list[str]:
    """Every thread of these processes whose identity is not exactly ``user``'s, without capabilities."""
    problems = []
    for pid, tid in tasks_of(pids):
        task = read_task(pid, tid)
        if task is None:
            continue
        problem = task_problem(task, user)
        if problem is not None:
            problems.append(problem)
    return problems
