"""What TORQUE says about its jobs: ``qstat -x`` read with xml.etree, the ``Checkpoint`` attribute read
the way pbs_server and pbs_mom read it. Pure functions: no process is run here.

``qstat -x`` (TORQUE 2.4 to 6.1) prints one line ``<Data><Job><Job_Id>42.head</Job_Id>...</Job></Data>``:
one element per attribute, the resources grouped (``<Resource_List><walltime>...``), values escaped,
times (``start_time``, ``checkpoint_time``) in seconds since the epoch; nothing at all when there is no
job. It is used rather than ``qstat -f -1`` because a value (a user's ``Variable_List``) can hold a
newline there and so forge attribute lines, and the text form prints times with ctime() in qstat's
time zone.
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence

import msgspec

from mom_checkpoint.platform.environment import Environment, child_environ, last_line
from mom_checkpoint.platform.errors import TorqueOutputError, TorqueUnavailable

QSTAT_TIMEOUT_S = 60.0  # qstat hangs while pbs_server is unreachable: give up after this
# TORQUE's client commands find the server in /var/spool/torque/server_name, or in these
PASSED_ENV = ("PBS_DEFAULT", "PBS_SERVER")

# XML 1.0 forbids these characters even escaped (anything but its Char production); a user's
# environment variable or job name may hold them, and pbs_server prints them as they are.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_DECLARATION = re.compile(r"<\?xml[^>]*\?>")
_JOB = re.compile(r"<Job>.*?</Job>", re.S)  # values are escaped: "</Job>" only ever closes a job
_ATOI = re.compile(r"\s*([+-]?\d+)")
MAX_INTERVAL_MIN = 10**6  # about two years: a longer c=N or interval=N is taken as this


class QstatOutputError(ValueError):
    """qstat's output cannot be read."""


class TorqueJob(msgspec.Struct, frozen=True):
    job_id: str
    state: str  # job_state: Q, R, H, E, C, ...
    checkpoint: str | None  # the Checkpoint attribute (qsub -c), None when unset
    checkpoint_time: float | None  # start of the job's last checkpoint (pbs_mom sets it on success)
    start_time: float | None
    exec_host: str | None  # node01/0-3+node02/0-3
    owner: str | None = None

    @property
    def running(self) -> bool:
        return self.state == "R"

    @property
    def mother_superior(self) -> str | None:
        """The first host of exec_host: its pbs_mom runs the checkpoint script."""
        if not self.exec_host:
            return None
        host = self.exec_host.split("+", 1)[0].split("/", 1)[0].strip()
        return host or None


class QstatJobs(msgspec.Struct, frozen=True):
    """What ``qstat -x`` said: the jobs that could be read, and why each of the others could not."""

    jobs: list[TorqueJob]
    unreadable: list[str]


def parse_qstat_xml(text: str) -> QstatJobs:
    """The jobs in ``qstat -x`` output. A job whose values make it unreadable is set aside with the
    reason, the others are read; QstatOutputError when the output as a whole cannot be (cut short,
    not qstat's)."""
    cleaned = _DECLARATION.sub("", _NOT_XML.sub("?", text))
    if not cleaned.strip():
        return QstatJobs([], [])  # no jobs at all: qstat prints nothing
    try:
        # qstat's output, from pbs_server: every value is escaped (MXMLSetVal), no entities or DTD.
        root = ET.fromstring(f"<qstat>{cleaned}</qstat>")  # noqa: S314
    except ET.ParseError as exc:
        framed = cleaned.strip()
        if not (framed.startswith("<Data>") and framed.endswith("</Data>")):
            raise QstatOutputError(f"qstat -x printed something that is not complete XML ({exc})") from None
        return _job_by_job(framed)
    return QstatJobs(_jobs_of(root), [])


def _job_by_job(framed: str) -> QstatJobs:
    """One job's values broke the document: read every <Job> on its own."""
    jobs, unreadable = [], []
    for number, fragment in enumerate(_JOB.findall(framed), start=1):
        try:
            jobs.append(_job(ET.fromstring(fragment)))  # noqa: S314
        except (ET.ParseError, QstatOutputError) as exc:
            unreadable.append(f"job #{number} of qstat's output: {exc}")
    return QstatJobs(_unique(jobs, unreadable), unreadable)


def _unique(jobs: list[TorqueJob], unreadable: list[str]) -> list[TorqueJob]:
    seen: dict[str, TorqueJob] = {}
    for job in jobs:
        if job.job_id in seen:
            unreadable.append(f"job {job.job_id} listed twice: the first one taken")
            continue
        seen[job.job_id] = job
    return list(seen.values())


def _jobs_of(root: ET.Element) -> list[TorqueJob]:
    stray = " ".join(t.strip() for t in [root.text or "", *(d.tail or "" for d in root)] if t.strip())
    if stray:
        raise QstatOutputError(f"qstat -x printed text outside <Data>: {stray[:60]!r}")
    jobs: list[TorqueJob] = []
    for data in root:
        if data.tag != "Data":
            raise QstatOutputError(f"qstat -x printed <{data.tag}> where <Data> belongs")
        for element in data:
            if element.tag != "Job":
                raise QstatOutputError(f"qstat -x printed <{element.tag}> inside <Data>, not <Job>")
            jobs.append(_job(element))
    seen: set[str] = set()
    for job in jobs:
        if job.job_id in seen:
            raise QstatOutputError(f"qstat -x listed job {job.job_id} twice")
        seen.add(job.job_id)
    return jobs


def _job(element: ET.Element) -> TorqueJob:
    values = {child.tag: (child.text or "").strip() for child in element if len(child) == 0}
    job_id = values.get("Job_Id", "")
    if not job_id:
        raise QstatOutputError("qstat -x printed a <Job> without a <Job_Id>")
    state = values.get("job_state", "")
    if not state:
        raise QstatOutputError(f"qstat -x printed job {job_id} without a job_state")
    return TorqueJob(
        job_id=job_id,
        state=state,
        checkpoint=values.get("Checkpoint") or None,
        checkpoint_time=epoch(values.get("checkpoint_time")),
        start_time=epoch(values.get("start_time")),
        exec_host=values.get("exec_host") or None,
        owner=values.get("Job_Owner") or None,
    )


def epoch(value: str | None) -> float | None:
    """A time as qstat gives it: seconds since the epoch (-x), or a ctime() string (-f); else None."""
    if not value:
        return None
    if value.strip().isdigit():
        seconds = float(value)
        return seconds if seconds > 0 else None
    try:
        return time.mktime(time.strptime(" ".join(value.split()), "%a %b %d %H:%M:%S %Y"))
    except ValueError:
        return None


# -- the Checkpoint attribute ----------------------------------------------------------------------


class CheckpointSpec(msgspec.Struct, frozen=True):
    """The job's ``qsub -c`` value as TORQUE acts on it.

    pbs_mom sets up periodic checkpoints for a value holding ``c`` or ``periodic``, every ``c=N`` or
    else ``interval=N`` minutes, else ``$checkpoint_interval`` (start_exec.c, checkpoint.c); an interval
    of 0 sets up none. pbs_server passes ``qchkpt`` on only for a value holding ``s``, ``c`` or
    ``enabled`` (req_holdjob.c): ``periodic,interval=10`` alone is refused "job is not checkpointable".
    """

    raw: str
    asks_periodic: bool
    interval_min: int | None  # from c=N or interval=N; None: the node's $checkpoint_interval
    qchkpt_allowed: bool
    interval_key: str = ""  # "c" or "interval": where interval_min comes from

    @property
    def periodic(self) -> bool:
        return self.asks_periodic and (self.interval_min is None or self.interval_min > 0)


def parse_checkpoint(value: str | None) -> CheckpointSpec:
    items = [item.strip() for item in (value or "").split(",")]
    asks_periodic = _has(items, "c") or _has(items, "periodic")
    key, interval = "c", _value(items, "c")
    if interval is None:
        key, interval = "interval", _value(items, "interval")
    return CheckpointSpec(
        raw=value or "",
        asks_periodic=asks_periodic,
        interval_min=interval,
        qchkpt_allowed=_has(items, "s") or _has(items, "c") or _has(items, "enabled"),
        interval_key=key if interval is not None else "",
    )


def _matches(item: str, key: str) -> bool:
    """TORQUE's csv_find_string: the item starts with the key and no letter follows it."""
    return item.startswith(key) and (len(item) == len(key) or not item[len(key)].isalpha())


def _has(items: Sequence[str], key: str) -> bool:
    return any(_matches(item, key) for item in items)


def _value(items: Sequence[str], key: str) -> int | None:
    """TORQUE's csv_find_value then atoi(): the number after the ``=`` of the first item that matches
    the key (0 if it is not a number), None when that item has no ``=`` or no item matches."""
    for item in items:
        if _matches(item, key):
            _name, sep, rest = item.partition("=")
            if not sep:
                return None
            match = _ATOI.match(rest)
            if not match:
                return 0
            digits = match.group(1).lstrip("+-").lstrip("0") or "0"
            if len(digits) > 7:  # a number no int could hold as minutes: not read as one
                return MAX_INTERVAL_MIN if not match.group(1).startswith("-") else 0
            return max(-MAX_INTERVAL_MIN, min(int(match.group(1)), MAX_INTERVAL_MIN))
    return None


def short_host(name: str) -> str:
    return name.split(".", 1)[0].lower()


def torque_environ(environ: Mapping[str, str]) -> dict[str, str]:
    return {**child_environ(), **{k: environ[k] for k in PASSED_ENV if environ.get(k)}}


def read_jobs(qstat: str, env: Environment, job_id: str | None = None) -> QstatJobs:
    """Every job qstat lists (``qstat -t -x``), or one job, and those it could not read (one job's
    values never cost the others); TorqueUnavailable or TorqueOutputError for the output as a whole."""
    argv = [qstat, "-t", "-x", *([job_id] if job_id else [])]
    try:
        completed = env.runner.run(argv, timeout_s=QSTAT_TIMEOUT_S, env=torque_environ(env.environ))
    except OSError as exc:
        raise TorqueUnavailable(f"cannot run {qstat}: {exc.strerror or exc}") from None
    if completed.timed_out:
        raise TorqueUnavailable(
            f"{qstat} did not answer within {QSTAT_TIMEOUT_S:g}s: is pbs_server up and reachable?"
        )
    if completed.returncode != 0:
        detail = last_line(completed.stderr) or last_line(completed.stdout) or "no message"
        raise TorqueUnavailable(f"{' '.join(argv)} failed (exit {completed.returncode}): {detail}")
    try:
        return parse_qstat_xml(completed.stdout)
    except QstatOutputError as exc:
        raise TorqueOutputError(f"{' '.join(argv)}: {exc}") from None
