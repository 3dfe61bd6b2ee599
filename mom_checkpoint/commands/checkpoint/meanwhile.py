"""What the hook does while its checkpointer runs, when it has to wait anyway."""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from mom_checkpoint.image.layout import IMAGE
from mom_checkpoint.spool.storage import Incoming

if TYPE_CHECKING:
    import re

    from mom_checkpoint.image.hashing import Follower, Partial

FOLLOW_FROM_CPUS = 2  # the cores this process may use for the follower to run (CRIU takes one)
# What only the work after the dump uses (hashing, the manifest, pruning): imported while the
# checkpointer runs, when the call has nothing else to do, rather than before it starts.
AFTER_THE_DUMP = (
    "mom_checkpoint.image.hashing",
    "mom_checkpoint.image.manifest",
    "mom_checkpoint.image.verification",
    "mom_checkpoint.spool.pruning",
    "mom_checkpoint.spool.retention",
)


class WhileItRuns:
    """What the call does once the checkpointer has started, while it waits for it anyway: record its
    pid (for the next call, should this one die), ask the checkpointer's version for the manifest
    (``criu --version``, in a thread of its own), import what the work after the dump needs
    (AFTER_THE_DUMP), and hash the files the checkpointer only appends to as it writes them
    (hashing.Follower, a thread of its own): none of it waits until after the dump, on the way to
    the image being on disk. Nothing of it may end the checkpointer (the runner kills it if this raises,
    and a checkpointer killed inside the job can take the job along): the version is informational, a
    module that cannot be imported now fails again after the dump, where it harms nothing, and a file
    the follower could not hash is hashed after the dump."""

    def __init__(
        self,
        incoming: Incoming,
        ask_version: Callable[[], str],
        *,
        appended: re.Pattern[str] | None = None,
        max_bytes: int | None = None,
        deadline: float | None = None,
        imports: tuple[str, ...] = AFTER_THE_DUMP,
    ) -> None:
        self._incoming = incoming
        self._imports = imports
        self._ask_version = ask_version
        self._asking: threading.Thread | None = None
        self._version = "unknown"
        self._appended = appended
        self._max_bytes = max_bytes
        self._deadline = deadline
        self._follower: Follower | None = None

    def __call__(self, pid: int) -> None:
        self._incoming.record_checkpointer(pid)
        with contextlib.suppress(Exception):
            self._asking = threading.Thread(target=self._ask, name="checkpointer-version", daemon=True)
            self._asking.start()
        with contextlib.suppress(Exception):
            self._start_following()
        with contextlib.suppress(Exception):
            for name in self._imports:
                importlib.import_module(name)

    def _start_following(self) -> None:
        # only with a core to spare: on one core the follower would take CRIU's while the job is frozen
        if self._appended is None or len(os.sched_getaffinity(0)) < FOLLOW_FROM_CPUS:
            return
        from mom_checkpoint.image.hashing import Follower

        follower = Follower(
            self._incoming.path, IMAGE, self._appended, max_bytes=self._max_bytes, deadline=self._deadline
        )
        follower.start()
        self._follower = follower

    def _ask(self) -> None:
        with contextlib.suppress(Exception):  # informational only: never a reason to fail the call
            self._version = self._ask_version()

    def version(self, timeout_s: float) -> str:
        """The checkpointer's version, "unknown" if it could not say within ``timeout_s``."""
        if self._asking is None:  # a checkpointer that never started (a stand-in runner, say)
            self._ask()
        elif self._asking.ident is not None:  # started
            self._asking.join(timeout_s)
        return self._version

    def stop_following(self, timeout_s: float) -> dict[str, Partial]:
        """Tell the follower to stop and wait for it (at most ``timeout_s``): what it hashed of each
        file, by path below the incoming folder (nothing if there was no follower, it failed, or it had
        not stopped by then). Called before anything acts as the job's user, as for the version."""
        if self._follower is None:
            return {}
        return self._follower.stop(timeout_s)

    def follow_problem(self) -> dict[str, str]:
        """Why the follower handed nothing over, for the log (empty if it did, or there was none)."""
        follower = self._follower
        if follower is not None and follower.error is not None:
            return {"follow_error": f"{type(follower.error).__name__}: {follower.error}"}
        if follower is not None and follower.still_running:
            return {"follow_error": "the follower had not stopped in time: its files were hashed anew"}
        return {}
