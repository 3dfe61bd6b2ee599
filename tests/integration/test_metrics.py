"""The Prometheus textfile: counts, last figures and spool usage after real hook runs."""

from __future__ import annotations

import os

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
        assert call_hook(site.torque_args(job), site.config).returncode == 0
    failing = str(site.standin("chkpnt", STANDIN_FAIL="5"))
    site.configure(backend="psnc", metrics_file=str(prom), **{"backends.psnc.chkpnt": failing})
    assert call_hook(site.torque_args(job), site.config).returncode == 80

    values = samples(str(prom))
    assert values[("mom_checkpoint_checkpoints_total", (("backend", "psnc"),))] == 2
    failures = (("backend", "psnc"), ("reason", "checkpointer_failed"))
    assert values[("mom_checkpoint_failures_total", failures)] == 1
    assert 0 < values[("mom_checkpoint_last_duration_seconds", (("backend", "psnc"),))] < 60
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
