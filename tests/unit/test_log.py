"""The hook's structured log: JSON lines, and none of structlog's console extras on the hook's path
(rich alone costs tens of milliseconds of every call pbs_mom makes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_json_lines_without_the_console_extras_which_stay_importable(tmp_path: Path) -> None:
    log = tmp_path / "hook.log"
    code = f"""
import sys
from mom_checkpoint.log import make_logger
make_logger({str(log)!r}, program="mom-checkpoint").info("checkpoint.start", job_id="42.head")
print(sorted(name for name in ("rich", "better_exceptions", "colorama") if sys.modules.get(name)))
import rich.console  # the admin commands still get it
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", "structlog pulled in its console extras"
    [line] = log.read_text().splitlines()
    event = json.loads(line)
    assert (event["event"], event["job_id"], event["program"], event["level"]) == (
        "checkpoint.start", "42.head", "mom-checkpoint", "info"
    )  # fmt: skip
    assert log.stat().st_mode & 0o027 == 0  # never writable by the group, nothing for others
