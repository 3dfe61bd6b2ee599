"""Property-based fuzzing of everything that reads outside input: the calls' arguments, the manifest,
the pointer that travelled through the user's hands, the config file, and the paths built from them.

No input may crash the program (anything but its own errors, which become one stderr line and an exit
code) or lead to a path outside the spool. ``HYPOTHESIS_PROFILE=reliability`` (make reliability) runs
many more examples than the test suite's default.
"""

from __future__ import annotations

import copy
import json
import os
import posixpath
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mom_checkpoint.batch.calls import (
    SeedCall,
    TorqueCall,
    parse_checkpoint_call,
    parse_pbs_args,
    task_storage_id,
)
from mom_checkpoint.batch.pointer import read_pointer
from mom_checkpoint.cli.restart import parse_restart_call
from mom_checkpoint.commands.restart import SeedRestart, TorqueRestart
from mom_checkpoint.image.manifest import is_inside_image, parse
from mom_checkpoint.platform import config as config_module
from mom_checkpoint.platform.errors import ConfigError, Error, StorageIOError, UsageError, VerificationFailed
from mom_checkpoint.spool.storage import run_name

SPOOL = "/var/spool/checkpoint"
# pieces hostile input is made of: separators, dots, control and shell characters, odd Unicode
HOSTILE = st.sampled_from(
    ["/", "..", ".", "\0", "\n", "\t", " ", "$(id)", "`", ";", "|", "*", "-", "~", "\u202e"]
)
WORD = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=string.ascii_letters + string.digits + "._-@+[]/", max_size=40),
    st.lists(st.one_of(HOSTILE, st.text(string.ascii_letters, max_size=5)), max_size=6).map("".join),
    st.integers(min_value=-5, max_value=2**32).map(str),
    st.sampled_from(["-", "0", "15", "4711", "42.head", "ckpt.42.head.1", "/var/spool/torque/checkpoint/x"]),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def safe_path_part(value: str) -> bool:
    """One plain path component that stays where it is put."""
    return (
        bool(value)
        and "/" not in value
        and "\0" not in value
        and value not in (".", "..")
        and ".." not in value
        and not value.startswith(("-", "."))
        and value.isprintable()
        and len(value) <= 200
        and posixpath.normpath(posixpath.join(SPOOL, value)) == posixpath.join(SPOOL, value)
    )


@given(st.lists(WORD, max_size=10))
def test_checkpoint_arguments_are_refused_or_safe(args: list[str]) -> None:
    try:
        call = parse_checkpoint_call(args)
    except UsageError as exc:
        assert exc.message and "\n" not in exc.message  # hostile values are quoted, never raw
        return
    assert isinstance(call, TorqueCall | SeedCall)
    assert safe_path_part(call.job_id), call.job_id
    assert call.top_pid > 1
    assert posixpath.dirname(posixpath.join(SPOOL, run_name(call.top_pid, call.job_id))) == SPOOL
    if isinstance(call, TorqueCall):
        assert call.signal in (0, 15)
        assert call.depth is None or call.depth > 0
        if call.checkpoint_name is not None:
            assert safe_path_part(call.checkpoint_name), call.checkpoint_name
        if call.checkpoint_dir is not None:
            assert call.checkpoint_dir.startswith("/") and "\0" not in call.checkpoint_dir


@given(st.lists(st.one_of(WORD, st.sampled_from(["--job", "--image", "--cwd", "--own"])), max_size=8))
def test_restart_arguments_are_refused_or_safe(args: list[str]) -> None:
    assume(not any(a.startswith("-") and ("--help".startswith(a) or "--version".startswith(a)) for a in args))
    assume("-h" not in args)
    try:
        call = parse_restart_call(args)
    except UsageError:
        return
    if isinstance(call, TorqueRestart):
        assert safe_path_part(call.job_id)
    else:
        assert isinstance(call, SeedRestart)
        assert (call.job_id is None) != (call.image is None)
        assert call.job_id is None or safe_path_part(call.job_id)
        assert call.cwd is None or call.cwd.startswith("/")


@given(
    st.tuples(
        st.sampled_from(["checkpoint", "checkpoint_abort", "restart", "suspend"]),
        WORD,
        st.one_of(WORD, st.integers(-(2**31), 2**31).map(str)),
        st.one_of(WORD, st.integers(0, 2**20).map(str)),
        WORD,
        st.one_of(WORD, st.builds(lambda j, t: f"/var/spool/pbs/checkpoint/{j}.CK/{t}", WORD, WORD)),
    )
)
def test_openpbs_words_are_refused_or_name_this_tasks_own_path(words: tuple[str, ...]) -> None:
    try:
        parsed = parse_pbs_args(["--pbs", *words])
    except UsageError:
        return
    assert safe_path_part(parsed.job_id) and parsed.session_id > 1 and parsed.task_id >= 1
    assert parsed.path.endswith(f"/{parsed.job_id}.CK/{parsed.task_id:08X}")
    assert posixpath.normpath(parsed.path) == parsed.path
    assert safe_path_part(task_storage_id(parsed.job_id, parsed.task_id))


def a_manifest() -> dict[str, Any]:
    """A complete, valid schema-1 manifest as the hook writes it."""
    process = {
        "pid": 4712, "ppid": 4711, "name": "bash", "exe": "/usr/bin/bash", "cmdline": ["bash", "job.SC"],
        "cwd": "/home/alice", "uid": 1000, "gid": 1000, "rss": 4096, "start_time": 1.5, "session_id": 4711,
        "fds": [{"fd": 1, "target": "/home/alice/job.OU", "kind": "file", "flags": 32769, "pos": 10}],
    }  # fmt: skip
    return {
        "schema": 1,
        "tool": {"name": "mom-checkpoint", "version": "0.1.0"},
        "job": {
            "id": "42.head",
            "session_id": 4711,
            "leader_pid": 4711,
            "exec_pid": 4712,
            "user": "alice",
            "uid": 1000,
            "group": "users",
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
        "host": {"name": "node1", "kernel": "6.18"},
        "generation": {"number": 3, "name": "000003-20261124T193000Z"},
        "backend": {
            "name": "criu",
            "command": ["criu", "dump"],
            "version": "4.1.1",
            "exit_status": 0,
            "run_as": "root",
            "ended_job": False,
        },
        "times": {
            "started": "2026-11-24T19:30:00.000+00:00",
            "finished": "2026-11-24T19:30:01.000+00:00",
            "dump_s": 0.5,
            "frozen_s": 0.1,
            "post_dump_s": 0.2,
            "total_s": 1.0,
        },
        "processes": [process],
        "files": [{"path": "image/pages-1.img", "size": 4096, "sha256": "0" * 64}],
        "total_bytes": 4096,
        "stats": {"frozen_time_us": 100000},
    }


def test_the_valid_manifest_parses() -> None:
    assert parse(a_manifest(), "test").job.id == "42.head"


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += _paths(value, (*prefix, i))
    return found


@given(st.data())
def test_a_manifest_with_any_field_changed_is_refused_or_stays_inside_its_image(data: st.DataObject) -> None:
    manifest = a_manifest()
    paths = _paths(manifest)[1:]
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(paths))
        target: Any = manifest
        for key in where[:-1]:
            target = target[key]
        value = data.draw(st.one_of(JSON, WORD, st.just(None)))
        if data.draw(st.booleans()) or isinstance(target, list):
            target[where[-1]] = value
        else:
            del target[where[-1]]
        paths = _paths(manifest)[1:]
        if not paths:
            break
    _parse_or_refuse(manifest)


@given(JSON)
def test_any_json_is_refused_or_a_manifest(data: object) -> None:
    _parse_or_refuse(data)


def _parse_or_refuse(data: object) -> None:
    try:
        manifest = parse(copy.deepcopy(data), "fuzz")
    except VerificationFailed:
        return
    for image_file in manifest.files:
        joined = os.path.normpath(os.path.join("/spool/1.j/000001-x", image_file.path))
        assert joined.startswith("/spool/1.j/000001-x/image/"), image_file.path


@given(
    st.one_of(st.text(max_size=60), st.lists(st.one_of(HOSTILE, st.just("image")), max_size=8).map("/".join))
)
def test_is_inside_image_never_lets_a_path_out(relpath: str) -> None:
    if is_inside_image(relpath):
        generation = "/spool/1.j/000001-x"
        assert os.path.normpath(os.path.join(generation, relpath)).startswith(f"{generation}/image/")


def a_pointer() -> dict[str, Any]:
    return {
        "kind": "mom-checkpoint pointer", "schema": 1, "job_id": "42.head", "host": "node1",
        "generation": "/var/spool/checkpoint/4712.42.head/000003-20261124T193000Z", "number": 3,
        "created": "2026-11-24T19:30:01.000+00:00",
    }  # fmt: skip


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_pointer_from_the_users_hands_is_refused_or_well_typed(tmp_path: Path, data: st.DataObject) -> None:
    pointer = a_pointer()
    for key in data.draw(st.lists(st.sampled_from(sorted(pointer)), max_size=3)):
        pointer[key] = data.draw(st.one_of(JSON, WORD))
    raw = data.draw(st.one_of(st.just(json.dumps(pointer).encode()), st.binary(max_size=80)))
    path = tmp_path / "ckpt.42.head.1"
    path.write_bytes(raw)
    try:
        read = read_pointer(str(path))
    except StorageIOError:
        return
    assert isinstance(read.generation, str) and isinstance(read.job_id, str)
    assert isinstance(read.number, int) and not isinstance(read.number, bool)


def a_config() -> dict[str, Any]:
    return {
        "backend": "criu", "spool_dir": "/var/spool/checkpoint", "keep": 2, "timeout_s": 600,
        "max_concurrent": 2, "log_file": "syslog", "torque_checkpoint_roots": ["/var/spool/torque/ck"],
        "backends": {"criu": {"binary": "criu", "run_as": "job-user"}},
    }  # fmt: skip


@given(st.data())
def test_a_config_with_any_value_changed_is_refused_naming_the_key_or_valid(data: st.DataObject) -> None:
    raw = a_config()
    key = data.draw(st.sampled_from([*sorted(raw), "nonsense"]))
    raw[key] = data.draw(st.one_of(JSON, WORD))
    try:
        config = config_module.parse(raw, "fuzz.toml")
    except ConfigError as exc:
        assert "fuzz.toml" in exc.message and key in exc.message, exc.message
        return
    assert config.keep >= 1 and config.timeout_s > 0 and config.max_concurrent >= 1
    assert config.spool_dir.startswith("/") and os.path.normpath(config.spool_dir) != "/"


@pytest.mark.parametrize("value", ["a\0b", "42.head\0", "\0"])
def test_nul_in_any_argument_is_a_usage_error(value: str) -> None:
    for args in (["4711", value], ["4711", "42.head", "u", "g", "/d", value, "0", "-"], [value, "42.head"]):
        with pytest.raises(Error) as caught:
            parse_checkpoint_call(args)
        assert isinstance(caught.value, UsageError)
