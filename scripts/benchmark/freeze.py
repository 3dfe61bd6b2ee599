"""Rows 3, 4 and 7: the freeze the application sees and CRIU's Frozen time, wall time, throughput and
post-dump work, through the hook against raw criu dump; and the hook's own peak RSS."""

from __future__ import annotations

import itertools
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import Job, Site

from .core import (
    DUMP_CAPS,
    KEEP,
    MIB,
    Bench,
    Family,
    Row,
    Series,
    TickLog,
    alternate,
    as_pbs_mom,
    check,
    events,
    frozen_us,
    fsync_tree,
    job_user_prefix,
    ms,
    newest_manifest,
    num,
    packaged,
    raw_log,
    run_raw_like_hook,
    say,
    sec,
    settle,
    size_label,
)
from .phases import timed_call


@dataclass
class DumpFigures:
    gap: Series = field(default_factory=Series)  # largest gap between the app's ticks (s)
    frozen: Series = field(default_factory=Series)  # CRIU's Frozen time (s)
    wall: Series = field(default_factory=Series)  # the whole call (s)
    dump: Series = field(default_factory=Series)  # criu's own run (s)
    durable: Series = field(default_factory=Series)  # until the image is on disk (s)
    post: Series = field(default_factory=Series)  # after the job runs again (s)
    rate: Series = field(default_factory=Series)  # image MiB / criu's run (MiB/s)
    image: Series = field(default_factory=Series)  # bytes
    outside: Series = field(default_factory=Series)  # the hook's call beyond its manifest's total_s (s)
    followed: Series = field(default_factory=Series)  # % of the image hashed while criu wrote it


def run(bench: Bench) -> None:
    site = bench.site("freeze")
    site.configure(keep=KEEP, **{"backends.criu.run_as": "job-user"})
    sizes = (256,) if bench.options.quick else (256, 1024)
    lines: list[str] = []
    for mib in sizes:
        lines += freeze_one(bench, site, mib)
    bench.sections["freeze"] = lines


def freeze_one(bench: Bench, site: Site, mib: int) -> list[str]:
    label = size_label(mib)
    job = bench.start_app(site, f"{mib}.freeze", mib)
    ticks = TickLog(job.output)
    hook = packaged("mom-checkpoint")
    raw_root = bench.user_dir(site.base / f"raw-{mib}")
    counter = iter(range(1_000_000))

    raw_kept: list[Path] = []
    warm = int(mib * MIB * 1.25)

    def hook_started() -> bool:
        return any(site.spool.glob(f"*.{job.job_id}/.incoming-*/image/*"))  # CRIU has begun writing

    def via_hook(figures: DumpFigures | None) -> None:
        args = site.torque_args(job)
        bench.fresh_page_cache()
        with bench.warm_memory(warm, hook_started):
            since = ticks.offset()
            start = time.monotonic()
            call = check(as_pbs_mom(hook, args, site.config), "mom-checkpoint")
            end = time.monotonic()
        _, manifest = newest_manifest(site, job.job_id)
        settle()
        if figures is None:
            return
        times = manifest["times"]
        figures.gap.add(ticks.max_gap(since, start, end))
        figures.frozen.add(float(times["frozen_s"]))
        figures.wall.add(call.seconds)
        figures.dump.add(float(times["dump_s"]))
        figures.durable.add(call.seconds)
        figures.post.add(float(times["post_dump_s"]))
        figures.rate.add(manifest["total_bytes"] / MIB / float(times["dump_s"]))
        figures.image.add(float(manifest["total_bytes"]))
        figures.outside.add(call.seconds - float(times["total_s"]))
        done = events(site, "dump.done")[-1]
        figures.followed.add(100 * float(done["hashed_meanwhile"]) / float(manifest["total_bytes"]))

    def raw_command() -> list[str]:
        _, manifest = newest_manifest(site, job.job_id)
        command = raw_log(list(manifest["backend"]["command"]), "dump.log")
        command[command.index("-D") + 1] = str(bench.user_dir(raw_root / str(next(counter))))
        return command

    def via_raw(figures: DumpFigures | None) -> None:
        command = raw_command()
        image = Path(command[command.index("-D") + 1])
        bench.fresh_page_cache()
        with bench.warm_memory(warm, (image / "dump.log").exists):
            since = ticks.offset()
            start = time.monotonic()
            seconds, proc = run_raw_like_hook(bench, job_user_prefix(bench.user, DUMP_CAPS) + command)
            end = time.monotonic()
        if proc.returncode != 0:
            raise RuntimeError(f"raw criu dump failed (exit {proc.returncode}): {proc.stderr[-300:]}")
        started = time.perf_counter()
        fsync_tree(image)
        synced = time.perf_counter() - started
        size = sum(p.stat().st_size for p in image.iterdir())
        raw_kept.append(image)  # the same retention as the hook's keep=2: the oldest goes once one is added
        while len(raw_kept) > KEEP:
            shutil.rmtree(raw_kept.pop(0))
        settle()
        if figures is None:
            return
        frozen = frozen_us(proc.stdout)
        figures.gap.add(ticks.max_gap(since, start, end))
        if frozen is not None:
            figures.frozen.add(frozen / 1e6)
        figures.wall.add(seconds)
        figures.dump.add(seconds)
        figures.durable.add(seconds + synced)
        figures.post.add(synced)
        figures.rate.add(size / MIB / seconds)
        figures.image.add(float(size))

    time.sleep(1)
    baseline_since = ticks.offset()
    time.sleep(1)
    idle = ticks.stamps(baseline_since)
    idle_gaps = [b - a for a, b in itertools.pairwise(idle)]
    via_hook(None)  # the first dump of a process is slower (CRIU.md point 6): not measured, either way
    via_raw(None)
    ours, theirs = DumpFigures(), DumpFigures()
    n = bench.reps(15, 2)
    say(f"[3/4] freeze and wall time, {label} job: {n} alternations of the hook / raw criu dump")
    for i in alternate(n, lambda: via_hook(ours), lambda: via_raw(theirs)):
        say(
            f"  {i + 1}/{n}: frozen {ms(ours.frozen.values[-1])} / {ms(theirs.frozen.values[-1])} ms, "
            f"criu {sec(ours.dump.values[-1])} / {sec(theirs.dump.values[-1])} s, "
            f"post-dump {sec(ours.post.values[-1])} / {sec(theirs.post.values[-1])} s"
        )
    _, manifest = newest_manifest(site, job.job_id)
    command = " ".join(manifest["backend"]["command"])
    bench.rows += [
        Row("3", f"freeze seen by the app (largest gap between its ticks), {label} (ms): hook vs raw criu",
            ours.gap, theirs.gap, ms, target="ratio <= 1.05", limit=1.05),
        Row("3", f"CRIU's Frozen time (--display-stats), {label} (ms): hook vs raw criu dump",
            ours.frozen, theirs.frozen, ms, target="ratio <= 1.05", limit=1.05),
        Row("4", f"checkpoint wall time, {label} (s): whole hook call vs raw criu dump",
            ours.wall, theirs.dump, sec),
        Row("4", f"until the image is on disk, {label} (s): whole hook call vs criu dump + fsync",
            ours.durable, theirs.durable, sec, target="ratio <= 1.25", limit=1.25),
        Row("4", f"dump throughput, {label} (MiB/s, image / criu's run): in the hook vs raw",
            ours.rate, theirs.rate, num, higher_is_better=True),
        Row("4", f"post-dump work, {label} (s): hash + fsync + manifest + publish vs fsync alone",
            ours.post, theirs.post, sec),
    ]  # fmt: skip
    lines = [
        f"**{label} job** (image {ours.image.median / MIB:.0f} MiB; the ticker writes a line every 2 ms: "
        f"idle, its largest gap in one second was {ms(max(idle_gaps))} ms, median "
        f"{ms(statistics.median(idle_gaps))} "
        f"ms). {n} alternations after one unmeasured dump each. criu's command line, the same for both "
        f"(job-user mode, setpriv prefix): `{command}` (raw: another -D).",
        "",
        "| figure | hook: median (min-max) | raw criu: median (min-max) |",
        "|---|---|---|",
    ]
    for name, a, b, fmt in [
        ("largest gap between ticks (ms)", ours.gap, theirs.gap, ms),
        ("CRIU Frozen time (ms)", ours.frozen, theirs.frozen, ms),
        ("criu's own run (s)", ours.dump, theirs.dump, sec),
        ("whole call (s)", ours.wall, theirs.wall, sec),
        ("after the job runs again (s): hook post_dump_s / raw fsync", ours.post, theirs.post, sec),
        ("until on disk (s)", ours.durable, theirs.durable, sec),
        ("MiB/s through criu", ours.rate, theirs.rate, num),
        ("outside the manifest's total_s (s): start-up, imports, config, pointer, prune, exit", ours.outside,
         Series(), sec),
        ("share of the image hashed while criu wrote it (%)", ours.followed, Series(), num),
    ]:  # fmt: skip
        other = f"{fmt(b.median)} ({fmt(b.lo)}-{fmt(b.hi)})" if b.values else "-"
        lines.append(f"| {name} | {fmt(a.median)} ({fmt(a.lo)}-{fmt(a.hi)}) | {other} |")
    lines += ["", *memory_of_hook(bench, site, job, label, ours.image.median), ""]
    ratio = ours.frozen.median / theirs.frozen.median
    bench.notes.append(
        f"{label} job (rows 3, 4): frozen {ms(ours.frozen.median)} ms in the hook against "
        f"{ms(theirs.frozen.median)} ms for raw criu (ratio {ratio:.2f}); the application saw "
        f"{ms(ours.gap.median)} against {ms(theirs.gap.median)} ms. While the job is frozen the hook only "
        "imports what its work after the dump uses (on one core; section 1 times it), asks the "
        "checkpointer's version (`criu --version`, in a thread) and hashes the pages files as criu "
        f"appends to them (a thread; {ours.followed.median:.0f} % of the image by the dump's end); "
        f"after it runs again it spends {sec(ours.post.median)} s hashing the rest, fsyncing "
        f"(overlapped) and publishing (raw criu's fsync alone: {sec(theirs.post.median)} s), and "
        f"{sec(ours.outside.median)} s starting, importing and pruning."
    )
    job.stop()
    for generation in site.generations(job.job_id):
        shutil.rmtree(generation.parent, ignore_errors=True)
    for image in raw_kept:
        shutil.rmtree(image, ignore_errors=True)
    settle()
    return lines


def memory_of_hook(bench: Bench, site: Site, job: Job, label: str, image: float) -> list[str]:
    """The hook's own peak RSS while it checkpoints this job (phases.TIMED_CALL, a copy of the installed
    script, reports getrusage(RUSAGE_SELF) at the end; RUSAGE_CHILDREN is its largest child, setpriv/criu)."""
    own, child = Series(), Series()
    for _ in range(bench.reps(3, 1)):
        call = timed_call(site, job)
        settle()
        own.add(call.maxrss_self)
        child.add(call.maxrss_children)
    bench.rows.append(
        Row("7", f"the hook's own peak RSS checkpointing the {label} job (MiB), against the image's size",
            own, Series([image]), lambda v: f"{v / MIB:.0f}", "far below the image", None)
    )  # fmt: skip
    return [
        f"The hook's own peak RSS while checkpointing the {label} job: {own.median / MIB:.1f} MiB "
        f"(image {image / MIB:.0f} MiB; its largest child, criu, peaked at {child.median / MIB:.0f} MiB): "
        "images are hashed in 256 KiB reads, never held in memory."
    ]


FAMILY = Family(
    name="freeze",
    run=run,
    title="3 and 4. Freeze, wall time, throughput, post-dump work; the hook's memory",
    intro=(
        "The job runs tests/apps/ticker.py, which writes CLOCK_MONOTONIC every 2 ms; the largest gap "
        "between two of its lines around a dump is the freeze as the application saw it. CRIU's own "
        "`Frozen time` comes from `--display-stats` (the hook's manifest, raw criu's stdout). The hook's "
        "figures come from its manifest (`times.dump_s`, `times.post_dump_s`) and the outside timer "
        "(whole call); raw criu's image is then fsync'd file by file, timed, for the 'on disk' figure.",
    ),
)
