"""A checkpointer's log through a pipe root reads, never a file under the spool.

CRIU hands its log descriptor to the code it runs inside every process it dumps or restores (the
parasite, the restorer blob), and those processes are the job user's: any other process of theirs
can take a copy of it (``pidfd_getfd``) and write through it for as long as it likes, after the dump
too (issue 25, review of #2: a log file in the image grew by 64 MiB after the hook had published
the generation, and outlived it unlinked). So the log is the write end of a pipe: a thread of root's
keeps only its last ``limit`` bytes while the checkpointer runs, and when it has ended root closes
the read end, after which every write through any copy of the write end fails (EPIPE). Nothing of
the spool is reachable through it, nothing a writer sends costs root more than ``limit`` bytes of
memory, and nothing is waited for: a copy held elsewhere never keeps the pipe open for root.

The checkpointer names it ``/proc/self/fd/N`` (CRIU opens ``--log-file`` by path); when it runs as
the job's user the pipe is given to them (``fchown``), since reopening a pipe through ``/proc``
checks its owner.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading

LOG_TAIL = 256 * 1024  # what root keeps of a checkpointer's log
STOP_WAIT_S = 2.0  # how long the reader is given to take what is already in the pipe


class LogPipe:
    def __init__(self, owner: tuple[int, int] | None = None, limit: int = LOG_TAIL) -> None:
        self.limit = limit
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        try:
            os.set_blocking(self.read_fd, False)
            if owner is not None:
                os.fchown(self.write_fd, *owner)
        except BaseException:
            os.close(self.read_fd)
            os.close(self.write_fd)
            raise
        self._kept = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="checkpointer-log", daemon=True)
        self._thread.start()
        self._text: str | None = None

    @property
    def path(self) -> str:
        """How the checkpointer names it (the write end is handed to it at that number)."""
        return f"/proc/self/fd/{self.write_fd}"

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self.read_fd], [], [], 0.1)
            stopping = self._stop.is_set()
            if ready:
                with contextlib.suppress(BlockingIOError):  # a spurious wake-up: look again
                    chunk = os.read(self.read_fd, 65536)
                    if not chunk:
                        return  # every write end is closed
                    self._keep(chunk)
            if stopping:
                return  # what was in the pipe when the checkpointer ended has been taken

    def _keep(self, chunk: bytes) -> None:
        self._kept += chunk
        if len(self._kept) > 2 * self.limit:
            del self._kept[: len(self._kept) - self.limit]

    def close(self) -> str:
        """Stop reading (the checkpointer has ended), close both ends, and return the log's end."""
        if self._text is not None:
            return self._text
        with contextlib.suppress(OSError):
            os.close(self.write_fd)
        self._stop.set()
        self._thread.join(STOP_WAIT_S)
        if not self._thread.is_alive():
            os.close(self.read_fd)  # from now on, a write through any copy of the write end fails
        # else: the reader is still taking a flood; it is a daemon thread of a short-lived program
        self._text = bytes(self._kept[-self.limit :]).decode(errors="replace")
        return self._text

    def __enter__(self) -> LogPipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
