"""Tables, trees and progress bars for people (rich and humanize: imported only by admin commands).

Every string from a manifest, /proc or the spool's folder names goes through ``printable`` (no control
characters) and reaches rich as ``Text`` (never parsed as markup or emoji codes): a job's command line is
shown as it is, never obeyed by the terminal or by rich.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import humanize
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from mom_checkpoint.cli.text import printable
from mom_checkpoint.commands.doctor import Check
from mom_checkpoint.commands.prune import Decision
from mom_checkpoint.image.hashing import Progress
from mom_checkpoint.image.manifest import Manifest
from mom_checkpoint.spool.inventory import Entry


def _console(stream: TextIO) -> Console:
    return Console(file=stream, highlight=False, soft_wrap=False, width=None if stream.isatty() else 200)


def _text(value: object, style: str = "") -> Text:
    """Outside text as rich ``Text``: controls made visible, markup shown as typed."""
    return Text(printable(value), style=style)


def _row(*cells: object) -> list[Text]:
    return [_text(cell) for cell in cells]


def entries(items: Sequence[Entry], stream: TextIO, now: float) -> None:
    vault = any(e.vault is not None for e in items)  # a VAULT column only with a vault
    headers = ["JOB", "EXEC PID", "GEN", "TIME (UTC)", "AGE", "SIZE", "BACKEND", "STATUS"]
    table = Table(*headers, *(["VAULT"] if vault else []), "")
    for e in items:
        when = datetime.datetime.fromtimestamp(e.created, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        in_vault = ["-" if e.vault is None else "yes" if e.vault else "no"] if vault else []
        table.add_row(
            *_row(
                e.job_id,
                e.exec_pid,
                e.number if e.number is not None else "-",
                when,
                humanize.naturaldelta(max(0.0, now - e.created)),
                humanize.naturalsize(e.size, binary=True),
                e.backend or "-",
                e.status,
                *in_vault,
                "newest" if e.newest else (e.problem or ""),
            )
        )
    _console(stream).print(table if items else "no checkpoints in the spool")


def manifest(path: Path, m: Manifest, stream: TextIO) -> None:
    console = _console(stream)
    p = printable
    console.print(_text(path, style="bold"))
    j = m.job
    console.print(
        Text(
            f"job {p(j.id)}  user {p(j.user)} ({j.uid})  group {p(j.group)}  session {j.session_id}  "
            f"exec PID {j.exec_pid}  generation {m.generation.number}"
        )
    )
    console.print(
        Text(
            f"checkpointed on {p(m.host.name)} (kernel {p(m.host.kernel)}) by mom-checkpoint "
            f"{p(m.tool.version)}, {p(m.call.convention)} call, signal {m.call.signal}"
        )
    )
    if m.host.cpu is not None:  # what a restoring node's CPU must have (README: another CPU)
        cpu = m.host.cpu
        console.print(Text(f"CPU {p(cpu.machine)} {p(cpu.model)} ({len(cpu.flags)} feature flags: --json)"))
    b = m.backend
    command = " ".join(p(word) for word in b.command)
    console.print(Text(f"backend {p(b.name)} {p(b.version)} as {p(b.run_as)}: {command}"))
    t = m.times
    frozen = f"{t.frozen_s:.3f}s" if t.frozen_s is not None else "not reported"
    console.print(
        Text(
            f"started {p(t.started)}  dump {t.dump_s:.3f}s  frozen {frozen}  after the dump "
            f"{t.post_dump_s:.3f}s  total {t.total_s:.3f}s"
        )
    )
    tree = Tree("processes")
    nodes: dict[int, Tree] = {}
    for proc in m.processes:
        rss = humanize.naturalsize(proc.rss, binary=True)
        cmdline = " ".join(p(word) for word in proc.cmdline)
        label = f"{proc.pid} {p(proc.name)}  uid {proc.uid}  rss {rss}  {cmdline}"
        files = [f"fd {fd.fd} -> {p(fd.target)}" for fd in proc.fds if fd.kind == "file"]
        parent = nodes.get(proc.ppid, tree)
        nodes[proc.pid] = parent.add(Text(label + ("\n  " + "\n  ".join(files) if files else "")))
    console.print(tree)
    table = Table("FILE", "SIZE", "DIGEST")  # "<algorithm>:<hex>": BLAKE3, or an older sha256
    for f in m.files:
        table.add_row(*_row(f.path, humanize.naturalsize(f.size, binary=True), f.digest[:23] + "..."))
    console.print(table)
    console.print(f"{len(m.files)} files, {humanize.naturalsize(m.total_bytes, binary=True)}")
    if m.stats:
        console.print(Text("checkpointer stats: " + ", ".join(f"{p(k)}={p(v)}" for k, v in m.stats.items())))


def checks(items: Sequence[Check], stream: TextIO) -> None:
    """Plain text, one line a check (and one for its fix): no rich, but no control characters either."""
    for c in items:
        mark = "ok  " if c.ok else "FAIL"
        line = f"[{mark}] {printable(c.name)}: {printable(c.detail)}"
        if not c.ok and c.fix:
            line += f"\n       fix: {printable(c.fix)}"
        stream.write(line + "\n")
    failed = sum(not c.ok for c in items)
    stream.write(
        f"{len(items) - failed} passed, {failed} failed\n" if failed else f"all {len(items)} checks passed\n"
    )


def decisions(items: Sequence[Decision], dry_run: bool, stream: TextIO) -> None:
    table = Table("ACTION", "JOB", "PATH", "STATUS", "REASON")
    verb = "would remove" if dry_run else "removed"
    for d in items:
        table.add_row(
            *_row(
                "keep" if d.keep else (verb if d.done else "kept"),
                d.entry.job_id,
                d.entry.path,
                d.entry.status,
                d.reason,
            )
        )
    _console(stream).print(table if items else "nothing in the spool")
    gone = sum(1 for d in items if not d.keep and d.done)
    stream.write(
        f"{gone} {'would be removed' if dry_run else 'removed'}, {sum(d.keep for d in items)} kept\n"
    )


@contextlib.contextmanager
def progress(total: int, stream: TextIO, *, enabled: bool) -> Iterator[Progress | None]:
    """A progress bar in bytes on a terminal; nothing otherwise."""
    if not enabled or not stream.isatty():
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, TransferSpeedColumn
    from rich.progress import Progress as Bar

    with Bar(
        "verifying",
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        console=Console(file=stream),
        transient=True,
    ) as bar:
        task = bar.add_task("verify", total=total)
        yield lambda n: bar.advance(task, n)
