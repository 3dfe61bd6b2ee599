"""manifest.json: the versioned record of one generation, readable by people and by jq.

``schema`` is the version of this layout. Readers upgrade older layouts step by step (``UPGRADES``) and
refuse newer ones, so an old tool never misreads a new manifest.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import msgspec
from msgspec import field

from mom_checkpoint.batch.calls import CheckpointCall
from mom_checkpoint.batch.jobkey import JobKey, system_of
from mom_checkpoint.image.hashing import DIGEST, ImageFile
from mom_checkpoint.image.layout import KEPT
from mom_checkpoint.platform import cpu
from mom_checkpoint.platform.cpu import CpuInfo
from mom_checkpoint.platform.errors import VerificationFailed
from mom_checkpoint.platform.records import RecordError, build
from mom_checkpoint.processes.discovery import JobProcesses, ProcessRecord

SCHEMA = 5
MAX_BYTES = 32 * 1024 * 1024


def _kept_files_added(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 2 added ``kept``: files the job held, copied into the generation (none before)."""
    return {**data, "schema": 2, "kept": []}


def _kept_files_named(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 3 named each held file as the dump did (``external``, with its ``mode``): a schema-2
    held file was dumped by its path, and is handed back by its path."""
    return {**data, "schema": 3}


def _digests_named(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 4 records each file's ``digest`` with its algorithm ("blake3:<hex>"); a schema-3 file's
    ``sha256`` is the digest "sha256:<hex>", and is checked with sha256."""

    def upgraded(entries: object) -> object:
        if not isinstance(entries, list):
            return entries  # refused by the record check, with the field named
        return [
            {k: v for k, v in e.items() if k != "sha256"} | {"digest": f"sha256:{e['sha256']}"}
            if isinstance(e, dict) and isinstance(e.get("sha256"), str)
            else e
            for e in entries
        ]

    return {**data, "schema": 4, "files": upgraded(data.get("files")), "kept": upgraded(data.get("kept"))}


def _cpu_recorded(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 5 records the checkpointing node's CPU (``host.cpu``); a schema-4 generation's is not
    known (null), and its restore checks no CPU."""
    host = data.get("host")
    return {**data, "schema": 5, "host": {**host, "cpu": None} if isinstance(host, dict) else host}


# schema N -> function turning a schema-N dict into a schema-(N+1) dict
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: _kept_files_added,
    2: _kept_files_named,
    3: _digests_named,
    4: _cpu_recorded,
}
EXTERNAL = re.compile(r"file\[[0-9a-f]{1,8}:[0-9a-f]{1,16}\]")  # CRIU's --external name of a held file


class ToolInfo(msgspec.Struct, frozen=True):
    name: str
    version: str


class JobInfo(msgspec.Struct, frozen=True):
    id: str
    session_id: int  # the job's session when checkpointed (the job shell's pid)
    leader_pid: int
    exec_pid: int
    user: str
    uid: int
    group: str
    gid: int
    found_via: str  # "session" or "restart-record"

    @classmethod
    def of(cls, job_id: str, job: JobProcesses, group: str) -> JobInfo:
        return cls(
            id=job_id, session_id=job.leader_pid, leader_pid=job.leader_pid, exec_pid=job.exec_pid_inside,
            user=job.user, uid=job.uid, group=group, gid=job.gid, found_via=job.found_via,
        )  # fmt: skip


class CallInfo(msgspec.Struct, frozen=True):
    convention: str  # "torque" | "seed"
    argv: list[str]
    signal: int
    depth: int | None
    checkpoint_dir: str | None
    checkpoint_name: str | None

    @classmethod
    def of(cls, call: CheckpointCall) -> CallInfo:
        return cls(
            convention=call.convention, argv=list(call.argv), signal=call.signal, depth=call.depth,
            checkpoint_dir=call.checkpoint_dir, checkpoint_name=call.checkpoint_name,
        )  # fmt: skip


class HostInfo(msgspec.Struct, frozen=True):
    name: str
    kernel: str
    cpu: CpuInfo | None = None  # None: a generation of schema 4 or older

    @classmethod
    def here(cls) -> HostInfo:
        return cls(os.uname().nodename, os.uname().release, cpu.here())


class BackendInfo(msgspec.Struct, frozen=True):
    name: str
    command: list[str]
    version: str
    exit_status: int
    run_as: str
    ended_job: bool  # the checkpointer itself ended the job after the dump (abort)


class Timings(msgspec.Struct, frozen=True):
    started: str  # ISO 8601, UTC
    finished: str
    dump_s: float  # the checkpointer's run, wall clock
    frozen_s: float | None  # how long the job was stopped, as the checkpointer reports it
    post_dump_s: float  # hashing, fsync and manifest, all after the job was let go
    total_s: float


class GenerationInfo(msgspec.Struct, frozen=True):
    number: int
    name: str


class KeptFile(msgspec.Struct, frozen=True):
    """A file the job held when it was checkpointed, copied into the generation (kept/, root's): a
    restore hands the copy back whatever has happened to the original since."""

    path: str  # the path the job had open, as /proc showed it
    copy: str  # relative to the generation: "kept/<name>"
    role: Literal["held", "output"]  # a file it reads (its script...), or where its stdout/stderr went
    pos: int  # the file offset the job was at (held files)
    size: int
    digest: str  # "<algorithm>:<hex>", as an image file's
    external: str = ""  # held: its name in the image, "file[<mnt_id>:<inode>]" (dumped with --external)
    mode: int = 0  # held: its permission bits, which the copy handed back must have


class Manifest(msgspec.Struct, frozen=True):
    schema: int
    tool: ToolInfo
    job: JobInfo
    call: CallInfo
    host: HostInfo
    generation: GenerationInfo
    backend: BackendInfo
    times: Timings
    processes: list[ProcessRecord]
    files: list[ImageFile]
    total_bytes: int
    stats: dict[str, int] = field(default_factory=dict)  # the checkpointer's own counters (CRIU's dump stats)
    kept: list[KeptFile] = field(default_factory=list)

    @property
    def every_file(self) -> list[ImageFile]:
        """Every file of the generation, as the vault copies it: the image's, then the kept copies'."""
        return [*self.files, *(ImageFile(k.copy, k.size, k.digest) for k in self.kept)]

    @property
    def key(self) -> JobKey:
        """The job's key (batch system, owner, job id), from root's record of it."""
        return JobKey(system_of(self.call.convention), self.job.uid, self.job.id)

    def to_json(self) -> str:
        return json.dumps(msgspec.to_builtins(self), indent=2) + "\n"


def read(path: Path) -> Manifest:
    """Read and check a manifest; every problem is a VerificationFailed naming the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise VerificationFailed(f"{path}: no manifest (not a complete generation)") from None
    except OSError as exc:
        raise VerificationFailed(f"{path}: cannot read the manifest: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise VerificationFailed(f"{path}: manifest larger than {MAX_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VerificationFailed(f"{path}: manifest is not valid JSON: {exc}") from None
    return parse(data, str(path))


def parse(data: object, source: str) -> Manifest:
    if not isinstance(data, dict):
        raise VerificationFailed(f"{source}: manifest is not a JSON object")
    schema = data.get("schema")
    if isinstance(schema, bool) or not isinstance(schema, int):
        raise VerificationFailed(f"{source}: manifest has no schema version")
    if schema > SCHEMA:
        raise VerificationFailed(
            f"{source}: manifest schema {schema} is newer than this mom-checkpoint understands ({SCHEMA}); "
            f"upgrade mom-checkpoint"
        )
    while schema < SCHEMA:
        if schema not in UPGRADES:
            raise VerificationFailed(f"{source}: manifest schema {schema} is not supported")
        data = UPGRADES[schema](data)
        schema = data["schema"]
    try:
        manifest = build(Manifest, data)
    except RecordError as exc:
        raise VerificationFailed(f"{source}: manifest field {exc.key}: {exc.problem}") from None
    for digest in [f.digest for f in manifest.files] + [k.digest for k in manifest.kept]:
        if not DIGEST.fullmatch(digest):
            raise VerificationFailed(
                f"{source}: manifest records a digest this mom-checkpoint cannot check: {digest[:80]!r}"
            )
    for image_file in manifest.files:
        if not is_inside_image(image_file.path):
            raise VerificationFailed(
                f"{source}: manifest names a file outside its image: {image_file.path!r}"
            )
    for kept in manifest.kept:
        name = kept.copy[len(f"{KEPT}/") :] if kept.copy.startswith(f"{KEPT}/") else ""
        bad_external = (
            kept.external and not EXTERNAL.fullmatch(kept.external)
        ) or not 0 <= kept.mode <= 0o777
        if (
            not name
            or "/" in name
            or name in (".", "..")
            or "\0" in name
            or not kept.path.startswith("/")
            or bad_external
        ):
            raise VerificationFailed(f"{source}: manifest names a kept file it cannot have: {kept.copy!r}")
    return manifest


def is_inside_image(relpath: str) -> bool:
    norm = posixpath.normpath(relpath)
    return norm == relpath and norm.startswith("image/") and ".." not in norm.split("/") and "\0" not in norm


def iso(timestamp: float) -> str:
    """A manifest's (and a pointer's) time: ISO 8601, UTC, milliseconds."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
