"""Row 1: the hook's call against the seed's shell script on a stand-in chkpnt, and where its time goes."""

from __future__ import annotations

import platform

from tests.helpers import Job, Site

from .core import (
    SEED_CHKPNT,
    SEED_SCRIPT,
    SEED_SPOOL,
    Bench,
    Family,
    Row,
    Series,
    alternate,
    as_pbs_mom,
    check,
    cost_ms,
    ms,
    packaged,
    process_count,
    python,
    say,
)
from .imports import IMPORT_CASES, hook_records, import_costs, import_groups
from .phases import Breakdown, step_label, timed_call


def run(bench: Bench) -> None:
    site = bench.site("overhead")
    chkpnt = site.standin("chkpnt", STANDIN_IMAGE_BYTES="1024")
    site.configure(backend="psnc", keep=2, **{"backends.psnc.chkpnt": str(chkpnt)})
    seed_spool = site.base / "seed-spool"
    seed_spool.mkdir(mode=0o755)
    seed = site.base / "mom-checkpoint.sh"
    seed.write_text(SEED_SCRIPT.replace(SEED_CHKPNT, str(chkpnt)).replace(SEED_SPOOL, str(seed_spool)))
    seed.chmod(0o755)
    job = site.start_job("1.head")
    hook = packaged("mom-checkpoint")
    seed_image = seed_spool / f"{job.exec_pid()}.job_id" / f"ckpt.{job.exec_pid()}"
    alone = site.base / "alone"

    def run_hook() -> float:
        return check(as_pbs_mom(hook, site.torque_args(job), site.config), "mom-checkpoint").seconds

    def run_seed() -> float:
        call = check(as_pbs_mom(seed, site.torque_args(job), site.config), "the seed's script")
        if not seed_image.exists():
            raise RuntimeError(f"the seed's script left no image at {seed_image}")
        return call.seconds

    def run_alone() -> float:
        argv = [str(chkpnt), "-q", "-p", str(job.exec_pid()), "-od", str(alone)]
        return check(as_pbs_mom(" ".join(argv), [], site.config), "the stand-in").seconds

    for warm_up in (run_hook, run_seed, run_alone):  # page cache, .pyc files
        warm_up()
    a, b, c = Series(), Series(), Series()
    n = bench.reps(15, 5)
    say(f"[1] hook overhead: {n} alternations of mom-checkpoint / seed script / stand-in alone")
    for _ in alternate(n, lambda: a.add(run_hook()), lambda: b.add(run_seed()), lambda: c.add(run_alone())):
        pass
    bench.rows.append(
        Row("1", "checkpoint call, psnc stand-in chkpnt (ms): mom-checkpoint vs the seed's script", a, b, ms,
            target="ratio <= 3 (idle node)", limit=3.0)
    )  # fmt: skip
    bench.rows.append(Row("1", "of which the stand-in chkpnt alone (ms)", c, None, ms))
    busy_hook, busy_seed = Series(), Series()
    try:  # a busy node: the seed's ps -ef | grep reads every process, the hook walks the job's tree
        count = bench.grow_processes(process_count() + 2000)
        say(f"[1] hook overhead among {count:,} processes: {n} alternations of mom-checkpoint / seed script")
        for _ in alternate(n, lambda: busy_hook.add(run_hook()), lambda: busy_seed.add(run_seed())):
            pass
    finally:
        bench.stop_sleepers()
    bench.rows.append(
        Row("1", f"the same among {count:,} processes (2,000 more) (ms): mom-checkpoint vs the seed's script",
            busy_hook, busy_seed, ms, target="ratio <= 1.0", limit=1.0)
    )  # fmt: skip
    bench.sections["overhead"] = breakdown(bench, site, job, hook=a, seed=b, alone=c)


def breakdown(bench: Bench, site: Site, job: Job, *, hook: Series, seed: Series, alone: Series) -> list[str]:
    """Where the hook's time goes: interpreter start, imports (by package), and each step of the call
    from the hook's own record of it."""
    interpreter = python()
    n = bench.reps(9, 3)
    start_site, start_bare = Series(), Series()
    for _ in range(n):
        start_site.add(check(as_pbs_mom(f"{interpreter} -c pass", [], site.config), "python").seconds)
        start_bare.add(
            check(as_pbs_mom(f"{interpreter} -I -S -c pass", [], site.config), "python -I -S").seconds
        )
    calls = Breakdown([timed_call(site, job) for _ in range(n)])
    groups = import_groups(site, job, interpreter, bench.reps(5, 2))
    without = import_costs(interpreter, n)

    imports = calls.median("imports_s")
    after_dump = calls.median("after_dump_imports_s")
    main = calls.median("main_s")
    before = calls.median("before_s")
    between = calls.median("between_s")
    after = calls.median("after_s")
    steps = calls.steps()
    fsync = calls.median("fsync_s")
    fsyncs = int(calls.median("fsync_calls"))
    total = hook.median
    interp = start_bare.median  # as the packages start the hook: python -I -S
    rest = max(0.0, total - interp - imports - main)

    def share(value: float) -> str:
        return f"{100 * value / total:.0f} %"

    lines = [
        f"One call of the hook takes {ms(hook.median)} ms (median of {len(hook.values)}), the seed's script "
        f"{ms(seed.median)} ms, the stand-in chkpnt alone {ms(alone.median)} ms (it is a Python script too). "
        f"Medians of {n} further calls: main()'s steps as the hook records them itself (the `steps` of the "
        "`checkpoint.done` event in its log, and its `total_s`), the imports and main() as a whole timed "
        "around them by a copy of the installed script (which patches nothing of the package: it times its "
        "imports and its call of the public main()). Every program is started as the deb and rpm packages "
        "start it: `python3 -I -S`, the libraries' folder first on the path (no site, no .pth files):",
        "",
        "| phase | ms | share of the call |",
        "|---|---|---|",
        f"| interpreter start and exit (`python -I -S -c pass`) | {ms(interp)} | {share(interp)} |",
        f"| imports of the hook's modules and libraries (before main()) | {ms(imports)} | {share(imports)} |",
        f"| (imports of what only the work after the dump uses: in a call, while the checkpointer runs, so "
        f"within its step; timed apart here) | ({ms(after_dump)}) | - |",
        f"| main() before its first step: the call's arguments, the config read, the log opened (structlog "
        f"imported) | {ms(before)} | {share(before)} |",
    ]
    for name, value in steps.items():
        lines.append(f"| main(), step {step_label(name)} | {ms(value)} | {share(value)} |")
    lines += [
        f"| main(), in no step (the incoming folder begun, the locks released) "
        f"| {ms(between)} | {share(between)} |",
        f"| main() after the record (its line written, the pruned generations' removal started, the summary "
        f"line) "
        f"| {ms(after)} | {share(after)} |",
        f"| /bin/sh, fork/exec, what the outside timer sees beyond these | {ms(rest)} | {share(rest)} |",
        "",
        f"Of main(), {fsyncs} fsync calls took {ms(fsync)} ms (inside the steps above). A start with site "
        f"and the development venv's .pth files (`python -c pass`, {ms(start_site.median)} ms) would add "
        f"{ms(max(0.0, start_site.median - interp))} ms.",
        "",
        "Imports by who pulled them in (`python -X importtime` of the real call, self times summed over the "
        f"import tree and attributed to the outermost library that asked; median of {bench.reps(5, 2)}; "
        "importtime itself inflates them somewhat):",
        "",
        "| imported for | ms |",
        "|---|---|",
    ]
    lines += [f"| {name} | {value / 1000:.1f} |" for name, value in groups]
    base, full, no_structlog, no_filelock, libraries = (without[key].median for key in IMPORT_CASES)
    records, structs, dataclasses = hook_records(interpreter)
    floor = libraries + alone.median
    budget = (
        f"A call within 3x the seed's leaves {ms(3 * seed.median - floor)} ms beyond it."
        if 3 * seed.median > floor
        else f"3x the seed's call ({ms(3 * seed.median)} ms) is below that floor."
    )
    lines += [
        "",
        f'The same as whole interpreter runs (`python -c "import ..."` of the modules main() imports, median '
        f"of {n}, alternating): `pass` {ms(base)} ms; the hook's modules {ms(full)} ms; without structlog "
        f"{ms(no_structlog)} ms; without structlog and with filelock replaced by an empty module "
        f"{ms(no_filelock)} ms. So structlog (its package, the console extras held out) costs "
        f"{cost_ms(full - no_structlog)} of every call; without it, filelock costs "
        f"a further {ms(no_structlog - no_filelock)} ms; and everything else the hook imports (its own "
        f"modules, the standard library, psutil) {ms(no_filelock - base)} ms.",
        "",
        f"The floor: an interpreter that imports only the three libraries of the design card (psutil, "
        f"filelock, and structlog as the hook imports it) and nothing of mom-checkpoint takes "
        f"{ms(libraries)} ms (one that imports nothing: {ms(base)} ms); with the stand-in chkpnt alone "
        f"({ms(alone.median)} ms) that is {ms(floor)} ms, {floor / seed.median:.1f}x the seed's whole call, "
        f"before any of mom-checkpoint's own work. {budget} mom-checkpoint's own modules (and msgspec, "
        f"which makes their records) add {ms(full - libraries)} ms of imports to the libraries', and "
        "main()'s work the steps above.",
        "",
        f"Its {records} record classes are msgspec Structs: made here, side by side in one interpreter, "
        f"they take {ms(structs)} ms as Structs and {ms(dataclasses)} ms as dataclasses (Python "
        f"{platform.python_version()} compiles every generated method of a dataclass apart).",
    ]
    dump = steps.get("dump", 0.0)
    bench.notes.append(
        f"Hook overhead (row 1): a call costs {ms(total)} ms against the seed's script's "
        f"{ms(seed.median)} ms on the same stand-in. Interpreter start is {ms(interp)} ms and imports "
        f"{ms(imports)} ms ({100 * imports / total:.0f} % of the call, structlog's import, in opening "
        f"the log, apart): structlog (its package, the console extras held out) costs "
        f"{cost_ms(full - no_structlog)}, and filelock {ms(no_structlog - no_filelock)} ms. "
        f"Before its first step main() takes {ms(before)} ms (the config read, the log opened), its dump "
        f"step (the stand-in chkpnt) {ms(dump)} ms, and the rest of its work {ms(main - before - dump)} ms."
    )
    return lines


FAMILY = Family(
    name="overhead",
    run=run,
    title="1. Hook overhead, and where its time goes",
    intro=(
        "The seed's script (section 5 of its guide) is run exactly as published, including the literal "
        f"`job_id` in its folder name, with two paths changed: `{SEED_CHKPNT}` is the same stand-in "
        f"chkpnt the hook uses (tests/standins/chkpnt, 1 KiB of padding), and `{SEED_SPOOL}` a folder "
        "of the benchmark's. The hook runs with the psnc backend on that stand-in, the 8 TORQUE "
        "arguments and keep=2, so each call also publishes, points and prunes.",
    ),
)
