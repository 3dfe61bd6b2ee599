"""The one place where errors become an exit status and one line on stderr."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from mom_checkpoint.cli.invocation import Invocation
from mom_checkpoint.cli.text import printable
from mom_checkpoint.platform.environment import Environment
from mom_checkpoint.platform.errors import Error
from mom_checkpoint.platform.status import ExitStatus


def run_program(
    prog: str, body: Callable[[], ExitStatus | int], env: Environment, invocation: Invocation | None = None
) -> int:
    """Run ``body``; map an Error to its exit status and a one-line message pbs_mom can show the user
    (a bug also to the invocation's log, once it has one)."""
    try:
        return int(body())
    except Error as exc:
        say(env, prog, exc.message)
        return int(exc.exit_status)
    except KeyboardInterrupt:
        say(env, prog, "interrupted")
        return 130
    except Exception as exc:
        import traceback  # only for a bug's report

        if invocation is not None and invocation.log is not None:
            invocation.log.error("internal_error", error=repr(exc), traceback=traceback.format_exc())
        say(env, prog, f"internal error: {type(exc).__name__}: {exc} (a bug: please report it with the log)")
        return int(ExitStatus.SOFTWARE)


def say(env: Environment, prog: str, message: str) -> None:
    """One line on stderr, which pbs_mom turns into the job comment (and an admin reads on a terminal):
    whitespace runs become one space, other control characters visible escapes (``printable``)."""
    line = printable(" ".join(message.split()))
    env.stderr.write(f"{prog}: {line}\n")
    env.stderr.flush()


EXIT_STATUS_HELP = "exit status:\n" + "\n".join(
    f"  {status.value:>3}  {status.name.lower().replace('_', ' ')}" for status in ExitStatus
)


Dispatch = Callable[[list[str], Invocation], ExitStatus | int]


def reopen_closed_stdio() -> None:
    """OpenPBS's MOM starts its $action scripts with fds 0, 1 and 2 closed (OPENPBS.md): put /dev/null
    there before anything is opened, or the first file opened would become stdin and Python's
    sys.stderr would be None. (fd 3 is MOM's own log: nothing here writes to it.)"""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdin is None:
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own stream
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115


# Every program starts with this umask, whoever calls it: pbs_mom (022), TORQUE's jobs and sudo from
# them (077: mom-restart's work folder came out 0700 and the job user's restorer could not enter it,
# issue 26 #1). Every file and folder root makes is given its mode explicitly; this only keeps the
# caller's umask from narrowing it.
PROGRAM_UMASK = 0o022


def main_for(prog: str, dispatch: Dispatch, argv: Sequence[str] | None, env: Environment | None) -> int:
    """A program's main(): argv and the environment in, an exit status out (SystemExit for --help)."""
    reopen_closed_stdio()
    if argv is None:  # the program itself: what it creates never depends on its caller's umask
        os.umask(PROGRAM_UMASK)
    invocation = Invocation(prog, env or Environment())
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return run_program(prog, lambda: dispatch(args, invocation), invocation.env, invocation)
    except SystemExit as exc:  # --help and --version
        return int(exc.code or 0)


def end_program(status: int) -> NoReturn:
    """End the process with ``status`` once its output is flushed, without the interpreter's teardown of
    the modules it loaded, which pbs_mom would wait for on every call. Nothing
    is left to tear down: the log writes each line through, and every lock and file is released and
    every thread whose work matters joined before main() returns (a daemon thread still running, such
    as a checkpointer's version query after a failed dump, ends with the process)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: what could be said is lost already
            status = status or int(ExitStatus.IO_ERROR)
    os._exit(status)
