"""tick and advise through main() with an injected Environment: a fake runner stands in for qstat and
qchkpt, so no process runs. What pbs_mom's admin sees: the status, one stderr line, nothing on disk."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from mom_checkpoint.cli import checkpoint
from mom_checkpoint.platform.environment import Completed, Environment, Runner
from mom_checkpoint.platform.status import ExitStatus

RUNNING = (
    "<Data><Job><Job_Id>42.head</Job_Id><job_state>R</job_state><Checkpoint>c=10</Checkpoint>"
    "<exec_host>node01/0</exec_host><start_time>1000</start_time></Job></Data>\n"
)


class FakeTorque(Runner):
    """Answers qstat with ``qstat`` (text, exit status) and qchkpt with ``qchkpt``; records the calls."""

    def __init__(self, qstat: tuple[str, int] = (RUNNING, 0), qchkpt: tuple[str, int] = ("", 0)) -> None:
        self.answers = {"qstat": qstat, "qchkpt": qchkpt}
        self.calls: list[list[str]] = []
        self.envs: list[Mapping[str, str] | None] = []

    def run(self, argv: Sequence[str], **kwargs: Any) -> Completed:
        self.calls.append(list(argv))
        self.envs.append(kwargs.get("env"))
        out, status = self.answers[Path(argv[0]).name]
        stdout, stderr = (out, "") if status == 0 else ("", out)
        return Completed(tuple(argv), status, stdout, stderr, 0.01, False)


@pytest.fixture
def node(tmp_path: Path) -> Callable[..., tuple[int, str, str, FakeTorque]]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("qstat", "qchkpt"):
        (bindir / name).write_text("#!/bin/sh\nexit 99\n")  # never run: the fake runner answers
        (bindir / name).chmod(0o755)
    config = tmp_path / "config.toml"
    config.write_text(
        f'spool_dir = "{tmp_path / "spool"}"\nlog_file = "{tmp_path / "log"}"\n'
        f'qstat = "{bindir / "qstat"}"\nqchkpt = "{bindir / "qchkpt"}"\ntick_jobs = "all"\n'
    )
    config.chmod(0o644)

    def call(*argv: str, runner: FakeTorque | None = None, environ: dict[str, str] | None = None) -> Any:
        fake = runner or FakeTorque()
        out, err = io.StringIO(), io.StringIO()
        env = Environment(
            stdout=out,
            stderr=err,
            environ={"MOM_CHECKPOINT_CONFIG": str(config), "PATH": "/bin:/usr/bin", **(environ or {})},
            runner=fake,
            clock=lambda: 1000.0 + 601,
        )
        return checkpoint.main(list(argv), env), out.getvalue(), err.getvalue(), fake

    return call


def test_a_due_job_is_qchkpted_with_a_clean_environment(
    node: Callable[..., tuple[int, str, str, FakeTorque]], tmp_path: Path
) -> None:
    status, out, err, fake = node("tick", environ={"PBS_DEFAULT": "head", "LD_PRELOAD": "/evil.so"})
    assert (status, err) == (ExitStatus.OK, "")
    assert [Path(c[0]).name for c in fake.calls] == ["qstat", "qchkpt"]
    assert fake.calls[0][1:] == ["-t", "-x"] and fake.calls[1][1:] == ["42.head"]
    for env in fake.envs:
        assert env is not None and env["PBS_DEFAULT"] == "head" and "LD_PRELOAD" not in env
    assert out.startswith("qchkpt             42.head: accepted (due: job start 10m01s ago")


@pytest.mark.parametrize(
    ("qstat", "status", "words"),
    [
        (("<Data><Job>", 0), ExitStatus.DATA_ERROR, "qstat -x printed something that is not complete XML"),
        (("pbs_iff: cannot connect to host\n", 1), ExitStatus.UNAVAILABLE, "failed (exit 1): pbs_iff"),
    ],
)
def test_qstat_trouble_is_one_line_and_writes_nothing(
    node: Callable[..., tuple[int, str, str, FakeTorque]],
    tmp_path: Path,
    qstat: tuple[str, int],
    status: ExitStatus,
    words: str,
) -> None:
    code, out, err, fake = node("tick", runner=FakeTorque(qstat=qstat))
    assert code == status and out == ""
    assert err.count("\n") == 1 and words in err
    assert len(fake.calls) == 1
    assert not (tmp_path / "spool").exists()


def test_a_failed_qchkpt_is_1(node: Callable[..., tuple[int, str, str, FakeTorque]]) -> None:
    refused = FakeTorque(qchkpt=("qchkpt: Unauthorized Request  42.head\n", 159))
    code, out, err, _ = node("tick", runner=refused)
    assert code == ExitStatus.CHECKS_FAILED and err == ""
    assert out.startswith(
        "qchkpt FAILED      42.head: qchkpt failed (exit 159): qchkpt: Unauthorized Request"
    )


def test_json_of_a_dry_run(node: Callable[..., tuple[int, str, str, FakeTorque]], tmp_path: Path) -> None:
    code, out, _, fake = node("tick", "--dry-run", "--json")
    assert code == ExitStatus.OK
    envelope = json.loads(out)
    assert envelope["command"] == "tick" and envelope["data"]["dry_run"] is True
    [decision] = envelope["data"]["decisions"]
    assert (decision["job_id"], decision["action"], decision["result"]) == ("42.head", "qchkpt", "")
    assert [Path(c[0]).name for c in fake.calls] == ["qstat"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "config.toml"]  # not even a log


@pytest.mark.parametrize("command", ["tick", "advise"])
def test_help_has_its_usage_examples_and_statuses(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert checkpoint.main([command, "--help"]) == 0
    helptext = capsys.readouterr().out
    assert helptext.startswith(f"usage: mom-checkpoint {command} [-h]")
    assert f"examples:\n  mom-checkpoint {command}" in helptext
    assert "exit status: 0 " in helptext and "64 usage error" in helptext


def test_a_tick_that_fails_for_any_reason_says_so_in_the_log(
    node: Callable[..., tuple[int, str, str, FakeTorque]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mom_checkpoint.commands import tick

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(tick, "plan", broken)
    status, _out, err, _fake = node("tick")
    assert status == ExitStatus.SOFTWARE and "internal error: RuntimeError: a bug" in err
    events = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    assert [e["event"] for e in events if e["event"] == "internal_error"] == ["internal_error"]
