"""Row 6: bytes on disk over periodic checkpoints with keep=2, against the seed's one folder written over."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from .core import (
    DUMP_CAPS,
    MIB,
    Bench,
    Family,
    Row,
    Series,
    as_pbs_mom,
    check,
    disk_bytes,
    job_user_prefix,
    newest_manifest,
    num,
    packaged,
    raw_log,
    run_raw,
    say,
    settle,
)


class Sampler:
    """Samples bytes on disk below some folders every few milliseconds, in a thread."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), {k: disk_bytes(p) for k, p in self.paths.items()}))
            time.sleep(0.005)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, key: str, start: float, end: float) -> int:
        return max((s[key] for t, s in self.samples if start <= t <= end), default=0)


def run(bench: Bench) -> None:
    site = bench.site("spool")
    keep = 2
    site.configure(keep=keep, **{"backends.criu.run_as": "job-user"})
    mib = 64 if bench.options.quick else 256
    periods = 6 if bench.options.quick else 20
    job = bench.start_app(site, "6.spool", mib)
    hook = packaged("mom-checkpoint")
    seed_dir = bench.user_dir(site.base / "seed-scheme" / f"{job.exec_pid()}.6.spool")
    ours_peak, theirs_peak, images = Series(), Series(), Series()
    say(f"[6] spool usage: {periods} periodic checkpoints of a {mib} MiB job, keep={keep}, alternating")
    with Sampler({"hook": site.spool, "seed": seed_dir.parent}) as sampler:
        for _ in range(periods):
            start = time.monotonic()
            check(as_pbs_mom(hook, site.torque_args(job), site.config), "mom-checkpoint")
            end = time.monotonic()
            ours_peak.add(float(sampler.peak("hook", start, end)))
            newest, manifest = newest_manifest(site, job.job_id)
            images.add(float(disk_bytes(newest)))
            settle()
            command = raw_log(list(manifest["backend"]["command"]), "dump.log")
            command[command.index("-D") + 1] = str(seed_dir)
            start = time.monotonic()
            _, proc = run_raw(job_user_prefix(bench.user, DUMP_CAPS) + command)
            end = time.monotonic()
            if proc.returncode != 0:
                raise RuntimeError(f"raw criu dump failed (exit {proc.returncode}): {proc.stderr[-300:]}")
            theirs_peak.add(float(sampler.peak("seed", start, end)))
            settle()
            time.sleep(0.05)
    image = images.median
    ours_final, theirs_final = disk_bytes(site.spool), disk_bytes(seed_dir.parent)
    hook_all = max(s["hook"] for _, s in sampler.samples)
    seed_all = max(s["seed"] for _, s in sampler.samples)

    def in_images(series: Series) -> Series:
        return Series([v / image for v in series.values])

    met = hook_all / image <= keep + 1 + 0.02  # 2 %: the manifest and logs beside the images
    bench.rows += [
        Row(
            "6",
            f"peak bytes on disk during a checkpoint, {periods} checkpoints keep={keep} (images): hook vs "
            "the seed's one folder (raw criu, written over)",
            in_images(ours_peak),
            in_images(theirs_peak),
            num,
            f"hook never above {keep + 1}: {'met' if met else 'NOT met'}",
        ),
        Row(
            "6",
            "bytes on disk after the last checkpoint (images)",
            Series([ours_final / image]),
            Series([theirs_final / image]),
            num,
        ),
    ]
    job.stop()
    bench.sections["spool"] = [
        f"A {mib} MiB job checkpointed {periods} times by the hook (keep={keep}), alternating with a raw "
        "criu dump of the same job into one fixed folder (the seed's scheme: "
        "`/var/spool/checkpoint/$exec_pid.job_id`, written over every time). Bytes allocated on disk "
        "(like du) sampled every 5 ms in a thread "
        f"({len(sampler.samples)} samples); one image = {image / MIB:.0f} MiB on disk.",
        "",
        f"- hook: highest sample {hook_all / image:.2f} images (the kept {keep} plus the one being written, "
        f"pruned only once it is complete); after the last checkpoint {ours_final / image:.2f} images.",
        f"- seed's scheme: highest sample {seed_all / image:.2f} images, after the last "
        f"{theirs_final / image:.2f}: "
        "never more than one, but while criu writes over it there is no complete checkpoint at all, and a "
        "failed dump leaves none.",
    ]


FAMILY = Family(name="spool", run=run, title="6. Spool usage over time")
