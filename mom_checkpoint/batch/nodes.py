"""Where else a job runs: the hosts its node file (PBS_NODEFILE) names besides this one.

A job whose processes run on several nodes cannot be checkpointed from one of them: CRIU dumps this
node's processes only, and restoring them would bring back half a job. pbs_mom writes each job's node
file as root before the job starts, one line per slot:

- TORQUE, ``write_nodes_to_file()`` in src/resmom/start_exec.c (in older releases inline in
  ``TMomFinalizeChild()``): ``sprintf(filename, "%s/%s", path_aux, pjob->ji_qs.ji_jobid)``,
  ``fchmod(..., 0644)`` under "The file must be owned by root and readable by the user", then each vnode's
  ``vn_host->hn_host`` with the mom's ``$nodefile_suffix`` appended; or, when the job's own variables
  hold ``BEOWULF_JOB_MAP``, its ``:``-separated hosts (the user's word, not pbs_server's).
- OpenPBS, ``generate_pbs_nodefile()`` in src/resmom/start_exec.c: ``"%s/aux/%s"`` of
  ``pbs_conf.pbs_home_path`` and the job id, ``fchmod(..., 0644)`` under the same comment, then each
  vnode's host name cut at its first ".", or the vnode's ``vn_hname``.

So the file is trusted only where it is root's, in a folder of root's that neither group nor others can
write, opened without following a link. What it says is pbs_mom's word, except for TORQUE's
``BEOWULF_JOB_MAP``: a user can make their own job look like a single-node or a multi-node one, which
only decides whether their own checkpoint is refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from mom_checkpoint.batch.calls import path_part
from mom_checkpoint.platform.errors import shown
from mom_checkpoint.platform.files import root_folder_problem
from mom_checkpoint.platform.safefs import UnsafePath, open_configured_dir, open_regular

MAX_NODE_FILE = 1 << 20  # bytes of a node file read: 100,000 slots and more; a longer file's rest is not read
MAX_EXEC_HOST = 1 << 20  # characters of an exec_host value looked at
FOLDER_MODE = 0o755  # the aux folder may be no more open than this (pbs_mom's own: 0755)
DEFAULT_AUX_DIRS = {"torque": ("/var/spool/torque/aux",), "openpbs": ("/var/spool/pbs/aux",)}
SHOWN_HOSTS = 3  # hosts a refusal names
WAY_OUT = (
    "this node cannot checkpoint the processes on the others, so its checkpoint would restore half a "
    'job; use MPI-level checkpointing, or set multi_node = "allow" where a site\'s jobs coordinate their own'
)


def other_hosts(
    aux_dirs: Sequence[str], job_id: str, this_host: str, *, nodefile_suffix: str = ""
) -> list[str] | None:
    """The hosts besides ``this_host`` that the job's node file names, each once, in the file's order
    (short names compared without case: "node01.cluster" is "NODE01"); [] for a job of this node only.

    The node file is ``<aux folder>/<job id>`` in the first of ``aux_dirs`` (absolute paths; pass the
    calling batch system's own: a TORQUE and an OpenPBS job may share an id) that holds a trustworthy
    one. None when none does: no such file, or one that is not root's, that group or others can write,
    that is a link or not a regular file, or is in a folder that is not root's or that group or others
    can write (never trusted: the caller decides from what else it knows, e.g. exec_host).
    ``nodefile_suffix`` is TORQUE's ``$nodefile_suffix`` from the mom's config, taken off each line.
    A ``job_id`` that is not a plain file name is refused (UsageError)."""
    path_part("JOB_ID", job_id)
    mine = _short(this_host)
    if not mine:
        raise ValueError("this_host is empty")
    for aux_dir in aux_dirs:
        data = _node_file(aux_dir, job_id)
        if data is not None:
            return _others(_lines(data), mine, nodefile_suffix)
    return None


def others_in_exec_host(exec_host: str, this_host: str) -> list[str]:
    """The hosts besides ``this_host`` in an exec_host value, each once, in order: TORQUE's
    ``node01/0-3+node02/0-3``, OpenPBS's ``node01/0*2+node02/0``."""
    mine = _short(this_host)
    if not mine:
        raise ValueError("this_host is empty")
    hosts = [part.split("/", 1)[0] for part in exec_host[:MAX_EXEC_HOST].split("+")]
    return _others(hosts, mine, "")


def refusal(hosts: Sequence[str], *, job_id: str = "") -> str:
    """One line for the job's comment: how many nodes the job runs on, the first few of the others, why
    this node refuses and the way out. Printable ASCII only, bounded: each host (and the job id) is cut
    short, and quoted with its characters escaped where it is anything but printable ASCII."""
    distinct = _others(hosts, "", "")
    who = f"job {shown(job_id, 60)}" if job_id else "the job"
    if not distinct:
        return f"{who} runs on more than one node: {WAY_OUT}"
    named = ", ".join(shown(host, 40) for host in distinct[:SHOWN_HOSTS])
    if len(distinct) > SHOWN_HOSTS:
        named += f" and {len(distinct) - SHOWN_HOSTS} more"
    return f"{who} runs on {len(distinct) + 1} nodes (also {named}): {WAY_OUT}"


def _node_file(aux_dir: str, job_id: str) -> bytes | None:
    """At most MAX_NODE_FILE bytes of ``aux_dir``/``job_id`` if it is trustworthy, else None."""
    try:
        dir_fd = open_configured_dir(aux_dir)  # from "/", a link followed only where root made it
    except (OSError, UnsafePath):
        return None
    try:
        folder = os.fstat(dir_fd)
        if folder.st_uid != 0 or root_folder_problem(folder, FOLDER_MODE) is not None:
            return None
        try:
            fd, st = open_regular(job_id, dir_fd=dir_fd)  # O_NOFOLLOW, O_NONBLOCK, regular files only
        except (OSError, UnsafePath):
            return None
        try:
            if st.st_uid != 0 or st.st_mode & 0o022:
                return None
            return _read_at_most(fd, MAX_NODE_FILE)
        finally:
            os.close(fd)
    except OSError:
        return None
    finally:
        os.close(dir_fd)


def _read_at_most(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from the start of ``fd``; when that is not all of it, only the lines that
    are whole."""
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 16))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        left -= len(chunk)
    data = b"".join(chunks)
    return data if os.read(fd, 1) == b"" else data[: data.rfind(b"\n") + 1]


def _lines(data: bytes) -> list[str]:
    """The first word of each line (pbs_mom writes one host a line), undecodable bytes replaced."""
    return [words[0].decode("utf-8", "replace") for line in data.split(b"\n") if (words := line.split())]


def _others(hosts: Sequence[str], mine: str, suffix: str) -> list[str]:
    """``hosts`` without ``mine`` and without repeats, by short name, in order."""
    seen = {mine}
    found = []
    for host in hosts:
        name = host.removesuffix(suffix) if suffix else host
        short = _short(name)
        if short and short not in seen:
            seen.add(short)
            found.append(name)
    return found


def _short(name: str) -> str:
    """A host's short name, for comparing (as batch.torque.short_host, which costs the hook 30 ms of
    imports)."""
    return name.strip().split(".", 1)[0].lower()
