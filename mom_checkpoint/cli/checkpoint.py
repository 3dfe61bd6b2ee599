"""``mom-checkpoint``: pbs_mom's $checkpoint_script (8 or 2 arguments), plus admin subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from mom_checkpoint import __version__
from mom_checkpoint.cli.admin import COMMANDS, add_subcommands
from mom_checkpoint.cli.common import EXIT_STATUS_HELP, ArgumentParser, main_for
from mom_checkpoint.environment import Environment
from mom_checkpoint.errors import Error
from mom_checkpoint.status import ExitStatus

PROG = "mom-checkpoint"
SUBCOMMANDS: frozenset[str] = frozenset(COMMANDS)

DESCRIPTION = """\
Checkpoint a running TORQUE/PBS job. pbs_mom runs this program as $checkpoint_script:

  mom-checkpoint SESSION_ID JOB_ID EUSER EGROUP CHECKPOINT_DIR CHECKPOINT_NAME SIGNAL DEPTH   (TORQUE)
  mom-checkpoint JOB_PID JOB_ID                                                               (seed)

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
    parser = ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"{PROG} SESSION_ID JOB_ID EUSER EGROUP CHECKPOINT_DIR CHECKPOINT_NAME SIGNAL DEPTH\n"
        f"       {PROG} JOB_PID JOB_ID\n       {PROG} list|show|verify|prune|doctor|config ...\n"
        f"       {PROG} --version | --help",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    add_subcommands(parser)
    return parser


def main(argv: Sequence[str] | None = None, env: Environment | None = None) -> int:
    return main_for(PROG, _dispatch, argv, env)


def _dispatch(args: list[str], env: Environment, loggers: list[Any]) -> ExitStatus:
    if not args or args[0].startswith("-") or args[0] in SUBCOMMANDS:
        options = build_parser().parse_args(args)
        if options.command is None:
            build_parser().error("no job and no command given")
        from mom_checkpoint.cli import admin

        return admin.dispatch(options, env)
    from mom_checkpoint import config as config_module
    from mom_checkpoint.calls import parse_checkpoint_call
    from mom_checkpoint.commands import checkpoint
    from mom_checkpoint.log import make_logger

    call = parse_checkpoint_call(args)
    config = config_module.load(env.environ)
    log = make_logger(config.log_file, program=PROG)
    loggers.append(log)
    started = env.monotonic()
    try:
        outcome = checkpoint.run(call, config, env, log)
    except Error as exc:
        log.error(
            "checkpoint.refused", job_id=call.job_id, error=exc.message, exit_status=int(exc.exit_status)
        )
        reason = exc.exit_status.name.lower()
        _metrics(config, env, log, ok=False, reason=reason, duration_s=env.monotonic() - started)
        raise
    _metrics(
        config,
        env,
        log,
        ok=True,
        reason="ok",
        duration_s=env.monotonic() - started,
        frozen_s=outcome.manifest.times.frozen_s,
        size=outcome.manifest.total_bytes,
    )
    times = outcome.manifest.times
    frozen = f", frozen {times.frozen_s:.3f}s" if times.frozen_s is not None else ""
    ended = f"; job ended ({len(outcome.ended)} processes)" if call.abort else ""
    env.stdout.write(
        f"job {call.job_id}: generation {outcome.generation.number} at {outcome.generation.path} "
        f"({outcome.manifest.total_bytes} bytes, dump {times.dump_s:.3f}s{frozen}){ended}\n"
    )
    return ExitStatus.OK


def _metrics(
    config: Any,
    env: Environment,
    log: Any,
    *,
    ok: bool,
    reason: str,
    duration_s: float,
    frozen_s: float | None = None,
    size: int = 0,
) -> None:
    """Update the Prometheus textfile, if configured; a metrics problem never fails the checkpoint."""
    if not config.metrics_file:
        return
    from pathlib import Path

    from mom_checkpoint import metrics

    attempt = metrics.Attempt(config.backend, ok, reason, duration_s, frozen_s, size)
    try:
        metrics.record(Path(config.spool_dir), config.metrics_file, attempt, env.clock())
    except Exception as exc:
        log.warning("metrics.failed", error=repr(exc))
