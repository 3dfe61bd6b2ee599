"""Which session a restarted job lives in now.

After a restart pbs_mom keeps passing the job's old, dead SESSION_ID. ``mom-restart`` records its own pid
(the leader of the job's new session) and start time per job id; the hook uses the record when the
SESSION_ID has gone, and only while that very process (same pid *and* start time) is alive.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mom_checkpoint.discovery import process_start_time
from mom_checkpoint.storage import write_private

SESSIONS_DIR = ".sessions"


def record_path(spool_root: Path, job_id: str) -> Path:
    return spool_root / SESSIONS_DIR / f"{job_id}.json"


def record(spool_root: Path, job_id: str, pid: int) -> None:
    start = process_start_time(pid)
    directory = spool_root / SESSIONS_DIR
    directory.mkdir(mode=0o700, exist_ok=True)
    tmp = directory / f".{job_id}.{os.getpid()}.tmp"
    write_private(tmp, json.dumps({"job_id": job_id, "pid": pid, "start_time": start}))
    os.replace(tmp, record_path(spool_root, job_id))


def lookup(spool_root: Path, job_id: str) -> int | None:
    try:
        data = json.loads(record_path(spool_root, job_id).read_text())
        pid, start = int(data["pid"]), float(data["start_time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    alive_start = process_start_time(pid)
    if alive_start is None or abs(alive_start - start) > 0.5:
        return None  # that process ended; the pid may since belong to someone else
    return pid
