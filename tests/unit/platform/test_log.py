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
from mom_checkpoint.platform.log import make_logger
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


def test_a_callers_long_values_are_cut_in_the_log(tmp_path: Path) -> None:
    """Issue 12 #6: sudo lets any user call mom-restart --own with a 128 KiB argument; the log keeps
    a bounded part of it and says how much was cut."""
    from mom_checkpoint.platform.log import MAX_ITEMS, MAX_VALUE, make_logger

    log = tmp_path / "hook.log"
    huge = "/" + "a" * (128 * 1024)
    make_logger(str(log), program="mom-restart").error(
        "restart.refused", error=f"{huge} is not", argv=["--image", huge] * 300, nested={"path": huge}
    )
    [line] = log.read_text().splitlines()
    assert len(line) < 3 * MAX_ITEMS * MAX_VALUE // 2
    event = json.loads(line)
    assert event["error"].endswith(f"... ({128 * 1024 + 8 - MAX_VALUE} more characters)")
    assert len(event["argv"]) == MAX_ITEMS + 1 and event["argv"][-1] == f"... ({600 - MAX_ITEMS} more)"
    assert len(event["nested"]["path"]) < MAX_VALUE + 50


def test_an_image_argument_is_checked_before_anything_uses_it(tmp_path: Path) -> None:
    import io

    from mom_checkpoint.cli import restart
    from mom_checkpoint.platform.environment import Environment

    config = tmp_path / "config.toml"
    config.write_text(f'spool_dir = "{tmp_path / "spool"}"\nlog_file = "{tmp_path / "log"}"\n')
    config.chmod(0o644)
    err = io.StringIO()
    env = Environment(stdout=io.StringIO(), stderr=err, environ={"MOM_CHECKPOINT_CONFIG": str(config)})
    status = restart.main(["--image", "/" + "a" * (128 * 1024)], env)
    assert status == 64 and len(err.getvalue()) < 300 and err.getvalue().count("\n") == 1, err.getvalue()
    assert not (tmp_path / "log").exists() or len((tmp_path / "log").read_text()) < 10_000


def test_a_call_refused_before_it_ran_is_in_the_log(tmp_path: Path) -> None:
    """Issue 13 #9: pbs_mom keeps no record of its hooks; a 9-argument call (qsub -c 'dir=/x y'
    split by pbs_mom's shell) is refused with 64 and logged with its argv."""
    import io

    from mom_checkpoint.cli import checkpoint, restart
    from mom_checkpoint.platform.environment import Environment

    config = tmp_path / "config.toml"
    log = tmp_path / "log"
    config.write_text(f'spool_dir = "{tmp_path / "spool"}"\nlog_file = "{log}"\n')
    config.chmod(0o644)

    def env() -> Environment:
        return Environment(
            stdout=io.StringIO(), stderr=io.StringIO(), environ={"MOM_CHECKPOINT_CONFIG": str(config)}
        )

    nine = ["4711", "42.head", "alice", "users", "/x", "y", "ckpt.42.head.1", "0", "-"]
    assert checkpoint.main(nine, env()) == 64
    assert restart.main(["4711", "42.head"], env()) == 64
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["event"], e["argv"], e["exit_status"]) for e in events] == [
        ("checkpoint.refused", nine, 64),
        ("restart.refused", ["4711", "42.head"], 64),
    ]


def test_the_hooks_logger_is_structlogs_public_api_without_the_console_extras(tmp_path: Path) -> None:
    """make_logger imports structlog's package (issue 27 #5: no private modules) with rich and the other
    console extras held out, which only its dev console uses; log.exception() records the traceback,
    and the extras import as usual afterwards."""
    log = tmp_path / "hook.log"
    code = f"""
import sys
from mom_checkpoint.platform.log import make_logger
logger = make_logger({str(log)!r}, program="mom-checkpoint")
try:
    raise OSError("disk gone")
except OSError:
    logger.exception("vault.sync_crashed", job_id="42.head")
logger.bind(generation=3).info("checkpoint.done", path=__import__("pathlib").Path("/x"))
print("structlog" in sys.modules, [name for name in ("rich", "better_exceptions") if name in sys.modules])
import rich
print(type(sys.modules["structlog"].get_logger()).__name__, rich.__name__)
"""
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["True []", "BoundLoggerLazyProxy rich"]
    crashed, done = (json.loads(line) for line in log.read_text().splitlines())
    assert (crashed["event"], crashed["level"]) == ("vault.sync_crashed", "error")
    assert crashed["exception"].startswith("Traceback") and "OSError: disk gone" in crashed["exception"]
    assert (done["level"], done["generation"], done["path"]) == ("info", 3, "PosixPath('/x')")
