"""Exit statuses: every error class maps to its documented status and one stderr line (no processes run).

The programs' main() takes an injectable Environment: these tests give it string streams and a scratch
config and spool, and check what pbs_mom would see: the status and the single line it makes the job
comment, and that a refused call leaves nothing on disk.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from mom_checkpoint import __version__
from mom_checkpoint.cli import checkpoint, restart
from mom_checkpoint.cli.common import run_program
from mom_checkpoint.platform import errors
from mom_checkpoint.platform.environment import Environment
from mom_checkpoint.platform.status import ExitStatus

README = Path(__file__).resolve().parents[3] / "README.md"


def _error_classes() -> list[type[errors.Error]]:
    found, todo = [], [errors.Error]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: c.__name__)


class Scratch:
    """A fake environment with its own config file and (not yet existing) spool."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.spool = base / "spool"
        self.config = base / "config.toml"
        self.write_config("")
        self.stdout, self.stderr = io.StringIO(), io.StringIO()

    def write_config(self, extra: str) -> None:
        self.config.write_text(
            f'spool_dir = "{self.spool}"\nlog_file = "{self.base / "log"}"\n'
            f'torque_checkpoint_roots = ["{self.base / "ck"}"]\n{extra}'
        )
        self.config.chmod(0o644)

    def env(self, **overrides: Callable[..., object]) -> Environment:
        return Environment(
            stdout=self.stdout,
            stderr=self.stderr,
            environ={"MOM_CHECKPOINT_CONFIG": str(self.config), "PATH": "/bin:/usr/bin"},
            **overrides,  # type: ignore[arg-type]
        )

    def line(self) -> str:
        text = self.stderr.getvalue()
        assert text.count("\n") == 1 and text.endswith("\n"), repr(text)
        return text

    def disk(self) -> list[str]:
        return sorted(str(p.relative_to(self.base)) for p in self.base.rglob("*") if p.name != "log")


@pytest.fixture
def scratch(tmp_path: Path) -> Scratch:
    return Scratch(tmp_path)


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_every_error_class_becomes_its_status_and_one_line(cls: type[errors.Error]) -> None:
    out = io.StringIO()

    def body() -> int:
        raise cls("first line\nsecond   line")

    status = run_program("prog", body, Environment(stdout=io.StringIO(), stderr=out))
    assert status == cls.exit_status
    assert out.getvalue().startswith("prog: ") and out.getvalue().count("\n") == 1


def test_every_status_is_documented_in_the_readme() -> None:
    table = dict(re.findall(r"^\| (\d+) \| (.+) \|$", README.read_text(), re.M))
    missing = [
        s
        for s in ExitStatus
        if s not in (ExitStatus.OK, ExitStatus.CHECKS_FAILED) and str(s.value) not in table
    ]
    assert not missing, f"README's exit code table lacks {missing}"


def test_statuses_are_distinct_and_sysexits_style() -> None:
    values = [s.value for s in ExitStatus]
    assert len(values) == len(set(values))
    assert all(v in (0, 1) or 64 <= v <= 113 for v in values)  # below 128+N, a signal's


def test_a_bug_is_70_with_one_line_not_a_traceback(scratch: Scratch) -> None:
    def broken_clock() -> float:
        raise RuntimeError("clock exploded")

    status = checkpoint.main(["4711", "42.head"], scratch.env(monotonic=broken_clock))
    assert status == ExitStatus.SOFTWARE
    assert "internal error: RuntimeError: clock exploded" in scratch.line()


@pytest.mark.parametrize(
    ("argv", "status", "words"),
    [
        ([], ExitStatus.USAGE, "no job and no command given"),
        (["1", "2", "3"], ExitStatus.USAGE, "expected 8 arguments"),
        (["4711", "../x"], ExitStatus.USAGE, "not safe as a file name"),
        (["4711", "a/b"], ExitStatus.USAGE, "not safe as a file name"),
        (["4711", ""], ExitStatus.USAGE, "JOB_ID is empty"),
        (["0x12", "42.head"], ExitStatus.USAGE, "JOB_PID must be a process id"),
        (["1", "42.head"], ExitStatus.USAGE, "above 1"),
        (["4711", "42.head", "u", "g", "rel/dir", "n", "0", "-"], ExitStatus.USAGE, "absolute path"),
        (["4711", "42.head", "u", "g", "/d", "n", "9", "-"], ExitStatus.USAGE, "SIGNAL must be 0"),
        (["4711", "42.head", "u", "g", "/d", "n", "0", "many"], ExitStatus.USAGE, "DEPTH must be"),
        (["4711", "42.head", "u;id", "g", "/d", "n", "0", "-"], ExitStatus.USAGE, "not a user or group"),
        (["4711", "-", "u", "g", "/d", "n", "0", "-"], ExitStatus.USAGE, "JOB_ID is missing"),
        (["frobnicate"], ExitStatus.USAGE, "expected 8 arguments"),
    ],
)
def test_usage_errors_change_nothing(
    scratch: Scratch, argv: list[str], status: ExitStatus, words: str
) -> None:
    assert checkpoint.main(argv, scratch.env()) == status
    assert words in scratch.line()
    assert scratch.disk() == ["config.toml"]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("colour = 'blue'\n", "colour"),
        ("keep = 'two'\n", "keep"),
        ("max_concurrent = -1\n", "max_concurrent"),
        ("backend = 'dmtcp'\n", "backend"),
        ("[backends.criu]\nrun_as = 'nobody'\n", "run_as"),
        ("keep = [\n", "config"),
        ("[backends.criu]\nextra_args = ['--file-locks', '--auto-dedup']\n", "extra_args[1]"),
        ("[backends.criu]\nextra_args = ['--prev-images-dir=../1']\n", "whole image"),
        ("[backends.criu]\nextra_args = ['-D/tmp/elsewhere']\n", "where the image goes"),
        ("[backends.criu]\nextra_args = ['--leave-running']\n", "extra_args[0]"),
    ],
)
def test_bad_config_is_78_naming_the_key(scratch: Scratch, extra: str, words: str) -> None:
    scratch.write_config(extra)
    assert checkpoint.main(["4711", "42.head"], scratch.env()) == ExitStatus.CONFIG
    assert words in scratch.line()
    assert not scratch.spool.exists()


def test_every_bad_value_of_a_config_is_named_on_its_one_line(scratch: Scratch) -> None:
    """An admin fixes a config in one go: all its bad values are named, not only the first."""
    scratch.write_config("keep = 0\ntimeout_s = -1\nmax_concurrent = 0\n")
    assert checkpoint.main(["4711", "42.head"], scratch.env()) == ExitStatus.CONFIG
    line = scratch.line()
    named = ("keep: must be", "timeout_s: must be", "max_concurrent: must be")
    assert all(key in line for key in named), line


def test_a_process_that_does_not_exist_is_66_and_writes_nothing(scratch: Scratch) -> None:
    pid = _free_pid()
    assert checkpoint.main([str(pid), "42.head"], scratch.env()) == ExitStatus.NO_PROCESS
    assert str(pid) in scratch.line()
    assert not scratch.spool.exists()


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert checkpoint.main(["--version"]) == 0
    assert capsys.readouterr().out == f"mom-checkpoint {__version__}\n"
    assert checkpoint.main(["--help"]) == 0
    helptext = capsys.readouterr().out
    assert "SESSION_ID JOB_ID EUSER EGROUP CHECKPOINT_DIR CHECKPOINT_NAME SIGNAL DEPTH" in helptext
    assert all(f"{s.value:>3}  " in helptext for s in ExitStatus)
    assert restart.main(["--help"]) == 0
    assert "--job JOB_ID" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["list", "show", "verify", "prune", "doctor", "config"])
def test_every_subcommand_has_its_own_usage_examples_and_statuses(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert checkpoint.main([command, "--help"]) == 0
    helptext = capsys.readouterr().out
    assert helptext.startswith(f"usage: mom-checkpoint {command} [-h]")
    assert f"examples:\n  mom-checkpoint {command}" in helptext
    assert "exit status: 0 " in helptext and "64 usage error" in helptext


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["1", "2", "3"], "expected"),
        (["--job", "../x"], "not safe as a file name"),
        (["--job", "42.head", "--image", "/x"], "not allowed with"),
    ],
)
def test_restart_usage_errors(scratch: Scratch, argv: list[str], words: str) -> None:
    assert restart.main(argv, scratch.env()) == ExitStatus.USAGE
    assert words in scratch.line()
    assert scratch.disk() == ["config.toml"]


def test_restart_of_an_unknown_job_is_66(scratch: Scratch) -> None:
    scratch.write_config('backend = "psnc"\n[backends.psnc]\nresume = "/bin/true"\n')
    status = restart.main(["--job", "404.head"], scratch.env())
    assert status == ExitStatus.NO_PROCESS
    assert "job 404.head has no complete checkpoint" in scratch.line()


def _free_pid() -> int:
    pid = 4_000_000
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


def test_every_status_meaning_is_one_safe_attribute_value() -> None:
    """Issue 25 #5: the meanings are what reaches qalter -W (an attribute list): no comma, no '=',
    nothing but printable ASCII, one for every failure status."""
    from mom_checkpoint.platform.status import MEANING, ExitStatus, meaning

    failures = [s for s in ExitStatus if s not in (ExitStatus.OK, ExitStatus.CHECKS_FAILED)]
    assert set(MEANING) == set(failures)
    for status in ExitStatus:
        text = meaning(status)
        assert text and text.isascii() and text.isprintable() and not set(text) & set(",=\"'"), text


def test_every_subcommand_is_in_the_usage_line_and_the_readme() -> None:
    """Issue 26 #7: vault-sync was missing from --help's usage line and the README's admin table (the
    list was kept by hand)."""
    from mom_checkpoint.cli.admin import COMMANDS
    from mom_checkpoint.cli.checkpoint import build_parser

    usage = build_parser().format_usage()
    rows = re.findall(r"^\| `([a-z-]+)[ `]", README.read_text(), re.M)
    for command in COMMANDS:
        assert command in usage, command
        assert command in rows, f"{command} has no row in the README's admin table"


def test_each_reason_a_restart_fails_has_a_code_of_its_own() -> None:
    """TORQUE records a failing $restart_script's code as the job's exit status: an admin reading the
    accounting must tell a PID squatted on the node from a copy not yet in the vault from a busy job."""
    from mom_checkpoint.platform import errors

    reasons = [
        errors.VerificationFailed,
        errors.NoCheckpoint,
        errors.CheckpointerMissing,
        errors.StorageIOError,
        errors.Busy,
        errors.Refused,
        errors.CheckpointerFailed,
        errors.TimedOut,
        errors.PidInUse,
        errors.NotYetInVault,
        errors.CpuIncompatible,
    ]
    codes = [reason.exit_status for reason in reasons]
    assert len(set(codes)) == len(codes), dict(zip([r.__name__ for r in reasons], codes, strict=True))
    assert errors.PidInUse.exit_status == 82 and errors.NotYetInVault.exit_status == 83
    assert errors.CpuIncompatible.exit_status == 85
