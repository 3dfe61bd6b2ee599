"""Row 10 (issue 29 #10): the vault's chunks. A job that rewrote 5 % of its memory between two checkpoints:
what its second copy writes and costs against a first copy, its restore from the chunks against one from
a full copy (the vault's first layout), and what the codec does to floating-point images."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from mom_checkpoint.image.hashing import ImageFile
from mom_checkpoint.vault import chunking
from mom_checkpoint.vault.chunks import HEADER, RAW, Codec, digest_of, encode
from mom_checkpoint.vault.index import INDEX
from tests.helpers import APPS, MOM_ENV, Job, Site, start_restart

from .core import (
    MIB,
    Bench,
    Family,
    Row,
    Series,
    alternate,
    app_pid,
    as_pbs_mom,
    check,
    events,
    loop_ext4,
    newest_manifest,
    num,
    packaged,
    pids_gone,
    qhold,
    say,
    sec,
    settle,
    size_label,
    wait_line,
)
from .restore import end_restart

FRACTION = 0.05  # of the job's memory rewritten between its two checkpoints
RUNS = 8  # in that many contiguous runs
VAULT_IMAGES = 6  # the loop-mounted file system, in images: the vault of chunks, the full copy, cp's target
NUMPY_PATH = "MOM_BENCH_NUMPY_PATH"  # a folder holding numpy for the job's /usr/bin/python3 (PYTHONPATH)
FLOATS_C = APPS / "floats.c"
NATIVE = APPS / "native.py"
MB = 1e6


def run(bench: Bench) -> None:
    site = bench.site("incremental")
    mib = 256 if bench.options.quick else 1024
    lines: list[str] = []
    with loop_ext4(site.base / "vaults", mib * VAULT_IMAGES + 512) as mount:
        lines += copies_and_restores(bench, site, mount, mib)
    lines += codec(bench, site, mib)
    bench.sections["incremental"] = lines


# -- a, b, c: the second copy, and restores ------------------------------------------------------------------
def copies_and_restores(bench: Bench, site: Site, mount: Path, mib: int) -> list[str]:
    """The dirtier's two checkpoints by the hook (the second a qhold: CRIU ends the job); then, alternately,
    the second generation's vault-sync with the first's chunks in the vault, its vault-sync into an empty
    vault (a first copy, every chunk new) and cp + sync of its image; then, alternately, a restart of the
    job on a node that lost its spool from the vault of chunks and from a vault holding the same
    generation as a full copy."""
    label = size_label(mib)
    chunked = private_dir(mount / "chunked")  # a vault: the generations as chunks
    full = private_dir(mount / "full")  # another: the second generation as a full copy (first layout)
    first = private_dir(mount / ".first")  # hard links of the vault of chunks after the first copy
    hook = packaged("mom-checkpoint")
    keys: dict[str, Any] = {
        "keep": 2,
        "backends.criu.run_as": "job-user",
        "vault_quota_gib": 2 * (mib * VAULT_IMAGES + 512) / 1024,  # the copies' cost, not the quota's
    }
    to_chunks = node_config(site, "chunked", **keys, vault_dir=str(chunked))
    to_full = node_config(site, "full", **keys, vault_dir=str(full))
    # the hook's own: the vault of chunks, so it records each generation's chunks as it seals it (and
    # its copier makes the first generation's first copy); every timed copy below is a vault-sync
    site.configure(**keys, vault_dir=str(chunked))
    job = bench.start_dirtier(
        site, f"{mib}.incremental", mib, DIRTIER_FRACTION=str(FRACTION), DIRTIER_RUNS=str(RUNS)
    )
    checkpoint_and_copy(site, hook, site.torque_args(job), "checkpoint")  # into the empty vault
    link_tree(chunked, first)
    os.kill(app_pid(job, "dirtier.py"), signal.SIGUSR1)
    rewritten = int(wait_line(job, "dirtied 1 ").split()[2])
    checkpoint_and_copy(site, hook, site.torque_args(job, signal_number=15), "qhold")
    leftovers = [p.pid for p in job.processes(zombies=True)]
    job.stop()
    pids_gone(leftovers)
    settle()
    generation, manifest = newest_manifest(site, job.job_id)
    image = int(manifest["total_bytes"])
    percent = rewritten / (mib * MIB) * 100
    say(f"[10] {label} job: rewrote {rewritten / MIB:.1f} MiB ({percent:.1f} %) in {RUNS} runs between its "
        f"checkpoints; image {image / MIB:.0f} MiB")  # fmt: skip

    def reset(with_first: bool) -> None:
        """The vault of chunks emptied (its job folders and chunk stores), and with ``with_first`` as
        it was right after the first generation's copy (hard links of it: chunk files never change)."""
        for entry in chunked.iterdir():
            shutil.rmtree(entry)
        if with_first:
            link_tree(first, chunked)

    # the copy's seconds (copy_s), by copy ("second", "first") and page cache ("cold", "warm"); and the
    # second copy of a generation without the hook's record of its chunks (an older hook's), cold
    took = {(copy, cache): Series() for copy in ("second", "first") for cache in ("cold", "warm")}
    took["unrecorded", "cold"] = Series()
    recorded = generation / INDEX
    cp_s, sent, images = Series(), Series(), Series()
    seen: dict[str, dict[str, Any]] = {}

    def sync_timed(copy: str, cache: str) -> None:
        reset(with_first=copy != "first")
        bench.fresh_page_cache()  # cold, as row 9: the image read from disk
        if cache == "warm":  # the image in the page cache, as the hook's copier finds it after a dump
            read_tree(generation)
        if copy == "unrecorded":
            recorded.rename(generation.parent / "chunks.index.aside")
        try:
            copied = sync_into(site, to_chunks, job)
        finally:
            if copy == "unrecorded":
                (generation.parent / "chunks.index.aside").rename(recorded)
        if copied["sealed"] != (copy != "unrecorded"):
            raise RuntimeError(f"the {copy} copy did not read what it was meant to: {copied}")
        seen[copy] = copied
        took[copy, cache].add(float(copied["copy_s"]))
        if copy == "second" and cache == "cold":
            sent.add(float(copied["sent_bytes"]) / MIB)
            images.add(float(copied["bytes"]) / MIB)
        settle()

    def cp_and_sync() -> None:
        target = mount / f"cp-{time.monotonic_ns()}"
        bench.fresh_page_cache()
        start = time.monotonic()
        low = ["/usr/bin/nice", "-n", "10", "/usr/bin/ionice", "-c", "3"]  # as low as the copier runs
        subprocess.run([*low, "/bin/cp", "-r", str(generation / "image"), str(target)], check=True)
        subprocess.run([*low, "/bin/sync", "-f", str(target)], check=True)
        cp_s.add(time.monotonic() - start)
        shutil.rmtree(target)
        settle()

    n = bench.reps(5, 2)
    say(f"[10] {label} job: {n} alternations of the second copy, a first copy (each from a dropped page "
        "cache and with the image in it) and cp + sync")  # fmt: skip
    contenders = [lambda copy=copy, cache=cache: sync_timed(copy, cache) for copy, cache in took]
    for i in alternate(n, *contenders, cp_and_sync):
        second = seen["second"]
        times = ", ".join(
            f"{copy} {cache} {sec(series.values[-1])} s" for (copy, cache), series in took.items()
        )
        say(f"  {i + 1}/{n}: {times}; cp + sync {sec(cp_s.values[-1])} s; the second copy wrote "
            f"{second['new_chunks']} of {second['chunks']} chunks, {num(sent.values[-1])} MiB, a first copy "
            f"{num(seen['first']['sent_bytes'] / MIB)} MiB")  # fmt: skip
    second_s, first_s = took["second", "cold"], took["first", "cold"]

    # c: the vault of chunks with both generations, the other vault with the second as a full copy
    reset(True)
    sync_into(site, to_chunks, job)
    [job_dir] = chunked.glob(f"*.{job.job_id}")
    full_copy(generation, private_dir(full / job_dir.name) / generation.name)
    lose_spool(site)
    from_chunks, from_full, fetch_chunks, fetch_full = Series(), Series(), Series(), Series()

    def restart(config: Path, seconds: Series, fetched: Series) -> None:
        took, fetch = restart_from_vault(bench, site, job, config, image)
        seconds.add(took)
        fetched.add(fetch)

    n = bench.reps(5, 2)
    say(f"[10] {label} job: {n} alternations of a restart from the chunks / from a full copy")
    for i in alternate(
        n,
        lambda: restart(to_chunks, from_chunks, fetch_chunks),
        lambda: restart(to_full, from_full, fetch_full),
    ):
        say(f"  {i + 1}/{n}: from the chunks {sec(from_chunks.values[-1])} s (fetched after "
            f"{sec(fetch_chunks.values[-1])} s), from a full copy {sec(from_full.values[-1])} s (fetched "
            f"after {sec(fetch_full.values[-1])} s)")  # fmt: skip
    shutil.rmtree(generation.parent, ignore_errors=True)

    share = f"{FRACTION * 100:.0f} % of its memory rewritten in {RUNS} runs"
    bench.rows += [
        Row("10", f"bytes written to the vault by the second copy, {label} job, {share} (MiB): vault-sync's "
            "sent_bytes vs the image's size", sent, images, num, target="ratio <= 0.10", limit=0.10),
        Row("10", f"the second copy's time, {label} (s): vault-sync with the first generation's chunks in "
            "the vault vs a first copy into an empty vault (every chunk new; the full copy), both from a "
            "dropped page cache", second_s, first_s, sec, target="ratio <= 0.20", limit=0.20),
        Row("10", f"the same with the image in the page cache, {label} (s), as the hook's copier finds it "
            "right after the checkpoint", took["second", "warm"], took["first", "warm"], sec,
            target="ratio <= 0.20", limit=0.20),
        Row("10", f"for reference, {label} (s): that first copy vs cp + sync of the image (nice 10, idle "
            "I/O class, as the copier runs)", first_s, cp_s, sec),
        Row("10", f"for reference, {label} (s): the second copy with the chunks the hook recorded as it "
            "sealed the generation vs without them (an older hook's generation: the copy hashes the "
            "whole image), both from a dropped page cache", second_s, took["unrecorded", "cold"], sec),
        Row("10", f"restore from the vault until the app runs again, {label} (s): mom-restart --job on a "
            "node that lost its spool, the generation as chunks vs as a full copy (the vault's first "
            "layout), from a dropped page cache", from_chunks, from_full, sec, target="ratio <= 1.10",
            limit=1.10),
    ]  # fmt: skip
    second, first_copy = seen["second"], seen["first"]
    bench.notes.append(
        f"Second copy, {label} (row 10): {sec(second_s.median)} s against {sec(first_s.median)} s for a "
        f"first copy and {sec(cp_s.median)} s for cp + sync (with the image in the page cache "
        f"{sec(took['second', 'warm'].median)} s against {sec(took['first', 'warm'].median)} s); it wrote "
        f"{second['new_chunks']} of "
        f"{second['chunks']} chunks ({num(sent.median)} MiB of {num(image / MIB)}) and read only those: "
        f"the hook had recorded every chunk's digest as it sealed the generation (without that record "
        f"the copy reads and hashes the whole image: {sec(took['unrecorded', 'cold'].median)} s). "
        f"Restore from the chunks {sec(from_chunks.median)} s, from "
        f"a full copy {sec(from_full.median)} s, of which the copy into the spool (until restart.fetched) "
        f"{sec(fetch_chunks.median)} s and {sec(fetch_full.median)} s."
    )
    return [
        f"- {label} job (tests/apps/dirtier.py, random bytes: no chunk alike, none compressible), image "
        f"{image / MIB:.0f} MiB: between its two checkpoints it rewrote {rewritten / MIB:.1f} MiB in "
        f"{RUNS} runs. The second copy wrote {second['new_chunks']} of {second['chunks']} chunks, "
        f"{second['sent_bytes'] / MIB:.1f} MiB (compression {second['compression']}), deduplicated "
        f"{second['deduplicated_bytes'] / MIB:.1f} MiB; a first copy wrote "
        f"{first_copy['sent_bytes'] / MIB:.1f} MiB in {first_copy['new_chunks']} chunks. Medians: second "
        f"copy {sec(second_s.median)} s, first copy {sec(first_s.median)} s, cp + sync "
        f"{sec(cp_s.median)} s; with the image in the page cache, second copy "
        f"{sec(took['second', 'warm'].median)} s, first copy {sec(took['first', 'warm'].median)} s; restore "
        f"from the chunks {sec(from_chunks.median)} s (the copy into the "
        f"spool done {sec(fetch_chunks.median)} s after the start), from a full copy "
        f"{sec(from_full.median)} s ({sec(fetch_full.median)} s).",
    ]


def private_dir(path: Path) -> Path:
    """A folder of root's, 0700 (a vault's root, a job's folder in it)."""
    path.mkdir(mode=0o700)
    path.chmod(0o700)
    return path


def node_config(site: Site, name: str, **keys: Any) -> Path:
    """A config file of its own with the site's defaults and ``keys`` (site.config is left as ``keys``)."""
    site.configure(**keys)
    path = site.base / f"config-{name}.toml"
    shutil.copyfile(site.config, path)
    return path


def checkpoint_and_copy(site: Site, hook: Path, args: Sequence[object], what: str) -> None:
    """A call of the hook (its config has the vault), and its copier's copy waited for."""
    copies = len(events(site, "vault.copied"))
    check(as_pbs_mom(hook, args, site.config), what)
    deadline = time.monotonic() + 600
    while len(events(site, "vault.copied")) == copies:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the hook's copier did not copy the {what}'s generation in 10 minutes")
        time.sleep(0.1)
    settle()


def sync_into(site: Site, config: Path, job: Job) -> dict[str, Any]:
    """vault-sync of the job's newest generation, as the timer runs it: its vault.copied event."""
    copies = len(events(site, "vault.copied"))
    done = subprocess.run(
        [str(packaged("mom-checkpoint")), "vault-sync", "--job", job.job_id],
        env={**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(config)}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    copied = events(site, "vault.copied")
    if done.returncode != 0 or len(copied) == copies:
        raise RuntimeError(f"vault-sync did not copy: {done.stdout}{done.stderr}"[:600])
    return copied[-1]


def link_tree(source: Path, target: Path) -> None:
    """Everything in ``source`` into ``target`` as hard links (cp -al: modes and owners kept)."""
    entries = [str(entry) for entry in source.iterdir()]
    if entries:
        subprocess.run(["/bin/cp", "-al", *entries, str(target)], check=True)


def full_copy(generation: Path, target: Path) -> None:
    """The spool's generation folder copied as it is, as the vault's first layout stored it (image/,
    kept/, manifest.json): root's folders 0700, root's files 0600."""
    shutil.copytree(generation, target, symlinks=True, ignore=shutil.ignore_patterns(INDEX))  # (none then)
    for path in [target, *target.rglob("*")]:
        os.chown(path, 0, 0, follow_symlinks=False)
        if not path.is_symlink():
            path.chmod(0o700 if path.is_dir() else 0o600)
    with contextlib.suppress(OSError):
        os.sync()


def read_tree(folder: Path) -> None:
    """Every file below ``folder`` read once (into the page cache)."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as fh:
                while fh.read(8 * MIB):
                    pass


def lose_spool(site: Site) -> None:
    """The node is gone with its spool; the new node's is empty (tests/integration/test_vault.py)."""
    shutil.rmtree(site.spool)
    site.spool.mkdir(mode=0o711)


def restart_from_vault(bench: Bench, site: Site, job: Job, config: Path, image: int) -> tuple[float, float]:
    """mom-restart --job started the way pbs_mom starts it on a node whose spool is empty, the image in
    no page cache: the seconds until the application's output grows, and until its restart.fetched
    event (the copy into the spool done, the manifest read)."""
    lose_spool(site)
    bench.fresh_page_cache()

    def started() -> bool:  # the copy into the spool has begun (or is done)
        return any(site.spool.glob("*/.incoming-fetch.*")) or any(site.spool.glob("*/[0-9]*"))

    with bench.warm_memory(int(image * 2.25), started):  # the spool's copy, then the job's memory
        size = job.output.stat().st_size
        launched = time.time()
        begun = time.perf_counter()
        with open(job.output, "ab") as out:  # the seed's --job: the application writes into our stdout
            proc = start_restart(["--job", job.job_id], config, stdout=out, program=packaged("mom-restart"))
        deadline = time.monotonic() + 300
        while job.output.stat().st_size <= size:
            status = proc.poll()
            if (status is not None and status != 0) or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"mom-restart: the application did not run again (exit {status}): "
                                   f"{err[-300:]}")  # fmt: skip
            time.sleep(0.001)
        seconds = time.perf_counter() - begun
    end_restart(proc, [])
    fetched = [
        datetime.fromisoformat(e["timestamp"]).timestamp()
        for e in events(site, "restart.fetched")
        if datetime.fromisoformat(e["timestamp"]).timestamp() >= launched
    ]
    if not fetched:
        raise RuntimeError("the restart did not copy the generation from the vault (no restart.fetched)")
    settle()
    return seconds, fetched[-1] - launched


# -- d: the codec on floating-point images ---------------------------------------------------------------
def codec(bench: Bench, site: Site, mib: int) -> list[str]:
    """zstd level 1 (chunks.Codec()) on each chunk of the images of two jobs holding float64 arrays, a
    Python one (numpy's arrays, or array('d') where the job's interpreter finds no numpy) and a C one
    (tests/apps/floats.c, where a C compiler is found), each dumped by the hook: the compression ratio,
    and its speed against BLAKE3's on the same chunks (the digest every chunk gets), alternately."""
    label = size_label(mib)
    site.configure(keep=2, **{"backends.criu.run_as": "job-user"})
    lines: list[str] = []
    extra = {"PYTHONPATH": os.environ[NUMPY_PATH]} if os.environ.get(NUMPY_PATH) else {}
    job = bench.start_dirtier(site, f"{mib}.floats-py", mib, DIRTIER_KIND="floats", **extra)
    made = wait_line(job, "floats ").split()[1]
    arrays = "numpy float64 arrays" if made == "numpy" else "array('d'), numpy not found"
    lines += codec_rows(bench, site, job, f"a Python job's image ({arrays}), {label}")
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        why = "no C compiler on this machine (cc, gcc, clang): no C job"
        bench.rows.append(Row("10", f"zstd level 1 on the chunks of a C job's image, {label}", Series(), None,
                              num, target=why))  # fmt: skip
        return [*lines, f"- The C job: {why}."]
    binary = site.base / "floats"
    subprocess.run([compiler, "-O2", "-o", str(binary), str(FLOATS_C), "-lm"], check=True)
    binary.chmod(0o755)
    native = site.start_job(f"{mib}.floats-c", bench.user, {"NATIVE_PROGRAM": str(binary),
                            "FLOATS_MIB": str(mib)}, app=NATIVE, wait_s=600)  # fmt: skip
    lines += codec_rows(bench, site, native, f"a C job's image (tests/apps/floats.c, float64), {label}")
    return lines


def codec_rows(bench: Bench, site: Site, job: Job, what: str) -> list[str]:
    qhold(site, job)
    generation, manifest = newest_manifest(site, job.job_id)
    files = [ImageFile(f["path"], int(f["size"]), f["digest"]) for f in manifest["files"]]
    data = {f.path: (generation / f.path).read_bytes() for f in files}
    shutil.rmtree(generation.parent, ignore_errors=True)
    cuts = chunking.plan(files, lambda path: data[path])
    chunks: list[memoryview] = []
    for image_file in files:
        offset = 0
        for size in cuts[image_file.path]:
            chunks.append(memoryview(data[image_file.path])[offset : offset + size])
            offset += size
    total = sum(len(c) for c in chunks)
    blobs = [encode(c, Codec()) for c in chunks]
    stored = sum(len(b) for b in blobs)
    raw = sum(1 for b in blobs if HEADER.unpack_from(b)[2] == RAW)
    ratio = total / stored

    def speed(work: Callable[[memoryview], object]) -> Callable[[], float]:
        def timed() -> float:
            begun = time.perf_counter()
            for chunk in chunks:
                work(chunk)
            return total / MB / (time.perf_counter() - begun)

        return timed

    zstd, blake3 = Series(), Series()
    n = bench.reps(5, 2)
    say(f"[10] {what}: {len(chunks)} chunks, ratio {ratio:.3f}; {n} alternations of zstd 1 / BLAKE3")
    for _ in alternate(
        n,
        lambda: zstd.add(speed(lambda c: encode(c, Codec()))()),
        lambda: blake3.add(speed(digest_of)()),
    ):
        pass
    bench.rows += [
        Row("10", f"zstd level 1 (the vault's codec) on the chunks of {what}: compression ratio (their bytes "
            f"/ the chunk files' bytes; {raw} of {len(chunks)} chunks stored as they are)", Series([ratio]),
            None, num),
        Row("10", "its speed on them (MB/s, one core): zstd level 1 vs BLAKE3 (each chunk's digest), for "
            "scale", zstd, blake3, num),
    ]  # fmt: skip
    return [
        f"- zstd level 1 on the {len(chunks)} chunks ({total / MIB:.0f} MiB) of {what}: stored "
        f"{stored / MIB:.1f} MiB, ratio {ratio:.3f}, {raw} chunks stored as they are (compression saved "
        f"under 5 %); {num(zstd.median)} MB/s on one core (BLAKE3: {num(blake3.median)} MB/s)."
    ]


FAMILY = Family(
    name="incremental",
    run=run,
    title="10. The vault's chunks: incremental copies, restores, compression",
    intro=(
        (
            "Issue 29 #10. A job of 1 GiB (256 MiB with --quick), tests/apps/dirtier.py: random bytes, so "
            "that no two chunks are alike and none compresses, is checkpointed by the hook, its "
            f"generation copied into an empty vault (vault-sync), then it rewrites {FRACTION * 100:.0f} % "
            f"of its memory in {RUNS} contiguous runs (SIGUSR1) and is checkpointed again (a qhold: CRIU "
            "ends it). Then, alternately, each from a dropped page cache and again with the image read "
            "into it first (as the hook's copier finds it right after the checkpoint): vault-sync of the "
            "second generation with the first one's chunks in the vault (as they were after its copy: "
            "hard links of that vault); vault-sync of it into an empty vault, every chunk new: the full "
            "copy (the vault copied whole files before the chunks; that code is gone); and, from a "
            "dropped page cache, cp -r + sync -f of its image folder into the same file system (ext4 on a "
            "loop device), at the copier's priority. Figures of the copies are vault-sync's own (copy_s "
            "and sent_bytes of its vault.copied event). Then, alternately, the job is restarted "
            "(`mom-restart --job`, started as pbs_mom starts it) on a node whose spool is empty, from the "
            "vault of chunks and from another vault that holds the same generation as a full copy (the "
            "spool's generation folder copied as it is, root's: the vault's first layout, which the "
            "restore still reads), until the application's output grows. Last, zstd level 1 (the vault's "
            "codec: chunks.encode with Codec()) on each chunk of the images (cut as the vault cuts them) "
            f"of a Python job holding float64 arrays (numpy's, when {NUMPY_PATH} names a folder with numpy "
            "for the job's /usr/bin/python3, e.g. a venv's site-packages; else array('d')) and of a C job "
            "(tests/apps/floats.c, compiled here), each dumped by the hook."
        ),
    ),
)
