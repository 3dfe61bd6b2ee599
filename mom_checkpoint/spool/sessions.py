"""Which session a restarted job lives in now.

After a restart pbs_mom keeps passing the job's old, dead SESSION_ID. ``mom-restart`` records its own pid
(the leader of the job's new session) and start time per job id; the hook uses the record when the
SESSION_ID has gone, and only while that very process (same pid *and* start time) is alive.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

from mom_checkpoint.batch.jobkey import JobKey
from mom_checkpoint.platform.files import replace_private
from mom_checkpoint.processes.discovery import Restarted, process_start_time
from mom_checkpoint.processes.namespaces import Namespaces

SESSIONS_DIR = ".sessions"


def record_path(spool_root: Path, key: JobKey) -> Path:
    return spool_root / SESSIONS_DIR / f"{key.token}.json"


def record(spool_root: Path, key: JobKey, pid: int, *, namespaces: Namespaces | None = None) -> None:
    """Root's record of the restart process, and of the namespaces it restored the job into."""
    start = process_start_time(pid)
    directory = spool_root / SESSIONS_DIR
    directory.mkdir(mode=0o700, exist_ok=True)
    record: dict[str, object] = {
        "job_id": key.job_id, "system": key.system, "uid": key.uid, "pid": pid, "start_time": start,
    }  # fmt: skip
    if namespaces is not None:
        record["namespaces"] = {"pid": namespaces.pid, "mnt": namespaces.mnt}
    replace_private(record_path(spool_root, key), json.dumps(record))


def lookup(spool_root: Path, system: str, job_id: str, uid: int | None = None) -> Restarted | None:
    """The live restart process of the job id from ``system`` (and owner ``uid`` when known); a
    record of another system or owner is never taken. An older version's record (named by the job
    id alone) counts only when no record of the key exists."""
    directory = spool_root / SESSIONS_DIR
    pattern = f"{system}.{uid if uid is not None else '*'}.{glob.escape(job_id)}.json"
    candidates = sorted(directory.glob(pattern))
    if not candidates:
        candidates = [directory / f"{job_id}.json"]
    running = [restarted for path in candidates if (restarted := live(path)) is not None]
    return running[0] if len(running) == 1 else None


def live(path: Path) -> Restarted | None:
    """The restart a session record names, while that very process (same start time) runs."""
    try:
        data = json.loads(path.read_text())
        pid, start = int(data["pid"]), float(data["start_time"])
        made = data.get("namespaces")
        made = Namespaces(int(made["pid"]), int(made["mnt"])) if made is not None else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    alive_start = process_start_time(pid)
    if alive_start is None or abs(alive_start - start) > 0.5:
        return None  # that process ended; the pid may since belong to someone else
    return Restarted(pid, made)
