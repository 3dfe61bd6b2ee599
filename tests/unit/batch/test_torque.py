"""Reading qstat -x and the Checkpoint attribute the way TORQUE itself reads them (pure functions)."""

from __future__ import annotations

import calendar
import time

import pytest

from mom_checkpoint.batch.torque import (
    MAX_INTERVAL_MIN,
    QstatOutputError,
    epoch,
    parse_checkpoint,
    parse_qstat_xml,
)

ONE_JOB = (
    "<Data><Job><Job_Id>42.head</Job_Id><Job_Name>sim</Job_Name><Job_Owner>alice@login1</Job_Owner>"
    "<resources_used><cput>00:01:00</cput><walltime>00:10:00</walltime></resources_used>"
    "<job_state>R</job_state><Checkpoint>c=10</Checkpoint><exec_host>node01/0-3+node02/0-3</exec_host>"
    "<Resource_List><nodes>2:ppn=4</nodes></Resource_List>"
    "<Variable_List>X=&lt;a &amp; b&gt;,Y=&apos;q&apos;</Variable_List>"
    "<start_time>1795545603</start_time><checkpoint_time>1795548005</checkpoint_time></Job></Data>\n"
)


def test_a_job_of_qstat_x() -> None:
    [job] = parse_qstat_xml(ONE_JOB).jobs
    assert job.job_id == "42.head" and job.state == "R" and job.running
    assert job.checkpoint == "c=10"
    assert job.start_time == 1795545603.0 and job.checkpoint_time == 1795548005.0
    assert job.mother_superior == "node01"
    assert job.owner == "alice@login1"


def test_no_jobs_is_no_output() -> None:
    assert parse_qstat_xml("").jobs == []
    assert parse_qstat_xml("\n").jobs == []
    assert parse_qstat_xml("<Data></Data>\n").jobs == []


def test_a_users_control_characters_do_not_break_the_listing() -> None:
    # MXML escapes & < > " ' but passes control characters through; XML 1.0 forbids them.
    text = ONE_JOB.replace("X=&lt;a", "X=\x01\x1b[31m&lt;a")
    assert parse_qstat_xml(text).jobs[0].job_id == "42.head"


def test_several_servers_and_a_declaration() -> None:
    other = ONE_JOB.replace("42.head", "7.other")
    jobs = parse_qstat_xml('<?xml version="1.0"?>' + ONE_JOB + other).jobs
    assert [j.job_id for j in jobs] == ["42.head", "7.other"]


def test_unset_attributes_are_none() -> None:
    [job] = parse_qstat_xml("<Data><Job><Job_Id>9.h</Job_Id><job_state>Q</job_state></Job></Data>").jobs
    assert (job.checkpoint, job.checkpoint_time, job.start_time, job.exec_host) == (None, None, None, None)
    assert not job.running and job.mother_superior is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (ONE_JOB[:300], "not complete XML"),
        ("Job Id: 42.head\n    job_state = R\n", "text outside <Data>: 'Job Id: 42.head"),
        (ONE_JOB + "qstat: something\n", "text outside <Data>: 'qstat: something'"),
        ("<Jobs><Job/></Jobs>", "<Jobs> where <Data> belongs"),
        ("<Data><Queue/></Data>", "<Queue> inside <Data>"),
        ("<Data><Job><job_state>R</job_state></Job></Data>", "without a <Job_Id>"),
        ("<Data><Job><Job_Id>1.h</Job_Id></Job></Data>", "job 1.h without a job_state"),
        (ONE_JOB + ONE_JOB, "listed job 42.head twice"),
    ],
)
def test_output_that_cannot_be_read_is_refused_naming_the_problem(text: str, words: str) -> None:
    with pytest.raises(QstatOutputError, match="qstat -x") as caught:
        parse_qstat_xml(text)
    assert words in str(caught.value)


def test_times_as_qstat_prints_them() -> None:
    assert epoch("1795545603") == 1795545603.0
    assert epoch(None) is None and epoch("") is None and epoch("0") is None and epoch("soon") is None
    local = time.strptime("Tue Nov 24 18:40:03 2026", "%a %b %d %H:%M:%S %Y")
    assert epoch("Tue Nov 24 18:40:03 2026") == time.mktime(local)
    early = time.strptime("2026-11-03 08:00", "%Y-%m-%d %H:%M")
    assert epoch("Tue Nov  3 08:00:00 2026") == time.mktime(early)
    assert calendar.timegm(time.gmtime(epoch("1795545603") or 0)) == 1795545603


@pytest.mark.parametrize(
    ("value", "periodic", "interval", "qchkpt"),
    [
        ("c=10", True, 10, True),
        ("c", True, None, True),
        ("enabled,periodic,interval=10", True, 10, True),
        ("enabled,periodic", True, None, True),
        ("periodic,interval=10", True, 10, False),  # qchkpt: "job is not checkpointable"
        ("periodic", True, None, False),
        ("shutdown,periodic,interval=5", True, 5, False),
        ("s", False, None, True),
        ("enabled", False, None, True),
        ("enabled,interval=10", False, 10, True),  # an interval alone is not periodic (pbs_mom)
        ("c=5,interval=10", True, 5, True),  # c=N first, as pbs_mom looks
        ("interval=10,c=5", True, 5, True),
        ("c,interval=15", True, 15, True),
        (" enabled , periodic , interval=20", True, 20, True),
        ("c=0", False, 0, True),  # interval 0: pbs_mom sets no timer
        ("c=abc", False, 0, True),  # atoi("abc") == 0
        ("c=10min", True, 10, True),  # atoi stops at the first non-digit
        ("checkpoint", False, None, False),  # "c" must not be followed by a letter
        ("n", False, None, False),
        ("u", False, None, False),
        ("none", False, None, False),
        ("", False, None, False),
        (None, False, None, False),
        ("depth=3,enabled,periodic,dir=/scratch/ck", True, None, True),
    ],
)
def test_checkpoint_attribute_as_torque_reads_it(
    value: str | None, periodic: bool, interval: int | None, qchkpt: bool
) -> None:
    spec = parse_checkpoint(value)
    assert (spec.periodic, spec.interval_min, spec.qchkpt_allowed) == (periodic, interval, qchkpt)


def test_a_job_that_breaks_the_xml_costs_only_that_job() -> None:
    """A value pbs_server printed as it was (an entity XML does not know, a character XML forbids):
    the other jobs are read, the broken one is named."""
    good = "<Job><Job_Id>1.h</Job_Id><job_state>R</job_state></Job>"
    broken = "<Job><Job_Id>2.h</Job_Id><job_state>R</job_state><Variable_List>A=&bogus;</Variable_List></Job>"
    forbidden = "<Job><Job_Id>3.h</Job_Id><job_state>R</job_state><Job_Name>x\ufffe\x01y</Job_Name></Job>"
    listed = parse_qstat_xml(f"<Data>{good}{broken}{forbidden}</Data>\n")
    assert [j.job_id for j in listed.jobs] == ["1.h", "3.h"]
    assert len(listed.unreadable) == 1 and "job #2" in listed.unreadable[0], listed.unreadable


def test_an_interval_no_number_can_hold_is_bounded() -> None:
    huge = parse_checkpoint("enabled,periodic,interval=" + "9" * 400)
    assert huge.interval_min == MAX_INTERVAL_MIN and huge.periodic
    assert parse_checkpoint("c=-" + "9" * 400).interval_min == 0
    assert parse_checkpoint("c=00000000000015").interval_min == 15
    assert parse_checkpoint("c=-5").interval_min == -5 and not parse_checkpoint("c=-5").periodic
