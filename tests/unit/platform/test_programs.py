"""find_program: a program the node needs, never found through the caller's PATH alone, and a missing
one named with the setting that fixes it and the right error (69 either way)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mom_checkpoint.platform.errors import CheckpointerMissing, ProgramMissing
from mom_checkpoint.platform.programs import find_program
from mom_checkpoint.platform.status import ExitStatus


def test_a_client_that_is_missing_is_not_called_a_checkpointer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ProgramMissing, match="set qalter to its path") as raised:
        find_program("no-such-qalter-here", "qalter")
    assert type(raised.value) is ProgramMissing and raised.value.exit_status == ExitStatus.UNAVAILABLE
    with pytest.raises(CheckpointerMissing, match=r"backends\.criu"):
        find_program("no-such-criu-here", "backends.criu", missing=CheckpointerMissing)


def test_a_path_must_be_an_executable_file(tmp_path: Path) -> None:
    script = tmp_path / "qstat"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    with pytest.raises(ProgramMissing, match=r"\(qstat\) does not exist or is not executable"):
        find_program(str(script), "qstat")
    script.chmod(0o755)
    assert find_program(str(script), "qstat") == str(script)


def test_only_the_standard_folders_without_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under pbs_mom, cron or systemd (use_path=False) a program found only on the caller's PATH is not
    taken; sh is in the standard folders either way."""
    only_here = tmp_path / "only-on-path"
    only_here.write_text("#!/bin/sh\n")
    only_here.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_program("only-on-path", "x") == str(only_here)
    with pytest.raises(ProgramMissing):
        find_program("only-on-path", "x", use_path=False)
    assert find_program("sh", "x", use_path=False).endswith("/sh")
