"""Which ``run_as`` modes this node supports, and what ``run_as = "auto"`` (CRIU's default) takes.

- root mode: root's CRIU dumps other users' processes only with ``CAP_SYS_RESOURCE`` in root's
  effective set (some containers and these project's own machines lack it);
- job-user mode: CRIU's unprivileged mode needs kernel >= 5.9, ``CAP_CHECKPOINT_RESTORE`` in the
  bounding set (it is handed to the checkpointer as an ambient capability) and util-linux's
  ``setpriv``.

``auto`` takes job-user mode wherever the node supports it: a restore in root mode is root's CRIU
acting by the job's paths (recreating deleted files, binding sockets, reopening files), which the
restore gate can only check afterwards (docs/SECURITY.md); in job-user mode CRIU does all of it with
the owner's rights. The answer depends on the kernel and the installed programs only, so every call
on a node (a dump, the restore of its image) takes the same one.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Literal

import msgspec

CAP_SYS_RESOURCE = 24
CAP_CHECKPOINT_RESTORE = 40
SETPRIV_DIRS = ("/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/local/sbin")

Mode = Literal["root", "job-user"]


class NodeModes(msgspec.Struct, frozen=True):
    root: bool
    job_user: bool

    @property
    def preferred(self) -> Mode:
        """What ``auto`` takes: job-user mode where it works, root mode otherwise."""
        return "job-user" if self.job_user else "root"

    def describe(self) -> str:
        return f"root mode {'yes' if self.root else 'no'}, job-user mode {'yes' if self.job_user else 'no'}"


@functools.cache
def this_node() -> NodeModes:
    kernel = tuple(int(p) for p in re.findall(r"\d+", os.uname().release)[:2])
    root = os.geteuid() == 0 and bool(capabilities("CapEff") & (1 << CAP_SYS_RESOURCE))
    job_user = (
        kernel >= (5, 9)
        and bool(capabilities("CapBnd") & (1 << CAP_CHECKPOINT_RESTORE))
        and any(os.access(os.path.join(d, "setpriv"), os.X_OK) for d in SETPRIV_DIRS)
    )
    return NodeModes(root=root, job_user=job_user)


def capabilities(field: str) -> int:
    """A capability set of this process (``CapEff``, ``CapBnd``, ...) from /proc/self/status."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0
