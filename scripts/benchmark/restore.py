"""Row 5: restore until the application runs again: mom-restart --job against raw criu restore, with the
image in the page cache and read from disk; in a namespace of the job's own against without one; and a
checkpoint of a job restored into one against one of a job never restored (issue 28)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import psutil

from mom_checkpoint.platform.environment import child_environ  # the checkpointer's own environment
from tests.helpers import Job, Site, start_restart, without_namespaces

from .core import (
    MIB,
    RESTORE_CAPS,
    Bench,
    Family,
    Row,
    Series,
    alternate,
    as_pbs_mom,
    check,
    events,
    job_user_prefix,
    kill_tree,
    newest_manifest,
    packaged,
    pids_gone,
    qhold,
    raw_log,
    say,
    sec,
    settle,
    size_label,
)

IMAGE_FD = 200  # where a raw restore finds the generation's image folder (as mom-restart's -D does)
IMAGE_FD_PATH = f"/proc/self/fd/{IMAGE_FD}"


def run(bench: Bench) -> None:
    site = bench.site("restore")
    site.configure(keep=2, **{"backends.criu.run_as": "job-user"})
    sizes = (256,) if bench.options.quick else (256, 1024)
    lines = [
        "The job is checkpointed once by the hook with SIGNAL 15 (CRIU ends it), its session is killed and "
        "its PIDs are waited for until they are free. Then, alternately: `mom-restart --job ID` started the "
        "way pbs_mom starts it (fork, setsid, execv, stdio on /dev/null; it checks every digest, the page "
        "files' while CRIU restores the job stopped), "
        "and the raw `criu restore` command line that mom-restart ran (its log's `restart.running` event), "
        "with the same setpriv prefix, `--inherit-fd` of the output file opened in append mode, in a new "
        "session. Timed from the start until the application's output grows; after each, the restored "
        "processes are killed and their PIDs waited for. Warm: the image in the page cache, as right "
        "after a checkpoint; cold: the page cache dropped before each run of either (the programs read "
        "back), so the image is read from disk.",
        "",
    ]
    for mib in sizes:
        lines += restore_one(bench, site, mib)
    lines += checkpoint_of_a_restored_job(bench, site, 256)
    bench.sections["restore"] = lines


def restore_one(bench: Bench, site: Site, mib: int) -> list[str]:
    label = size_label(mib)
    job = bench.start_app(site, f"{mib}.restore", mib)
    qhold(site, job)
    generation, manifest = newest_manifest(site, job.job_id)
    pids = [int(p["pid"]) for p in manifest["processes"]]
    pids_gone(pids)
    settle()
    counter = iter(range(1_000_000))

    def wait_output(size: int, proc: subprocess.Popen[bytes], what: str) -> None:
        deadline = time.monotonic() + 120
        while job.output.stat().st_size <= size:
            status = proc.poll()
            if (status is not None and status != 0) or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"{what}: the application did not run again (exit {status}): {err[-300:]}")
            time.sleep(0.001)

    phases: dict[str, Series] = {}

    warm = int(manifest["total_bytes"] * 1.25)

    launched = time.time()

    def restart_started() -> bool:
        """mom-restart's work folder (<spool>/.restarts/*/restorer/) is there, made for this restart
        (criu logs into a pipe of mom-restart's: its folder is the first trace it leaves)."""
        for folder in site.spool.glob(".restarts/*/restorer"):
            with contextlib.suppress(FileNotFoundError):  # an ended restart's, removed meanwhile
                if folder.stat().st_mtime >= launched - 1:
                    return True
        return False

    without = site.base / "config-without-namespaces.toml"  # the same site, pid_namespace = false
    site.configure(keep=2, **without_namespaces())
    shutil.copyfile(site.config, without)
    site.configure(keep=2, **{"backends.criu.run_as": "job-user"})

    def via_mom_restart(cold: bool = False, config: Path = site.config) -> float:
        nonlocal launched
        pids_gone(pids)
        if cold:
            bench.fresh_page_cache()
        with bench.warm_memory(warm, restart_started):
            size = job.output.stat().st_size
            launched = time.time()
            started = time.perf_counter()
            with open(job.output, "ab") as out:  # the seed's --job: the application writes into our stdout
                proc = start_restart(
                    ["--job", job.job_id], config, stdout=out, program=packaged("mom-restart")
                )
            wait_output(size, proc, "mom-restart")
            seconds = time.perf_counter() - started
        end_restart(proc, pids if config == without else [])
        when: dict[str, float] = {}  # this run's events (restart.running names the restored pid, not ours)
        for event in site.log_events():
            stamp = datetime.fromisoformat(event["timestamp"]).timestamp() if "timestamp" in event else 0.0
            if stamp >= launched and event.get("event", "").startswith("restart."):
                when.setdefault(event["event"], stamp)
        marks = [
            ("start-up, imports, config, finding the generation", launched, when.get("restart.newest")),
            ("checks before CRIU (ownership, manifest, staging, the small files' digests)",
             when.get("restart.newest"), when.get("restart.start")),
            ("criu restore (the page files hashed alongside), until the application's output grows",
             when.get("restart.start"), launched + seconds),
            ("of which the page files' digests, from CRIU's start", when.get("restart.start"),
             when.get("restart.verified")),
        ]  # fmt: skip
        for name, begin, end in marks if not cold else []:
            if begin is not None and end is not None:
                phases.setdefault(name, Series()).add(end - begin)
        return seconds

    def raw_command() -> list[str]:
        """mom-restart's criu command line, reading the generation's image folder itself (mom-restart
        reads root's staged copy through a descriptor), without its --inherit-fd pairs (via_raw hands
        over the same files) and without --leave-stopped."""
        running = events(site, "restart.running")
        words = raw_log([str(word) for word in running[-1]["command"]], "restore.log")
        words[words.index("-D") + 1] = IMAGE_FD_PATH  # the generation's image folder, handed over
        plain: list[str] = []
        for word in words:
            if plain and plain[-1] == "--inherit-fd":
                plain.pop()
                continue
            if word != "--leave-stopped":  # mom-restart's identity gate; raw criu lets the job run
                plain.append(word)
        return plain

    def handed_over(workdir: Path) -> tuple[list[str], list[int]]:
        """What mom-restart hands the restored job, done by hand: the output file in append mode, and
        each kept file the job held as the user's own copy, under the name the dump gave it."""
        fds = [os.open(job.output, os.O_WRONLY | os.O_APPEND)]
        args = ["--inherit-fd", f"fd[{fds[0]}]:{str(job.output).lstrip('/')}"]
        for kept in manifest.get("kept", []):
            if kept["role"] != "held" or not kept.get("external"):
                continue
            copy = workdir / Path(kept["copy"]).name
            shutil.copyfile(generation / kept["copy"], copy)
            os.chown(copy, bench.user.uid, bench.user.gid)
            copy.chmod(kept["mode"] or 0o400)
            fds.append(os.open(copy, os.O_RDONLY))
            args += ["--inherit-fd", f"fd[{fds[-1]}]:{kept['external']}"]
        return args, fds

    def via_raw(cold: bool = False) -> float:
        pids_gone(pids)
        if cold:
            bench.fresh_page_cache()
        workdir = bench.user_dir(site.base / f"restore-work-{mib}-{next(counter)}")
        command = raw_command()
        command[command.index("--work-dir") + 1] = str(workdir)
        inherit, fds = handed_over(workdir)
        command += inherit
        # the generation's image folder as mom-restart hands its staged copy over: by a descriptor
        # (the spool's folders are root's 0700), at the number the command names
        image_fd = os.open(generation / "image", os.O_RDONLY | os.O_DIRECTORY)
        os.dup2(image_fd, IMAGE_FD)
        os.close(image_fd)
        fds.append(IMAGE_FD)
        try:
            with bench.warm_memory(warm, (workdir / "restore.log").exists):
                size = job.output.stat().st_size
                started = time.perf_counter()
                proc = subprocess.Popen(
                    job_user_prefix(bench.user, RESTORE_CAPS) + command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=child_environ(),
                    cwd="/",
                    umask=0o077,
                    start_new_session=True,
                    pass_fds=fds,
                )
                wait_output(size, proc, "criu restore")
                seconds = time.perf_counter() - started
            _, err = proc.communicate(timeout=120)
        finally:
            for fd in fds:
                os.close(fd)
        if proc.returncode != 0:
            raise RuntimeError(
                f"criu restore failed (exit {proc.returncode}): {err.decode(errors='replace')[-300:]}"
            )
        kill_tree(pids)
        pids_gone(pids)
        shutil.rmtree(workdir, ignore_errors=True)
        return seconds

    via_mom_restart()  # unmeasured: page cache, and the command line for the raw contender
    via_raw()
    n = bench.reps(7, 2)
    say(f"[5] restore, {label} job: {n} alternations of mom-restart / raw criu restore, warm and cold, "
        "and of mom-restart without a namespace")  # fmt: skip
    a, b, c, d, e = Series(), Series(), Series(), Series(), Series()
    for i in alternate(
        n,
        lambda: a.add(via_mom_restart()),
        lambda: b.add(via_raw()),
        lambda: c.add(via_mom_restart(cold=True)),
        lambda: d.add(via_raw(cold=True)),
        lambda: e.add(via_mom_restart(config=without)),
    ):
        say(f"  {i + 1}/{n}: warm {sec(a.values[-1])} / {sec(b.values[-1])} s, cold {sec(c.values[-1])} / "
            f"{sec(d.values[-1])} s, without a namespace {sec(e.values[-1])} s")  # fmt: skip
    bench.rows += [
        Row("5", f"restore until the app runs again, {label} (s): mom-restart --job vs raw criu restore",
            a, b, sec, target="ratio <= 1.10", limit=1.10),
        Row("5", f"the same from a dropped page cache (the image read from disk), {label} (s)",
            c, d, sec, target="ratio <= 1.10", limit=1.10),
        Row("5", f"restore until the app runs again, {label} (s): in a namespace of the job's own vs "
            "without (pid_namespace = false)", a, e, sec, target="ratio <= 1.05", limit=1.05),
    ]  # fmt: skip
    shutil.rmtree(generation.parent, ignore_errors=True)
    split = "; ".join(f"{name} {sec(series.median)} s" for name, series in phases.items())
    say(f"  mom-restart's time (warm): {split}")
    bench.notes.append(
        f"Restore, {label} (row 5): mom-restart {sec(a.median)} s against raw criu's {sec(b.median)} s: "
        f"{split}."
    )
    return [
        f"- {label} (image {manifest['total_bytes'] / MIB:.0f} MiB): mom-restart {sec(a.median)} s, raw criu "
        f"restore {sec(b.median)} s. mom-restart's time, from its log's timestamps (medians): {split}. "
        f"criu's command: `{' '.join(raw_command())}`."
    ]


def end_restart(proc: subprocess.Popen[bytes], on_the_node: list[int]) -> None:
    """End a restore as pbs_mom's SIGKILL ends a job: mom-restart killed, and with it the namespace it
    made (its holder exits, the kernel kills what is inside); a job restored without one, on the
    node's PIDs (``on_the_node``), is killed by them."""
    try:
        below = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        below = []
    proc.kill()
    proc.wait(timeout=60)
    kill_tree(on_the_node)
    pids_gone([*below, *on_the_node])


def checkpoint_of_a_restored_job(bench: Bench, site: Site, mib: int) -> list[str]:
    """Issue 28 #9: the hook's periodic checkpoint (SIGNAL 0) of a job restored into a namespace of its
    own (found through its restart, dumped from inside) against one of a job never restored, of the
    same size, alternately."""
    label = size_label(mib)
    never = bench.start_app(site, f"{mib}.never", mib)
    moved = bench.start_app(site, f"{mib}.moved", mib)
    hold = site.torque_args(moved, signal_number=15)
    check(as_pbs_mom(packaged("mom-checkpoint"), hold, site.config), "qhold")
    leftovers = [p.pid for p in moved.processes(zombies=True)]
    moved.stop()
    pids_gone(leftovers)
    name = site.user.name
    size = moved.output.stat().st_size
    restart = start_restart(
        [moved.session_id, moved.job_id, name, name, hold[4], hold[5]],
        site.config,
        program=packaged("mom-restart"),
    )
    deadline = time.monotonic() + 120
    while moved.output.stat().st_size <= size:
        if restart.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the job was not restored (exit {restart.poll()})")
        time.sleep(0.01)

    def periodic(job: Job) -> float:
        return check(
            as_pbs_mom(packaged("mom-checkpoint"), site.torque_args(job), site.config), "checkpoint"
        ).seconds

    periodic(never)
    periodic(moved)
    n = bench.reps(9, 2)
    say(f"[5] checkpoint of a restored job, {label}: {n} alternations of never restored / restored")
    a, b = Series(), Series()
    for i in alternate(n, lambda: a.add(periodic(moved)), lambda: b.add(periodic(never))):
        say(f"  {i + 1}/{n}: restored {sec(a.values[-1])} s, never restored {sec(b.values[-1])} s")
    manifest = newest_manifest(site, moved.job_id)[1]
    assert manifest["job"]["found_via"] == "restart-record", manifest["job"]
    end_restart(restart, [])
    never.stop()
    bench.rows.append(
        Row("5", f"checkpoint call (SIGNAL 0), {label} (s): a job restored into a namespace of its own "
            "(dumped from inside it) vs one never restored", a, b, sec, target="ratio <= 1.05", limit=1.05)
    )  # fmt: skip
    return [
        f"- Checkpoint of a restored job, {label}: the hook's whole periodic call on a job restored into "
        f"a namespace of its own took {sec(a.median)} s against {sec(b.median)} s for a job of the same "
        "size never restored (the same call; the restored one is found through its restart record and "
        "CRIU runs in its namespaces)."
    ]


FAMILY = Family(name="restore", run=run, title="5. Restore time")
