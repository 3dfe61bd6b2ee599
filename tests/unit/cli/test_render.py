"""What the admin commands print for people: text from manifests, /proc and folder names is shown, never
obeyed (no terminal escape sequences, no rich markup), and --json stays exact."""

from __future__ import annotations

import copy
import io
import json
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from mom_checkpoint.cli import render
from mom_checkpoint.cli.common import say
from mom_checkpoint.cli.result import envelope
from mom_checkpoint.commands.doctor import Check
from mom_checkpoint.commands.prune import Decision
from mom_checkpoint.image.manifest import Manifest, parse
from mom_checkpoint.platform.environment import Environment
from mom_checkpoint.spool.inventory import Entry

# A window title, a clear screen, a C1 CSI (colour), DEL, NUL, a right-to-left override and a lone
# surrogate (a non-UTF-8 byte of a file name), then rich markup: balanced, unbalanced, a link, an emoji.
TERMINAL = "\x1b]0;pwned\x07\x1b[2J\x9b31m\x7f\x00\u202e\udcff"
MARKUP = ["[bold]", "[/]", "[link=file:///etc/shadow]L[/link]", ":smile:", "[red]"]
SHOWN = "\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\x7f\\x00\\u202e\\xff"  # TERMINAL as people see it
REST = "[bold]B [/] [link=file:///etc/shadow]L[/link] :smile: [red]R"
EVIL = TERMINAL + REST


@pytest.fixture(autouse=True)
def _no_forced_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    """rich would colour a StringIO with these set; the tests check the text, not the styles."""
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


def unsafe(text: str) -> list[str]:
    """Every character of ``text`` a terminal could obey or choke on: controls other than the newline,
    lone surrogates, and bidirectional overrides."""
    return [
        c
        for c in text
        if c != "\n" and (unicodedata.category(c) in ("Cc", "Cs") or unicodedata.bidirectional(c) == "RLO")
    ]


def assert_shown_not_obeyed(text: str, *shown: str) -> None:
    """No control character reached ``text``; TERMINAL, the markup and ``shown`` are there as typed."""
    assert "\x1b" not in text and "\x9b" not in text
    assert unsafe(text) == [], unsafe(text)
    for part in [SHOWN, *MARKUP, *shown]:
        assert part in text, (part, text)


def hostile_manifest() -> dict[str, Any]:
    """A valid schema-1 manifest whose every free-text field is hostile."""
    process = {
        "pid": 4712, "ppid": 4711, "name": "bash\x1b[2J", "exe": "/usr/bin/bash" + EVIL,
        "cmdline": ["python3", EVIL, "[/]"], "cwd": "/home/alice" + EVIL, "uid": 1000, "gid": 1000,
        "rss": 4096, "start_time": 1.5, "session_id": 4711,
        "fds": [{"fd": 1, "target": "/home/alice/" + EVIL, "kind": "file", "flags": 32769, "pos": 10}],
    }  # fmt: skip
    return {
        "schema": 1,
        "tool": {"name": "mom-checkpoint", "version": "0.1.0" + EVIL},
        "job": {
            "id": "42.head" + EVIL,
            "session_id": 4711,
            "leader_pid": 4711,
            "exec_pid": 4712,
            "user": "alice" + EVIL,
            "uid": 1000,
            "group": "users" + EVIL,
            "gid": 1000,
            "found_via": "session",
        },
        "call": {
            "convention": "torque",
            "argv": ["4711", "42.head"],
            "signal": 0,
            "depth": None,
            "checkpoint_dir": None,
            "checkpoint_name": None,
        },
        "host": {"name": "node1" + EVIL, "kernel": "6.18" + EVIL},
        "generation": {"number": 3, "name": "000003-20261124T193000Z"},
        "backend": {
            "name": "criu" + EVIL,
            "command": ["criu", "dump", EVIL],
            "version": "4.1.1" + EVIL,
            "exit_status": 0,
            "run_as": "root" + EVIL,
            "ended_job": False,
        },
        "times": {
            "started": "2026-11-24T19:30:00.000+00:00" + EVIL,
            "finished": "2026-11-24T19:30:01.000+00:00",
            "dump_s": 0.5,
            "frozen_s": 0.1,
            "post_dump_s": 0.2,
            "total_s": 1.0,
        },
        "processes": [process],
        "files": [
            {
                "path": "image/pages-1.img" + TERMINAL.replace("\x00", "") + "[bold]B",
                "size": 4096,
                "sha256": "0" * 64,
            }
        ],
        "total_bytes": 4096,
        "stats": {"frozen_time_us" + EVIL: 100000},
    }


def a_manifest() -> Manifest:
    return parse(copy.deepcopy(hostile_manifest()), "test")


def an_entry(**changes: Any) -> Entry:
    """A spool entry whose job id and path (folder names), backend and problem (manifest text) are hostile,
    each short enough to fit its column (rich cuts long words in tables with an ellipsis)."""
    values: dict[str, Any] = {
        "job_id": "42.head\x1b[2J[bold]",
        "exec_pid": 4712,
        "path": Path("/spool/4712.42.head\x1b[2J[bold]/000001-20261124T193000Z"),
        "status": "broken",
        "number": 1,
        "created": 1_795_000_000.0,
        "size": 4096,
        "backend": "psnc\x9b[/]",
        "problem": "field " + TERMINAL + " [link=file:///etc/shadow]L[/link] :smile: [red]: unknown key",
    }
    return Entry(**{**values, **changes})


def test_printable_escapes_controls_visibly_and_leaves_the_rest() -> None:
    from mom_checkpoint.cli.text import printable

    assert (
        printable("plain [bold] text, ünïcode, \\x1b as typed")
        == "plain [bold] text, ünïcode, \\x1b as typed"
    )
    assert printable("\x1b[2J\x07") == "\\x1b[2J\\x07"
    assert printable("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert printable("\x00\x7f\x80\x9b\x9f") == "\\x00\\x7f\\x80\\x9b\\x9f"
    assert printable("\udcff\udc80") == "\\xff\\x80"  # the bytes of a non-UTF-8 name
    assert printable("\ud800") == "\\ud800"
    assert printable("\u202eevil\u2066\u2028") == "\\u202eevil\\u2066\\u2028"
    assert printable(Path("/spool/\x1b")) == "/spool/\\x1b"
    every = "".join(chr(c) for c in range(0x110000))
    assert unsafe(printable(every)) == []


def test_show_prints_a_hostile_manifest_without_obeying_it() -> None:
    out = io.StringIO()
    render.manifest(Path("/var/spool/checkpoint/4712.42.head[/]" + TERMINAL), a_manifest(), out)
    text = out.getvalue()
    assert_shown_not_obeyed(text)
    assert "4712.42.head[/]\\x1b]0;pwned" in text and "4712 bash\\x1b[2J  uid 1000" in text
    assert "python3 " + SHOWN + REST + " [/]" in text  # the command line, word for word
    assert "fd 1 -> /home/alice/\\x1b]0;pwned" in text


def test_list_prints_hostile_job_ids_and_problems_without_obeying_them() -> None:
    out = io.StringIO()
    render.entries([an_entry(), an_entry(status="complete", problem=None, newest=True)], out, 1_795_000_100.0)
    assert_shown_not_obeyed(out.getvalue(), "42.head\\x1b[2J[bold]", "psnc\\x9b[/]")


def test_prune_prints_hostile_folders_without_obeying_them() -> None:
    out = io.StringIO()
    render.decisions(
        [
            Decision(an_entry(), False, "older than " + TERMINAL + " " + REST, True),
            Decision(an_entry(), True, "newest", False),
        ],
        True,
        out,
    )
    assert_shown_not_obeyed(out.getvalue(), "/spool/4712.42.head\\x1b[2J[bold]/000001-20261124T193000Z")


def test_doctor_prints_hostile_checks_without_obeying_them() -> None:
    out = io.StringIO()
    render.checks(
        [Check("spool" + EVIL, False, "owned by " + EVIL, "chown root " + EVIL), Check("log", True, EVIL)],
        out,
    )
    text = out.getvalue()
    assert_shown_not_obeyed(text)
    # two checks, one fix line, the summary: a newline in a detail starts no line of its own
    assert text.count("\n") == 4, text


def test_json_keeps_every_string_exact_and_escaped() -> None:
    manifest = a_manifest()
    text = envelope("show", {"path": Path("/spool/" + TERMINAL), "manifest": manifest})
    assert unsafe(text) == [] and text.isascii()
    shown = json.loads(text)["data"]
    assert shown["path"] == "/spool/" + TERMINAL
    # read at schema 1, shown as this version's schema: upgraded (kept files added, none; each sha256
    # named as the digest "sha256:<hex>"; the CPU not known), else exact
    old = hostile_manifest()
    files = [{"path": f["path"], "size": f["size"], "digest": "sha256:" + f["sha256"]} for f in old["files"]]
    host = {**old["host"], "cpu": None}
    assert (
        shown["manifest"]
        == json.loads(manifest.to_json())
        == {**old, "schema": 5, "kept": [], "files": files, "host": host}
    )


def test_say_keeps_one_line_and_escapes_controls() -> None:
    stderr = io.StringIO()
    say(Environment(stderr=stderr), "mom-checkpoint", "bad  manifest\n" + TERMINAL + "[bold]x")
    assert stderr.getvalue() == (
        "mom-checkpoint: bad manifest \\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\x7f\\x00\\u202e\\xff[bold]x\n"
    )
