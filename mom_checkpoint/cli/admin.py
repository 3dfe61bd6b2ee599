"""The admin and user subcommands of mom-checkpoint: arguments in, tables or JSON out.

``COMMANDS`` at the end is the one list of them: the parser, ``--help``'s usage line, the man pages,
the README's table (a test) and dispatch all read it.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import msgspec

from mom_checkpoint.cli.arguments import ArgumentParser
from mom_checkpoint.cli.invocation import Invocation
from mom_checkpoint.cli.result import envelope
from mom_checkpoint.cli.text import printable
from mom_checkpoint.platform.errors import Refused, UsageError
from mom_checkpoint.platform.status import ExitStatus

_GENERATION = "/var/spool/checkpoint/4711.42.head/000003-20261124T193000Z"
# name: (one-line help, description, examples, exit statuses beyond 64 usage and 78 config)
_TEXTS = {
    "list": (
        "list job runs and generations",
        "Every job run and generation in the spool: job id, exec PID, generation, time, age, size, backend "
        "and status (complete, incoming, stale, pruning, unpublished, broken); the newest complete "
        "generation of each job is marked.",
        "mom-checkpoint list\n  mom-checkpoint list 42.head --json | jq '.data[].path'",
        "0 listed (also when there is nothing to list)",
    ),
    "show": (
        "show a generation's manifest",
        "A generation's manifest in a readable form: the job, the process tree with its open files, the "
        "checkpointer's command and timings, the image files.",
        f"mom-checkpoint show 42.head\n  mom-checkpoint show {_GENERATION}",
        "0 shown, 65 the manifest is unreadable or of an unknown schema, 66 no such job or generation",
    ),
    "verify": (
        "re-hash a generation against its manifest",
        "Check every image file's size and digest against the manifest, and that nobody else could have "
        "written the generation, as mom-restart does before restoring; exit 0 only if all is well.",
        f"mom-checkpoint verify 42.head\n  mom-checkpoint verify {_GENERATION}\n"
        "  mom-checkpoint verify --vault 42.head",
        "0 every file matches, 65 a file is missing, extra or changed, 66 no such job or generation,\n"
        "  77 a symlink or a folder another user could write",
    ),
    "prune": (
        "remove old generations and leftovers",
        "Remove complete generations beyond --keep per job (default: the config's keep) or older than "
        "--older-than, and stale incoming folders. The newest complete generation of a job that still "
        "runs is kept unless --include-running. Every folder's line says why it goes or stays.",
        "mom-checkpoint prune --dry-run\n  mom-checkpoint prune --older-than 7d\n"
        "  mom-checkpoint prune --job 42.head --keep 1",
        "0 done (or, with --dry-run, planned); a job whose checkpoint is running is left alone",
    ),
    "doctor": (
        "check this node's set-up",
        "Check the node: the config parses, the checkpointer is there and works (criu check), which run_as "
        "modes the node supports, the spool's owner, mode and free space, the log file, TORQUE's "
        "checkpoint roots, and that mom_priv/config names the installed programs. One line a check with "
        "the fix; exit 1 if any check fails.",
        "mom-checkpoint doctor\n  mom-checkpoint doctor --mom-config /var/spool/torque/mom_priv/config",
        "0 every check passed, 1 at least one failed",
    ),
    "config": (
        "print the effective configuration",
        "The configuration in effect, every default filled in, as TOML (or JSON with --json).",
        "mom-checkpoint config --print\n  MOM_CHECKPOINT_CONFIG=/tmp/new.toml mom-checkpoint config --print",
        "0 printed",
    ),
    "tick": (
        "start the periodic checkpoints that are due (qchkpt)",
        "Periodic checkpoints for TORQUE 5.1.2 to 6.1.x, whose pbs_mom never starts them itself. Run every "
        "minute (systemd timer or cron), as root: read the running jobs (qstat -t -x), and qchkpt each job "
        "whose c=N, interval=N or $checkpoint_interval (config checkpoint_interval) has passed since its "
        "last checkpoint (checkpoint_time, or the newest generation in the spool, or the tick's own last "
        "qchkpt). Never two qchkpt for one job within its interval; at most tick_max_qchkpt per tick; "
        "jobs with periodic but no c or enabled (qchkpt refuses them) are reported once. tick_jobs "
        '"this-node" (the default) takes only jobs whose first exec_host is this node. Prints nothing when '
        "nothing was due; --dry-run shows every running job and changes nothing.",
        "mom-checkpoint tick --dry-run\n  mom-checkpoint tick\n"
        "  systemctl enable --now mom-checkpoint-tick.timer",
        "0 done (or nothing was due), 1 at least one qchkpt failed (the next tick tries again),\n"
        "  65 qstat printed something unreadable, 69 qstat or qchkpt missing, failing or not answering,\n"
        "  73, 74, 77 the spool cannot be created, cannot be read, or is unsafe,\n"
        "  75 another tick of this host is running",
    ),
    "advise": (
        "the checkpoint interval that pays off (Young, Daly)",
        "Young's (sqrt(2 delta M)) and Daly's optimal checkpoint intervals for a checkpoint cost delta "
        "and a node MTBF M, and the expected waste (checkpoint time plus lost work: "
        "delta/tau + (tau + delta)/(2M)) of the current interval against the optimum. With JOB_ID, "
        "delta is the median dump time of the job's newest generations; M is --mtbf, else node_mtbf_h "
        "from the config; the current interval is --interval, else the job's own (qstat), else "
        "$checkpoint_interval (config checkpoint_interval).",
        "mom-checkpoint advise 42.head\n  mom-checkpoint advise 42.head --mtbf 720\n"
        "  mom-checkpoint advise --cost 300 --mtbf 24 --interval 10",
        "0 advised, 66 the job has no complete checkpoint to measure, 74 the spool cannot be read",
    ),
    "vault-sync": (
        "copy the newest checkpoints into the vault",
        "Copy the newest complete generation of each job (or of JOB_ID) into vault_dir, the storage all "
        "nodes mount, where it outlives this node: each file hashed as it is written and checked against "
        "the manifest, fsync'd, then published; older vault generations beyond vault_keep removed after. "
        "The hook starts it in the background after every checkpoint; run it from the timer that runs "
        "tick to finish copies that failed or were killed. One copier per job, on any node. Nice 10, "
        "idle I/O class, vault_bandwidth_mib_s.",
        "mom-checkpoint vault-sync\n  mom-checkpoint vault-sync --job 42.head --json",
        "0 every copy done (or nothing to copy, or another copier had it), 1 at least one copy failed\n"
        "  (the next sync tries again), 69 the vault is missing, not mounted or full, 77 the vault is unsafe",
    ),
}
COMMON_STATUSES = "64 usage error, 78 the config file is invalid or unsafe"
TARGET = "JOB_ID|GENERATION_DIR"
TARGET_HELP = "a job id (its newest complete generation) or a generation folder"


def add_subcommands(parser: ArgumentParser) -> None:
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", title="commands for administrators and users", prog=parser.prog
    )
    for command in COMMANDS.values():
        help_text, description, examples, statuses = _TEXTS[command.name]
        made = sub.add_parser(
            command.name,
            help=help_text,
            description=textwrap.fill(description, 100),
            epilog=f"examples:\n  {examples}\n\nexit status: {statuses};\n  {COMMON_STATUSES}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        made.add_argument("--json", action="store_true", help="print a versioned JSON result instead")
        command.arguments(made)


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", nargs="?", metavar="JOB_ID", help="only this job")


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar=TARGET, help=TARGET_HELP)
    parser.add_argument("--vault", action="store_true", help="a job's newest copy in the vault")


def _prune_arguments(prune: argparse.ArgumentParser) -> None:
    prune.add_argument("--keep", type=int, metavar="N", help="complete generations to keep per job")
    prune.add_argument(
        "--older-than", metavar="DURATION", help="remove generations older than this (30m, 12h, 7d)"
    )
    prune.add_argument("--job", metavar="JOB_ID", help="only this job")
    prune.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    prune.add_argument(
        "--include-running", action="store_true", help="may remove a running job's newest generation"
    )


def _doctor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mom-config",
        metavar="PATH",
        action="append",
        help="pbs_mom's config file, again for a second pbs_mom (default: TORQUE's "
        "/var/spool/torque/mom_priv/config and OpenPBS's /var/spool/pbs/mom_priv/config, each that exists)",
    )


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--print", action="store_true", dest="print_config", required=True, help="print it")


def _tick_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="say what it would do, change nothing")


def _vault_sync_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--job", metavar="JOB_ID", help="only this job")
    parser.add_argument(
        "--if-enabled", action="store_true", help="do nothing, quietly, when no vault_dir is set (timers)"
    )


def _advise_arguments(advise: argparse.ArgumentParser) -> None:
    advise.add_argument(
        "job_id", nargs="?", metavar="JOB_ID", help="measure the cost from this job's checkpoints"
    )
    advise.add_argument(
        "--cost", type=float, metavar="SECONDS", help="the checkpoint cost, instead of a job's"
    )
    advise.add_argument("--mtbf", type=float, metavar="HOURS", help="a node's MTBF (default: node_mtbf_h)")
    advise.add_argument(
        "--interval", type=float, metavar="MINUTES", help="the current interval (default: the job's own)"
    )


def dispatch(options: argparse.Namespace, invocation: Invocation) -> ExitStatus:
    """Run one subcommand: the spool's readers only as root (its folders are root's 0700)."""
    command = COMMANDS[options.command]
    if command.reads_spool and os.geteuid() != 0:
        raise Refused(
            f"{command.name} reads the checkpoint spool, which is root's alone: run it as root on the "
            f"node (a user restarts their own job with sudo mom-restart --own; see the README)"
        )
    return command.run(options, invocation)


def _list(options: argparse.Namespace, invocation: Invocation) -> ExitStatus:
    config, env = invocation.load(logging=False), invocation.env
    from mom_checkpoint.commands import listing

    entries = listing.run(config, options.job_id)
    if options.json:
        env.stdout.write(envelope("list", entries))
    else:
        from mom_checkpoint.cli import render

        render.entries(entries, env.stdout, env.clock())
    return ExitStatus.OK


def _show(options: argparse.Namespace, invocation: Invocation) -> ExitStatus:
    config, env = invocation.load(logging=False), invocation.env
    from mom_checkpoint.commands import show

    found = show.run(config, options.target, vault=options.vault)
    path, manifest = found.path, found.manifest
    if options.json:
        env.stdout.write(envelope("show", {"path": path, "manifest": manifest}))
    else:
        from mom_checkpoint.cli import render

        render.manifest(path, manifest, env.stdout)
    return ExitStatus.OK


def _verify(options: argparse.Namespace, invocation: Invocation) -> ExitStatus:
    config, env = invocation.load(logging=False), invocation.env
    from mom_checkpoint.cli import render
    from mom_checkpoint.commands import show, verify

    found = show.run(config, options.target, vault=options.vault)
    path, manifest = found.path, found.manifest
    with render.progress(manifest.total_bytes, env.stderr, enabled=not options.json) as advance:
        verify.run(found, progress=advance)
    if options.json:
        env.stdout.write(
            envelope("verify", {"path": path, "files": len(manifest.files), "bytes": manifest.total_bytes})
        )
    else:
        env.stdout.write(
            f"{printable(path)}: all {len(manifest.files)} files match the manifest "
            f"({manifest.total_bytes} bytes)\n"
        )
    return ExitStatus.OK


def _prune(options: argparse.Namespace, invocation: Invocation) -> ExitStatus:
    config, env = invocation.load(logging=False), invocation.env
    from mom_checkpoint.batch.calls import path_part
    from mom_checkpoint.commands import prune
    from mom_checkpoint.spool.retention import parse_duration

    if options.keep is not None and options.keep < 1:
        raise UsageError("--keep must be at least 1")
    try:
        older = parse_duration(options.older_than) if options.older_than is not None else None
    except ValueError as exc:
        raise UsageError(f"--older-than: {exc}") from None
    job = path_part("--job", options.job) if options.job is not None else None
    decisions = prune.run(
        config, keep=options.keep, older_than_s=older, job_id=job, dry_run=options.dry_run,
        include_running=options.include_running,
    )  # fmt: skip
    if options.json:
        env.stdout.write(envelope("prune", {"dry_run": options.dry_run, "decisions": decisions}))
    else:
        from mom_checkpoint.cli import render

        render.decisions(decisions, options.dry_run, env.stdout)
    return ExitStatus.OK


def _doctor(options: argparse.Namespace, invocation: Invocation) -> ExitStatus:
    env = invocation.env  # doctor reads the config itself: its faults are among what it reports
    from mom_checkpoint.commands import doctor

    mom_configs = options.mom_config or doctor.default_mom_configs()
    checks = doctor.run(
        env, mom_configs, Path(sys.argv[0]).resolve().parent if sys.argv[0] else Path("/usr/sbin")
    )
    failed = [c for c in checks if not c.ok]
    if options.json:
        env.stdout.write(envelope("doctor", checks, ok=not failed))
    else:
        from mom_checkpoint.cli import render

        render.checks(checks, env.stdout)
    return ExitStatus.CHECKS_FAILED if failed else ExitStatus.OK


def _config(options: argparse.Namespace, invocation: Invocation) -> ExitStatus:
    config, env = invocation.load(logging=False), invocation.env
    from mom_checkpoint.commands import configuration

    if options.json:
        env.stdout.write(
            envelope("config", {"source": config.source, "config": configuration.as_dict(config)})
        )
    else:
        env.stdout.write(configuration.to_toml(config))
    return ExitStatus.OK


def _tick(options: argparse.Namespace, invocation: Invocation) -> ExitStatus:
    from mom_checkpoint.cli import periodic
    from mom_checkpoint.commands import tick

    config = invocation.load(command="tick", logging=not options.dry_run)  # a dry run writes nothing
    with invocation.failures_logged("tick.failed"):  # a tick that fails for any reason says so in the log
        outcome = tick.run(config, invocation.env, invocation.log, dry_run=options.dry_run)
    if options.json:
        invocation.env.stdout.write(envelope("tick", outcome.as_dict(), ok=not outcome.failed))
    else:
        periodic.tick(outcome, invocation.env.stdout)
    return ExitStatus.CHECKS_FAILED if outcome.failed else ExitStatus.OK


def _advise(options: argparse.Namespace, invocation: Invocation) -> ExitStatus:
    config, env = invocation.load(logging=False), invocation.env
    from mom_checkpoint.batch.calls import path_part
    from mom_checkpoint.commands import advise

    if options.job_id is not None and options.cost is not None:
        raise UsageError("give a JOB_ID or --cost SECONDS, not both")
    job = path_part("JOB_ID", options.job_id) if options.job_id is not None else None
    report = advise.run(
        config, env, job_id=job, cost_s=options.cost, mtbf_h=options.mtbf, interval_min=options.interval
    )
    if options.json:
        env.stdout.write(envelope("advise", report.as_dict()))
    else:
        from mom_checkpoint.cli import periodic

        periodic.advice(report, env.stdout)
    return ExitStatus.OK


def _vault_sync(options: argparse.Namespace, invocation: Invocation) -> ExitStatus:
    from mom_checkpoint.batch.calls import path_part
    from mom_checkpoint.cli import periodic
    from mom_checkpoint.commands import vault_sync

    job = path_part("--job", options.job) if options.job is not None else None
    config = invocation.load(logging=False)
    if options.if_enabled and not config.vault_dir:
        return ExitStatus.OK
    log = invocation.open_log(command="vault-sync")
    with invocation.failures_logged("vault.sync_failed"):
        copies = vault_sync.run(config, invocation.env, log, job_id=job)
    failed = [c for c in copies if c.status == "failed"]
    if options.json:
        invocation.env.stdout.write(envelope("vault-sync", [c.as_dict() for c in copies], ok=not failed))
    else:
        periodic.vault_copies(copies, invocation.env.stdout)
    return ExitStatus.CHECKS_FAILED if failed else ExitStatus.OK


class Subcommand(msgspec.Struct, frozen=True):
    name: str
    arguments: Callable[[argparse.ArgumentParser], None]  # beyond --json, which every one takes
    run: Callable[[argparse.Namespace, Invocation], ExitStatus]
    reads_spool: bool = False  # root's alone: the spool's folders are 0700


COMMANDS = {
    command.name: command
    for command in (
        Subcommand("list", _list_arguments, _list, reads_spool=True),
        Subcommand("show", _target_arguments, _show, reads_spool=True),
        Subcommand("verify", _target_arguments, _verify, reads_spool=True),
        Subcommand("prune", _prune_arguments, _prune, reads_spool=True),
        Subcommand("doctor", _doctor_arguments, _doctor),
        Subcommand("config", _config_arguments, _config),
        Subcommand("tick", _tick_arguments, _tick),
        Subcommand("advise", _advise_arguments, _advise),
        Subcommand("vault-sync", _vault_sync_arguments, _vault_sync, reads_spool=True),
    )
}
assert set(COMMANDS) == set(_TEXTS), "every command has its texts, and every text its command"
