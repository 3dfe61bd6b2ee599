"""Row 9: the copy to the vault must cost the checkpoint nothing; and how fast it copies."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from mom_checkpoint.vault.chunks import CHUNKS
from mom_checkpoint.vault.index import INDEX
from tests.helpers import MOM_ENV, Site

from .core import (
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
    loop_ext4,
    ms,
    newest_manifest,
    num,
    packaged,
    say,
    sec,
    settle,
    size_label,
)

VAULT_IMAGES = 8  # the loop-mounted vault's size, in images
# The copy's cost is measured, not the vault's quota: without vault_quota_gib a user may hold a quarter of
# the vault, two of these images; set above the vault's size, it sets no limit (README, vault_quota_gib).
REFUSED = ("vault.over_quota", "vault.copy_failed", "vault.sync_failed", "vault.sync_crashed")


def run(bench: Bench) -> None:
    """The freeze the application sees and the hook's whole call with a vault against without one
    (alternating, the copy of the previous call finished before the next starts), and the copier's
    throughput on a first copy (the job's folder and its owner's chunks removed from the vault first:
    every chunk new) against cp + sync of the same image to the same vault (a loop-mounted ext4 on this
    machine's disk: a file system of its own), cp at the copier's own priority (nice 10, idle I/O
    class), while the job runs on."""
    site = bench.site("vault")
    mib = 256
    with loop_ext4(site.base / "vault", mib * VAULT_IMAGES) as vault:
        vault_rows(bench, site, vault, mib)


def vault_rows(bench: Bench, site: Site, vault: Path, mib: int) -> None:
    label = size_label(mib)
    # the dirtier, not the ticker: its memory is random bytes, so that the vault's chunks are all
    # different (the ticker's one KiB repeated is one chunk, and a first copy would write a few MiB)
    job = bench.start_dirtier(site, f"{mib}.vault", mib)
    ticks = TickLog(job.output)
    hook = packaged("mom-checkpoint")
    keys: dict[str, Any] = {
        "keep": KEEP,
        "backends.criu.run_as": "job-user",
        "vault_quota_gib": 2 * mib * VAULT_IMAGES / 1024,
    }
    gap_on, gap_off, call_on, call_off = Series(), Series(), Series(), Series()
    copier, synced, cp_sync = Series(), Series(), Series()
    last_sync: dict[str, Any] = {}  # the last vault-sync's vault.copied event

    warm = int(mib * MIB * 1.25)

    def hook_started() -> bool:
        return any(site.spool.glob(f"*.{job.job_id}/.incoming-*/image/*"))  # CRIU has begun writing

    def refusals_so_far() -> list[dict[str, Any]]:
        return [e for e in site.log_events() if e.get("event") in REFUSED]

    refusals = 0

    def refused() -> None:
        """A copy the vault refused (or that failed) never comes: say why, rather than wait for it."""
        if len(found := refusals_so_far()) > refusals:
            raise RuntimeError(f"the copy to the vault did not happen: {found[-1]['event']}: {found[-1]}")

    def checkpoint(with_vault: bool, gap: Series | None, wall: Series | None) -> None:
        nonlocal refusals
        site.configure(**keys, **({"vault_dir": str(vault)} if with_vault else {}))
        copies = len(events(site, "vault.copied"))
        refusals = len(refusals_so_far())
        bench.fresh_page_cache()  # as for the freeze rows: the same start for every dump
        with bench.warm_memory(warm, hook_started):
            since = ticks.offset()
            start = time.monotonic()
            call = check(as_pbs_mom(hook, site.torque_args(job), site.config), "mom-checkpoint")
            end = time.monotonic()
        if with_vault:  # the copy runs after the call: wait for it, untimed, before anything else runs
            deadline = time.monotonic() + 600
            while len(done := events(site, "vault.copied")) == copies:
                refused()
                if time.monotonic() > deadline:
                    raise RuntimeError("the copy to the vault did not finish in 10 minutes")
                time.sleep(0.1)
            copier.add(float(done[-1]["mib_s"]))
        settle()
        if gap is not None and wall is not None:
            gap.add(ticks.max_gap(since, start, end))
            wall.add(call.seconds)

    def vault_sync() -> None:
        """vault-sync of the newest generation as the timer runs it, a first copy, from the same start
        as cp: its own figure for the copy (links, read, hash, cut, compress, write, fsync, publish; not
        Python's start-up, the locks, or the pruning of older copies after it, as cp's target is
        removed untimed). The job's copies and its owner's chunk store are removed first: every chunk is
        new, as on the job's first copy (with the chunks of an earlier copy in the vault, a copy writes
        what changed alone: the incremental family's rows). The generation is one the hook made with
        the vault, its chunks recorded as it sealed it, as every generation of a node with a vault is:
        where the newest is the call without a vault's, one more call with it is made first, untimed
        (a generation without the record is copied at the speed of row 10's "without them")."""
        generation, _ = newest_manifest(site, job.job_id)
        if not (generation / INDEX).exists():
            checkpoint(True, None, None)
        for copy in vault.glob(f"*.{job.job_id}"):
            shutil.rmtree(copy)  # the hook's copier's copies: the vault holds nothing of the job now
        shutil.rmtree(vault / CHUNKS, ignore_errors=True)
        site.configure(**keys, vault_dir=str(vault))
        copies = len(events(site, "vault.copied"))
        bench.fresh_page_cache()
        done = subprocess.run(
            [str(hook), "vault-sync", "--job", job.job_id],
            env={**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(site.config)}, capture_output=True, text=True,
            check=False,
        )  # fmt: skip
        copied = events(site, "vault.copied")
        if done.returncode != 0 or len(copied) == copies:
            raise RuntimeError(f"vault-sync did not copy: {done.stdout}{done.stderr}")
        if copied[-1]["sealed"] is not True:
            raise RuntimeError(f"the copy did not take the chunks the hook recorded: {copied[-1]}")
        last_sync.update(copied[-1])
        synced.add(float(copied[-1]["mib_s"]))  # the copy: not the locks, not the pruning after it
        settle()

    def cp_and_sync() -> None:
        generation, _ = newest_manifest(site, job.job_id)
        target = vault / f"cp-{time.monotonic_ns()}"
        size = sum(p.stat().st_size for p in (generation / "image").iterdir())
        bench.fresh_page_cache()  # the copier too starts with the image out of the page cache
        start = time.monotonic()
        low = ["/usr/bin/nice", "-n", "10", "/usr/bin/ionice", "-c", "3"]  # as low as the copier runs
        subprocess.run([*low, "/bin/cp", "-r", str(generation / "image"), str(target)], check=True)
        subprocess.run([*low, "/bin/sync", "-f", str(target)], check=True)
        cp_sync.add(size / MIB / (time.monotonic() - start))
        shutil.rmtree(target)
        settle()

    checkpoint(True, None, None)  # the first dump of a process is slower: not measured
    n = bench.reps(8, 2)
    say(f"[9] the vault, {label} job: {n} alternations of the hook with / without a vault, and cp + sync")
    with_vault = lambda: checkpoint(True, gap_on, call_on)  # noqa: E731
    without = lambda: checkpoint(False, gap_off, call_off)  # noqa: E731
    for i in alternate(n, with_vault, without, vault_sync, cp_and_sync):
        say(f"  {i + 1}/{n}: call {sec(call_on.values[-1])} / {sec(call_off.values[-1])} s, copy after "
            f"the checkpoint {num(copier.values[-1])} MiB/s, vault-sync {num(synced.values[-1])} MiB/s "
            f"({last_sync['new_chunks']} of {last_sync['chunks']} chunks new, "
            f"{num(last_sync['sent_bytes'] / MIB)} MiB written), "
            f"cp + sync {num(cp_sync.values[-1])} MiB/s")  # fmt: skip
    bench.rows += [
        Row("9", f"freeze seen by the app, {label} (ms): with a vault vs without", gap_on, gap_off, ms,
            target="ratio <= 1.02", limit=1.02),
        Row("9", f"the hook's whole call, {label} (s): with a vault vs without (the copy is not in it)",
            call_on, call_off, sec, target="ratio <= 1.02", limit=1.02),
        Row("9", f"first copy into the vault (ext4 on a loop device; the job's copies and its owner's chunks "
            f"removed before each: every chunk new; a generation the hook made with the vault), {label} "
            "(MiB/s): vault-sync vs cp + sync, both at nice 10 in the idle I/O class, from a dropped page "
            "cache",
            synced, cp_sync, num, target="ratio >= 0.9", limit=0.9, higher_is_better=True),
        Row("9", "the hook's own copier, right after each checkpoint (MiB/s of the image; the job's memory "
            "unchanged since the last copy, whose chunks are in the vault: the small files are new; the "
            "job runs, the pruned generation's blocks are being freed)", Series(copier.values[1:]), None,
            num),
    ]  # fmt: skip
    job.stop()
    for generation in site.generations(job.job_id):
        shutil.rmtree(generation.parent, ignore_errors=True)


FAMILY = Family(name="vault", run=run)
