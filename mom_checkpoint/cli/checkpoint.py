"""``mom-checkpoint``: pbs_mom's $checkpoint_script (8 or 2 arguments), plus admin subcommands."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mom_checkpoint import __version__
from mom_checkpoint.cli.common import EXIT_STATUS_HELP, end_program, main_for
from mom_checkpoint.cli.invocation import Invocation
from mom_checkpoint.platform.environment import Environment
from mom_checkpoint.platform.errors import UsageError
from mom_checkpoint.platform.status import ExitStatus

if TYPE_CHECKING:
    from mom_checkpoint.batch.calls import CheckpointCall
    from mom_checkpoint.cli.arguments import ArgumentParser

PROG = "mom-checkpoint"

DESCRIPTION = """\
Checkpoint a running TORQUE/PBS job. pbs_mom runs this program as $checkpoint_script:

  mom-checkpoint SESSION_ID JOB_ID EUSER EGROUP CHECKPOINT_DIR CHECKPOINT_NAME SIGNAL DEPTH   (TORQUE)
  mom-checkpoint JOB_PID JOB_ID                                                               (seed)
  mom-checkpoint --pbs ACTION %jobid %sid %taskid %login %path     (OpenPBS $action lines)

ACTION is checkpoint, checkpoint_abort (qhold) or restart (with $restart_transmogrify true).

'-' stands for a missing value. SIGNAL 0 checkpoints and lets the job run on; SIGNAL 15 checkpoints and
then ends the job, only if the checkpoint is complete. The image is written to
<spool_dir>/<exec_pid>.<job_id>/<generation>/ with a manifest.json; in the TORQUE form a small pointer
file naming the generation is left at CHECKPOINT_DIR/CHECKPOINT_NAME.
"""

EPILOG = f"""\
configuration: $MOM_CHECKPOINT_CONFIG or /etc/mom-checkpoint/config.toml (TOML; see the README).

examples:
  mom-checkpoint 4711 42.head alice users /var/spool/torque/checkpoint/42.head.CK ckpt.42.head.1732 0 -
  mom-checkpoint 4711 42.head

{EXIT_STATUS_HELP}
"""


def build_parser() -> ArgumentParser:
    import argparse  # here: pbs_mom's calls never build this parser

    from mom_checkpoint.cli.admin import COMMANDS, add_subcommands
    from mom_checkpoint.cli.arguments import ArgumentParser

    parser = ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"{PROG} SESSION_ID JOB_ID EUSER EGROUP CHECKPOINT_DIR CHECKPOINT_NAME SIGNAL DEPTH\n"
        f"       {PROG} JOB_PID JOB_ID\n"
        f"       {PROG} --pbs checkpoint|checkpoint_abort|restart JOBID SID TASKID LOGIN PATH\n"
        f"       {PROG} {'|'.join(COMMANDS)} ...\n"
        f"       {PROG} --version | --help",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    add_subcommands(parser)
    return parser


def main(argv: Sequence[str] | None = None, env: Environment | None = None) -> int:
    status = main_for(PROG, _dispatch, argv, env)
    if argv is None:  # the program itself, as pbs_mom runs it (tests pass their own argv)
        end_program(status)
    return status


def _dispatch(args: list[str], invocation: Invocation) -> ExitStatus | int:
    if args and args[0] == "--pbs":
        return _openpbs(args, invocation)
    if _admin_call(args):
        options = build_parser().parse_args(args)
        if options.command is None:
            build_parser().error("no job and no command given")
        from mom_checkpoint.cli import admin

        return admin.dispatch(options, invocation)
    from mom_checkpoint.batch.calls import parse_checkpoint_call

    try:
        call = parse_checkpoint_call(args)
    except UsageError as exc:
        invocation.refused_call("checkpoint.refused", args, exc)
        raise
    return _checkpoint(call, invocation)


def _admin_call(args: list[str]) -> bool:
    """A subcommand, --help or --version rather than one of pbs_mom's calls, whose first argument is a
    number (a session id or pid): those are told apart without importing the admin commands."""
    if not args or args[0].startswith("-"):
        return True
    if args[0].isdecimal():
        return False
    from mom_checkpoint.cli.admin import COMMANDS

    return args[0] in COMMANDS


def _openpbs(args: list[str], invocation: Invocation) -> ExitStatus | int:
    """OpenPBS's $action lines: checkpoint and checkpoint_abort, and restart (the task's new top process)."""
    from mom_checkpoint.batch.calls import parse_pbs_args, pbs_checkpoint_call, task_storage_id

    parsed = parse_pbs_args(args)
    if parsed.action != "restart":
        return _checkpoint(pbs_checkpoint_call(parsed), invocation)
    from mom_checkpoint.cli.restart import run_restart
    from mom_checkpoint.commands import restart

    call = restart.PbsRestart(
        session_id=parsed.session_id,
        job_id=task_storage_id(parsed.job_id, parsed.task_id),
        euser=parsed.euser,
        egroup=None,
        checkpoint_dir=os.path.dirname(parsed.path),
        checkpoint_name=os.path.basename(parsed.path),
        argv=parsed.argv,
        task_id=parsed.task_id,
    )
    return run_restart(call, invocation)


def _checkpoint(call: CheckpointCall, invocation: Invocation) -> ExitStatus:
    from mom_checkpoint.commands import checkpoint

    config = invocation.load()
    with invocation.failures_logged("checkpoint.refused", job_id=call.job_id):
        outcome = checkpoint.run(call, config, invocation.env, invocation.logger)
    times = outcome.manifest.times
    frozen = f", frozen {times.frozen_s:.3f}s" if times.frozen_s is not None else ""
    ended = f"; job ended ({len(outcome.ended)} processes)" if call.abort else ""
    invocation.env.stdout.write(
        f"job {call.job_id}: generation {outcome.generation.number} at {outcome.generation.path} "
        f"({outcome.manifest.total_bytes} bytes, dump {times.dump_s:.3f}s{frozen}){ended}\n"
    )
    return ExitStatus.OK
