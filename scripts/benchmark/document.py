"""The document (docs/PERFORMANCE.md): the machine's facts, the table, the notes and each family's section."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import psutil

from . import ROOT
from .core import Bench, Family, table

COMMAND = ".venv/bin/python scripts/benchmark"


def page_cache_speed(bench: Bench) -> tuple[float, float]:
    """MiB/s of buffered writes into page cache freed a moment ago, and into memory not used lately.

    256 MiB files are written and kept (each fsync'd after its timed write, so that no dirty pages pile
    up) until two in a row are written at under 40 % of the best speed, or 2 GiB are written: by then
    the writes go to memory not used lately. Then each file is deleted and at once written again."""
    folder = bench.base / "page-cache"
    folder.mkdir()

    def write(path: Path) -> float:
        with open(path, "wb") as fh:
            started = time.perf_counter()
            for _ in range(256):
                fh.write(bench.block)
            seconds = time.perf_counter() - started
            fh.flush()
            os.fsync(fh.fileno())
        return 256 / seconds

    try:
        kept: list[float] = []
        while len(kept) < 8 and not (len(kept) >= 3 and max(kept[-2:]) < 0.4 * max(kept)):
            kept.append(write(folder / f"kept-{len(kept)}"))
        reused = []
        for path in sorted(folder.iterdir()):
            path.unlink()
            reused.append(write(path))
            path.unlink()
    finally:
        shutil.rmtree(folder)
    return statistics.median(reused), statistics.median(kept[-2:])


def machine_facts(cache: tuple[float, float] | None) -> list[str]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = psutil.virtual_memory().total / 2**30
    disk = "unknown"
    tmp = Path(tempfile.gettempdir()).resolve()
    with contextlib.suppress(OSError):
        best = ""
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, kind, opts = line.split()[:4]
            if str(tmp).startswith(mount) and len(mount) >= len(best):
                best, disk = mount, f"{kind} on {device} ({opts.split(',')[0]}), mounted at {mount}"
    return [
        f"- kernel {platform.release()}, {os.cpu_count()} CPUs ({cpu}), {memory:.0f} GiB memory",
        f"- work folder {tmp}: {disk}",
        f"- CRIU {criu_version()}, Python {platform.python_version()}, psutil {psutil.__version__}",
        f"- commit {commit()}",
        *(
            [
                f"- buffered writes (256 MiB, before any fsync) into page cache freed a moment ago: "
                f"{cache[0]:.0f} MiB/s; into memory not used lately: {cache[1]:.0f} MiB/s (where the second "
                "is far slower, the VM's host backs its memory lazily). A dump writes its image into memory "
                "too, so how fast it ran depended on how recently and how much memory had been freed before "
                "it, which the order of the runs decided. So before every dump, of either contender, the "
                "benchmark syncs and drops the page cache, reads back the programs both run, writes and "
                "fsyncs a scratch file 1.25 times the image's size and deletes it the moment criu has "
                "started (its log file appears); and raw criu is started by a Python process that first "
                "imports what the hook imports, so that criu starts as long after its launch as the hook's "
                "does (criu's own run is what is timed). Before every restore the scratch file is used the "
                "same way."
            ]
            if cache
            else []
        ),
    ]


def criu_version() -> str:
    for binary in ("/usr/local/sbin/criu", "/usr/sbin/criu"):
        if os.access(binary, os.X_OK):
            out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
            match = re.search(r"Version:\s*(\S+)", out)
            return match.group(1) if match else "unknown"
    return "none"


def commit() -> str:
    git = shutil.which("git") or "git"
    proc = subprocess.run(
        [git, "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        [git, "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return (proc.stdout.strip() or "unknown") + (" with uncommitted changes" if dirty.stdout.strip() else "")


def document(
    bench: Bench,
    families: Sequence[Family],
    started: datetime,
    seconds: float,
    quiet: tuple[list[str], list[str]],
) -> str:
    before, during = quiet
    noise = (
        'No other test run (`pgrep -f "pytest|reliability.py"`) was seen at the start or during the run.'
        if not before and not during
        else "Other test runs were running on the machine during this run, so the figures are noisier than "
        f"they would be on a quiet node: {'; '.join(sorted(set(before + during)))[:400]}."
    )
    load = os.getloadavg()
    lines = [
        "# Performance: the figures",
        "",
        f"Generated by `scripts/benchmark` on {started.strftime('%Y-%m-%d %H:%M UTC')} in "
        f"{seconds / 60:.0f} minutes. Not edited by hand: run `{COMMAND}` again to refresh it.",
        "",
        *machine_facts(bench.cache_speed),
        f"- {noise} Load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}.",
        "",
        "Every row runs both contenders alternately on the same job within this one run, the order "
        "reversed every other round (A B, B A, A B, ...: here the first of a pair came out slower, "
        "whichever it was), and gives the median and the range (min-max) of each, and the ratio of the "
        "medians (mom-checkpoint / alternative; for MiB/s higher is better, for everything else lower). "
        "Jobs are started the way pbs_mom starts them (`mom-checkpoint-run`, as the user `momtest`); the "
        "hook and the seed's script are called the way pbs_mom calls them (`/bin/sh -c \"... 2>&1 "
        '1>/dev/null"`, PATH=/bin:/usr/bin, cwd /). CRIU runs in job-user mode (root here lacks '
        "CAP_SYS_RESOURCE, docs/CRIU.md): raw criu gets the very command line the hook recorded in its "
        "manifest, with the same setpriv prefix, environment, umask and cwd. Before every dump the "
        "previous image's pages are on disk (`sync`). Where a row has a target, a 90 % bootstrap interval "
        "of its ratio (whole rounds resampled) shows how far the ratio moves by chance on this machine.",
        "",
        *table(bench.rows),
        "",
        "## Where the time goes, in short",
        "",
        *[f"- {note}" for note in bench.notes],
        "",
    ]
    if bench.failures:
        lines += ["## Rows that failed", "", *[f"- {f}" for f in bench.failures], ""]
    for family in families:
        section = bench.sections.get(family.name)
        if not family.title or section is None:
            continue
        while section and not section[-1]:
            section = section[:-1]
        intro = [*family.intro, ""] if family.intro else []
        lines += [f"## {family.title}", "", *intro, *section, ""]
    return "\n".join(lines) + "\n"
