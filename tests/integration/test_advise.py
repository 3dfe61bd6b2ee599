"""mom-checkpoint advise through the installed program: Young's and Daly's intervals, the cost measured
on a job's manifests, the waste of the current interval."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from mom_checkpoint.batch import interval
from tests.helpers import Site, call_hook
from tests.torque import Cluster, one_line


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    return Cluster(tmp_path)


def test_the_anchor_vector_from_the_command_line(cluster: Cluster) -> None:
    envelope = cluster.json("advise", "--cost", "300", "--mtbf", "24", "--interval", "10")
    assert envelope["ok"] is True
    data = envelope["data"]
    assert round(data["daly"]["interval_min"], 1) == 116.7 and data["young"]["interval_min"] == 120.0
    assert data["current"] == {
        "interval_min": 10.0,
        "waste": round(0.5 + 15 / 2880, 6),
        "source": "--interval",
    }
    assert data["current"]["waste"] > data["daly"]["waste"] > 0
    assert (data["cost_s"], data["cost_source"], data["mtbf_h"], data["mtbf_source"]) == (
        300.0, "--cost", 24.0, "--mtbf")  # fmt: skip
    assert data["suggested_interval_min"] == 117
    assert data["waste_model"] == "waste(tau) = delta/tau + (tau + delta)/(2M)"
    text = cluster.run("advise", "--cost", "300", "--mtbf", "24", "--interval", "10")
    assert text.returncode == 0, text.stderr
    assert "suggested: qsub -c enabled,periodic,interval=117" in text.stdout
    assert "  current                    10.00         50.52 %  --interval\n" in text.stdout
    assert "  Daly (2006)               116.69          8.51 %  higher-order optimum\n" in text.stdout


def test_without_interval_the_nodes_checkpoint_interval_is_the_current_one(cluster: Cluster) -> None:
    cluster.configure(checkpoint_interval=30, node_mtbf_h=6)
    data = cluster.json("advise", "--cost", "300")["data"]
    assert data["current"]["interval_min"] == 30.0
    assert data["current"]["source"] == "$checkpoint_interval (config checkpoint_interval)"
    assert data["mtbf_source"] == f"node_mtbf_h in {cluster.config}"
    assert round(data["daly"]["interval_min"], 1) == 56.7


def test_a_job_cost_is_the_median_dump_time_of_its_manifests(cluster: Cluster) -> None:
    for number, dump_s in enumerate((4.0, 40.0, 5.0, 6.0), start=1):
        cluster.add_generation("101.head.example.org", ago=600 * (5 - number), dump_s=dump_s, number=number)
    data = cluster.json("advise", "101.head.example.org", "--mtbf", "24")["data"]
    assert data["cost_s"] == 5.5 and data["samples"] == 4
    assert data["cost_source"] == "median dump time of its 4 newest generations"
    # the job's own interval, from qstat: Checkpoint = c=10
    assert data["current"]["source"] == "the job's Checkpoint = c=10 (c=10)"
    assert data["current"]["interval_min"] == 10.0
    assert data["daly"]["interval_min"] == round(interval.daly(5.5, 24 * 3600) / 60, 3)
    assert cluster.qstat_calls() == [["-t", "-x", "101.head.example.org"]]


def test_a_job_without_periodic_checkpoints_has_no_current_waste(cluster: Cluster) -> None:
    cluster.add_generation("105.head.example.org", ago=60, dump_s=3.0)
    data = cluster.json("advise", "105.head.example.org", "--mtbf", "24")["data"]
    assert data["current"] is None
    text = cluster.run("advise", "105.head.example.org", "--mtbf", "24").stdout
    assert "none: the job asks for no periodic checkpoints (Checkpoint = enabled)" in text


def test_when_qstat_cannot_tell_the_nodes_interval_is_used_and_said(cluster: Cluster) -> None:
    cluster.add_generation("101.head.example.org", ago=60, dump_s=3.0)
    cluster.wrap(QSTAT_FAIL="2")
    data = cluster.json("advise", "101.head.example.org", "--mtbf", "24")["data"]
    assert data["current"]["interval_min"] == 10.0
    source = data["current"]["source"]
    assert source.startswith("$checkpoint_interval (config checkpoint_interval); qstat could not tell")
    assert "cannot connect to server head" in source


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        ([], 64, "give a JOB_ID, or --cost SECONDS"),
        (["--cost", "300"], 64, "no node MTBF known: give --mtbf HOURS, or set node_mtbf_h in"),
        (["42.head", "--cost", "3", "--mtbf", "1"], 64, "give a JOB_ID or --cost SECONDS, not both"),
        (["--cost", "0", "--mtbf", "1"], 64, "--cost must be a number above 0, got 0"),
        (["--cost", "nan", "--mtbf", "1"], 64, "--cost must be a number above 0, got nan"),
        (["--cost", "3", "--mtbf", "1", "--interval", "-5"], 64, "--interval must be a number above 0"),
        (["--cost", "three", "--mtbf", "1"], 64, "argument --cost: invalid float value: 'three'"),
        (["../x", "--mtbf", "1"], 64, "JOB_ID '../x' is not safe as a file name"),
        (["404.nowhere", "--mtbf", "1"], 66, "job 404.nowhere has no complete checkpoint in"),
    ],
)
def test_refusals_are_one_line(cluster: Cluster, args: list[str], status: int, words: str) -> None:
    result = cluster.run("advise", *args)
    assert result.returncode == status
    assert words in one_line(result.stderr)
    assert result.stdout == ""


def test_advise_a_real_job_checkpointed_by_the_hook(site: Site, tmp_path: Path) -> None:
    """Generations written by the hook itself (psnc stand-in, as pbs_mom calls it), the job's interval
    from qstat."""
    torque = Cluster(tmp_path)
    torque.rename("101.head.example.org", "801.head")
    site.configure(
        backend="psnc",
        keep=5,
        qstat=str(torque.bin / "qstat"),
        node_mtbf_h=24,
        **{"backends.psnc.chkpnt": str(site.standin("chkpnt"))},
    )
    job = site.start_job("801.head")
    for _ in range(3):
        assert call_hook(site.torque_args(job), site.config).returncode == 0
    manifests = [json.loads((g / "manifest.json").read_text()) for g in site.generations("801.head")]
    result = torque.run("advise", "801.head", "--json", config=site.config)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)["data"]
    assert data["cost_s"] == statistics.median(m["times"]["dump_s"] for m in manifests)
    assert data["cost_source"] == "median dump time of its 3 newest generations"
    assert data["mtbf_source"] == f"node_mtbf_h in {site.config}"
    assert data["current"]["source"] == "the job's Checkpoint = c=10 (c=10)"
