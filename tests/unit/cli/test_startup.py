"""The hook's start-up: pbs_mom's calls import only what the checkpoint path uses (issue 16).

Each call runs mom-checkpoint's main() in a fresh interpreter, as pbs_mom would, for a session that cannot
exist: the call gets through the config, the log and the whole checkpoint command's imports before it is
refused with 66, and then the modules it loaded are listed.
"""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest

from tests.helpers import run_python

NO_SESSION = str(2**22 + 1)  # above the kernel's largest pid_max: never a running process

# What the hook's path once imported without using it, with what pulled it in.
NOT_ON_THE_HOOK_PATH = (
    "mom_checkpoint.cli.admin",  # the admin subcommands' parser and texts
    "rich",  # structlog's console and tracebacks use it if it is installed: held out (platform.log)
    "better_exceptions",
    "argparse",  # only the admin commands and mom-restart's options build a parser
    "tempfile",  # the incoming folder is made without it (it brings shutil, random, bz2, lzma)
    "ctypes",  # write-behind, only for image files larger than its window
    "mom_checkpoint.image.staging",  # a restore's, as are the core-image decoder and its digests' staging
    "mom_checkpoint.image.criu_images",
    # the work after the dump: imported while the checkpointer runs (AFTER_THE_DUMP), so never by a
    # call refused before it
    "mom_checkpoint.image.manifest",
    "mom_checkpoint.image.hashing",
    "mom_checkpoint.image.verification",
    "mom_checkpoint.spool.retention",
)
# What the path does use: if these are missing, the call failed before the imports this test is about.
ON_THE_HOOK_PATH = (
    "mom_checkpoint.commands.checkpoint",
    "mom_checkpoint.spool.locking",
    "filelock",
    "psutil",
    "structlog",  # through its public package (issue 27 #5)
)

WRAPPER = """
import sys
from mom_checkpoint.cli.checkpoint import main
status = main(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    out.write("\\n".join(sorted(sys.modules)))
sys.exit(status)
"""


def _user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([NO_SESSION, "42.head", "{user}", "-", "-", "-", "0", "-"], id="torque"),
        pytest.param([NO_SESSION, "42.head"], id="seed"),
        pytest.param(
            ["--pbs", "checkpoint", "42.head", NO_SESSION, "1", "{user}", "/x/42.head.CK/00000001"],
            id="openpbs",
        ),
    ],
)
def test_a_hook_call_imports_only_what_it_uses(tmp_path: Path, argv: list[str]) -> None:
    config = tmp_path / "config.toml"
    log = tmp_path / "hook.log"
    config.write_text(f'spool_dir = "{tmp_path / "spool"}"\nlog_file = "{log}"\n')
    config.chmod(0o644)
    modules = tmp_path / "modules"
    words = [word.format(user=_user()) for word in argv]
    proc = run_python(WRAPPER, [modules, *words], config)
    assert proc.returncode == 66, proc.stderr
    assert proc.stderr.startswith("mom-checkpoint: no process"), proc.stderr
    [event] = [json.loads(line) for line in log.read_text().splitlines()]
    assert (event["event"], event["exit_status"]) == ("checkpoint.refused", 66)
    loaded = set(modules.read_text().split())
    assert set(ON_THE_HOOK_PATH) <= loaded
    assert sorted(loaded & set(NOT_ON_THE_HOOK_PATH)) == []


PROGRAM = """
import atexit, sys
atexit.register(lambda: sys.stderr.write("interpreter teardown\\n"))
from mom_checkpoint.cli.checkpoint import main
sys.exit(main())
"""


@pytest.mark.parametrize(
    ("argv", "status", "stream", "start"),
    [
        pytest.param(["--version"], 0, "stdout", "mom-checkpoint ", id="version"),
        pytest.param(["4711", "42.head", "x"], 64, "stderr", "mom-checkpoint: ", id="usage"),
    ],
)
def test_the_program_ends_without_teardown_but_with_its_output_and_status(
    argv: list[str], status: int, stream: str, start: str
) -> None:
    """Run as a program (no argv given to main), the hook ends with os._exit once main() returns: its
    buffered output (stdout is a pipe here, as under pbs_mom's popen) is still written, and the exit
    status is main()'s."""
    proc = run_python(PROGRAM, argv, "/nonexistent.toml")
    assert proc.returncode == status, proc.stderr
    assert getattr(proc, stream).startswith(start)
    assert "interpreter teardown" not in proc.stderr  # ended with os._exit, not by tearing down
