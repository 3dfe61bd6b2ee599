"""mom-checkpoint tick through the installed program, against the qstat and qchkpt stand-ins.

The stand-ins answer from tests/fixtures/qstat-f-1.txt (TORQUE's qstat -f -1 form): 101 c=10,
102 enabled,periodic,interval=30, 103 enabled,periodic ($checkpoint_interval), 104 periodic,interval=10
(qchkpt refuses it), 105 enabled, 106 queued, 107 c=10 on node02, 108[1] and 108[2] an array with c=20,
109 completed, 110 without a Checkpoint attribute. All started on Nov 24 2026: due unless a test says
when they were last checkpointed.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import filelock
import pytest

from tests.helpers import STANDINS
from tests.torque import FIXTURES, Cluster, decisions, one_line

DUE = [
    "101.head.example.org",
    "102.head.example.org",
    "103.head.example.org",
    "107.head.example.org",
    "108[1].head.example.org",
    "108[2].head.example.org",
]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield Cluster(tmp_path)


def everything(base: Path) -> dict[str, tuple[int, int, float]]:
    found = {}
    for path in [base, *base.rglob("*")]:
        st = path.lstat()
        found[str(path)] = (st.st_mode, st.st_size, st.st_mtime)
    return found


def test_due_jobs_get_a_qchkpt_each_and_the_others_are_told_why(cluster: Cluster) -> None:
    result = cluster.tick()
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert cluster.qchkpt_calls() == DUE  # the array's sub-jobs by their own ids: qstat -t
    assert cluster.qstat_calls() == [["-t", "-x"]]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("qchkpt             101.head.example.org: accepted (due: last checkpoint")
    assert any(
        line.startswith("not checkpointable 104.head.example.org: asks for periodic") for line in lines
    )
    assert lines[-1] == "tick: qstat listed 11 jobs, 9 running here: 6 qchkpt accepted, 1 reported"
    assert not any("105.head" in line or "110.head" in line for line in lines)  # nothing done for them
    events = cluster.log_events("tick.qchkpt")
    assert [e["job_id"] for e in events] == DUE and all(e["result"] == "accepted" for e in events)
    [done] = cluster.log_events("tick.done")
    assert (done["asked"], done["reported"], done["failed"], done["running"]) == (6, 1, 0, 9)


def test_due_or_not_by_c_n_periodic_interval_and_checkpoint_interval(cluster: Cluster) -> None:
    cluster.checkpointed("101.head.example.org", 5 * 60)  # c=10: not yet
    cluster.checkpointed("102.head.example.org", 31 * 60)  # interval=30: due
    cluster.started("103.head.example.org", 7 * 60)  # enabled,periodic: $checkpoint_interval
    cluster.configure(checkpoint_interval=10)
    d = decisions(cluster.json("tick", "--dry-run"))
    assert d["101.head.example.org"]["action"] == "wait"
    waiting = r"due in (4m5\ds|5m0[01]s): last checkpoint \(checkpoint_time\) 5m0[01]s ago, every 10m00s"
    assert re.match(waiting, d["101.head.example.org"]["reason"])
    assert (d["102.head.example.org"]["action"], d["102.head.example.org"]["interval_source"]) == (
        "qchkpt", "interval=30")  # fmt: skip
    assert d["103.head.example.org"]["action"] == "wait"
    assert d["103.head.example.org"]["interval_source"] == "$checkpoint_interval"
    assert d["105.head.example.org"]["action"] == "skip"  # enabled alone: no periodic checkpoints
    cluster.configure(checkpoint_interval=5)
    d = decisions(cluster.json("tick", "--dry-run"))
    assert d["103.head.example.org"]["action"] == "qchkpt" and d["103.head.example.org"]["interval_s"] == 300
    assert cluster.qchkpt_calls() == []


def test_two_ticks_in_a_row_ask_once_although_checkpoint_time_lags(cluster: Cluster) -> None:
    assert cluster.tick().returncode == 0
    second = cluster.tick()  # pbs_mom has not recorded any checkpoint_time yet
    assert second.returncode == 0, second.stderr
    assert second.stdout == "" and second.stderr == ""  # nothing to do: nothing printed (cron mails nothing)
    assert cluster.qchkpt_calls() == DUE
    state = json.loads((cluster.spool / ".tick" / f"{socket.gethostname()}.json").read_text())
    assert state["schema"] == 1 and sorted(state["jobs"]) == sorted([*DUE, "104.head.example.org"])
    assert (cluster.spool / ".tick" / f"{socket.gethostname()}.json").stat().st_mode & 0o777 == 0o600


def test_periodic_without_c_or_enabled_is_reported_once_and_never_qchkpted(cluster: Cluster) -> None:
    first, second = cluster.tick(), cluster.tick()
    assert (
        "104.head.example.org" in first.stdout
        and "resubmit with -c enabled,periodic,interval=10" in first.stdout
    )
    assert "104.head.example.org" not in second.stdout
    assert "104.head.example.org" not in cluster.qchkpt_calls()
    assert [e["job_id"] for e in cluster.log_events("tick.not_checkpointable")] == ["104.head.example.org"]
    again = decisions(cluster.json("tick", "--dry-run"))["104.head.example.org"]
    assert again["action"] == "skip" and again["reason"].endswith("(reported before)")


def test_the_qchkpt_stand_in_refuses_such_a_job_as_torque_does(cluster: Cluster) -> None:
    env = {"QSTAT_FIXTURE": str(cluster.jobs), "PATH": "/bin:/usr/bin"}
    refused = subprocess.run(
        [str(STANDINS / "qchkpt"), "104.head.example.org"], env=env, capture_output=True, text=True
    )
    assert refused.returncode == 156  # PBSE_IVALREQ 15004, 8 bits
    assert refused.stderr == "qchkpt: Invalid request MSG=job is not checkpointable 104.head.example.org\n"
    unknown = subprocess.run([str(STANDINS / "qchkpt"), "999.h"], env=env, capture_output=True, text=True)
    assert (unknown.returncode, unknown.stderr) == (153, "qchkpt: Unknown Job Id Error 999.h\n")
    fine = subprocess.run([str(STANDINS / "qchkpt"), "101.head.example.org"], env=env, capture_output=True)
    assert (fine.returncode, fine.stdout, fine.stderr) == (0, b"", b"")


def test_the_cap_per_tick_takes_the_most_overdue_first(cluster: Cluster) -> None:
    cluster.configure(tick_max_qchkpt=2)
    first = cluster.tick()
    assert first.returncode == 0, first.stderr
    # due since: 103 and 107 18:50, the array 19:00, 102 19:10, 101 19:30 (its checkpoint_time + 10 min)
    assert cluster.qchkpt_calls() == ["103.head.example.org", "107.head.example.org"]
    deferred = [line for line in first.stdout.splitlines() if line.startswith("deferred")]
    assert len(deferred) == 4 and all(
        line.endswith("tick_max_qchkpt=2 reached: next tick") for line in deferred
    )
    assert first.stdout.splitlines()[-1].endswith("2 qchkpt accepted, 4 deferred, 1 reported")
    cluster.tick()
    assert set(cluster.qchkpt_calls()[2:]) == {"108[1].head.example.org", "108[2].head.example.org"}
    cluster.tick()
    assert set(cluster.qchkpt_calls()[4:]) == {"102.head.example.org", "101.head.example.org"}
    assert cluster.tick().stdout == ""


def test_a_second_tick_while_one_runs_is_busy_75_and_changes_nothing(cluster: Cluster) -> None:
    locks = cluster.spool / ".locks"
    locks.mkdir(parents=True, mode=0o700)
    with filelock.FileLock(str(locks / f"tick-{socket.gethostname()}.lock"), timeout=0):
        result = cluster.tick()
    assert result.returncode == 75
    assert one_line(result.stderr).startswith("mom-checkpoint: another tick is running (")
    assert result.stderr.endswith(": not starting a second one\n")
    assert result.stdout == ""
    assert cluster.qchkpt_calls() == []
    assert not (cluster.spool / ".tick").exists()


def test_dry_run_prints_every_running_job_and_changes_nothing(cluster: Cluster) -> None:
    cluster.qstat_log.touch()  # the stand-in's own record of the call
    before = everything(cluster.base)
    result = cluster.tick("--dry-run")
    assert result.returncode == 0, result.stderr
    after = everything(cluster.base)
    after.pop(str(cluster.qstat_log))
    before.pop(str(cluster.qstat_log))
    assert after == before  # no spool, no lock, no state, no log line
    assert cluster.qchkpt_calls() == []
    lines = result.stdout.splitlines()
    assert [line.split()[2].rstrip(":") for line in lines if line.startswith("would qchkpt")] == DUE
    assert any(line.startswith("skip               105.head.example.org: no periodic") for line in lines)
    assert lines[-1] == (
        "dry run: qstat listed 11 jobs, 9 running here: 6 would be checkpointed, 0 deferred, 1 reported, "
        "0 waiting, 2 skipped; nothing changed"
    )


def test_json_result(cluster: Cluster) -> None:
    envelope = cluster.json("tick")
    assert envelope["ok"] is True
    data = envelope["data"]
    assert (data["dry_run"], data["jobs"], data["running"], data["elsewhere"]) == (False, 11, 9, 0)
    d = decisions(envelope)
    assert {k for k, v in d.items() if v["action"] == "qchkpt"} == set(DUE)
    assert all(d[k]["result"] == "accepted" for k in DUE)
    assert d["101.head.example.org"]["last_source"] == "last checkpoint (checkpoint_time)"
    assert d["101.head.example.org"]["checkpoint"] == "c=10"


def test_this_node_takes_only_the_jobs_whose_first_exec_host_is_here(cluster: Cluster) -> None:
    cluster.set("101.head.example.org", "exec_host", f"{socket.gethostname()}/0-3+node02/0-3")
    cluster.configure(tick_jobs="this-node")
    envelope = cluster.json("tick")
    data = envelope["data"]
    assert (data["running"], data["elsewhere"]) == (1, 8)
    assert cluster.qchkpt_calls() == ["101.head.example.org"]


def test_our_newest_generation_counts_as_the_last_checkpoint(cluster: Cluster) -> None:
    cluster.add_generation("103.head.example.org", ago=120)
    d = decisions(cluster.json("tick", "--dry-run"))["103.head.example.org"]
    assert d["action"] == "wait" and d["last_source"] == "last checkpoint (our spool)"


def test_a_refused_qchkpt_is_1_named_and_not_retried_at_the_next_minute(cluster: Cluster) -> None:
    cluster.wrap(QCHKPT_FAIL="1")
    first = cluster.tick()
    assert first.returncode == 1
    assert first.stderr == ""
    assert (
        "qchkpt FAILED      101.head.example.org: qchkpt failed (exit 159): "
        "qchkpt: Unauthorized Request  101.head.example.org (due:" in first.stdout
    )
    assert first.stdout.splitlines()[-1].endswith("0 qchkpt accepted, 6 failed, 1 reported")
    assert len(cluster.log_events("tick.qchkpt_failed")) == 6
    cluster.wrap()
    second = decisions(cluster.json("tick", "--dry-run"))["101.head.example.org"]
    assert second["action"] == "wait", second
    assert re.search(r"qchkpt refused [01]s ago, tried again after 5m00s", second["reason"]), second
    assert cluster.json("tick")["ok"] is True
    assert cluster.qchkpt_calls() == DUE  # only the refused round


@pytest.mark.parametrize(
    ("controls", "status", "words"),
    [
        ({"QSTAT_TRUNCATE": "700"}, 65, "printed something that is not complete XML"),
        ({"QSTAT_FAIL": "1"}, 69, "failed (exit 1): qstat: cannot connect to server head (errno=111)"),
    ],
)
def test_bad_or_no_qstat_output_is_one_line_and_changes_nothing(
    cluster: Cluster, controls: dict[str, str], status: int, words: str
) -> None:
    cluster.wrap(**controls)
    result = cluster.tick()
    assert result.returncode == status
    line = one_line(result.stderr)
    assert line.startswith(f"mom-checkpoint: {cluster.bin / 'qstat'} -t -x")
    assert words in line
    assert result.stdout == ""
    assert cluster.qchkpt_calls() == []
    assert not cluster.spool.exists()
    [failed] = cluster.log_events("tick.failed")
    assert failed["exit_status"] == status


def test_missing_qstat_or_qchkpt_is_69_naming_the_key(cluster: Cluster) -> None:
    cluster.configure(qstat=str(cluster.base / "nowhere" / "qstat"))
    result = cluster.tick()
    assert result.returncode == 69
    assert one_line(result.stderr) == (
        f"mom-checkpoint: {cluster.base / 'nowhere' / 'qstat'} (qstat) does not exist or is not executable\n"
    )
    cluster.configure(qchkpt="qchkpt-not-installed")
    result = cluster.tick("--dry-run")
    assert result.returncode == 69
    assert "qchkpt-not-installed not found in /usr/local/sbin" in one_line(result.stderr)
    assert "set qchkpt to its path" in result.stderr


@pytest.mark.parametrize(
    ("keys", "words"),
    [
        ({"tick_max_qchkpt": 0}, "tick_max_qchkpt: must be at least 1, got 0"),
        ({"checkpoint_interval": 0}, "checkpoint_interval: must be at least 1 (minutes)"),
        ({"tick_jobs": "some"}, "tick_jobs: must be one of 'this-node', 'all'"),
        ({"tick_advised_interval": True}, "tick_advised_interval: needs node_mtbf_h"),
        ({"node_mtbf_h": -1}, "node_mtbf_h: must be 0 (unknown) or more"),
        ({"qstat": ""}, "qstat: must not be empty"),
    ],
)
def test_bad_tick_keys_are_78_naming_the_key(cluster: Cluster, keys: dict[str, object], words: str) -> None:
    cluster.configure(**keys)
    result = cluster.tick()
    assert result.returncode == 78
    assert words in one_line(result.stderr)
    assert cluster.qchkpt_calls() == [] and not cluster.spool.exists()


def test_the_stand_ins_formats_parse_alike(cluster: Cluster) -> None:
    """qstat -x (what tick reads) and qstat -f -1 (the fixture's form) of the same jobs agree."""
    from mom_checkpoint.batch.torque import parse_qstat_xml

    env = {"QSTAT_FIXTURE": str(cluster.jobs), "PATH": "/bin:/usr/bin", "TZ": os.environ.get("TZ", "")}
    xml = subprocess.run([str(STANDINS / "qstat"), "-t", "-x"], env=env, capture_output=True, text=True)
    text = subprocess.run(
        [str(STANDINS / "qstat"), "-f", "-1", "-t"], env=env, capture_output=True, text=True
    )
    assert text.stdout == (FIXTURES / "qstat-f-1.txt").read_text()
    jobs = {j.job_id: j for j in parse_qstat_xml(xml.stdout).jobs}
    assert len(jobs) == 11
    assert jobs["102.head.example.org"].checkpoint == "enabled,periodic,interval=30"
    summary = subprocess.run([str(STANDINS / "qstat"), "-x"], env=env, capture_output=True, text=True)
    assert "108[].head.example.org" in {j.job_id for j in parse_qstat_xml(summary.stdout).jobs}
    wrapped = subprocess.run([str(STANDINS / "qstat"), "-f", "102.head.example.org"], env=env,
                             capture_output=True, text=True)  # fmt: skip
    assert "\n\tPBS_O_LOGNAME=alice," in wrapped.stdout  # prt_attr's 77-column wrapping


def test_a_job_whose_checkpoint_is_being_written_is_left_alone(cluster: Cluster) -> None:
    generation = cluster.add_generation("101.head.example.org", ago=3600)
    (generation.parent / ".incoming-abc123").mkdir(mode=0o700)
    d = decisions(cluster.json("tick", "--dry-run"))["101.head.example.org"]
    assert d["action"] == "wait" and d["reason"].startswith("a checkpoint of it is running now")


def test_the_advised_interval_for_jobs_that_ask_for_none_in_particular(cluster: Cluster) -> None:
    cluster.configure(tick_advised_interval=True, node_mtbf_h=24)
    cluster.add_generation("103.head.example.org", ago=3600, dump_s=300.0)  # enabled,periodic
    cluster.add_generation("101.head.example.org", ago=3600, dump_s=300.0)  # c=10
    d = decisions(cluster.json("tick", "--dry-run"))
    assert d["103.head.example.org"]["interval_source"] == "Daly's interval for a 300 s checkpoint"
    assert round(d["103.head.example.org"]["interval_s"] / 60, 1) == 116.7
    assert d["103.head.example.org"]["action"] == "wait"
    assert d["101.head.example.org"]["interval_source"] == "c=10"
    assert d["101.head.example.org"]["action"] == "qchkpt"
    assert d["102.head.example.org"]["interval_source"] == "interval=30"


def test_one_jobs_hostile_values_cost_only_that_job(cluster: Cluster) -> None:
    """Issue 12 #1 and #2: qsub -c enabled,periodic,interval=<400 digits> and a held job with U+FFFE
    in its variables (XML forbids it): every other due job still gets its qchkpt."""
    cluster.set("101.head.example.org", "Checkpoint", "enabled,periodic,interval=" + "9" * 400)
    cluster.set("110.head.example.org", "Variable_List", "PBS_O_HOME=/home/x,BOOM=\ufffe\uffff\ud7ff")
    result = cluster.tick()
    assert result.returncode == 0, result.stderr
    calls = cluster.qchkpt_calls()
    assert calls == [job for job in DUE if job != "101.head.example.org"], calls
    assert "101.head.example.org: due in" in cluster.tick("--dry-run").stdout  # about two years away
    [done] = cluster.log_events("tick.done")
    assert done["asked"] == len(DUE) - 1


def test_a_users_values_are_shown_not_obeyed(cluster: Cluster) -> None:
    """Issue 12 #1: qstat passes a user's Checkpoint value on as it is (XML allows C1 controls and
    direction overrides); tick prints it escaped. (C0 controls XML forbids arrive as '?'.)"""
    cluster.set("104.head.example.org", "Checkpoint", "periodic,\x9b2J\u202einterval=5\x1b")
    result = cluster.tick("--dry-run")
    assert result.returncode == 0, result.stderr
    assert not any(c in result.stdout for c in "\x9b\u202e\x1b"), result.stdout
    assert "\\x9b2J\\u202einterval=5?" in result.stdout, result.stdout
