"""What the hook does while its checkpointer runs (commands.checkpoint.meanwhile.WhileItRuns): the
checkpointer's pid recorded at once, its version asked in a thread of its own, the post-dump modules
imported; the version is the answer that thread got, and nothing of it ever ends the checkpointer or
fails the call."""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from mom_checkpoint.commands.checkpoint.meanwhile import AFTER_THE_DUMP, WhileItRuns
from mom_checkpoint.platform.environment import Runner


class FakeIncoming:
    def __init__(self) -> None:
        self.recorded: list[int] = []

    def record_checkpointer(self, pid: int) -> None:
        self.recorded.append(pid)


@pytest.fixture
def imported(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The modules _WhileItRuns imports (the test session has them loaded already: recorded instead)."""
    names: list[str] = []

    def record(name: str) -> ModuleType:
        names.append(name)
        return ModuleType(name)

    monkeypatch.setattr(importlib, "import_module", record)
    return names


def test_the_version_is_asked_and_the_modules_imported_while_the_checkpointer_runs(
    imported: list[str], tmp_path: Path
) -> None:
    incoming = FakeIncoming()
    asked: list[str] = []
    answered = tmp_path / "asked"

    def ask() -> str:
        asked.append(threading.current_thread().name)
        answered.touch()
        return "4.1.1"

    meanwhile = WhileItRuns(incoming, ask)  # type: ignore[arg-type]
    # a checkpointer that ends only once its version was asked: asked while it ran, or it times out
    script = f"while [ ! -e {answered} ]; do sleep 0.01; done"
    completed = Runner().run(["/bin/sh", "-c", script], timeout_s=60, on_start=meanwhile)
    assert (completed.returncode, completed.timed_out) == (0, False), (
        "the version was asked after the checkpointer, not while it ran"
    )
    assert meanwhile.version(timeout_s=10) == "4.1.1"
    assert asked == ["checkpointer-version"]
    assert imported == list(AFTER_THE_DUMP)
    assert len(incoming.recorded) == 1


def test_a_call_with_a_vault_imports_the_seal_while_the_checkpointer_runs(imported: list[str]) -> None:
    """What the call's config adds to the work after the dump (the seal, with a vault) is imported
    during the dump too, not after it."""
    seal = "mom_checkpoint.vault.seal"
    meanwhile = WhileItRuns(FakeIncoming(), lambda: "4.1.1", imports=(*AFTER_THE_DUMP, seal))  # type: ignore[arg-type]
    completed = Runner().run(["/bin/true"], timeout_s=60, on_start=meanwhile)
    assert completed.returncode == 0 and imported == [*AFTER_THE_DUMP, seal]


def test_a_module_that_cannot_be_imported_never_ends_the_checkpointer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The runner kills the checkpointer when on_start raises, and a checkpointer killed inside the job
    can take the job along: a broken install must fail after the dump instead (the same imports)."""

    def broken(name: str) -> ModuleType:
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(importlib, "import_module", broken)
    meanwhile = WhileItRuns(FakeIncoming(), lambda: "4.1.1")  # type: ignore[arg-type]
    completed = Runner().run(["/bin/sh", "-c", "sleep 0.3; exit 7"], timeout_s=60, on_start=meanwhile)
    assert (completed.returncode, completed.timed_out) == (7, False)
    assert meanwhile.version(timeout_s=10) == "4.1.1"


def test_a_version_that_cannot_be_had_is_unknown(imported: list[str]) -> None:
    def broken() -> str:
        raise OSError("criu --version: no such file")

    meanwhile = WhileItRuns(FakeIncoming(), broken)  # type: ignore[arg-type]
    meanwhile(4711)
    assert meanwhile.version(timeout_s=10) == "unknown"


def test_a_version_query_that_hangs_is_given_up_after_its_time(imported: list[str]) -> None:
    release = threading.Event()
    answered = threading.Event()

    def hangs() -> str:
        release.wait(30)
        answered.set()
        return "late"

    meanwhile = WhileItRuns(FakeIncoming(), hangs)  # type: ignore[arg-type]
    meanwhile(4711)
    assert meanwhile.version(timeout_s=0.2) == "unknown"
    assert not answered.is_set(), "it waited for the query to end instead of giving it up"
    release.set()


@pytest.mark.parametrize("answer", ["3.19", "unknown"])
def test_a_checkpointer_that_never_started_is_asked_then(answer: str) -> None:
    calls: list[Any] = []

    def ask() -> str:
        calls.append(threading.current_thread() is threading.main_thread())
        return answer

    meanwhile = WhileItRuns(FakeIncoming(), ask)  # type: ignore[arg-type]
    assert meanwhile.version(timeout_s=10) == answer
    assert calls == [True]
