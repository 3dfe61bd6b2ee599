"""``mom-restart``: pbs_mom's $restart_script (6 arguments), and the seed's restart flow.

pbs_mom execs it directly (no shell, no options), so the TORQUE form is positional only; the seed's
"submit a job that resumes the old one" becomes one line of the new job's script:
``mom-restart --job JOB_ID`` or ``mom-restart --image GENERATION_DIR``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from msgspec.structs import asdict

from mom_checkpoint import __version__
from mom_checkpoint.batch.calls import MISSING, abs_path_arg, path_part, torque_job_args
from mom_checkpoint.cli.common import EXIT_STATUS_HELP, main_for
from mom_checkpoint.cli.invocation import Invocation
from mom_checkpoint.commands.restart import RestartCall, SeedRestart, TorqueRestart
from mom_checkpoint.platform.environment import Environment
from mom_checkpoint.platform.errors import UsageError
from mom_checkpoint.platform.status import ExitStatus

if TYPE_CHECKING:
    from mom_checkpoint.cli.arguments import ArgumentParser

PROG = "mom-restart"

DESCRIPTION = """\
Restart a checkpointed TORQUE/PBS job from its newest complete, verified generation and stay in the
foreground as the job: the restored application runs as this program's child in its session,
signals are passed on to it, and its exit status is this program's.

  mom-restart SESSION_ID JOB_ID EUSER EGROUP CHECKPOINT_DIR CHECKPOINT_NAME   ($restart_script)
  mom-restart --job JOB_ID [--cwd DIR]          the newest complete generation of JOB_ID
  mom-restart --image GENERATION_DIR [--cwd DIR]  that generation
  sudo -n mom-restart --own --job JOB_ID ...      from a user's job script (see --own)

The TORQUE form follows the pointer at CHECKPOINT_DIR/CHECKPOINT_NAME, or takes the job's newest
complete generation when pbs_mom has deleted it. Every file is checked against the manifest's digest
before any of the restored job runs.
"""

EPILOG = f"""\
examples:
  mom-restart --job 42.head
  mom-restart --image /var/spool/checkpoint/4711.42.head/000003-20261124T193000Z --cwd $PBS_O_WORKDIR
  sudo -n /usr/sbin/mom-restart --own --job 42.head --cwd "$PBS_O_WORKDIR"   (a user's job script)

{EXIT_STATUS_HELP}
  other: the restored application's own exit status (128+N when a signal N ended it)
"""


def build_parser() -> ArgumentParser:
    import argparse  # here: pbs_mom's positional call never builds a parser

    from mom_checkpoint.cli.arguments import ArgumentParser

    parser = ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--job", metavar="JOB_ID", help="restart the newest complete generation of this job")
    which.add_argument("--image", metavar="GENERATION_DIR", help="restart this generation folder")
    parser.add_argument(
        "--cwd", metavar="DIR", help="working directory for the restore (the seed's resume -cwd)"
    )
    parser.add_argument(
        "--own",
        action="store_true",
        help="started through sudo from a user's job script: restore only a checkpoint of the user who "
        "ran sudo (SUDO_UID), and use --cwd with that user's rights",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def parse_restart_call(args: Sequence[str]) -> RestartCall:
    argv = tuple(args)
    if len(argv) == 6 and argv[0][:1].isdigit():
        return TorqueRestart(**asdict(torque_job_args(argv)), argv=argv)
    if argv and argv[0][:1].isdigit():
        raise UsageError(
            "expected 6 arguments (SESSION_ID JOB_ID EUSER EGROUP CHECKPOINT_DIR CHECKPOINT_NAME), "
            f"got {len(argv)}"
        )
    options = build_parser().parse_args(list(argv))
    wanted = path_part("JOB_ID", options.job) if options.job is not None else None
    if options.image is not None and options.image == MISSING:
        raise UsageError("--image needs a generation folder")
    if options.image is not None:
        abs_path_arg("--image", options.image)
    cwd = abs_path_arg("--cwd", options.cwd) if options.cwd is not None else None
    return SeedRestart(job_id=wanted, image=options.image, cwd=cwd, argv=argv, own=options.own)


def main(argv: Sequence[str] | None = None, env: Environment | None = None) -> int:
    return main_for(PROG, _dispatch, argv, env)


def _dispatch(args: list[str], invocation: Invocation) -> ExitStatus | int:
    try:
        call = parse_restart_call(args)
    except UsageError as exc:
        invocation.refused_call("restart.refused", args, exc)
        raise
    return run_restart(call, invocation)


def run_restart(call: RestartCall, invocation: Invocation) -> int:
    """Config, log, restore and wait: the application's exit status (also for OpenPBS's restart)."""
    from mom_checkpoint.commands import restart

    config = invocation.load()
    with invocation.failures_logged("restart.refused", job_id=call.job_id):
        status = restart.run(call, config, invocation.env, invocation.logger)
    if status < 0:
        end_by_signal(-status)
    return status


def end_by_signal(signum: int) -> None:
    """End this process by the signal that ended the restored application, as the job itself would
    have ended: pbs_mom then reports 256+N (qdel: 271), not 128+N. Where the signal cannot end us (it
    is ignored, or stops rather than ends), exit with 128+N."""
    import signal

    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        os.kill(os.getpid(), signum)
    raise SystemExit(128 + signum)
