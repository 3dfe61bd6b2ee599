"""Plain-text output of ``tick``, ``advise`` and ``vault-sync``: one line a job, readable in the journal
or a cron mail.

No rich or humanize here: tick runs every minute, and its start-up time is most of its cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

from mom_checkpoint.batch.interval import WASTE_MODEL, Option
from mom_checkpoint.batch.schedule import Decision
from mom_checkpoint.cli.text import printable
from mom_checkpoint.commands.advise import Report
from mom_checkpoint.commands.tick import Outcome
from mom_checkpoint.vault.sync import Copy as VaultCopy

_DRY = {
    "qchkpt": "would qchkpt",
    "report": "would report",
    "defer": "would defer",
    "wait": "wait",
    "skip": "skip",
}


def tick(outcome: Outcome, stream: TextIO) -> None:
    """A dry run shows every running job; a real tick only what it did, and nothing when it did nothing
    (so cron mails nothing and the journal stays short)."""
    if outcome.dry_run:
        shown = outcome.decisions
    else:
        shown = [d for d in outcome.decisions if d.action in ("qchkpt", "report", "defer")]
    for decision in shown:  # job ids and Checkpoint values come from users, through qstat
        label, job, detail = _label(decision, outcome.dry_run), printable(decision.job_id), _detail(decision)
        stream.write(f"{label:<18} {job}: {printable(detail)}\n")
    if outcome.dry_run or shown:
        stream.write(_summary(outcome) + "\n")


def _label(d: Decision, dry_run: bool) -> str:
    if dry_run:
        return _DRY[d.action]
    if d.action == "qchkpt":
        return "qchkpt" if d.result == "accepted" else "qchkpt FAILED"
    return {"report": "not checkpointable", "defer": "deferred"}.get(d.action, d.action)


def _detail(d: Decision) -> str:
    if d.action == "qchkpt" and d.result:
        return f"{d.result} ({d.reason})"
    return d.reason


def _summary(outcome: Outcome) -> str:
    p = outcome.plan
    where = f" ({p.elsewhere} on other nodes)" if p.elsewhere else ""
    head = f"qstat listed {p.jobs} job{'s' if p.jobs != 1 else ''}, {p.running} running here{where}"
    if outcome.dry_run:
        parts = [
            f"{p.count('qchkpt')} would be checkpointed",
            f"{p.count('defer')} deferred",
            f"{p.count('report')} reported",
            f"{p.count('wait')} waiting",
            f"{p.count('skip')} skipped",
        ]
        return f"dry run: {head}: {', '.join(parts)}; nothing changed"
    failed = len(outcome.failed)
    parts = [f"{p.count('qchkpt') - failed} qchkpt accepted"]
    parts += [f"{failed} failed"] if failed else []
    parts += [f"{p.count('defer')} deferred"] if p.count("defer") else []
    parts += [f"{p.count('report')} reported"] if p.count("report") else []
    return f"tick: {head}: {', '.join(parts)}"


def advice(report: Report, stream: TextIO) -> None:
    a = report.advice
    lines = [f"job {printable(report.job_id)}" if report.job_id else "checkpoint interval advice"]
    lines.append(f"  checkpoint cost  delta = {a.cost_s:.4g} s  ({report.cost_source})")
    lines.append(f"  node MTBF        M = {a.mtbf_s / 3600:.4g} h  ({report.mtbf_source})")
    lines.append("")
    lines.append(f"  {'INTERVAL':<22} {'MINUTES':>9}  {'EXPECTED WASTE':>14}")
    rows: list[tuple[str, Option | None, str]] = [
        ("current", a.current, report.interval_source),
        ("Young  sqrt(2 delta M)", a.young, "the optimum of this first-order model"),
        (
            "Daly (2006)" if not a.cost_at_least_2m else "Daly: M (delta >= 2M)",
            a.daly,
            "higher-order optimum",
        ),
    ]
    for name, option, note in rows:
        if option is None:
            lines.append(f"  {name:<22} {'-':>9}  {'-':>14}  {note}")
            continue
        waste = f"{option.waste * 100:.2f} %"
        lines.append(f"  {name:<22} {option.interval_s / 60:>9.2f}  {waste:>14}  {note}".rstrip())
    lines.append("")
    minutes = a.suggested_minutes
    better = f", {a.current.waste * 100:.2f} % now" if a.current is not None else ""
    lines.append(
        f"  suggested: qsub -c enabled,periodic,interval={minutes}  "
        f"(Daly's interval: {a.daly.waste * 100:.2f} % of the run time lost{better})"
    )
    if a.cost_at_least_2m:
        lines.append("  a checkpoint costs at least twice the MTBF: checkpointing can barely pay off here")
    lines.append(f"  waste model: {WASTE_MODEL}")
    lines.append(
        "    the checkpoints' own time, plus half an interval of work lost per failure (first order:"
    )
    lines.append("    good while delta and the interval are well below M)")
    stream.write("\n".join(lines) + "\n")


def vault_copies(copies: Sequence[VaultCopy], stream: TextIO) -> None:
    """One line a copy it made or that failed; nothing for those already in the vault or being copied
    by another copier (the timer runs it every minute, and cron mails what it prints)."""
    for copy in copies:
        where = f"{printable(copy.job_id)} {copy.generation}"
        if copy.status == "copied":
            mib = copy.bytes / (1 << 20)
            rate = mib / max(copy.seconds, 1e-6)
            sent = copy.sent_bytes / (1 << 20)
            stream.write(
                f"copied  {where}: {mib:.1f} MiB in {copy.seconds:.1f}s ({rate:.0f} MiB/s), "
                f"{sent:.1f} MiB sent\n"
            )
        elif copy.status == "repaired":
            stream.write(f"repaired {where}: chunks the vault had lost written again\n")
        elif copy.status == "failed":  # "busy": another copier has it, nothing to say every minute
            stream.write(f"FAILED  {where}: {printable(copy.error or '')}\n")
