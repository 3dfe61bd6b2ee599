"""What /proc says of a process that psutil does not: one descriptor's fdinfo, and the start time in
the kernel's own clock ticks (stable names and records: psutil's create_time is a float derived from
it and the boot time)."""

from __future__ import annotations

import contextlib
import itertools


def fdinfo(pid: int | str, fd: int | str) -> dict[str, int]:
    """pos, flags (octal), mnt_id and ino (kernels from 5.14) of /proc/PID/fdinfo/FD; what cannot be
    read is missing ({} for a descriptor that is gone). ``pid`` may be "self". psutil's open_files()
    has some of this, for regular files only."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/fdinfo/{fd}", "rb") as fh:
        for line in itertools.islice(fh, 16):
            key, _, value = line.decode("ascii", "replace").partition(":")
            if key in ("pos", "mnt_id", "ino"):
                found[key] = int(value.strip())
            elif key == "flags":
                found[key] = int(value.strip(), 8)
    return found


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (None when the process does not exist)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def state(pid: int) -> str | None:
    """The process's state letter (R, S, T, Z...; None when it does not exist)."""
    fields = _stat(pid)
    return fields[0] if fields else None


def start_ticks(pid: int) -> float | None:
    """The process's start time in clock ticks since boot (None when it does not run, or is a zombie)."""
    fields = _stat(pid)
    try:
        return float(fields[19]) if fields and fields[0] != "Z" else None
    except (IndexError, ValueError):
        return None


def start_token(pid: int) -> str:
    """The process's start time as a name part ("gone" when it does not run): with the pid, it names
    one process for good (a pid alone is reused)."""
    start = start_ticks(pid)
    return "gone" if start is None else str(int(start))
