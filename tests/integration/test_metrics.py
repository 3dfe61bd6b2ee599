"""The Prometheus textfile: counts, last figures and spool usage after real hook runs."""

from __future__ import annotations

import os
import subprocess
import time

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import Site, call_hook


def samples(path: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with open(path) as fh:
        text = fh.read()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_checkpoints_and_failures(site: Site) -> None:
    prom = site.base / "textfile" / "mom_checkpoint.prom"
    prom.parent.mkdir()
    good = str(site.standin("chkpnt", STANDIN_IMAGE_BYTES="50000"))
    site.configure(backend="psnc", metrics_file=str(prom), **{"backends.psnc.chkpnt": good})
    job = site.start_job("901.head")
    for _ in range(2):
        started = time.monotonic()
        assert call_hook(site.torque_args(job), site.config).returncode == 0
        call_s = time.monotonic() - started  # the last good call, seen from outside
    failing = str(site.standin("chkpnt", STANDIN_FAIL="5"))
    site.configure(backend="psnc", metrics_file=str(prom), **{"backends.psnc.chkpnt": failing})
    assert call_hook(site.torque_args(job), site.config).returncode == 80

    values = samples(str(prom))
    assert values[("mom_checkpoint_checkpoints_total", (("backend", "psnc"),))] == 2
    failures = (("backend", "psnc"), ("reason", "checkpointer_failed"))
    assert values[("mom_checkpoint_failures_total", failures)] == 1
    # the hook's own measure of that call lies within it: seconds, not another unit
    assert 0 < values[("mom_checkpoint_last_duration_seconds", (("backend", "psnc"),))] <= call_s
    assert values[("mom_checkpoint_last_bytes", (("backend", "psnc"),))] > 50000
    assert values[("mom_checkpoint_spool_bytes", ())] > 100000
    assert os.stat(prom).st_mode & 0o777 == 0o644
    assert [p.name for p in prom.parent.iterdir()] == ["mom_checkpoint.prom"], (
        "written atomically, no leftovers"
    )


def test_metrics_that_cannot_be_written_never_fail_the_checkpoint(site: Site) -> None:
    site.configure(
        backend="psnc",
        metrics_file=str(site.base / "no-such-folder" / "m.prom"),
        **{"backends.psnc.chkpnt": str(site.standin("chkpnt"))},
    )
    job = site.start_job("902.head")
    result = call_hook(site.torque_args(job), site.config)
    assert result.returncode == 0 and result.stderr == ""
    assert any(e["event"] == "metrics.failed" for e in site.log_events())


def test_a_textfile_folder_swapped_for_a_link_is_refused_and_the_checkpoint_succeeds(site: Site) -> None:
    # the exporter's account (here the job's user) owns the textfile folder's parent and swaps the
    # folder for a link to a folder of root's, which holds a root-only file of the textfile's name
    exporter = site.base / "exporter"
    (exporter / "textfile").mkdir(parents=True)
    for path in (exporter, exporter / "textfile"):
        os.chown(path, site.user.uid, site.user.gid)
    private = site.base / "root-only"
    private.mkdir(mode=0o700)
    (private / "mom_checkpoint.prom").write_text("root's\n")
    (private / "mom_checkpoint.prom").chmod(0o600)
    for argv in (
        ["rmdir", str(exporter / "textfile")],
        ["ln", "-s", str(private), str(exporter / "textfile")],
    ):
        subprocess.run(argv, user=site.user.uid, group=site.user.gid, extra_groups=[], check=True)
    site.configure(
        backend="psnc",
        metrics_file=str(exporter / "textfile" / "mom_checkpoint.prom"),
        **{"backends.psnc.chkpnt": str(site.standin("chkpnt"))},
    )
    job = site.start_job("903.head")

    result = call_hook(site.torque_args(job), site.config)

    assert result.returncode == 0 and result.stderr == ""
    assert [p.name for p in private.iterdir()] == ["mom_checkpoint.prom"], "nothing written there"
    st = os.stat(private / "mom_checkpoint.prom")
    assert (st.st_mode & 0o777, (private / "mom_checkpoint.prom").read_text()) == (0o600, "root's\n")
    failed = [e for e in site.log_events() if e["event"] == "metrics.failed"]
    assert len(failed) == 1 and "symlink" in failed[0]["error"]
