"""``mom-checkpoint-run``: pbs_mom's $checkpoint_run_exe; execs the job shell as the job.

pbs_mom starts every checkpointable job as ``RUN_EXE SHELL [ARGS...]`` and expects the shell to take this
process's place: same pid, session, environment, open files. So this only calls exec, imports nothing
it does not need, and exits 127 with one line on stderr when the shell cannot be executed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

PROG = "mom-checkpoint-run"
USAGE = f"usage: {PROG} SHELL [ARGS...]  (pbs_mom's $checkpoint_run_exe: executes the job shell in place)\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        sys.stderr.write(f"{PROG}: no shell given\n{USAGE}")
        return 64
    if args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    if args[0] == "--version":
        from mom_checkpoint import __version__

        sys.stdout.write(f"{PROG} {__version__}\n")
        return 0
    shell = args[0]
    try:
        if "/" in shell:
            os.execv(shell, args)
        os.execvp(shell, args)
    except OSError as exc:
        sys.stderr.write(f"{PROG}: cannot execute the job shell {shell}: {exc.strerror or exc}\n")
    return 127
