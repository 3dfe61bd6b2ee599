"""Row 4 (hashing): the hook's digest_files against plain single-threaded BLAKE3 and sha256 loops."""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import time
from pathlib import Path

from .core import MIB, Bench, Family, Row, Series, alternate, fsync_tree, num, say


def run(bench: Bench) -> None:
    folder = bench.base / "hashing"
    big = 256 if bench.options.quick else 1024
    block = os.urandom(MIB)
    layouts = {
        f"CRIU-like: one {big} MiB pages file + 20 small files": [("pages-2.img", big)]
        + [(f"core-{i}.img", 0) for i in range(20)],
        f"four {big // 4} MiB files (a job of several processes)": [
            (f"pages-{i}.img", big // 4) for i in range(4)
        ],
    }
    lines = [
        "In the benchmark's process, files in the page cache (as right after a dump): "
        "`mom_checkpoint.image.hashing.digest_files` (what the hook and mom-restart use, BLAKE3; here "
        "without fsync) against a plain single-threaded loop of `blake3().update()` over 1 MiB reads of "
        "the same "
        "files, and the same loop with `hashlib.sha256()` (the manifests' algorithm before schema 4). "
        "Cores used = CPU time / wall time of the process while it hashes.",
        "",
        "| image | digest_files MiB/s | blake3 loop MiB/s | sha256 loop MiB/s | cores used by digest_files |",
        "|---|---|---|---|---|",
    ]
    n = bench.reps(5, 2)
    for name, files in layouts.items():
        folder.mkdir()
        try:
            lines.append(hash_one(bench, folder, name, files, block=block, n=n))
        finally:
            shutil.rmtree(folder)
    lines += ["", f"This machine has {os.cpu_count()} cores."]
    bench.sections["hashing"] = lines


def hash_one(
    bench: Bench, folder: Path, name: str, files: list[tuple[str, int]], *, block: bytes, n: int
) -> str:
    from mom_checkpoint.image.hashing import digest_files

    rels = []
    for file_name, mib in files:
        with open(folder / file_name, "wb") as fh:
            for _ in range(mib):
                fh.write(block)
            fh.write(block[: 4096 + len(file_name)])
        rels.append(file_name)
    fsync_tree(folder)
    total = sum((folder / rel).stat().st_size for rel in rels)
    expected = {rel: plain_digest(folder / rel) for rel in rels}  # also brings them into the page cache

    def hook() -> tuple[float, float]:
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        found = digest_files(folder, rels)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        if {f.path: f.digest for f in found} != expected:
            raise RuntimeError("digest_files disagrees with the blake3 loop")
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        return wall, cpu / wall

    def plain(algorithm: str) -> float:
        started = time.perf_counter()
        for rel in rels:
            plain_digest(folder / rel, algorithm)
        return time.perf_counter() - started

    a, b, c, cores = Series(), Series(), Series(), Series()
    say(f"[4] hashing, {name}: {n} alternations")

    def ours() -> None:
        wall, used = hook()
        a.add(total / MIB / wall)
        cores.add(used)

    for _ in alternate(
        n, ours, lambda: b.add(total / MIB / plain("blake3")), lambda: c.add(total / MIB / plain("sha256"))
    ):
        pass
    bench.rows += [
        Row("4", f"BLAKE3, {name} (MiB/s): digest_files vs blake3 loop", a, b, num, higher_is_better=True),
        Row("4", f"BLAKE3 against sha256, {name} (MiB/s): digest_files vs sha256 loop", a, c, num,
            higher_is_better=True),
    ]  # fmt: skip
    return f"| {name} | {num(a.median)} | {num(b.median)} | {num(c.median)} | {cores.median:.2f} |"


def plain_digest(path: Path, algorithm: str = "blake3") -> str:
    import blake3

    digest = blake3.blake3() if algorithm == "blake3" else hashlib.new(algorithm)
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(MIB):
            digest.update(chunk)
    return f"{algorithm}:{digest.hexdigest()}"


FAMILY = Family(name="hashing", run=run, title="4. Hashing speed")
